//! Saving: export → content-defined chunks → hash → name in an `inflight/` record → check or
//! upload → manifest. Memory stays bounded: one batch being cut plus one being stored
//! (`2 × BATCH_CHUNKS × max_size` at worst).

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
    refs: Vec<ChunkRef>,
}

fn joined(e: tokio::task::JoinError) -> Error {
    Error::io("worker thread", std::io::Error::other(e.to_string()))
}

fn stored_len(n: u64, hash: &ChunkHash) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::corrupt(format!("chunk {}", hash.to_hex()), "too large"))
}

/// Read the export, count files, cut chunks, send them on in batches. Returns the counts.
async fn produce(
    mut stream: ByteStream,
    params: ChunkerParams,
    tx: mpsc::Sender<Result<Vec<Bytes>>>,
) -> TarCounter {
    let mut chunker = Chunker::new(params);
    let mut counter = TarCounter::default();
    let mut out = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(piece)) => {
                counter.feed(&piece);
                chunker.push(&piece, &mut out);
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(Error::sandbox("export_workspace", e))).await;
                return counter;
            }
            None => break,
        }
        while out.len() >= BATCH_CHUNKS {
            let batch: Vec<Bytes> = out.drain(..BATCH_CHUNKS).collect();
            if tx.send(Ok(batch)).await.is_err() {
                return counter;
            }
        }
    }
    chunker.finish(&mut out);
    while !out.is_empty() {
        let n = out.len().min(BATCH_CHUNKS);
        let batch: Vec<Bytes> = out.drain(..n).collect();
        if tx.send(Ok(batch)).await.is_err() {
            break;
        }
    }
    counter
}

impl SnapshotStore {
    /// Snapshot `sandbox`'s workspace for `session_id`. With `parent` (normally the session's
    /// previous snapshot, see [`latest`](Self::latest)) chunks it already stored are reused
    /// without checking each one. Only chunks the store lacks are uploaded; the manifest is
    /// written last. Returns the new snapshot's manifest (its id in `.id`).
    pub async fn save(
        &self,
        session_id: &str,
        sandbox: &dyn Sandbox,
        parent: Option<&SnapshotId>,
    ) -> Result<SnapshotManifest> {
        check_session_id(session_id)?;
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
        let parent_info = match parent {
            Some(id) => {
                let key = self.manifest_key_of(id).await?;
                let m = self.read_manifest_at(&key, id).await?;
                self.config.trust_parent_chunks.then(|| ParentInfo {
                    key,
                    chunks: m.chunks.iter().map(|c| (c.hash, c.stored_size)).collect(),
                })
            }
            None => None,
        };
        let (tx, mut rx) = mpsc::channel(1);
        let producer = tokio::spawn(produce(stream, self.config.chunker, tx));
        let mut st = SaveState {
            save_id: uuid::Uuid::new_v4(),
            seq: 0,
            first_record: None,
            known: HashMap::new(),
            parent: parent_info,
            uploaded_bytes: 0,
            refs: Vec::new(),
        };
        let stored = async {
            while let Some(batch) = rx.recv().await {
                self.store_batch(&mut st, batch?).await?;
            }
            Ok(())
        }
        .await;
        drop(rx);
        let counter = producer.await.map_err(joined);
        let result = match (stored, counter) {
            (Ok(()), Ok(counter)) => {
                self.commit(&st, session_id, created_at, parent, counter)
                    .await
            }
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        };
        self.drop_records(&st).await;
        result
    }

    async fn commit(
        &self,
        st: &SaveState,
        session_id: &str,
        created_at: DateTime<Utc>,
        parent: Option<&SnapshotId>,
        counter: TarCounter,
    ) -> Result<SnapshotManifest> {
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
            file_count: counter.files,
            content_bytes: counter.bytes,
            archive_bytes: st.refs.iter().map(|c| u64::from(c.size)).sum(),
            stored_bytes: st.refs.iter().map(|c| u64::from(c.stored_size)).sum(),
            uploaded_bytes: st.uploaded_bytes,
            chunker: self.config.chunker,
            chunks: st.refs.clone(),
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

    async fn store_batch(&self, st: &mut SaveState, batch: Vec<Bytes>) -> Result<()> {
        let hashed: Vec<(ChunkHash, Bytes)> = futures::stream::iter(batch)
            .map(|data| async move {
                let d = data.clone();
                let h = tokio::task::spawn_blocking(move || ChunkHash::of(&d))
                    .await
                    .map_err(joined)?;
                Ok::<_, Error>((h, data))
            })
            .buffered(self.config.upload_concurrency.max(2))
            .try_collect()
            .await?;
        let mut seen = HashSet::new();
        let todo: Vec<(ChunkHash, Bytes)> = hashed
            .iter()
            .filter(|(h, _)| !st.known.contains_key(h) && seen.insert(*h))
            .cloned()
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
        for (h, data) in hashed {
            let stored_size = st.known.get(&h).copied().unwrap_or(0);
            st.refs.push(ChunkRef {
                hash: h,
                size: stored_len(data.len() as u64, &h)?,
                stored_size,
            });
        }
        Ok(())
    }
}
