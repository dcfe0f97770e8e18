//! Who a sandbox runs as, how host directories are mounted into it, and the modes of the
//! backend's own files on the host.
//!
//! * **User.** [`DockerConfig::user`](super::DockerConfig::user) when set; else the image's
//!   user unless it is root (or unset), else [`FALLBACK_USER`] (`nobody`), who is given the
//!   workdir. A container never runs as root unless the configuration names root.
//! * **Mounts.** Read-only mounts become anonymous `local` volumes binding the host directory
//!   with `ro,nosuid,nodev` (the engine applies such flags only on its read-only remount).
//!   Writable ones stay bind mounts: Docker has no way to make a writable bind `nosuid` (its
//!   bind options carry none, and volume options on a bind are dropped by the kernel unless
//!   read-only), so a sandbox that runs as root may not have one: a setuid-root file it
//!   created would appear on the host. A non-root sandbox cannot create a root-owned file, and
//!   with every capability dropped no device node either.
//! * **Host files.** The state directory and the claim directories are created `0700`, claim
//!   files `0600`, with explicit `chmod`s so the process umask does not matter; a state
//!   directory that is a symlink or belongs to another user is refused.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};

use std::path::{Path, PathBuf};

use bollard::models::{Mount, MountType, MountVolumeOptions, MountVolumeOptionsDriverConfig};

use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::spec::SandboxSpec;

/// The user a sandbox runs as when the image would run it as root: `nobody`.
pub const FALLBACK_USER: &str = "65534:65534";
/// [`FALLBACK_USER`]'s uid and gid.
pub(crate) const FALLBACK_IDS: (u64, u64) = (65534, 65534);

/// Whether a Docker user specification (`name`, `uid`, `name:group`, `uid:gid`, empty) means
/// root.
pub(crate) fn is_root(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or("").trim();
    name.is_empty() || name == "root" || name.parse::<u64>() == Ok(0)
}

/// The user a sandbox runs as and whether it is the fallback (which needs the workdir).
pub(crate) fn effective_user(configured: Option<&str>, image_user: &str) -> (String, bool) {
    match configured {
        Some(u) => (u.to_owned(), false),
        None if is_root(image_user) => (FALLBACK_USER.to_owned(), true),
        None => (image_user.to_owned(), false),
    }
}

fn invalid(why: String) -> SandboxError {
    SandboxError::new(SandboxErrorKind::InvalidInput, why)
}

/// The bind specifications and mounts for `spec`'s host directories (plus the `resolv.conf`),
/// for a sandbox running as `user`.
pub(crate) fn host_mounts(
    spec: &SandboxSpec,
    resolv_conf: &Path,
    user: &str,
) -> Result<(Vec<String>, Vec<Mount>)> {
    let mut binds = vec![format!("{}:/etc/resolv.conf:ro", resolv_conf.display())];
    let mut mounts = Vec::new();
    for m in &spec.mounts {
        if !m.sandbox_path.starts_with('/') || m.sandbox_path.contains(':') {
            return Err(invalid(format!(
                "docker: bad mount path {:?}",
                m.sandbox_path
            )));
        }
        let host = m.host_path.canonicalize().map_err(|e| {
            SandboxError::new(
                SandboxErrorKind::NotFound,
                format!("docker: mount source for {} is missing", m.sandbox_path),
            )
            .with_source(e)
        })?;
        // A `:` would split a bind specification, a `,` the volume's options.
        let shown = host.to_string_lossy();
        if shown.contains(':') || shown.contains(',') {
            return Err(invalid(format!(
                "docker: the host directory of mount {} has a ':' or ',' in its path",
                m.sandbox_path
            )));
        }
        if m.read_only {
            let options = HashMap::from([
                ("type".to_owned(), "none".to_owned()),
                ("o".to_owned(), "bind,ro,nosuid,nodev".to_owned()),
                ("device".to_owned(), shown.into_owned()),
            ]);
            mounts.push(Mount {
                target: Some(m.sandbox_path.clone()),
                typ: Some(MountType::VOLUME),
                // Read-only by the volume's own mount (`ro` above); the engine refuses the flag
                // on an anonymous volume.
                volume_options: Some(MountVolumeOptions {
                    // Nothing from the image is copied into the host directory.
                    no_copy: Some(true),
                    driver_config: Some(MountVolumeOptionsDriverConfig {
                        name: Some("local".into()),
                        options: Some(options),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        } else {
            if is_root(user) {
                return Err(SandboxError::unsupported(format!(
                    "docker: mount {} is writable but the sandbox would run as root ({user:?}): \
                     a writable bind mount cannot be made nosuid, so a setuid-root file created \
                     in it would appear on the host; run the sandbox as a non-root user \
                     (DockerConfig::user) or mount it read-only",
                    m.sandbox_path
                )));
            }
            binds.push(format!("{}:{}:rw", host.display(), m.sandbox_path));
        }
    }
    Ok((binds, mounts))
}

/// Create `dir` (and missing parents) and make it `0700`, refusing a symlink or a directory
/// another user owns.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other("not a directory (a symlink?)"));
    }
    if u64::from(meta.uid()) != u64::from(rustix::process::geteuid().as_raw()) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the directory belongs to another user",
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Write `data` to `path` with exactly `mode` (whatever the umask), replacing it through a
/// temporary file that is synced and renamed over it; the directory is synced too.
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    // A fresh name: concurrent writers of the same file never meet.
    let tmp: PathBuf = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    let written = f
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(data))
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_recognised_in_every_spelling_and_never_chosen_by_default() {
        for root in ["", "root", "0", "0:0", "root:root", " 0 ", "000"] {
            assert!(is_root(root), "{root:?}");
        }
        for user in ["sandbox", "1000", "1000:1000", "65534:65534", "rooty"] {
            assert!(!is_root(user), "{user:?}");
        }
        assert_eq!(effective_user(None, ""), (FALLBACK_USER.to_owned(), true));
        assert_eq!(
            effective_user(None, "root"),
            (FALLBACK_USER.to_owned(), true)
        );
        assert_eq!(
            effective_user(None, "sandbox"),
            ("sandbox".to_owned(), false)
        );
        // An explicit choice is the operator's.
        assert_eq!(
            effective_user(Some("0"), "sandbox"),
            ("0".to_owned(), false)
        );
    }

    #[test]
    fn host_files_get_their_modes_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/claims");
        std::fs::create_dir_all(tmp.path().join("state")).unwrap();
        std::fs::set_permissions(
            tmp.path().join("state"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        private_dir(&tmp.path().join("state")).unwrap();
        private_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&tmp.path().join("state")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("c.json");
        write_file(&f, b"{}", 0o600).unwrap();
        assert_eq!(mode(&f), 0o600);
        // A symlink in place of the directory is refused.
        std::os::unix::fs::symlink(&dir, tmp.path().join("link")).unwrap();
        assert!(private_dir(&tmp.path().join("link")).is_err());
    }
}
