//! Restoring and verifying: every chunk is checked and the archive spooled and inspected before
//! the sandbox is touched.

use super::*;

fn joined(e: tokio::task::JoinError) -> Error {
    Error::io("worker thread", std::io::Error::other(e.to_string()))
}

/// Write `data` at the file's position, leaving a hole where it is all zeros.
fn write_or_hole(f: &mut std::fs::File, data: &[u8]) -> std::io::Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let n = rest.len().min(ZEROS.len());
        let (piece, tail) = rest.split_at(n);
        if piece == &ZEROS[..n] {
            f.seek(SeekFrom::Current(n as i64))?;
        } else {
            f.write_all(piece)?;
        }
        rest = tail;
    }
    Ok(())
}

/// Stream a file as the sandbox's byte stream.
fn file_stream(file: std::fs::File) -> ByteStream {
    let file = tokio::fs::File::from_std(file);
    Box::pin(futures::stream::try_unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::with_capacity(IMPORT_PIECE_BYTES);
        let n = (&mut file)
            .take(IMPORT_PIECE_BYTES as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| {
                SandboxError::new(SandboxErrorKind::Io, "reading the restore spool file")
                    .with_source(e)
            })?;
        Ok((n > 0).then(|| (Bytes::from(buf), file)))
    }))
}

impl SnapshotStore {
    /// Restore a snapshot into `sandbox` through its import API. Every chunk and the manifest
    /// are verified and every archive entry is checked first: a snapshot that fails any check
    /// ([`ErrorKind::Corrupt`], [`ErrorKind::UnsafeEntry`], [`ErrorKind::TooLarge`]) or a store
    /// failure leaves the sandbox untouched. Only an error of the import itself
    /// ([`ErrorKind::Sandbox`], e.g. a full disk) can leave it partly written. Entries are
    /// unpacked over the current workspace (restore into a fresh sandbox to get exactly the
    /// snapshot). Returns the manifest restored.
    pub async fn restore(
        &self,
        id: &SnapshotId,
        sandbox: &dyn Sandbox,
    ) -> Result<SnapshotManifest> {
        let m = self.manifest(id).await?;
        let spool = self.fetch_verified(&m).await?;
        sandbox
            .import_workspace(file_stream(spool))
            .await
            .map_err(|e| Error::sandbox("import_workspace", e))?;
        Ok(m)
    }

    /// Read a whole snapshot and check everything a restore checks, without a sandbox.
    pub async fn verify(&self, id: &SnapshotId) -> Result<SnapshotManifest> {
        let m = self.manifest(id).await?;
        self.fetch_verified(&m).await?;
        Ok(m)
    }

    pub(super) async fn fetch_chunk(&self, snapshot: &SnapshotId, c: ChunkRef) -> Result<Vec<u8>> {
        let stored = match self.get_bytes(&chunk_key(&c.hash)).await {
            Ok(b) => b,
            Err(Error::Store { source, .. }) if is_not_found(&source) => {
                return Err(Error::MissingChunk {
                    snapshot: snapshot.as_str().to_owned(),
                    chunk: c.hash.to_hex(),
                });
            }
            Err(e) => return Err(e),
        };
        tokio::task::spawn_blocking(move || chunk::decode(&stored, &c.hash, c.size))
            .await
            .map_err(joined)?
    }

    /// Download, verify and spool the archive; returns the spool file at offset 0.
    async fn fetch_verified(&self, m: &SnapshotManifest) -> Result<std::fs::File> {
        if m.archive_bytes > self.config.max_archive_bytes {
            return Err(Error::TooLarge {
                what: format!("snapshot {}", m.id.as_str()),
                size: m.archive_bytes,
                limit: self.config.max_archive_bytes,
            });
        }
        let dir = self
            .config
            .spool_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        // The file table is not needed to rebuild the archive, but it is part of the snapshot:
        // a damaged one is reported like any other damage.
        self.load_table(&m.id, &m.files).await?;
        let mut file = tempfile::tempfile_in(&dir)
            .map_err(|e| Error::io(format!("create a spool file in {}", dir.display()), e))?;
        let mut chunks = futures::stream::iter(m.chunks.iter().copied())
            .map(|c| self.fetch_chunk(&m.id, c))
            .buffered(self.config.download_concurrency);
        while let Some(data) = chunks.next().await {
            let data = data?;
            file =
                tokio::task::spawn_blocking(move || write_or_hole(&mut file, &data).map(|()| file))
                    .await
                    .map_err(joined)?
                    .map_err(|e| Error::io("write the spool file", e))?;
        }
        let (archive_bytes, files, bytes) = (m.archive_bytes, m.file_count, m.content_bytes);
        tokio::task::spawn_blocking(move || {
            let io = |e| Error::io("read the spool file", e);
            file.set_len(archive_bytes).map_err(io)?;
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            let summary = safety::check_archive(std::io::BufReader::new(&mut file))?;
            if (summary.files, summary.bytes) != (files, bytes) {
                return Err(Error::corrupt(
                    "archive",
                    format!(
                        "{} files / {} bytes, the manifest says {files} / {bytes}",
                        summary.files, summary.bytes
                    ),
                ));
            }
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            Ok(file)
        })
        .await
        .map_err(joined)?
    }
}

impl SnapshotStore {
    /// Restore the session's newest snapshot that passes verification into `sandbox`: a
    /// snapshot that is corrupt, unsafe or gone is skipped for the one before it (the sandbox is
    /// untouched by a failed attempt). `Ok(None)` if the session has no snapshot; the newest
    /// snapshot's error if none restores; store, sandbox and timeout errors are returned at once.
    pub async fn restore_latest(
        &self,
        session_id: &str,
        sandbox: &dyn Sandbox,
    ) -> Result<Option<SnapshotManifest>> {
        let mut first_err = None;
        for info in self.list(session_id).await?.into_iter().rev() {
            match self.restore(&info.id, sandbox).await {
                Ok(m) => return Ok(Some(m)),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Corrupt
                            | ErrorKind::UnsafeEntry
                            | ErrorKind::NotFound
                            | ErrorKind::TooLarge
                    ) =>
                {
                    tracing::warn!(snapshot = info.id.as_str(), error = %e, "skipping a snapshot that does not restore");
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}
