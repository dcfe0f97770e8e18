//! Saving: export (or walk) → content-defined chunks → hash → name in an `inflight/` record →
//! check or upload → chunk table and file table → manifest. Memory stays bounded: the work
//! queue, one batch being stored (`BATCH_CHUNKS × max_size` at worst) and the tables (a few
//! dozen bytes per chunk and per file).

use super::*;

struct ParentInfo {
    key: Path,
    chunks: HashMap<ChunkHash, u32>,
}

struct SaveState {
    save_id: uuid::Uuid,
    seq: u32,
    first_record: Option<Instant>,
    /// Chunks confirmed in the store during this save, with their stored sizes.
    known: HashMap<ChunkHash, u32>,
    parent: Option<ParentInfo>,
    uploaded_bytes: u64,
}

/// One chunk of what is being saved: new bytes, or a chunk the parent snapshot has.
enum Piece {
    Data(Bytes),
    Known(ChunkRef),
}

/// What a save produced before its manifest.
struct Saved {
    refs: Vec<ChunkRef>,
    units: Vec<Unit>,
    counts: Counts,
}

/// Hash a chunk; all-zero chunks (sparse files, zeroed images: cut at the maximum size, so a
/// handful of sizes) are hashed once per size.
fn hash_chunk(data: &[u8]) -> ChunkHash {
    static ZERO_HASHES: std::sync::Mutex<Vec<(usize, ChunkHash)>> =
        std::sync::Mutex::new(Vec::new());
    if !data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()]) {
        return ChunkHash::of(data);
    }
    let mut memo = ZERO_HASHES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, h)) = memo.iter().find(|(n, _)| *n == data.len()) {
        return *h;
    }
    let h = ChunkHash::of(data);
    if memo.len() < 16 {
        memo.push((data.len(), h));
    }
    h
}

fn joined(e: tokio::task::JoinError) -> Error {
    Error::io("worker thread", std::io::Error::other(e.to_string()))
}

fn stored_len(n: u64, hash: &ChunkHash) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::corrupt(format!("chunk {}", hash.to_hex()), "too large"))
}

/// Read the export, count files, cut chunks, send them on. Returns the counts.
async fn produce(
    mut stream: ByteStream,
    params: ChunkerParams,
    tx: mpsc::Sender<Result<Work>>,
) -> Counts {
    let mut chunker = Chunker::new(params);
    let mut counter = TarCounter::default();
    let mut out = Vec::new();
    let counts = |c: &TarCounter| Counts {
        files: c.files,
        bytes: c.bytes,
    };
    loop {
        match stream.next().await {
            Some(Ok(piece)) => {
                counter.feed(&piece);
                chunker.push(&piece, &mut out);
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(Error::sandbox("export_workspace", e))).await;
                return counts(&counter);
            }
            None => break,
        }
        if out.len() >= BATCH_CHUNKS
            && tx
                .send(Ok(Work::Chunks(std::mem::take(&mut out))))
                .await
                .is_err()
        {
            return counts(&counter);
        }
    }
    chunker.finish(&mut out);
    let _ = tx.send(Ok(Work::Chunks(out))).await;
    counts(&counter)
}

impl SnapshotStore {
    /// Snapshot `sandbox`'s workspace for `session_id`. With `parent` (normally the session's
    /// previous snapshot, see [`latest`](Self::latest)) chunks it already stored are reused
    /// without checking each one, and, when the sandbox's workspace is a directory on this
    /// host ([`Sandbox::local_workspace`]), files whose metadata did not change since the
    /// parent are not even read. Only chunks the store lacks are uploaded; the manifest is
    /// written last. Returns the new snapshot's manifest (its id in `.id`).
    pub async fn save(
        &self,
        session_id: &str,
        sandbox: &dyn Sandbox,
        parent: Option<&SnapshotId>,
    ) -> Result<SnapshotManifest> {
        check_session_id(session_id)?;
        if let Some(dir) = sandbox.local_workspace() {
            match self.save_dir(session_id, dir, parent).await {
                Err(Error::InvalidInput { message }) if message == walk::TOO_DEEP => {
                    tracing::debug!(session_id, "workspace too deep to walk; saving its export");
                }
                r => return r,
            }
        }
        let stream = sandbox
            .export_workspace()
            .await
            .map_err(|e| Error::sandbox("export_workspace", e))?;
        self.save_archive(session_id, stream, parent).await
    }

    /// [`save`](Self::save) with the session's newest readable snapshot as parent (none if it
    /// has none or the newest manifest does not verify).
    pub async fn save_session(
        &self,
        session_id: &str,
        sandbox: &dyn Sandbox,
    ) -> Result<SnapshotManifest> {
        let parent = match self.latest(session_id).await {
            Ok(m) => m.map(|m| m.id),
            Err(e) if e.kind() == ErrorKind::Corrupt || e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        self.save(session_id, sandbox, parent.as_ref()).await
    }

    /// [`save`](Self::save) from a workspace archive (a tar stream as
    /// [`Sandbox::export_workspace`] makes) instead of a sandbox.
    pub async fn save_archive(
        &self,
        session_id: &str,
        stream: ByteStream,
        parent: Option<&SnapshotId>,
    ) -> Result<SnapshotManifest> {
        check_session_id(session_id)?;
        let created_at = Utc::now();
        let parent_m = self.load_parent(parent).await?;
        let (tx, rx) = mpsc::channel(WORK_QUEUE);
        let producer = tokio::spawn(produce(stream, self.config.chunker, tx));
        self.run_save(
            session_id,
            created_at,
            parent,
            parent_m.as_ref(),
            rx,
            async move { producer.await.map_err(joined) },
        )
        .await
    }

    /// [`save`](Self::save) from a workspace directory on this host (an open directory handle,
    /// as [`Sandbox::local_workspace`] returns). The tree is read without following symlinks
    /// out of it.
    pub async fn save_dir(
        &self,
        session_id: &str,
        dir: std::fs::File,
        parent: Option<&SnapshotId>,
    ) -> Result<SnapshotManifest> {
        check_session_id(session_id)?;
        let created_at = Utc::now();
        let started = std::time::SystemTime::now();
        let parent_m = self.load_parent(parent).await?;
        let units = match &parent_m {
            Some(m) if !m.files.is_empty() => match self.load_units(m).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(error = %e, "parent file table unreadable; reading every file");
                    None
                }
            },
            _ => None,
        };
        let (tx, rx) = mpsc::channel(WORK_QUEUE);
        let params = self.config.chunker;
        let walker = tokio::task::spawn_blocking(move || {
            let root = cap_std::fs::Dir::from_std_file(dir);
            walk::walk(root, params, units.as_ref(), started, &tx)
        });
        self.run_save(
            session_id,
            created_at,
            parent,
            parent_m.as_ref(),
            rx,
            async move { walker.await.map_err(joined)? },
        )
        .await
    }

    async fn load_parent(&self, parent: Option<&SnapshotId>) -> Result<Option<SnapshotManifest>> {
        match parent {
            Some(id) => {
                let key = self.manifest_key_of(id).await?;
                Ok(Some(self.read_manifest_at(&key, id).await?))
            }
            None => Ok(None),
        }
    }

    /// The parent's units paired with its chunks; `None` if its file table does not parse.
    async fn load_units(&self, m: &SnapshotManifest) -> Result<Option<ParentUnits>> {
        let bytes = self.load_table(&m.id, &m.files).await?;
        Ok(index::decode_units(&bytes).and_then(|u| ParentUnits::new(u, &m.chunks)))
    }

    /// Drive a save: store what the producer sends, then the tables and the manifest.
    async fn run_save(
        &self,
        session_id: &str,
        created_at: DateTime<Utc>,
        parent: Option<&SnapshotId>,
        parent_m: Option<&SnapshotManifest>,
        mut rx: mpsc::Receiver<Result<Work>>,
        producer: impl Future<Output = Result<Counts>>,
    ) -> Result<SnapshotManifest> {
        let mut st = SaveState {
            save_id: uuid::Uuid::new_v4(),
            seq: 0,
            first_record: None,
            known: HashMap::new(),
            parent: None,
            uploaded_bytes: 0,
        };
        if let (Some(id), Some(m)) = (parent, parent_m)
            && self.config.trust_parent_chunks
        {
            let key = self.manifest_key_of(id).await?;
            let chunks = m
                .chunks
                .iter()
                .chain(&m.table)
                .chain(&m.files)
                .map(|c| (c.hash, c.stored_size))
                .collect();
            st.parent = Some(ParentInfo { key, chunks });
        }
        let stored = async {
            let mut refs = Vec::new();
            let mut units = Vec::new();
            let mut pending: Vec<Piece> = Vec::new();
            let mut pending_data = 0usize;
            let mut unit_start = 0usize;
            while let Some(work) = rx.recv().await {
                match work? {
                    Work::Chunks(c) => {
                        pending_data += c.len();
                        pending.extend(c.into_iter().map(Piece::Data));
                    }
                    Work::Reused(r) => pending.extend(r.into_iter().map(Piece::Known)),
                    Work::UnitEnd { racy, entries } => {
                        let total = refs.len() + pending.len();
                        units.push(Unit {
                            chunk_count: u32::try_from(total - unit_start).unwrap_or(u32::MAX),
                            racy,
                            entries,
                        });
                        unit_start = total;
                    }
                }
                if pending_data >= BATCH_CHUNKS || pending.len() >= MAX_BATCH_PIECES {
                    refs.extend(
                        self.store_batch(&mut st, std::mem::take(&mut pending))
                            .await?,
                    );
                    pending_data = 0;
                }
            }
            refs.extend(self.store_batch(&mut st, pending).await?);
            Ok::<_, Error>((refs, units))
        }
        .await;
        drop(rx);
        let counts = producer.await;
        let result = match (stored, counts) {
            (Ok((refs, units)), Ok(counts)) => {
                let saved = Saved {
                    refs,
                    units,
                    counts,
                };
                self.commit(&mut st, session_id, created_at, parent, saved)
                    .await
            }
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        };
        self.drop_records(&st).await;
        result
    }

    /// Store a table as chunks; returns their refs.
    async fn store_table(&self, st: &mut SaveState, bytes: &[u8]) -> Result<Vec<ChunkRef>> {
        let mut chunker = Chunker::new(index::TABLE_CHUNKER);
        let mut pieces = Vec::new();
        chunker.push(bytes, &mut pieces);
        chunker.finish(&mut pieces);
        let mut refs = Vec::with_capacity(pieces.len());
        for batch in pieces.chunks(MAX_BATCH_PIECES) {
            let batch = batch.iter().cloned().map(Piece::Data).collect();
            refs.extend(self.store_batch(st, batch).await?);
        }
        Ok(refs)
    }

    async fn commit(
        &self,
        st: &mut SaveState,
        session_id: &str,
        created_at: DateTime<Utc>,
        parent: Option<&SnapshotId>,
        saved: Saved,
    ) -> Result<SnapshotManifest> {
        let table = self
            .store_table(st, &index::encode_chunks(&saved.refs))
            .await?;
        let files = if saved.units.is_empty() {
            Vec::new()
        } else {
            self.store_table(st, &index::encode_units(&saved.units))
                .await?
        };
        let limit = self.config.gc.inflight_ttl / 2;
        if let Some(first) = st.first_record
            && first.elapsed() > limit
        {
            return Err(Error::Timeout {
                operation: "save (chunks named too long ago for a safe commit)".into(),
                after: limit,
            });
        }
        let mut m = SnapshotManifest {
            id: SnapshotId::from_hex(&"0".repeat(64)).ok_or_else(|| Error::corrupt("id", "?"))?,
            format_version: FORMAT_VERSION,
            session_id: session_id.to_owned(),
            created_at,
            parent: parent.cloned(),
            file_count: saved.counts.files,
            content_bytes: saved.counts.bytes,
            archive_bytes: saved.refs.iter().map(|c| u64::from(c.size)).sum(),
            stored_bytes: saved.refs.iter().map(|c| u64::from(c.stored_size)).sum(),
            uploaded_bytes: st.uploaded_bytes,
            chunker: self.config.chunker,
            chunks: saved.refs,
            table,
            files,
        };
        let stored = Bytes::from(m.encode()?);
        let key = manifest_key(session_id, created_at, &m.id);
        for (k, body) in [
            (id_key(&m.id), Bytes::from(key.to_string())),
            (key.clone(), stored),
        ] {
            match self.put(&k, body, PutMode::Create).await {
                Err(Error::Store {
                    source: object_store::Error::AlreadyExists { .. },
                    ..
                }) => {} // same id, same content: an identical snapshot is already there
                r => r?,
            }
        }
        Ok(m)
    }

    async fn drop_records(&self, st: &SaveState) {
        if st.seq == 0 {
            return;
        }
        for seq in 0..st.seq {
            let key = Path::from(format!("inflight/{}/{seq:08}", st.save_id));
            if let Err(e) = self.delete_key(&key).await {
                tracing::warn!(error = %e, "could not remove a save record; gc removes it later");
            }
        }
    }

    /// Wait until no garbage collection that may predate our records is running.
    async fn wait_for_gc(&self) -> Result<()> {
        let start = Instant::now();
        let stale_after = self.config.gc.gc_deadline * 2;
        let mut delay = Duration::from_millis(20);
        loop {
            let markers = self.list_all("gc").await?;
            let now = Utc::now();
            let live = markers.iter().any(|m| {
                now.signed_duration_since(m.last_modified)
                    .to_std()
                    .map_or(true, |age| age < stale_after)
            });
            if !live {
                return Ok(());
            }
            if start.elapsed() >= self.config.gc.max_wait {
                return Err(Error::Busy {
                    message: format!(
                        "a garbage collection is still running after {:?}",
                        self.config.gc.max_wait
                    ),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// Store one batch: hash new data, name every chunk in an `inflight/` record, then check or
    /// upload what the store may lack. Returns the refs in order.
    async fn store_batch(&self, st: &mut SaveState, batch: Vec<Piece>) -> Result<Vec<ChunkRef>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let hashed: Vec<(ChunkHash, u32, Option<Bytes>)> = futures::stream::iter(batch)
            .map(|piece| async move {
                match piece {
                    Piece::Known(c) => Ok::<_, Error>((c.hash, c.size, None)),
                    Piece::Data(data) => {
                        let d = data.clone();
                        let h = tokio::task::spawn_blocking(move || hash_chunk(&d))
                            .await
                            .map_err(joined)?;
                        Ok((h, stored_len(data.len() as u64, &h)?, Some(data)))
                    }
                }
            })
            .buffered(self.config.upload_concurrency.max(2))
            .try_collect()
            .await?;
        let mut seen = HashSet::new();
        let todo: Vec<(ChunkHash, Option<Bytes>)> = hashed
            .iter()
            .filter(|(h, _, _)| !st.known.contains_key(h) && seen.insert(*h))
            .map(|(h, _, d)| (*h, d.clone()))
            .collect();
        if !todo.is_empty() {
            // Name the chunks before looking at the store (see the module docs).
            if st.first_record.is_none() {
                st.first_record = Some(Instant::now());
            }
            let body: String = todo.iter().map(|(h, _)| h.to_hex() + "\n").collect();
            let key = Path::from(format!("inflight/{}/{:08}", st.save_id, st.seq));
            st.seq += 1;
            self.put(&key, Bytes::from(body), PutMode::Overwrite)
                .await?;
            self.wait_for_gc().await?;

            let mut trusted: HashMap<ChunkHash, u32> = HashMap::new();
            if let Some(p) = &st.parent
                && todo.iter().any(|(h, _)| p.chunks.contains_key(h))
            {
                if self.head(&p.key).await?.is_some() {
                    for (h, _) in &todo {
                        if let Some(s) = p.chunks.get(h) {
                            trusted.insert(*h, *s);
                        }
                    }
                } else {
                    st.parent = None;
                }
            }
            let level = self.config.zstd_level;
            let results: Vec<(ChunkHash, u32, u64)> =
                futures::stream::iter(todo.into_iter().filter(|(h, _)| !trusted.contains_key(h)))
                    .map(|(h, data)| async move {
                        let key = chunk_key(&h);
                        if let Some(meta) = self.head(&key).await? {
                            return Ok((h, stored_len(meta.size, &h)?, 0));
                        }
                        let Some(data) = data else {
                            return Err(Error::corrupt(
                                format!("chunk {}", h.to_hex()),
                                "the parent snapshot's chunk is gone from the store",
                            ));
                        };
                        let stored =
                            tokio::task::spawn_blocking(move || chunk::encode(&data, level))
                                .await
                                .map_err(joined)??;
                        let n = stored.len() as u64;
                        self.put(&key, Bytes::from(stored), PutMode::Overwrite)
                            .await?;
                        Ok::<_, Error>((h, stored_len(n, &h)?, n))
                    })
                    .buffer_unordered(self.config.upload_concurrency)
                    .try_collect()
                    .await?;
            st.known.extend(trusted);
            for (h, s, up) in results {
                st.known.insert(h, s);
                st.uploaded_bytes += up;
            }
        }
        hashed
            .into_iter()
            .map(|(h, size, _)| {
                Ok(ChunkRef {
                    hash: h,
                    size,
                    stored_size: st.known.get(&h).copied().unwrap_or(0),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_chunks_hash_like_any_other() {
        for n in [0usize, 1, 4096, 65536, 65537, 300_000, 4096] {
            let zeros = vec![0u8; n];
            assert_eq!(hash_chunk(&zeros), ChunkHash::of(&zeros), "{n}");
            let mut one = zeros.clone();
            if let Some(last) = one.last_mut() {
                *last = 1;
                assert_eq!(hash_chunk(&one), ChunkHash::of(&one), "{n}");
            }
        }
    }
}
