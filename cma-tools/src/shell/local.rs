//! [`LocalShellLauncher`]: the `bash` tool's shell as a real `/bin/bash` on *this host*, with
//! nothing between it and the host's files, network and processes. Only for tests and for
//! comparing the tools with the official ones on a host directory; it exists only with the
//! `testing` feature (never a default), so a build that serves agents cannot pick it up by
//! accident. Sandboxed shells go through [`SandboxShellLauncher`](super::SandboxShellLauncher).

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{KILL_WAIT, ShellLauncher, ShellProcess, ShellSpec};

/// Launches a real, unconfined `/bin/bash` on this host with `tokio::process` (tests; feature
/// `testing`). The sandbox workdir is mapped to [`LocalShellLauncher::cwd`] when set.
#[derive(Debug, Clone)]
pub struct LocalShellLauncher {
    /// The shell binary (default `/bin/bash`).
    pub program: PathBuf,
    /// Host directory to start in instead of the spec's `cwd`.
    pub cwd: Option<PathBuf>,
    /// The "natural" environment to scrub; `None` = this process's environment.
    pub base_env: Option<BTreeMap<String, String>>,
}

impl Default for LocalShellLauncher {
    fn default() -> Self {
        Self {
            program: PathBuf::from("/bin/bash"),
            cwd: None,
            base_env: None,
        }
    }
}

impl LocalShellLauncher {
    /// A launcher starting in `cwd` on the host.
    pub fn in_dir(cwd: impl Into<PathBuf>) -> Self {
        Self {
            cwd: Some(cwd.into()),
            ..Self::default()
        }
    }
}

#[async_trait]
impl ShellLauncher for LocalShellLauncher {
    async fn launch(&self, spec: &ShellSpec) -> io::Result<Box<dyn ShellProcess>> {
        let env = match &self.base_env {
            Some(base) => spec.environment(base.clone()),
            // Variables that are not UTF-8 cannot be represented in the spec; they are dropped.
            None => spec.environment(
                std::env::vars_os()
                    .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
            ),
        };
        let (reader, writer) = io::pipe()?;
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(["--noprofile", "--norc"])
            .current_dir(self.cwd.clone().unwrap_or_else(|| PathBuf::from(&spec.cwd)))
            .env_clear()
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(writer.try_clone()?))
            .stderr(Stdio::from(writer))
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        // The parent's copies of the write end must be closed (they are, with `cmd`), or EOF never comes.
        drop(cmd);
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("shell stdin missing"))?;
        let output =
            tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reader))?;
        Ok(Box::new(LocalShell {
            child,
            stdin,
            output,
        }))
    }
}

struct LocalShell {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    output: tokio::net::unix::pipe::Receiver,
}

#[async_trait]
impl ShellProcess for LocalShell {
    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.stdin.write_all(data).await?;
        self.stdin.flush().await
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.output.read(buf).await
    }

    fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(KILL_WAIT, self.child.wait()).await;
    }
}
