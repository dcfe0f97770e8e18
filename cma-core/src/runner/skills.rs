//! Skills: download each of the session agent's skills and write it into the sandbox under
//! `{workdir}/skills/<name>/` (docs/protocol.md §5.3), then remove those directories at teardown.
//!
//! Everything goes through the [`Sandbox`] API, so it works on every backend. What the API says
//! is untrusted: a skill's id, version and name are checked as single path components before any
//! of them reaches a URL or a path ([`skill_dir_name`]), a session installs at most
//! [`MAX_SKILLS_PER_SESSION`] skills and [`MAX_SESSION_SKILL_BYTES`] in all, and archives are
//! extracted under the rules of [`super::skill_archive`] (re-exported here).

use cma_sandbox::{Sandbox, SandboxError, SandboxErrorKind};
use serde_json::Value;

pub use super::skill_archive::{
    ExtractedSkill, MAX_COMPONENT_BYTES, MAX_COMPRESSION_RATIO, MAX_PATH_BYTES, MAX_PATH_DEPTH,
    RATIO_FLOOR, SkillFile, SkillLimits, extract_archive, safe_member_name,
};
use crate::client::{ApiError, SkillsClient};
use crate::protocol::SkillRef;

/// Name of the directory under the workdir that holds the skills.
pub const SKILLS_DIR: &str = "skills";
/// Most skills one session installs (the rest are skipped with a warning).
pub const MAX_SKILLS_PER_SESSION: usize = 64;
/// Most extracted bytes all of a session's skills may hold together (the skills past it are
/// skipped with a warning).
pub const MAX_SESSION_SKILL_BYTES: u64 = 256 * 1024 * 1024;
/// Longest skill id, version or version id accepted from the API.
pub const MAX_SKILL_ID_BYTES: usize = 255;

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
    /// Neither the skill's name nor its id is a single safe path component, or an id or version
    /// from the API is not an identifier ([`is_single_component`]).
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

/// Whether `s` can be used as one path component: not empty, not `.` or `..`, at most
/// [`MAX_SKILL_ID_BYTES`] bytes, no `/`, `\\`, NUL or other control character.
pub fn is_single_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SKILL_ID_BYTES
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == '\\' || c.is_control())
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
    install_counted(client, sandbox, skill, limits)
        .await
        .map(|(dir, _)| dir)
}

/// [`install_skill`], also returning the bytes written.
async fn install_counted(
    client: &SkillsClient,
    sandbox: &dyn Sandbox,
    skill: &SkillRef,
    limits: &SkillLimits,
) -> Result<(String, u64), SkillError> {
    let invalid = || SkillError::InvalidName {
        skill_id: skill.skill_id.clone(),
    };
    let api = |source| SkillError::Api {
        skill_id: skill.skill_id.clone(),
        source,
    };
    let wanted = version_str(skill.version.as_ref());
    if !is_single_component(&skill.skill_id) || !is_single_component(&wanted) {
        return Err(invalid());
    }
    let version = client
        .retrieve_version(&skill.skill_id, &wanted)
        .await
        .map_err(api)?;
    if !is_single_component(&version.id) {
        return Err(invalid());
    }
    let dir = skill_dir_name(&version.name, &skill.skill_id)?;
    // `latest` is resolved by the lookup only: download by the concrete id it returned.
    let archive = client
        .download(&skill.skill_id, &version.id)
        .await
        .map_err(api)?;
    let extracted = extract_archive(&archive, limits)?;
    drop(archive);
    let bytes = extracted.files.iter().map(|f| f.data.len() as u64).sum();
    let dest = join(&join(sandbox.workdir(), SKILLS_DIR), &dir);
    if let Err(source) = install(sandbox, &dest, &extracted).await {
        let _ = sandbox.remove(&dest, true).await;
        return Err(SkillError::Sandbox {
            skill_id: skill.skill_id.clone(),
            source,
        });
    }
    Ok((dest, bytes))
}

/// Install every skill of `skills` (at most [`MAX_SKILLS_PER_SESSION`], together at most
/// [`MAX_SESSION_SKILL_BYTES`]); a failure is logged and does not stop the others (as the SDK).
/// Returns the directories written, for [`remove_skills`].
pub async fn install_skills(
    client: &SkillsClient,
    sandbox: &dyn Sandbox,
    skills: &[SkillRef],
    limits: &SkillLimits,
) -> Vec<String> {
    if skills.len() > MAX_SKILLS_PER_SESSION {
        tracing::warn!(
            skills = skills.len(),
            limit = MAX_SKILLS_PER_SESSION,
            "the session has more skills than are installed; the rest are skipped"
        );
    }
    let mut dirs = Vec::new();
    let mut written: u64 = 0;
    for skill in skills.iter().take(MAX_SKILLS_PER_SESSION) {
        // Each skill may use what is left of the session's budget, within its own limits.
        let left = MAX_SESSION_SKILL_BYTES.saturating_sub(written);
        if left == 0 {
            tracing::warn!(skill_id = %skill.skill_id, limit = MAX_SESSION_SKILL_BYTES, "the session's skills reached their byte budget; skipping the rest");
            break;
        }
        let limits = SkillLimits {
            max_total_bytes: limits.max_total_bytes.min(left),
            ..*limits
        };
        match install_counted(client, sandbox, skill, &limits).await {
            Ok((dir, bytes)) => {
                tracing::info!(skill_id = %skill.skill_id, dir = %dir, "downloaded skill");
                written = written.saturating_add(bytes);
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

    #[test]
    fn skill_names_become_one_safe_component() {
        let dir = |name: &str, id: &str| skill_dir_name(name, id).ok();
        assert_eq!(dir(" pdf ", "sk_1").as_deref(), Some("pdf"));
        assert_eq!(dir("a/b", "sk_1").as_deref(), Some("b"));
        assert_eq!(dir("..", "sk_1").as_deref(), Some("sk_1"));
        assert_eq!(dir("", "sk_1").as_deref(), Some("sk_1"));
        assert_eq!(dir("x/", "sk_1").as_deref(), Some("sk_1"));
        assert_eq!(dir("a\nb", "sk_1").as_deref(), Some("sk_1"));
    }

    #[test]
    fn unusable_names_and_ids_are_refused() {
        let long = "x".repeat(MAX_SKILL_ID_BYTES + 1);
        for (name, id) in [
            ("", ""),
            ("", ".."),
            ("..", "."),
            ("x/", "a/b"),
            ("", "..\\x"),
            ("", "a\0"),
            ("", "a\u{7}b"),
            ("", "a\nb"),
            (long.as_str(), long.as_str()),
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
