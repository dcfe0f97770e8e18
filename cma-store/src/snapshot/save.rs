//! Saving: export (or walk) → content-defined chunks → the store pipeline (see `pipeline`) →
//! chunk table and file table → index object → manifest.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;

use futures::stream::FuturesUnordered;

use super::buffers::BufferPool;
use super::hashing::{Hashed, Hint, Job, Payload, hash_job};
use super::pipeline::{MAX_JOBS, SaveState};
use super::tables::EntryKey;
use super::*;

/// What a save produced before its manifest.
struct Saved {
    refs: Vec<ChunkRef>,
    counts: Counts,
    /// The file table, being hashed (see [`SnapshotStore::hash_table`]); it gives back the
    /// units.
    files: TableJob<Vec<Unit>>,
    /// What tables are hashed against (see [`SnapshotStore::hash_table`]).
    table_hint: Arc<Hint>,
}

/// A table being hashed on the blocking pool: what it was made of, and its chunks.
type TableJob<T> = tokio::task::JoinHandle<(T, Result<Vec<Hashed>>)>;

/// One step of the pipeline, in archive order.
enum Item {
    /// Hashed chunks, and the archive bytes their job held.
    Pieces(Vec<Hashed>, u64),
    UnitEnd {
        racy: bool,
        entries: Vec<EntryKey>,
    },
}

type Pending = Pin<Box<dyn Future<Output = Result<Item>> + Send>>;
/// A job running, with its place in the archive.
type Sequenced = Pin<Box<dyn Future<Output = (u64, Result<Item>)> + Send>>;

/// What [`SnapshotStore::job`] started.
enum Started {
    /// Nothing to hash: the item itself.
    Ready(Item),
    /// A job hashing on the blocking pool.
    Running(Pending),
}

/// Most archive bytes held by hashing jobs running or done and waiting to be taken.
const MAX_HELD_BYTES: u64 = 32 << 20;
/// Most items done and waiting for an earlier one to be taken (each unit's end is one, and each
/// unit reused from the parent): enough that the walk goes on past a big file being hashed.
/// Their memory is the file table's, which the save keeps whole anyway.
const MAX_WAITING: usize = 8192;
/// Most jobs started and not yet taken (running, or done and waiting): each holds pooled
/// buffers of at least 256 KiB, whatever its size, so their number is bounded too, not only
/// their archive bytes.
const MAX_JOBS_OUT: usize = 4 * MAX_JOBS;
/// A chunk table up to this size, compressed (where it must be) at a zstd level up to
/// [`INLINE_TABLE_LEVEL`], is cut and hashed on the save's own task: well under a millisecond
/// (an incremental save compresses one or two of its chunks, a first save all, a few hundred
/// microseconds at level 1). A blocking-pool thread can take longer than that to start at the
/// end of a save, with both cores busy with what the save left running. Larger tables, or
/// slower levels, go to the blocking pool.
const INLINE_TABLE_BYTES: usize = 256 << 10;
/// See [`INLINE_TABLE_BYTES`].
const INLINE_TABLE_LEVEL: i32 = 3;

/// Read the export, count files, cut chunks, send them on. Returns the counts.
async fn produce(
    mut stream: ByteStream,
    params: ChunkerParams,
    tx: mpsc::Sender<Result<Vec<Work>>>,
) -> Counts {
    let mut chunker = Chunker::new(params);
    let mut counter = TarScan::default();
    let mut out = Vec::new();
    let counts = |c: &TarScan| Counts {
        files: c.files,
        bytes: c.bytes,
        skipped: 0,
    };
    loop {
        match stream.next().await {
            Some(Ok(piece)) => {
                counter.feed(&piece);
                if let Some((name, why)) = counter.refused.take() {
                    let _ = tx.send(Err(Error::unsafe_entry(name, why))).await;
                    return counts(&counter);
                }
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
                .send(Ok(vec![Work::Chunks(std::mem::take(&mut out))]))
                .await
                .is_err()
        {
            return counts(&counter);
        }
    }
    counter.finish();
    if let Some((name, why)) = counter.refused.take() {
        let _ = tx.send(Err(Error::unsafe_entry(name, why))).await;
        return counts(&counter);
    }
    chunker.finish(&mut out);
    let _ = tx.send(Ok(vec![Work::Chunks(out)])).await;
    counts(&counter)
}

impl SnapshotStore {
    /// Snapshot `sandbox`'s workspace for `session_id`. With `parent` (normally the session's
    /// previous snapshot, see [`latest`](Self::latest)) chunks it already stored are reused
    /// without checking each one, and, when the sandbox's workspace is a directory on this
    /// host ([`Sandbox::local_workspace`]), files whose metadata did not change since the
    /// parent are not even read. Only chunks the store lacks are uploaded; the manifest is
    /// written last. Returns the new snapshot's manifest (its id in `.id`). A workspace whose
    /// restore did not finish ([`RESTORE_MARKER`]) is refused with [`Error::InvalidInput`].
    pub async fn save(
        &self,
        session_id: &str,
        sandbox: &dyn Sandbox,
        parent: Option<&SnapshotId>,
    ) -> Result<SnapshotManifest> {
        check_session_id(session_id)?;
        // (A sandbox still restoring in the background makes this wait for the restore.)
        marker::refuse_partial(sandbox).await?;
        if let Some(dir) = sandbox.local_workspace() {
            match self.save_dir(session_id, dir, parent).await {
                Err(Error::InvalidInput { message }) if message == walk::TOO_DEEP => {
                    tracing::debug!(session_id, "workspace too deep to walk; saving its export");
                }
                r => return r,
            }
        }
        match sandbox.workspace_entries().await {
            Ok(entries) => match self.save_listed(session_id, sandbox, entries, parent).await {
                Err(Error::InvalidInput { message }) if message == remote::UNREADABLE_NAME => {
                    tracing::debug!(
                        session_id,
                        "a name cannot be read by itself; saving the export"
                    );
                }
                r => return r,
            },
            Err(e)
                if matches!(
                    e.kind(),
                    SandboxErrorKind::Unsupported | SandboxErrorKind::TooLarge
                ) => {}
            Err(e) => return Err(Error::sandbox("workspace_entries", e)),
        }
        let stream = sandbox
            .export_workspace()
            .await
            .map_err(|e| Error::sandbox("export_workspace", e))?;
        self.save_archive(session_id, stream, parent).await
    }

    /// [`save`](Self::save) from a listing of the workspace
    /// ([`Sandbox::workspace_entries`]): files unchanged since the parent are not read.
    async fn save_listed(
        &self,
        session_id: &str,
        sandbox: &dyn Sandbox,
        entries: Vec<cma_sandbox::WorkspaceEntry>,
        parent: Option<&SnapshotId>,
    ) -> Result<SnapshotManifest> {
        let created_at = Utc::now();
        let started = std::time::SystemTime::now();
        let (parent_m, units) = self.parent_with_units(parent).await?;
        let (tx, rx) = mpsc::channel(WORK_QUEUE);
        let producer = Box::pin(remote::walk_listed(
            sandbox,
            entries,
            self.config.chunker,
            units.as_ref(),
            started,
            tx,
        ));
        self.run_save(
            session_id,
            created_at,
            parent,
            parent_m.as_ref().map(|(m, k)| (m, k)),
            rx,
            producer,
        )
        .await
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
            parent_m.as_ref().map(|(m, k)| (m, k)),
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
        let (parent_m, units) = self.parent_with_units(parent).await?;
        let (tx, rx) = mpsc::channel(WORK_QUEUE);
        let (params, max_bytes) = (self.config.chunker, self.config.max_archive_bytes);
        let free_checks = super::hashing::names_are_checks(self.coding());
        let walker = tokio::task::spawn_blocking(move || {
            let mut units = units;
            let root = cap_std::fs::Dir::from_std_file(dir);
            let counts = walk::walk(
                root,
                params,
                units.as_mut(),
                started,
                &tx,
                max_bytes,
                free_checks,
            );
            // The queue closes as soon as the walk is done (the save's end waits for that);
            // the parent's units go back with the counts.
            drop(tx);
            (counts, units)
        });
        // The parent's units, back from the walk: freed (thousands of allocations) once the
        // save has returned, not while its end still runs.
        let spent = std::sync::Mutex::new(None);
        let producer = async {
            let (counts, units) = walker.await.map_err(joined)?;
            *spent.lock().unwrap_or_else(|e| e.into_inner()) = units;
            counts
        };
        let saved = self
            .run_save(
                session_id,
                created_at,
                parent,
                parent_m.as_ref().map(|(m, k)| (m, k)),
                rx,
                producer,
            )
            .await;
        if let Some(units) = spent.into_inner().unwrap_or_else(|e| e.into_inner()) {
            drop(tokio::task::spawn_blocking(move || drop(units)));
        }
        saved
    }

    /// The parent's manifest and where it is; `None` for a parent this store's saves cannot
    /// build on (see [`builds_on`](Self::builds_on)), which is only checked to exist.
    async fn load_parent(
        &self,
        parent: Option<&SnapshotId>,
    ) -> Result<Option<(SnapshotManifest, Path)>> {
        match parent {
            Some(id) => {
                let key = self.manifest_key_of(id).await?;
                let m = self.read_manifest_at(&key, id).await?;
                Ok(self.builds_on(&m).then_some((m, key)))
            }
            None => Ok(None),
        }
    }

    /// The parent's manifest, where it is, and its units for reuse: kept in memory if it is
    /// the snapshot this store saved last (see the `recent` module), else read. A parent this
    /// store's saves cannot build on (see [`builds_on`](Self::builds_on)) is only checked to
    /// exist: the save goes on as without one, and records it.
    async fn parent_with_units(
        &self,
        parent: Option<&SnapshotId>,
    ) -> Result<(Option<(SnapshotManifest, Path)>, Option<ParentUnits>)> {
        if let Some(r) = parent.and_then(|id| self.recent.take(id))
            && self.builds_on(&r.manifest)
        {
            return Ok((Some((r.manifest, r.key)), r.units));
        }
        let parent_m = self.load_parent(parent).await?;
        let units = self.parent_units(parent_m.as_ref().map(|(m, _)| m)).await;
        Ok((parent_m, units))
    }

    /// Whether this store's saves may use `parent`'s chunks: not those of a manifest format
    /// newer than the one they write, which its readers could not read (a store set to
    /// [`ChunkNames::Sha256`] does not build on a parent of format 4).
    fn builds_on(&self, parent: &SnapshotManifest) -> bool {
        parent.format_version <= self.config.chunk_names.format_version()
    }

    /// The parent's units for reuse; `None` (read everything) without a usable file table.
    async fn parent_units(&self, parent: Option<&SnapshotManifest>) -> Option<ParentUnits> {
        match parent {
            Some(m) if !m.files.is_empty() => match self.load_units(m).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(error = %e, "parent file table unreadable; reading every file");
                    None
                }
            },
            _ => None,
        }
    }

    /// The parent's units paired with its chunks; `None` if its file table does not parse.
    async fn load_units(&self, m: &SnapshotManifest) -> Result<Option<ParentUnits>> {
        let fetcher = fetch::Fetcher::new(self).await?;
        let bytes = self.load_table(&fetcher, &m.id, &m.files).await?;
        let same_cuts = m.chunker == self.config.chunker;
        let complete = m.skipped_entries == 0;
        Ok(tables::decode_units(&bytes)
            .and_then(|u| ParentUnits::new(u, &m.chunks, same_cuts, complete)))
    }

    /// Drive a save: hash what the producer sends (several jobs at once), store it in order,
    /// then the tables, the index object and the manifest.
    async fn run_save(
        &self,
        session_id: &str,
        created_at: DateTime<Utc>,
        parent: Option<&SnapshotId>,
        parent_at: Option<(&SnapshotManifest, &Path)>,
        rx: mpsc::Receiver<Result<Vec<Work>>>,
        producer: impl Future<Output = Result<Counts>>,
    ) -> Result<SnapshotManifest> {
        let parent_m = parent_at.map(|(m, _)| m);
        let pool = BufferPool::shared();
        let _running = pool.save_started();
        // With a parent, the index is read (and the parent checked to be still there: it may
        // come from memory, see `recent`) when its chunks are named, beside the walk; the
        // jobs meanwhile take the index this store read last as their hint.
        let index = match parent_at {
            Some(_) => self.cached_index(),
            None => self.load_index().await?,
        };
        let mut st = self
            .save_state(parent_at, index.clone(), pool.clone())
            .await?;
        let hint = Arc::new(Hint {
            parent: parent_m
                .map(|m| m.chunks.iter().map(|c| c.hash).collect::<HashSet<_>>())
                .unwrap_or_default(),
            index,
        });
        let naming = parent_at.map(|(_, key)| self.name_parent(&mut st, key.clone()));
        // Owns the receiver: when storing fails, the producer's next send fails and it stops.
        // (Boxed, as is the producer: both are large state machines.)
        let stored = Box::pin(async {
            // While the walk runs (and work is taken and hashed): the parent's chunks named
            // and confirmed at once. Nothing is stored until then.
            let mut naming = std::pin::pin!(async {
                match naming {
                    Some(n) => n.await.map(Some),
                    None => Ok(None),
                }
            });
            let mut named = parent_at.is_none();
            let mut rx = rx;
            let mut refs = Vec::with_capacity(parent_m.map_or(0, |m| m.chunks.len()));
            let mut units = Vec::new();
            // The file table, encoded unit by unit as each ends (not all at once at the end).
            let mut files_table = Vec::new();
            let mut unit_start = 0usize;
            // The checks of the unit's chunks so far, while every chunk has one.
            let mut unit_checks = Some(Vec::new());
            // Jobs hashing now, each with its place in the archive; what is done waits in
            // `done` until everything before it is taken (results are taken in archive order,
            // but a slow job does not keep the ones after it from starting).
            let mut running: FuturesUnordered<Sequenced> = FuturesUnordered::new();
            // (With whether it is a job's result.)
            let mut done: BTreeMap<u64, (Item, bool)> = BTreeMap::new();
            let mut jobs_out = 0usize;
            let (mut next_seq, mut take_seq) = (0u64, 0u64);
            let mut open = true;
            // Archive bytes held by jobs running or waiting to be taken (bounded, as is the
            // number running and waiting).
            let mut held = 0u64;
            loop {
                let room = running.len() < MAX_JOBS
                    && jobs_out < MAX_JOBS_OUT
                    && done.len() < MAX_WAITING
                    && held < MAX_HELD_BYTES;
                tokio::select! {
                    n = &mut naming, if !named => {
                        if let Some(n) = n? {
                            self.parent_named(&mut st, n, parent)?;
                        }
                        named = true;
                    },
                    work = rx.recv(), if open && room => match work {
                        Some(batch) => {
                            for work in batch? {
                                held += work.bytes();
                                match self.job(work, &hint, &pool) {
                                    Started::Ready(item) => {
                                        done.insert(next_seq, (item, false));
                                    }
                                    Started::Running(job) => {
                                        jobs_out += 1;
                                        let seq = next_seq;
                                        running.push(Box::pin(async move { (seq, job.await) }));
                                    }
                                }
                                next_seq += 1;
                            }
                        }
                        None => open = false,
                    },
                    finished = running.next(), if !running.is_empty() => {
                        if let Some((seq, item)) = finished {
                            done.insert(seq, (item?, true));
                        }
                    },
                    else => break,
                }
                if !named {
                    continue;
                }
                while let Some((item, was_job)) = done.remove(&take_seq) {
                    take_seq += 1;
                    jobs_out -= usize::from(was_job);
                    match item {
                        Item::Pieces(p, n) => {
                            held = held.saturating_sub(n);
                            for piece in &p {
                                match (&mut unit_checks, piece.check) {
                                    (Some(all), Some(c)) => all.push(c),
                                    (all, _) => *all = None,
                                }
                            }
                            self.accept(&mut st, p, &mut refs).await?
                        }
                        Item::UnitEnd { racy, entries } => {
                            let total = refs.len() + SnapshotStore::pending(&st);
                            let chunk_count = total - unit_start;
                            let checks = unit_checks
                                .replace(Vec::new())
                                .filter(|c| c.len() == chunk_count)
                                .unwrap_or_default();
                            let unit = Unit {
                                chunk_count: u32::try_from(chunk_count).unwrap_or(u32::MAX),
                                racy,
                                entries,
                                checks,
                            };
                            tables::encode_unit(&unit, &mut files_table);
                            units.push(unit);
                            unit_start = total;
                        }
                    }
                }
            }
            if !done.is_empty() {
                return Err(Error::corrupt("save", "a piece of work was never taken"));
            }
            // The file table is known now: it is encoded and hashed while the last batch is
            // named (the chunk table waits for that).
            let table_hint = Arc::new(Hint {
                parent: parent_m
                    .map(|m| m.table.iter().chain(&m.files).map(|c| c.hash).collect())
                    .unwrap_or_default(),
                index: st.index.clone(),
            });
            let files = self.hash_table(
                units,
                move |_| Job::Whole(files_table.into()),
                table_hint.clone(),
            );
            self.flush(&mut st, &mut refs).await?;
            Ok::<_, Error>((refs, files, table_hint))
        });
        // The producer runs alongside (it may borrow the sandbox, so it is not a task).
        let (stored, counts) = tokio::join!(stored, producer);
        let result = match (stored, counts) {
            (Ok((refs, files, table_hint)), Ok(counts)) => {
                let saved = Saved {
                    refs,
                    counts,
                    files,
                    table_hint,
                };
                self.commit(&mut st, session_id, created_at, parent, saved)
                    .await
            }
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        };
        // (Dropping `st` removes the save's records, see `SaveState`'s `Drop`.)
        result
    }

    /// Start hashing one piece of work (on the blocking pool, at once), or, for work with
    /// nothing to hash, its item now.
    fn job(&self, work: Work, hint: &Arc<Hint>, pool: &BufferPool) -> Started {
        let held = work.bytes();
        let job = match work {
            Work::Chunks(c) => Job::Cut(c),
            Work::Whole(b) => Job::Whole(b),
            Work::Files { root, pack, checks } => Job::Files(root, pack, checks),
            Work::Reused(r, checks) => {
                let pieces = r
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| Hashed {
                        hash: c.hash,
                        size: c.size,
                        payload: Payload::Parent,
                        check: checks.get(i).copied(),
                    })
                    .collect();
                return Started::Ready(Item::Pieces(pieces, 0));
            }
            Work::UnitEnd { racy, entries } => {
                return Started::Ready(Item::UnitEnd { racy, entries });
            }
        };
        let (hint, params, coding) = (hint.clone(), self.config.chunker, self.coding());
        let pool = pool.clone();
        let handle =
            tokio::task::spawn_blocking(move || hash_job(job, &hint, &params, coding, &pool));
        Started::Running(Box::pin(async move {
            Ok(Item::Pieces(handle.await.map_err(joined)??, held))
        }))
    }

    /// Hash the table `job` makes of `of` on the blocking pool (see [`hash_table_job`]); `of`
    /// comes back with the chunks.
    fn hash_table<T: Send + 'static>(
        &self,
        of: T,
        job: impl FnOnce(&T) -> Job + Send + 'static,
        hint: Arc<Hint>,
    ) -> TableJob<T> {
        let coding = self.coding();
        tokio::task::spawn_blocking(move || {
            let job = job(&of);
            (of, hash_table_job(job, &hint, coding))
        })
    }

    /// Store tables (hashed, in order) as chunks named in one record; returns the refs of each,
    /// in order.
    async fn store_tables(
        &self,
        st: &mut SaveState,
        tables: Vec<Result<Vec<Hashed>>>,
    ) -> Result<Vec<Vec<ChunkRef>>> {
        let mut counts = Vec::with_capacity(tables.len());
        let mut refs = Vec::new();
        for pieces in tables {
            let pieces = pieces?;
            counts.push(pieces.len());
            self.accept(st, pieces, &mut refs).await?;
        }
        self.flush(st, &mut refs).await?;
        let mut out = Vec::with_capacity(counts.len());
        let mut rest = refs.into_iter();
        for n in counts {
            out.push(rest.by_ref().take(n).collect());
        }
        Ok(out)
    }

    async fn commit(
        &self,
        st: &mut SaveState,
        session_id: &str,
        created_at: DateTime<Utc>,
        parent: Option<&SnapshotId>,
        saved: Saved,
    ) -> Result<SnapshotManifest> {
        let chunk_job = |refs: &Vec<ChunkRef>| Job::Whole(tables::encode_chunks(refs).into());
        let (refs, chunk_table) = if saved.refs.len().saturating_mul(tables::REF_BYTES)
            <= INLINE_TABLE_BYTES
            && self.config.zstd_level <= INLINE_TABLE_LEVEL
        {
            let job = chunk_job(&saved.refs);
            (
                saved.refs,
                hash_table_job(job, &saved.table_hint, self.coding()),
            )
        } else {
            self.hash_table(saved.refs, chunk_job, saved.table_hint)
                .await
                .map_err(joined)?
        };
        let (units, file_table) = saved.files.await.map_err(joined)?;
        let mut hashed = vec![chunk_table];
        if !units.is_empty() {
            hashed.push(file_table);
        }
        let mut stored = self.store_tables(st, hashed).await?.into_iter();
        let table = stored.next().unwrap_or_default();
        let files = stored.next().unwrap_or_default();
        self.finish_uploads(st).await?;
        // The index object (what the packs hold) is written beside `ids/<id>`, once the
        // manifest is known; the manifest only after both.
        let index_object = (!st.records.is_empty()).then(|| {
            let records = std::mem::take(&mut st.records);
            let (name, bytes) = chunk_index::encode(&records);
            st.uploaded_bytes += bytes.len() as u64;
            (name, records, bytes)
        });
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
            format_version: self.config.chunk_names.format_version(),
            session_id: session_id.to_owned(),
            created_at,
            parent: parent.cloned(),
            file_count: saved.counts.files,
            content_bytes: saved.counts.bytes,
            skipped_entries: saved.counts.skipped,
            archive_bytes: refs.iter().map(|c| u64::from(c.size)).sum(),
            stored_bytes: refs.iter().map(|c| u64::from(c.stored_size)).sum(),
            uploaded_bytes: st.uploaded_bytes,
            chunker: self.config.chunker,
            chunks: refs,
            table,
            files,
        };
        let stored = Bytes::from(m.encode()?);
        let key = manifest_key(session_id, created_at, &m.id);
        let create = |k: Path, body: Bytes| async move {
            match self.put(&k, body, PutMode::Create).await {
                Err(Error::Store {
                    source: object_store::Error::AlreadyExists { .. },
                    ..
                }) => Ok(()), // same id, same content: an identical snapshot is already there
                r => r,
            }
        };
        let index_put = async {
            match index_object {
                Some((name, records, body)) => {
                    self.put(&chunk_index::index_key(&name), body, PutMode::Overwrite)
                        .await?;
                    Ok(Some((name, records)))
                }
                None => Ok(None),
            }
        };
        let (indexed, id_written) = tokio::join!(
            index_put,
            create(id_key(&m.id), Bytes::from(key.to_string()))
        );
        let indexed = indexed?;
        id_written?;
        // From here until it is written, a failure or a cancellation may leave the manifest
        // written: the records then stay (see `SaveState`'s `Drop`).
        st.commit_in_doubt = true;
        create(key.clone(), stored).await?;
        st.commit_in_doubt = false;
        // The index object is known now: the next save does not read it back.
        if let Some((name, records)) = indexed {
            let store = self.clone();
            drop(tokio::task::spawn_blocking(move || {
                store.remember_index(name, records)
            }));
        }
        // The next save of the session most likely names this one as parent.
        if !units.is_empty() && recent::worth_keeping(&units, m.chunks.len()) {
            let (cache, ticket) = (self.recent.clone(), self.recent.ticket());
            let manifest = m.clone();
            let same_cuts = manifest.chunker == self.config.chunker;
            // (Dropped unrun if the runtime is shutting down: then nothing is kept.)
            drop(tokio::task::spawn_blocking(move || {
                let complete = manifest.skipped_entries == 0;
                let units = ParentUnits::new(units, &manifest.chunks, same_cuts, complete);
                cache.keep(
                    ticket,
                    recent::Recent {
                        key,
                        manifest,
                        units,
                    },
                );
            }));
        }
        Ok(m)
    }

    /// Wait until no garbage collection that may predate our records is running.
    pub(super) async fn wait_for_gc(&self) -> Result<()> {
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
}

/// Cut (if `job` is a whole table) and hash a table. `hint`: the parent's table chunks (most
/// of a new table's chunks are among them: tables are cut by content, and those are hashed
/// but not compressed again) and the index.
fn hash_table_job(job: Job, hint: &Hint, coding: super::chunk::Coding) -> Result<Vec<Hashed>> {
    hash_job(
        job,
        hint,
        &tables::TABLE_CHUNKER,
        coding,
        &BufferPool::shared(),
    )
}
