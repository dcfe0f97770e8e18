//! Garbage collection of unreferenced chunks, safe while saves run (protocol in the module docs
//! of `snapshot`): marker → list chunks → live save records → manifests → delete the rest.

use super::*;

fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    now.signed_duration_since(t)
        .to_std()
        .unwrap_or(Duration::ZERO)
}

impl SnapshotStore {
    /// Delete chunks that no manifest and no running save uses, plus what crashed saves left.
    /// Safe to run while saves run, from any number of processes. Fails (deleting nothing) if a
    /// manifest cannot be read, since its chunks would then be unknown.
    pub async fn gc(&self) -> Result<GcReport> {
        let start = Instant::now();
        let cfg = self.config.gc;
        let marker = Path::from(format!("gc/{}", uuid::Uuid::new_v4()));
        self.put(&marker, Bytes::from_static(b"gc"), PutMode::Overwrite)
            .await?;
        let result = self.collect(start, cfg).await;
        if let Err(e) = self.delete_key(&marker).await {
            tracing::warn!(error = %e, "could not remove the gc marker; saves wait until it is stale");
        }
        result
    }

    async fn collect(&self, start: Instant, cfg: GcConfig) -> Result<GcReport> {
        let mut report = GcReport::default();
        // 1. Chunks, before anything that protects them is read.
        let chunks = self.list_all("chunks").await?;
        report.chunks_scanned = chunks.len();
        let mut live: HashSet<ChunkHash> = HashSet::new();
        let mut stale: Vec<Path> = Vec::new();

        // 2. Records of running saves.
        let now = Utc::now();
        for rec in self.list_all("inflight").await? {
            if age(now, rec.last_modified) >= cfg.inflight_ttl {
                stale.push(rec.location);
                continue;
            }
            let body = match self.get_bytes(&rec.location).await {
                Ok(b) => b,
                // Finished meanwhile: its manifest (listed next) covers its chunks.
                Err(Error::Store { source, .. }) if is_not_found(&source) => continue,
                Err(e) => return Err(e),
            };
            for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let hash = std::str::from_utf8(line)
                    .ok()
                    .and_then(ChunkHash::from_hex)
                    .ok_or_else(|| {
                        Error::corrupt(format!("save record {}", rec.location), "bad line")
                    })?;
                live.insert(hash);
            }
        }

        // 3. Manifests.
        let manifests = self.list_all("manifests").await?;
        let mut manifest_ids = HashSet::new();
        for meta in &manifests {
            let Some((_, _, id)) = parse_manifest_key(&meta.location) else {
                continue;
            };
            let m = match self.read_manifest_at(&meta.location, &id).await {
                Ok(m) => m,
                // Deleted meanwhile (retention): its chunks are no longer needed by it.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            report.manifests += 1;
            live.extend(
                m.chunks
                    .iter()
                    .chain(&m.table)
                    .chain(&m.files)
                    .map(|c| c.hash),
            );
            manifest_ids.insert(id);
        }
        report.chunks_live = live.len();

        // 4. Delete.
        for meta in chunks {
            let Some(hash) = meta.location.filename().and_then(ChunkHash::from_hex) else {
                continue;
            };
            if live.contains(&hash) || age(now, meta.last_modified) < cfg.chunk_grace {
                continue;
            }
            if start.elapsed() >= cfg.gc_deadline {
                report.incomplete = true;
                break;
            }
            self.delete_key(&meta.location).await?;
            report.chunks_deleted += 1;
            report.bytes_freed += meta.size;
        }

        // 5. Leftovers of crashed saves: old records, id entries without a manifest.
        for meta in self.list_all("ids").await? {
            let dangling = meta
                .location
                .filename()
                .and_then(SnapshotId::from_hex)
                .is_some_and(|id| !manifest_ids.contains(&id));
            if dangling && age(now, meta.last_modified) >= cfg.inflight_ttl {
                stale.push(meta.location);
            }
        }
        for key in stale {
            if start.elapsed() >= cfg.gc_deadline {
                report.incomplete = true;
                break;
            }
            self.delete_key(&key).await?;
            report.stale_records_deleted += 1;
        }
        Ok(report)
    }
}
