//! The file operations of a Docker sandbox, each a request to its file helper (`files`) with
//! the cap its reply must keep: a read's own limit (or [`DockerConfig::max_read_bytes`]
//! (super::DockerConfig::max_read_bytes) when it has none), a stream chunk's size, a batch's
//! budget. Batches are asked again for what the helper left for later until every path is
//! answered.

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};

use super::DockerSandbox;
use super::files::{BATCH_BUDGET, LISTING_BUDGET, MAX_DIR_ENTRIES, MAX_HEADER_BYTES, Reply};
use super::results::{self, Batched};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::file::{DirEntry, FileReader, FileStat, FoundLines, TreeFound, TreeSearch};

/// Size of one chunk of a streamed read.
const READ_CHUNK: u64 = 256 * 1024;

/// The fields of a listing request: entry and byte caps.
fn listing_caps(mut req: Value) -> Value {
    req["cap"] = json!(MAX_DIR_ENTRIES);
    req["dirbudget"] = json!(LISTING_BUDGET);
    req["hcap"] = json!(MAX_HEADER_BYTES);
    req["budget"] = json!(BATCH_BUDGET);
    req
}

impl DockerSandbox {
    /// The absolute sandbox path for `path` (relative ones join the workdir), lexically
    /// normalised. NUL bytes are refused.
    pub(super) fn abs(&self, path: &str) -> Result<String> {
        if path.contains('\0') {
            return Err(SandboxError::at_path(SandboxErrorKind::InvalidInput, path));
        }
        if path.is_empty() {
            return Err(SandboxError::new(
                SandboxErrorKind::InvalidInput,
                "empty path",
            ));
        }
        let joined = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("{}/{path}", self.shared.cfg.workdir.trim_end_matches('/'))
        };
        let mut parts: Vec<&str> = Vec::new();
        for c in joined.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        Ok(format!("/{}", parts.join("/")))
    }

    /// One request; its reply may carry at most `max_data` bytes after its header.
    pub(super) async fn call(
        &self,
        path: &str,
        req: Value,
        payload: Bytes,
        max_data: u64,
    ) -> Result<Reply> {
        self.check_running()?;
        let r = self
            .helper
            .call(
                &self.shared.docker,
                self.id.as_str(),
                path,
                req,
                payload,
                max_data,
            )
            .await;
        if let Err(e) = &r
            && e.kind() == SandboxErrorKind::Stopped
        {
            self.helper.reset().await;
        }
        r
    }

    /// A batch request over `paths` (their resolved forms go out as `ps`; paths that do not
    /// resolve are answered with why), repeated for the paths the helper left for later. `None`
    /// when the sandbox has no helper, or lost it on the way: the caller then goes path by
    /// path.
    async fn batch<T>(
        &self,
        paths: &[String],
        req: Value,
        max_data: u64,
        split: impl Fn(Reply, &[String], Vec<Result<String>>) -> Vec<Batched<T>>,
    ) -> Result<Option<Vec<Result<T>>>> {
        if self.helper.is_shell_only() || paths.is_empty() {
            return Ok(None);
        }
        let mut out: Vec<Option<Result<T>>> = paths.iter().map(|_| None).collect();
        let mut todo: Vec<usize> = (0..paths.len()).collect();
        while !todo.is_empty() {
            let sub: Vec<String> = todo.iter().map(|&i| paths[i].clone()).collect();
            let abs: Vec<Result<String>> = sub.iter().map(|p| self.abs(p)).collect();
            let ps: Vec<&str> = abs.iter().filter_map(|a| a.as_deref().ok()).collect();
            let mut req = req.clone();
            req["ps"] = json!(ps);
            let reply = match self.call(&sub[0], req, Bytes::new(), max_data).await {
                Ok(r) => r,
                Err(_) if self.helper.is_shell_only() => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut later = Vec::new();
            for (&i, answer) in todo.iter().zip(split(reply, &sub, abs)) {
                match answer {
                    Batched::Served(r) => out[i] = Some(r),
                    Batched::Later => later.push(i),
                }
            }
            if later.len() == todo.len() {
                // An honest helper always answers the first path of a batch.
                return Err(SandboxError::new(
                    SandboxErrorKind::Backend,
                    "file helper answered nothing of a batch",
                )
                .with_path(&sub[0]));
            }
            todo = later;
        }
        Ok(Some(
            out.into_iter()
                .map(|r| r.unwrap_or_else(|| unreachable!("every path is answered")))
                .collect(),
        ))
    }

    pub(super) async fn fs_stat(&self, path: &str, follow: bool) -> Result<FileStat> {
        let p = self.abs(path)?;
        let req = if follow {
            json!({"op": "stat", "p": p, "f": true})
        } else {
            json!({"op": "stat", "p": p})
        };
        let r = self.call(path, req, Bytes::new(), 0).await?;
        Ok(results::parse_stat(&r.head))
    }

    pub(super) async fn fs_read_link(&self, path: &str) -> Result<String> {
        let p = self.abs(path)?;
        let r = self
            .call(path, json!({"op": "readlink", "p": p}), Bytes::new(), 0)
            .await?;
        Ok(r.head.t.unwrap_or_default())
    }

    pub(super) async fn fs_read_file(&self, path: &str, max_bytes: Option<u64>) -> Result<Bytes> {
        let p = self.abs(path)?;
        // Without a limit of the caller's, the backend's own: the reply is held whole.
        let max = max_bytes.unwrap_or(self.shared.cfg.max_read_bytes);
        let r = self
            .call(
                path,
                json!({"op": "read", "p": p, "max": max}),
                Bytes::new(),
                max,
            )
            .await?;
        Ok(r.data)
    }

    pub(super) async fn fs_read_files(
        &self,
        paths: &[String],
        max_bytes_each: u64,
    ) -> Result<Vec<Result<Bytes>>> {
        // One helper round trip per budget's worth (the `grep` tool reads a directory's small
        // files this way).
        let req = json!({"op": "readmany", "max": max_bytes_each, "budget": BATCH_BUDGET});
        let cap = BATCH_BUDGET.saturating_add(max_bytes_each);
        let split = |r: Reply, ps: &[String], abs| results::split_many(r.head, &r.data, ps, abs);
        if let Some(out) = self.batch(paths, req, cap, split).await? {
            return Ok(out);
        }
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            out.push(self.fs_read_file(p, Some(max_bytes_each)).await);
        }
        Ok(out)
    }

    pub(super) async fn fs_open_read(&self, path: &str) -> Result<FileReader> {
        let p = self.abs(path)?;
        // The first chunk also checks the file exists and is regular.
        let first = self
            .call(
                path,
                json!({"op": "read", "p": p, "off": 0, "len": READ_CHUNK}),
                Bytes::new(),
                READ_CHUNK,
            )
            .await?;
        let size = first.head.size.unwrap_or(0);
        let docker = self.shared.docker.clone();
        let container = self.id.as_str().to_owned();
        let helper = self.helper.clone();
        let user_path = path.to_owned();
        let first_len = first.data.len() as u64;
        let rest = futures::stream::unfold(
            (first_len, first_len < READ_CHUNK || first_len >= size),
            move |(off, done)| {
                let (docker, container, helper, p, user_path) = (
                    docker.clone(),
                    container.clone(),
                    helper.clone(),
                    p.clone(),
                    user_path.clone(),
                );
                async move {
                    if done {
                        return None;
                    }
                    let r = helper
                        .call(
                            &docker,
                            &container,
                            &user_path,
                            json!({"op": "read", "p": p, "off": off, "len": READ_CHUNK}),
                            Bytes::new(),
                            READ_CHUNK,
                        )
                        .await;
                    match r {
                        Ok(r) => {
                            let n = r.data.len() as u64;
                            Some((Ok(r.data), (off.saturating_add(n), n < READ_CHUNK)))
                        }
                        Err(e) => Some((Err(std::io::Error::from(e)), (off, true))),
                    }
                }
            },
        );
        let all = futures::stream::iter([Ok::<_, std::io::Error>(first.data)]).chain(rest);
        Ok(Box::pin(tokio_util::io::StreamReader::new(all)))
    }

    pub(super) async fn fs_write_file(&self, path: &str, data: Bytes) -> Result<()> {
        let p = self.abs(path)?;
        self.call(path, json!({"op": "write", "p": p}), data, 0)
            .await?;
        Ok(())
    }

    pub(super) async fn fs_create_dir_all(&self, path: &str) -> Result<()> {
        let p = self.abs(path)?;
        self.call(path, json!({"op": "mkdirs", "p": p}), Bytes::new(), 0)
            .await?;
        Ok(())
    }

    /// One directory's listing, sorted by name or in `readdir` order.
    pub(super) async fn fs_read_dir(&self, path: &str, sorted: bool) -> Result<Vec<DirEntry>> {
        let p = self.abs(path)?;
        let req = listing_caps(json!({"op": "list", "p": p}));
        let r = self.call(path, req, Bytes::new(), 0).await?;
        Ok(results::parse_entries(r.head, sorted))
    }

    pub(super) async fn fs_read_dirs(
        &self,
        paths: &[String],
        sorted: bool,
    ) -> Result<Vec<Result<Vec<DirEntry>>>> {
        // The helper and the POSIX-tools fallback (`find`) both list in `readdir` order.
        let req = listing_caps(json!({"op": "listmany"}));
        let split = |r: Reply, ps: &[String], abs| results::split_dirs(r.head, ps, abs, sorted);
        if let Some(out) = self.batch(paths, req, 0, split).await? {
            return Ok(out);
        }
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            out.push(self.fs_read_dir(p, sorted).await);
        }
        Ok(out)
    }

    pub(super) async fn fs_find_lines(
        &self,
        paths: &[String],
        needle: &str,
        max_bytes_each: u64,
        max_line: usize,
    ) -> Result<Vec<Result<FoundLines>>> {
        // Searched inside the helper: only the matching lines cross.
        let req = json!({
            "op": "findmany", "max": max_bytes_each, "needle": needle, "ml": max_line,
            "budget": BATCH_BUDGET,
        });
        let cap = BATCH_BUDGET.saturating_add(max_bytes_each);
        let split = |r: Reply, ps: &[String], abs| results::split_found(r.head, &r.data, ps, abs);
        if let Some(out) = self.batch(paths, req, cap, split).await? {
            return Ok(out);
        }
        Ok(self
            .fs_read_files(paths, max_bytes_each)
            .await?
            .into_iter()
            .map(|r| r.map(|d| FoundLines::scan(&d, needle.as_bytes(), max_line)))
            .collect())
    }

    pub(super) async fn fs_search_tree(
        &self,
        root: &str,
        needle: &str,
        opts: &TreeSearch,
    ) -> Result<TreeFound> {
        if self.helper.is_shell_only() {
            return Err(SandboxError::unsupported(
                "search_tree: no helper process in this sandbox",
            ));
        }
        let p = self.abs(root)?;
        // The helper stops once past `out` bytes (header and data), the last file whole.
        let out = u64::try_from(opts.max_output_bytes).unwrap_or(u64::MAX);
        let cap = out.saturating_add(opts.max_file_bytes);
        let r = self
            .call(
                root,
                json!({
                    "op": "findtree", "p": p, "needle": needle, "max": opts.max_file_bytes,
                    "ml": opts.max_line, "skip": opts.skip_dirs, "files": opts.max_files,
                    "out": opts.max_output_bytes, "secs": opts.timeout.as_secs_f64(),
                }),
                Bytes::new(),
                cap,
            )
            .await?;
        results::parse_tree(r.head, &r.data, root)
    }

    pub(super) async fn fs_remove(&self, path: &str, recursive: bool) -> Result<()> {
        let p = self.abs(path)?;
        self.call(
            path,
            json!({"op": "remove", "p": p, "r": recursive}),
            Bytes::new(),
            0,
        )
        .await?;
        Ok(())
    }

    /// The uid and gid the sandbox's processes run as.
    pub(super) async fn fs_ids(&self) -> Result<(u64, u64)> {
        let r = self
            .call(
                &self.shared.cfg.workdir,
                json!({"op": "id"}),
                Bytes::new(),
                0,
            )
            .await?;
        Ok((r.head.uid, r.head.gid))
    }
}
