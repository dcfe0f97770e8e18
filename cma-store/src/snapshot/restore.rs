//! Restoring and verifying: every chunk is checked and the archive spooled and inspected before
//! the sandbox is touched.

use super::*;

use std::os::unix::fs::FileExt;

use super::fetch::Fetcher;

/// Archive bytes a restore fetches and writes as one piece (several run at once).
pub(super) const SEGMENT_BYTES: u64 = 8 << 20;
/// Segments in flight at once.
pub(super) const SEGMENTS_IN_FLIGHT: usize = 4;

/// Write `data` at `offset`, leaving a hole where it is all zeros (the file is extended to its
/// full length at the end).
pub(super) fn write_or_hole(
    f: &std::fs::File,
    mut offset: u64,
    data: &[u8],
) -> std::io::Result<()> {
    for piece in data.chunks(ZEROS.len()) {
        if !is_zeros(piece) {
            f.write_all_at(piece, offset)?;
        }
        offset += piece.len() as u64;
    }
    Ok(())
}

/// Cut a chunk list into consecutive runs of about [`SEGMENT_BYTES`] of content; returns each
/// run's chunk range and where its content starts.
pub(super) fn segments(chunks: &[ChunkRef]) -> Vec<(std::ops::Range<usize>, u64)> {
    let mut out = Vec::new();
    let (mut start, mut offset, mut len) = (0usize, 0u64, 0u64);
    for (i, c) in chunks.iter().enumerate() {
        len += u64::from(c.size);
        if len >= SEGMENT_BYTES {
            out.push((start..i + 1, offset));
            offset += len;
            (start, len) = (i + 1, 0);
        }
    }
    if start < chunks.len() {
        out.push((start..chunks.len(), offset));
    }
    out
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
        if let Some(dir) = sandbox.local_workspace()
            && !m.files.is_empty()
        {
            self.check_size(&m)?;
            let fetcher = Fetcher::new(self).await?;
            let plan = self.plan(&fetcher, &m).await?;
            let ws = cap_std::fs::Dir::from_std_file(dir);
            unpack::restore_staged(ws, fetcher, &m, plan).await?;
            return Ok(m);
        }
        let spool = self.fetch_verified(&m).await?;
        // Marked while the import writes (it may stop half-way; see the `marker` module).
        let marker = marker::marker_path(sandbox);
        sandbox
            .write_file(&marker, Bytes::from(m.id.as_str().to_owned()))
            .await
            .map_err(|e| Error::sandbox("marking the restore", e))?;
        sandbox
            .import_workspace(file_stream(spool))
            .await
            .map_err(|e| Error::sandbox("import_workspace", e))?;
        sandbox
            .remove(&marker, false)
            .await
            .map_err(|e| Error::sandbox("unmarking the restore", e))?;
        Ok(m)
    }

    /// Read a whole snapshot and check everything a restore checks, without a sandbox; also
    /// read every pack holding its chunks whole and check all of it (its listing and every
    /// chunk in it), and every index object as stored now (not as this process loaded it).
    pub async fn verify(&self, id: &SnapshotId) -> Result<SnapshotManifest> {
        let m = self.manifest(id).await?;
        self.fetch_verified(&m).await?;
        for meta in self.list_all("index").await? {
            let Some(name) = meta.location.filename().map(str::to_owned) else {
                continue;
            };
            let data = self
                .get_bytes(&meta.location, chunk_index::MAX_INDEX_OBJECT)
                .await?;
            tokio::task::spawn_blocking(move || chunk_index::decode(&name, &data).map(|_| ()))
                .await
                .map_err(joined)??;
        }
        let fetcher = Fetcher::fresh(self).await?;
        let all: Vec<ChunkRef> = m
            .chunks
            .iter()
            .chain(&m.table)
            .chain(&m.files)
            .copied()
            .collect();
        let (packs, _) = fetcher.packs_of(&all);
        futures::stream::iter(packs)
            .map(|id| async move {
                let data = match self
                    .get_bytes(&pack::pack_key(&id), pack::MAX_PACK_BYTES)
                    .await
                {
                    Ok(d) => d,
                    Err(Error::Store { source, .. }) if is_not_found(&source) => {
                        return Err(Error::corrupt(format!("pack {}", id.to_hex()), "gone"));
                    }
                    Err(e) => return Err(e),
                };
                tokio::task::spawn_blocking(move || pack::verify(&id, &data))
                    .await
                    .map_err(joined)?
            })
            .buffer_unordered(self.config.download_concurrency)
            .try_collect::<()>()
            .await?;
        Ok(m)
    }

    pub(super) fn check_size(&self, m: &SnapshotManifest) -> Result<()> {
        if m.archive_bytes > self.config.max_archive_bytes {
            return Err(Error::TooLarge {
                what: format!("snapshot {}", m.id.as_str()),
                size: m.archive_bytes,
                limit: self.config.max_archive_bytes,
            });
        }
        Ok(())
    }

    /// Read a snapshot's file table and check it (see `unpack::plan`).
    pub(super) async fn plan(
        &self,
        fetcher: &Fetcher,
        m: &SnapshotManifest,
    ) -> Result<unpack::Plan> {
        let table = self.load_table(fetcher, &m.id, &m.files).await?;
        let units = tables::decode_units(&table).ok_or_else(|| {
            Error::corrupt(
                format!("file table of snapshot {}", m.id.as_str()),
                "malformed",
            )
        })?;
        let m2 = m.clone();
        tokio::task::spawn_blocking(move || unpack::plan(&m2, units))
            .await
            .map_err(joined)?
    }

    /// Download, verify and spool the archive; returns the spool file at offset 0.
    async fn fetch_verified(&self, m: &SnapshotManifest) -> Result<std::fs::File> {
        self.check_size(m)?;
        let dir = self
            .config
            .spool_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let fetcher = Fetcher::new(self).await?;
        // The file table is not needed to rebuild the archive, but it is part of the snapshot:
        // a damaged one is reported like any other damage.
        self.load_table(&fetcher, &m.id, &m.files).await?;
        let file = Arc::new(
            tempfile::tempfile_in(&dir)
                .map_err(|e| Error::io(format!("create a spool file in {}", dir.display()), e))?,
        );
        futures::stream::iter(segments(&m.chunks))
            .map(|(range, offset)| {
                let (fetcher, file) = (&fetcher, file.clone());
                async move {
                    let data = fetcher.fetch(&m.id, &m.chunks[range]).await?;
                    tokio::task::spawn_blocking(move || {
                        let mut at = offset;
                        for d in data {
                            write_or_hole(&file, at, &d)?;
                            at += d.len() as u64;
                        }
                        Ok::<_, std::io::Error>(())
                    })
                    .await
                    .map_err(joined)?
                    .map_err(|e| Error::io("write the spool file", e))
                }
            })
            .buffer_unordered(SEGMENTS_IN_FLIGHT)
            .try_collect::<()>()
            .await?;
        let mut file = Arc::try_unwrap(file)
            .map_err(|_| Error::io("spool file", std::io::Error::other("still shared")))?;
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
