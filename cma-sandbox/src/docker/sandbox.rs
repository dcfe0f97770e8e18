//! The [`Sandbox`] side of one container: file operations, processes, workspace export and
//! import, network address, status and stop.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{DownloadFromContainerOptions, StopContainerOptions};
use bytes::Bytes;
use futures::StreamExt;

use crate::backend::Sandbox;
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::exec::{ExecOutput, ExecRequest, ExecStream, ExecuteRequest, InteractiveProcess};
use crate::file::{
    ByteStream, DirEntry, FileReader, FileStat, FoundLines, TreeFound, TreeSearch, WorkspaceEntry,
};
use crate::spec::{Capabilities, SandboxId, SandboxStatus};

use super::{DockerBackend, DockerSandbox, archive, egress, entries, map_docker_err, process};

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &SandboxId {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.caps(self.network)
    }

    fn workdir(&self) -> &str {
        &self.shared.cfg.workdir
    }

    async fn stat(&self, path: &str) -> Result<FileStat> {
        self.fs_stat(path, true).await
    }

    async fn lstat(&self, path: &str) -> Result<FileStat> {
        self.fs_stat(path, false).await
    }

    async fn read_link(&self, path: &str) -> Result<String> {
        self.fs_read_link(path).await
    }

    async fn read_file(&self, path: &str, max_bytes: Option<u64>) -> Result<Bytes> {
        self.fs_read_file(path, max_bytes).await
    }

    async fn read_files(
        &self,
        paths: &[String],
        max_bytes_each: u64,
    ) -> Result<Vec<Result<Bytes>>> {
        self.fs_read_files(paths, max_bytes_each).await
    }

    async fn open_read(&self, path: &str) -> Result<FileReader> {
        self.fs_open_read(path).await
    }

    async fn write_file(&self, path: &str, data: Bytes) -> Result<()> {
        self.fs_write_file(path, data).await
    }

    async fn create_dir_all(&self, path: &str) -> Result<()> {
        self.fs_create_dir_all(path).await
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.fs_read_dir(path, true).await
    }

    async fn find_lines(
        &self,
        paths: &[String],
        needle: &str,
        max_bytes_each: u64,
        max_line: usize,
    ) -> Result<Vec<Result<FoundLines>>> {
        self.fs_find_lines(paths, needle, max_bytes_each, max_line)
            .await
    }

    async fn search_tree(&self, root: &str, needle: &str, opts: &TreeSearch) -> Result<TreeFound> {
        self.fs_search_tree(root, needle, opts).await
    }

    async fn read_dirs(&self, paths: &[String]) -> Result<Vec<Result<Vec<DirEntry>>>> {
        self.fs_read_dirs(paths, true).await
    }

    async fn read_dirs_unsorted(&self, paths: &[String]) -> Result<Vec<Result<Vec<DirEntry>>>> {
        self.fs_read_dirs(paths, false).await
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        self.fs_remove(path, recursive).await
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutput> {
        self.check_running()?;
        let spare = if process::spare_can_run(&req) {
            self.spare.lock().unwrap_or_else(|p| p.into_inner()).take()
        } else {
            None
        };
        let req = match spare {
            Some(spare) => {
                match process::run_on_spare(
                    &self.shared.docker,
                    self.id.as_str(),
                    spare,
                    req,
                    &self.shared.cfg.workdir,
                )
                .await
                {
                    Ok(done) => return done,
                    // The spare is gone: a normal exec.
                    Err(req) => req,
                }
            }
            None => req,
        };
        process::run(
            &self.shared.docker,
            self.id.as_str(),
            req,
            &self.shared.cfg.workdir,
        )
        .await
    }

    async fn exec_stream(&self, req: ExecRequest) -> Result<ExecStream> {
        self.check_running()?;
        process::stream(
            &self.shared.docker,
            self.id.as_str(),
            req,
            &self.shared.cfg.workdir,
        )
        .await
    }

    async fn open_interactive(&self, req: ExecRequest) -> Result<InteractiveProcess> {
        self.check_running()?;
        process::interactive(
            &self.shared.docker,
            self.id.as_str(),
            req,
            &self.shared.cfg.workdir,
        )
        .await
    }

    async fn execute(&self, _req: ExecuteRequest) -> Result<ExecOutput> {
        Err(SandboxError::unsupported(
            "execute: the docker backend runs no in-process JavaScript engine; use bash (e.g. `node`) instead",
        ))
    }

    async fn export_workspace(&self) -> Result<ByteStream> {
        self.check_running()?;
        let dir = format!("{}/.", self.shared.cfg.workdir.trim_end_matches('/'));
        let s = self.shared.docker.download_from_container(
            self.id.as_str(),
            Some(DownloadFromContainerOptions { path: dir }),
        );
        Ok(Box::pin(
            s.map(|r| r.map_err(|e| map_docker_err(e, "export"))),
        ))
    }

    async fn workspace_entries(&self) -> Result<Vec<WorkspaceEntry>> {
        if self.helper.is_shell_only() {
            return Err(SandboxError::unsupported(
                "workspace_entries: no helper process in this sandbox",
            ));
        }
        let wd = self.shared.cfg.workdir.clone();
        let r = self
            .call(
                &wd,
                serde_json::json!({"op": "tree", "p": wd, "depth": entries::MAX_DEPTH, "secs": 50}),
                Bytes::new(),
                entries::MAX_LISTING_BYTES,
            )
            .await?;
        let count = r.head.count.unwrap_or(0);
        entries::parse(&r.data, count)
    }

    async fn import_workspace(&self, tar: ByteStream) -> Result<()> {
        self.check_running()?;
        let max = self.shared.cfg.max_import_bytes;
        let owner = self.fs_ids().await?;
        let workdir = self.shared.cfg.workdir.clone();
        let handle = tokio::runtime::Handle::current();
        // Checked and rebuilt as it streams (on a blocking thread): only the rebuilt archive is
        // held, and nothing is uploaded unless every entry passed.
        let checked = tokio::task::spawn_blocking(move || {
            let mut reader = crate::tarin::StreamReader::new(tar, handle);
            let checked = archive::check_import(&mut reader, &workdir, owner, max);
            match (checked, reader.failure.take()) {
                (Err(_), Some(stream_err)) => Err(stream_err),
                (r, _) => r,
            }
        })
        .await
        .map_err(|e| {
            SandboxError::new(SandboxErrorKind::Backend, "import task failed").with_source(e)
        })??;
        let backend = DockerBackend {
            shared: self.shared.clone(),
        };
        backend
            .put_archive(self.id.as_str(), &self.shared.cfg.workdir, checked.tar)
            .await?;
        // Links the daemon refuses to unpack, made as the sandbox user (a few per call).
        for batch in checked.later_links.chunks(256) {
            let mut argv = vec![
                "sh".to_owned(),
                "-c".to_owned(),
                archive::LINK_SCRIPT.to_owned(),
                "sh".to_owned(),
            ];
            for (name, target) in batch {
                argv.push(target.clone());
                argv.push(name.clone());
            }
            let out = self.exec(ExecRequest::argv(argv)).await?;
            if out.exit_code != Some(0) {
                return Err(SandboxError::new(
                    SandboxErrorKind::Backend,
                    format!(
                        "making symlinks that leave the workspace failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn network_address(&self) -> Result<Option<IpAddr>> {
        self.check_running()?;
        egress::container_address(
            &self.shared.docker,
            self.id.as_str(),
            &self.shared.cfg.network,
        )
        .await
    }

    async fn status(&self) -> Result<SandboxStatus> {
        let info = self
            .shared
            .docker
            .inspect_container(self.id.as_str(), None)
            .await
            .map_err(|e| map_docker_err(e, "inspect"))?;
        let state = info.state.unwrap_or_default();
        Ok(match state.status {
            Some(ContainerStateStatusEnum::RUNNING) => SandboxStatus::Running,
            Some(ContainerStateStatusEnum::CREATED)
            | Some(ContainerStateStatusEnum::RESTARTING) => SandboxStatus::Starting,
            Some(ContainerStateStatusEnum::DEAD) => SandboxStatus::Failed {
                reason: state.error.unwrap_or_else(|| "container is dead".into()),
            },
            Some(ContainerStateStatusEnum::EXITED) if state.oom_killed == Some(true) => {
                SandboxStatus::Failed {
                    reason: "out of memory".into(),
                }
            }
            _ => SandboxStatus::Stopped,
        })
    }

    async fn stop(&self) -> Result<()> {
        self.stopped.store(true, Ordering::Release);
        // Its stdin closes: it exits (if the container still runs).
        drop(self.spare.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.helper.reset().await;
        match self
            .shared
            .docker
            .stop_container(
                self.id.as_str(),
                Some(StopContainerOptions {
                    t: Some(2),
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(map_docker_err(e, "stop")),
        }
    }
}
