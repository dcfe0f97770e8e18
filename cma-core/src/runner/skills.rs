//! Skills: download each of the session agent's skills and write it into the sandbox under
//! `{workdir}/skills/<name>/` (docs/protocol.md §5.3), then remove those directories at teardown.
//!
//! Everything goes through the [`Sandbox`] API, so it works on every backend. Archives are
//! untrusted: an entry with an absolute path or a `..` component fails the skill; symlinks, hard
//! links, devices and FIFOs are skipped; the number of entries and the bytes per file and per
//! skill are bounded. A single top-level directory shared by every entry (the usual `<skill>/…`
//! wrapper) is stripped. Archives are zip (stored or deflated, CRC-checked), tar, or
//! gzip-compressed tar.

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
    /// Neither the skill's name nor its id is a single safe path component.
    #[error("skill {skill_id:?}: neither its name nor its id can be a directory name")]
    InvalidName {
        /// The skill.
        skill_id: String,
    },
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

/// One member of an archive before the path rules are applied.
enum Member {
    Dir(String),
    File(String, Bytes),
    /// Symlink, hard link, device, FIFO, socket: only its name is screened.
    Special(String),
}

fn too_many(limits: &SkillLimits) -> SkillError {
    SkillError::Archive(format!("more than {} entries", limits.max_entries))
}

fn check_file_size(
    name: &str,
    size: u64,
    total: &mut u64,
    limits: &SkillLimits,
) -> Result<(), SkillError> {
    if size > limits.max_file_bytes {
        return Err(SkillError::Archive(format!(
            "member {name:?} is {size} bytes, above the {} byte limit",
            limits.max_file_bytes
        )));
    }
    *total += size;
    if *total > limits.max_total_bytes {
        return Err(SkillError::Archive(format!(
            "archive holds more than {} bytes",
            limits.max_total_bytes
        )));
    }
    Ok(())
}

fn tar_members(bytes: &[u8], limits: &SkillLimits) -> Result<Vec<Member>, SkillError> {
    let bad = |e: std::io::Error| SkillError::Archive(format!("malformed tar archive: {e}"));
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if out.len() >= limits.max_entries {
            return Err(too_many(limits));
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            out.push(Member::Dir(name));
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let size = entry.header().size().map_err(bad)?;
            check_file_size(&name, size, &mut total, limits)?;
            let mut data = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(limits.max_file_bytes + 1)
                .read_to_end(&mut data)
                .map_err(bad)?;
            out.push(Member::File(name, Bytes::from(data)));
        } else {
            out.push(Member::Special(name));
        }
    }
    Ok(out)
}

/// The raw deflate stream of a gzip member (RFC 1952 header skipped).
fn gzip_body(bytes: &[u8]) -> Result<&[u8], SkillError> {
    let bad = || SkillError::Archive("malformed gzip header".into());
    if bytes.len() < 18 || bytes[2] != 8 {
        return Err(bad());
    }
    let flags = bytes[3];
    let mut pos = 10usize;
    if flags & 4 != 0 {
        let n = u16::from_le_bytes([
            *bytes.get(pos).ok_or_else(bad)?,
            *bytes.get(pos + 1).ok_or_else(bad)?,
        ]) as usize;
        pos += 2 + n;
    }
    for bit in [8u8, 16] {
        if flags & bit != 0 {
            let rest = bytes.get(pos..).ok_or_else(bad)?;
            pos += rest.iter().position(|b| *b == 0).ok_or_else(bad)? + 1;
        }
    }
    if flags & 2 != 0 {
        pos += 2;
    }
    bytes.get(pos..).ok_or_else(bad)
}

fn inflate(data: &[u8], limit: usize, what: &str) -> Result<Vec<u8>, SkillError> {
    miniz_oxide::inflate::decompress_to_vec_with_limit(data, limit).map_err(|e| {
        SkillError::Archive(format!(
            "{what}: cannot inflate ({:?}) or larger than {limit} bytes",
            e.status
        ))
    })
}

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut c = !0u32;
    for b in data {
        c = table[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

fn le16(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The members of a zip archive (stored or deflated; no encryption, no ZIP64), read from its
/// central directory. Entries a Unix host recorded as symlinks or special files are `Special`.
fn zip_members(bytes: &[u8], limits: &SkillLimits) -> Result<Vec<Member>, SkillError> {
    let bad = |m: &str| SkillError::Archive(format!("malformed zip archive: {m}"));
    let min = bytes.len().saturating_sub(22 + 65_535);
    let eocd = (min..=bytes.len().saturating_sub(22))
        .rev()
        .find(|&i| le32(bytes, i) == Some(0x0605_4b50))
        .ok_or_else(|| bad("no end of central directory"))?;
    let count = le16(bytes, eocd + 10).ok_or_else(|| bad("truncated"))?;
    let cd_offset = le32(bytes, eocd + 16).ok_or_else(|| bad("truncated"))?;
    if count == 0xFFFF || cd_offset == u32::MAX {
        return Err(bad("ZIP64 archives are not supported"));
    }
    if count > limits.max_entries {
        return Err(too_many(limits));
    }
    let mut pos = cd_offset as usize;
    let mut out = Vec::with_capacity(count);
    let mut total: u64 = 0;
    for _ in 0..count {
        let h = |o: usize| le16(bytes, pos + o).ok_or_else(|| bad("truncated central directory"));
        let w = |o: usize| le32(bytes, pos + o).ok_or_else(|| bad("truncated central directory"));
        if w(0)? != 0x0201_4b50 {
            return Err(bad("bad central directory entry"));
        }
        let made_by = h(4)?;
        let flags = h(8)?;
        let method = h(10)?;
        let crc = w(16)?;
        let csize = w(20)? as usize;
        let usize_ = w(24)? as u64;
        let (nlen, elen, clen) = (h(28)?, h(30)?, h(32)?);
        let eattr = w(38)?;
        let lho = w(42)? as usize;
        let name_bytes = bytes
            .get(pos + 46..pos + 46 + nlen)
            .ok_or_else(|| bad("truncated name"))?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        pos += 46 + nlen + elen + clen;
        let unix_mode = matches!(made_by >> 8, 3 | 19).then_some(eattr >> 16);
        let file_type = unix_mode.map(|m| m & 0o170_000);
        if matches!(
            file_type,
            Some(0o120_000 | 0o020_000 | 0o060_000 | 0o010_000 | 0o140_000)
        ) {
            out.push(Member::Special(name));
            continue;
        }
        if name.ends_with('/') || file_type == Some(0o040_000) {
            out.push(Member::Dir(name));
            continue;
        }
        if flags & 1 != 0 {
            return Err(bad("encrypted entries are not supported"));
        }
        check_file_size(&name, usize_, &mut total, limits)?;
        if le32(bytes, lho) != Some(0x0403_4b50) {
            return Err(bad("bad local header"));
        }
        let lnlen = le16(bytes, lho + 26).ok_or_else(|| bad("truncated local header"))?;
        let lelen = le16(bytes, lho + 28).ok_or_else(|| bad("truncated local header"))?;
        let start = lho + 30 + lnlen + lelen;
        let raw = bytes
            .get(start..start.saturating_add(csize))
            .ok_or_else(|| bad("truncated member data"))?;
        let data = match method {
            0 => raw.to_vec(),
            8 => inflate(raw, usize_ as usize, &name)?,
            m => {
                return Err(bad(&format!(
                    "compression method {m} of {name:?} is not supported"
                )));
            }
        };
        if data.len() as u64 != usize_ || crc32(&data) != crc {
            return Err(bad(&format!("member {name:?} fails its size or CRC check")));
        }
        out.push(Member::File(name, Bytes::from(data)));
    }
    Ok(out)
}

/// Extract a skill archive in memory (zip, tar or gzip-compressed tar), applying the path rules
/// and `limits`.
pub fn extract_archive(bytes: &[u8], limits: &SkillLimits) -> Result<ExtractedSkill, SkillError> {
    let members = if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        zip_members(bytes, limits)?
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        let slack = (limits.max_entries as u64 + 2) * 1024;
        let limit =
            usize::try_from(limits.max_total_bytes.saturating_add(slack)).unwrap_or(usize::MAX);
        let tar = inflate(gzip_body(bytes)?, limit, "gzip stream")?;
        tar_members(&tar, limits)?
    } else {
        tar_members(bytes, limits)?
    };
    // Every name is screened, extracted or not.
    let mut plain: Vec<(String, Option<Bytes>)> = Vec::new();
    for m in members {
        match m {
            Member::Dir(n) => plain.push((safe_member_name(&n)?, None)),
            Member::File(n, d) => plain.push((safe_member_name(&n)?, Some(d))),
            Member::Special(n) => {
                safe_member_name(&n)?;
            }
        }
    }
    let names: Vec<String> = plain.iter().map(|(n, _)| n.clone()).collect();
    let top = wrapper_dir(&names);
    let mut out = ExtractedSkill::default();
    for (name, data) in plain {
        let rel = strip_top(&name, top.as_deref());
        if rel.is_empty() {
            continue;
        }
        match data {
            None => out.dirs.push(rel),
            Some(data) => out.files.push(SkillFile { path: rel, data }),
        }
    }
    Ok(out)
}

/// Whether `s` can be used as one path component: not empty, not `.` or `..`, no `/`, `\\` or
/// NUL.
fn is_single_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

/// The directory name of a skill: the last component of its (trimmed) name, else its id. Both
/// come from the API, so the result is checked to be one safe path component: a skill whose
/// name and id are both unusable (an empty id, `..`, an id with a `/`) is refused instead of
/// becoming a path such as `skills/..`.
pub fn skill_dir_name(name: &str, skill_id: &str) -> Result<String, SkillError> {
    let base = name.trim().rsplit('/').next().unwrap_or_default();
    if is_single_component(base) {
        Ok(base.to_owned())
    } else if is_single_component(skill_id) {
        Ok(skill_id.to_owned())
    } else {
        Err(SkillError::InvalidName {
            skill_id: skill_id.to_owned(),
        })
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
    let dir = skill_dir_name(&version.name, &skill.skill_id)?;
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

    /// A zip with stored and deflated members; `(name, data, unix mode, deflate)`.
    fn zip_of(entries: &[(&str, &[u8], u32, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut cd = Vec::new();
        for (name, data, mode, deflate) in entries {
            let body = if *deflate {
                miniz_oxide::deflate::compress_to_vec(data, 6)
            } else {
                data.to_vec()
            };
            let method: u16 = if *deflate { 8 } else { 0 };
            let off = out.len() as u32;
            let crc = crc32(data);
            out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
            out.extend_from_slice(&[20, 0, 0, 0]);
            out.extend_from_slice(&method.to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&body);
            cd.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            cd.extend_from_slice(&[20, 3, 20, 0, 0, 0]);
            cd.extend_from_slice(&method.to_le_bytes());
            cd.extend_from_slice(&[0; 4]);
            cd.extend_from_slice(&crc.to_le_bytes());
            cd.extend_from_slice(&(body.len() as u32).to_le_bytes());
            cd.extend_from_slice(&(data.len() as u32).to_le_bytes());
            cd.extend_from_slice(&(name.len() as u16).to_le_bytes());
            cd.extend_from_slice(&[0; 8]);
            cd.extend_from_slice(&(mode << 16).to_le_bytes());
            cd.extend_from_slice(&off.to_le_bytes());
            cd.extend_from_slice(name.as_bytes());
        }
        let cd_off = out.len() as u32;
        out.extend_from_slice(&cd);
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(cd.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_off.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    #[test]
    fn zip_archives_extract_with_the_same_rules() {
        let text = b"# pdf skill\n".repeat(50);
        let z = zip_of(&[
            ("pdf/", b"", 0o040_755, false),
            ("pdf/SKILL.md", &text, 0o100_644, true),
            ("pdf/run.sh", b"echo", 0o100_755, false),
            ("pdf/link", b"/etc/passwd", 0o120_777, false),
        ]);
        let x = extract_archive(&z, &SkillLimits::default()).unwrap();
        let paths: Vec<_> = x.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["SKILL.md", "run.sh"]);
        assert_eq!(&x.files[0].data[..], &text[..]);
        // Traversal in a zip fails, as does a corrupted member.
        let z = zip_of(&[("../evil", b"x", 0o100_644, false)]);
        assert!(extract_archive(&z, &SkillLimits::default()).is_err());
        let mut z = zip_of(&[("a", b"hello", 0o100_644, false)]);
        let at = z.windows(5).position(|w| w == b"hello").unwrap();
        z[at] = b'j';
        assert!(extract_archive(&z, &SkillLimits::default()).is_err());
        let limits = SkillLimits {
            max_file_bytes: 10,
            ..SkillLimits::default()
        };
        let z = zip_of(&[("big", &[0u8; 64], 0o100_644, true)]);
        assert!(extract_archive(&z, &limits).is_err());
    }

    #[test]
    fn gzipped_tars_extract() {
        let t = tar_of(&[("s/SKILL.md", tar::EntryType::Regular, b"gz")]);
        let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        gz.extend(miniz_oxide::deflate::compress_to_vec(&t, 6));
        gz.extend_from_slice(&crc32(&t).to_le_bytes());
        gz.extend_from_slice(&(t.len() as u32).to_le_bytes());
        let x = extract_archive(&gz, &SkillLimits::default()).unwrap();
        assert_eq!(x.files[0].path, "SKILL.md");
        assert_eq!(&x.files[0].data[..], b"gz");
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn skill_names_become_one_safe_component() {
        let dir = |name: &str, id: &str| skill_dir_name(name, id).ok();
        assert_eq!(dir(" pdf ", "sk_1").as_deref(), Some("pdf"));
        assert_eq!(dir("a/b", "sk_1").as_deref(), Some("b"));
        assert_eq!(dir("..", "sk_1").as_deref(), Some("sk_1"));
        assert_eq!(dir("", "sk_1").as_deref(), Some("sk_1"));
        assert_eq!(dir("x/", "sk_1").as_deref(), Some("sk_1"));
    }

    // Fuzz finding (skills_archive): an unusable name fell back to the id unchecked, so an
    // empty id made the skill directory `skills/` itself and `..` made it the workspace, which
    // `install` removes recursively first.
    #[test]
    fn unusable_names_and_ids_are_refused() {
        for (name, id) in [
            ("", ""),
            ("", ".."),
            ("..", "."),
            ("x/", "a/b"),
            ("", "..\\x"),
            ("", "a\0"),
        ] {
            assert!(
                matches!(
                    skill_dir_name(name, id),
                    Err(SkillError::InvalidName { .. })
                ),
                "{name:?} / {id:?}"
            );
        }
    }
}
