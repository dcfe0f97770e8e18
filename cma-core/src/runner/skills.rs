//! Skills: download each of the session agent's skills and write it into the sandbox under
//! `{workdir}/skills/<name>/` (PROTOCOL.md §5.3), then remove those directories at teardown.
//!
//! Everything goes through the [`Sandbox`] API, so it works on every backend. Archives are
//! untrusted: an entry with an absolute path or a `..` component fails the skill; symlinks, hard
//! links, devices and FIFOs are skipped; the number of entries and the bytes per file and per
//! skill are bounded. A single top-level directory shared by every entry (the usual `<skill>/…`
//! wrapper) is stripped. Archives are tar (optionally not compressed); zip archives are refused
//! with a typed error (no zip reader is linked yet).

use std::io::Read;

use bytes::Bytes;
use cma_sandbox::{Sandbox, SandboxError, SandboxErrorKind};
use serde_json::Value;

use crate::client::{ApiError, SkillsClient};
use crate::protocol::SkillRef;

/// Name of the directory under the workdir that holds the skills.
pub const SKILLS_DIR: &str = "skills";

/// Bounds on one extracted skill archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkillLimits {
    /// Most entries (files and directories) one archive may hold.
    pub max_entries: usize,
    /// Largest single file.
    pub max_file_bytes: u64,
    /// Largest total of file bytes.
    pub max_total_bytes: u64,
}

impl Default for SkillLimits {
    fn default() -> Self {
        Self {
            max_entries: 4096,
            max_file_bytes: 16 * 1024 * 1024,
            max_total_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why one skill could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SkillError {
    /// The version lookup or the download failed.
    #[error("skill {skill_id}: {source}")]
    Api {
        /// The skill.
        skill_id: String,
        /// The API error.
        #[source]
        source: ApiError,
    },
    /// The archive is malformed, unsafe, of an unsupported format or over a limit.
    #[error("skill archive refused: {0}")]
    Archive(String),
    /// Writing into the sandbox failed.
    #[error("skill {skill_id}: writing into the sandbox: {source}")]
    Sandbox {
        /// The skill.
        skill_id: String,
        /// The sandbox error.
        #[source]
        source: SandboxError,
    },
}

/// One file of an extracted archive, relative to the skill directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillFile {
    /// Clean relative path (`/`-separated, no `.`/`..`, not empty).
    pub path: String,
    /// Contents.
    pub data: Bytes,
}

/// An extracted archive: its directories and files (paths relative to the skill directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractedSkill {
    /// Directories (including empty ones).
    pub dirs: Vec<String>,
    /// Regular files.
    pub files: Vec<SkillFile>,
}

/// A member name as a confined relative path: `\` read as `/`, `.` parts dropped; absolute
/// names and `..` parts refused. `Ok("")` for names that are nothing (`./`).
pub fn safe_member_name(name: &str) -> Result<String, SkillError> {
    let norm = name.replace('\\', "/");
    if norm.starts_with('/') {
        return Err(SkillError::Archive(format!(
            "member with an absolute path: {name:?}"
        )));
    }
    let mut parts = Vec::new();
    for p in norm.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                return Err(SkillError::Archive(format!(
                    "member with a '..' component: {name:?}"
                )));
            }
            p if p.contains('\0') => {
                return Err(SkillError::Archive(format!("member with a NUL: {name:?}")));
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// The single top-level directory every (non-empty) name shares, when some name is nested below
/// it; `None` otherwise.
fn wrapper_dir(names: &[String]) -> Option<String> {
    let mut top: Option<&str> = None;
    let mut nested = false;
    for n in names.iter().filter(|n| !n.is_empty()) {
        let (first, rest) = n.split_once('/').unwrap_or((n.as_str(), ""));
        if !rest.is_empty() {
            nested = true;
        }
        match top {
            None => top = Some(first),
            Some(t) if t == first => {}
            Some(_) => return None,
        }
    }
    top.filter(|_| nested).map(str::to_owned)
}

fn strip_top(path: &str, top: Option<&str>) -> String {
    match top {
        Some(t) if path == t => String::new(),
        Some(t) => path
            .strip_prefix(t)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(path)
            .to_owned(),
        None => path.to_owned(),
    }
}

/// Extract a skill archive in memory, applying the path rules and `limits`.
pub fn extract_archive(bytes: &[u8], limits: &SkillLimits) -> Result<ExtractedSkill, SkillError> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Err(SkillError::Archive(
            "zip archives are not supported yet (tar only)".into(),
        ));
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(SkillError::Archive(
            "compressed (gzip) tar archives are not supported yet".into(),
        ));
    }
    let bad = |e: std::io::Error| SkillError::Archive(format!("malformed tar archive: {e}"));
    let mut archive = tar::Archive::new(bytes);
    // (name, is_dir, data) of the plain members; every name is screened first.
    let mut plain: Vec<(String, bool, Bytes)> = Vec::new();
    let mut total: u64 = 0;
    let mut entries = 0usize;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(SkillError::Archive(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        let raw = entry.path_bytes();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let safe = safe_member_name(&name)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            plain.push((safe, true, Bytes::new()));
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let size = entry.header().size().map_err(bad)?;
            if size > limits.max_file_bytes {
                return Err(SkillError::Archive(format!(
                    "member {name:?} is {size} bytes, above the {} byte limit",
                    limits.max_file_bytes
                )));
            }
            total += size;
            if total > limits.max_total_bytes {
                return Err(SkillError::Archive(format!(
                    "archive holds more than {} bytes",
                    limits.max_total_bytes
                )));
            }
            let mut data = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(limits.max_file_bytes + 1)
                .read_to_end(&mut data)
                .map_err(bad)?;
            plain.push((safe, false, Bytes::from(data)));
        }
        // Symlinks, hard links, devices, FIFOs: skipped (their names were screened above).
    }
    let names: Vec<String> = plain.iter().map(|(n, _, _)| n.clone()).collect();
    let top = wrapper_dir(&names);
    let mut out = ExtractedSkill::default();
    for (name, is_dir, data) in plain {
        let rel = strip_top(&name, top.as_deref());
        if rel.is_empty() {
            continue;
        }
        if is_dir {
            out.dirs.push(rel);
        } else {
            out.files.push(SkillFile { path: rel, data });
        }
    }
    Ok(out)
}

/// The directory name of a skill: the last component of its (trimmed) name, else its id.
pub fn skill_dir_name(name: &str, skill_id: &str) -> String {
    let base = name.trim().rsplit('/').next().unwrap_or_default();
    if base.is_empty() || base == "." || base == ".." || base.contains('\\') || base.contains('\0')
    {
        skill_id.to_owned()
    } else {
        base.to_owned()
    }
}

fn version_str(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "latest".to_owned(),
    }
}

fn join(dir: &str, rel: &str) -> String {
    format!("{}/{rel}", dir.trim_end_matches('/'))
}

/// Write an extracted skill at `dest` (a sandbox path), replacing what was there.
async fn install(
    sandbox: &dyn Sandbox,
    dest: &str,
    skill: &ExtractedSkill,
) -> Result<(), SandboxError> {
    match sandbox.remove(dest, true).await {
        Ok(()) => {}
        Err(e) if e.kind() == SandboxErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    sandbox.create_dir_all(dest).await?;
    for d in &skill.dirs {
        sandbox.create_dir_all(&join(dest, d)).await?;
    }
    for f in &skill.files {
        sandbox
            .write_file(&join(dest, &f.path), f.data.clone())
            .await?;
    }
    Ok(())
}

/// Download one skill and install it under `{workdir}/skills/`; returns its directory.
pub async fn install_skill(
    client: &SkillsClient,
    sandbox: &dyn Sandbox,
    skill: &SkillRef,
    limits: &SkillLimits,
) -> Result<String, SkillError> {
    let api = |source| SkillError::Api {
        skill_id: skill.skill_id.clone(),
        source,
    };
    let version = client
        .retrieve_version(&skill.skill_id, &version_str(skill.version.as_ref()))
        .await
        .map_err(api)?;
    let dir = skill_dir_name(&version.name, &skill.skill_id);
    // `latest` is resolved by the lookup only: download by the concrete id it returned.
    let archive = client
        .download(&skill.skill_id, &version.id)
        .await
        .map_err(api)?;
    let extracted = extract_archive(&archive, limits)?;
    drop(archive);
    let dest = join(&join(sandbox.workdir(), SKILLS_DIR), &dir);
    if let Err(source) = install(sandbox, &dest, &extracted).await {
        let _ = sandbox.remove(&dest, true).await;
        return Err(SkillError::Sandbox {
            skill_id: skill.skill_id.clone(),
            source,
        });
    }
    Ok(dest)
}

/// Install every skill of `skills`; a failure is logged and does not stop the others (as the
/// SDK). Returns the directories written, for [`remove_skills`].
pub async fn install_skills(
    client: &SkillsClient,
    sandbox: &dyn Sandbox,
    skills: &[SkillRef],
    limits: &SkillLimits,
) -> Vec<String> {
    let mut dirs = Vec::new();
    for skill in skills {
        match install_skill(client, sandbox, skill, limits).await {
            Ok(dir) => {
                tracing::info!(skill_id = %skill.skill_id, dir = %dir, "downloaded skill");
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
            Err(e) => {
                tracing::warn!(skill_id = %skill.skill_id, error = %e, "failed to download skill")
            }
        }
    }
    dirs
}

/// Remove the skill directories [`install_skills`] wrote (the `skills/` directory itself stays).
pub async fn remove_skills(sandbox: &dyn Sandbox, dirs: &[String]) {
    for dir in dirs {
        match sandbox.remove(dir, true).await {
            Ok(()) => {}
            Err(e) if e.kind() == SandboxErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %dir, error = %e, "failed to remove a skill directory"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("/etc/passwd").unwrap();
            }
            // Write the raw name so unsafe names reach the extractor.
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn wrapper_directory_is_stripped_and_links_are_skipped() {
        let t = tar_of(&[
            ("pdf/", tar::EntryType::Directory, b""),
            ("pdf/SKILL.md", tar::EntryType::Regular, b"# pdf"),
            ("pdf/scripts/run.sh", tar::EntryType::Regular, b"echo"),
            ("pdf/evil", tar::EntryType::Symlink, b""),
        ]);
        let x = extract_archive(&t, &SkillLimits::default()).unwrap();
        let paths: Vec<_> = x.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["SKILL.md", "scripts/run.sh"]);
        assert_eq!(x.files[0].data, Bytes::from_static(b"# pdf"));
    }

    #[test]
    fn flat_archives_keep_their_layout() {
        let t = tar_of(&[
            ("SKILL.md", tar::EntryType::Regular, b"a"),
            ("b.txt", tar::EntryType::Regular, b"b"),
        ]);
        let x = extract_archive(&t, &SkillLimits::default()).unwrap();
        assert_eq!(x.files.len(), 2);
        assert_eq!(x.files[0].path, "SKILL.md");
    }

    #[test]
    fn traversal_absolute_and_oversized_members_are_refused() {
        for name in ["../x", "a/../../x", "/etc/x", "a\\..\\x"] {
            let t = tar_of(&[(name, tar::EntryType::Regular, b"x")]);
            assert!(
                matches!(
                    extract_archive(&t, &SkillLimits::default()),
                    Err(SkillError::Archive(_))
                ),
                "{name}"
            );
        }
        // A traversal name on a skipped (symlink) member still fails the archive.
        let t = tar_of(&[("../link", tar::EntryType::Symlink, b"")]);
        assert!(extract_archive(&t, &SkillLimits::default()).is_err());
        let limits = SkillLimits {
            max_file_bytes: 3,
            ..SkillLimits::default()
        };
        let t = tar_of(&[("big", tar::EntryType::Regular, b"1234")]);
        assert!(extract_archive(&t, &limits).is_err());
        let limits = SkillLimits {
            max_entries: 1,
            ..SkillLimits::default()
        };
        let t = tar_of(&[
            ("a", tar::EntryType::Regular, b"1"),
            ("b", tar::EntryType::Regular, b"2"),
        ]);
        assert!(extract_archive(&t, &limits).is_err());
        assert!(extract_archive(b"PK\x03\x04rest", &SkillLimits::default()).is_err());
    }

    #[test]
    fn skill_names_become_one_safe_component() {
        assert_eq!(skill_dir_name(" pdf ", "sk_1"), "pdf");
        assert_eq!(skill_dir_name("a/b", "sk_1"), "b");
        assert_eq!(skill_dir_name("..", "sk_1"), "sk_1");
        assert_eq!(skill_dir_name("", "sk_1"), "sk_1");
        assert_eq!(skill_dir_name("x/", "sk_1"), "sk_1");
    }
}
