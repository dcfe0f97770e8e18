//! Garbage collection, safe while saves and restores run (protocol in the module docs of
//! `snapshot`): marker → list packs and old-format chunks → live save records → manifests →
//! index → decide per pack → repack → new index → delete.
//!
//! A pack whose chunks are all dead is deleted; one whose live chunks fill less than
//! [`GcConfig::repack_live_percent`] of it is *repacked*: its live chunks (verified on the
//! way) are copied into new packs. The order makes a kill at any point lose nothing: the new
//! packs are written first (until indexed they are unknown, and kept while young), then the
//! new index objects (now live chunks are listed twice, both places valid), then the old index
//! objects are deleted, and only then the old packs. Readers that still hold the old index
//! find a pack gone and reload it (see `fetch`).

use std::collections::HashMap;

use super::chunk;
use super::chunk_index::{IndexRecord, Location, RECORDS_PER_OBJECT, index_key};
use super::pack::{self, PackBuilder, PackId, pack_key, parse_pack_key};
use super::*;

fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    now.signed_duration_since(t)
        .to_std()
        .unwrap_or(Duration::ZERO)
}

/// What the collection decided for one pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    /// No live chunk (or not indexed and left by a crashed save): delete.
    Delete,
    /// Mostly dead: copy the live chunks, then delete.
    Repack,
}

struct PackInfo {
    meta: object_store::ObjectMeta,
    /// Index records of chunks kept in this pack (live, and this is their chosen place).
    keep: Vec<IndexRecord>,
    /// Whether any index record names this pack.
    indexed: bool,
}

impl SnapshotStore {
    /// Delete what no manifest and no running save uses, repack mostly-dead packs, and remove
    /// what crashed saves left. Safe to run while saves and restores run, from any number of
    /// processes. Fails (deleting nothing) if a manifest or an index object cannot be read,
    /// since what is live would then be unknown.
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
        // 1. What is stored, before anything that protects it is read.
        let packs = self.list_all("packs").await?;
        let chunks = self.list_all("chunks").await?;
        report.packs_scanned = packs.len();
        let mut live: HashSet<ChunkHash> = HashSet::new();
        let mut stale: Vec<Path> = Vec::new();

        // 2. Records of running saves.
        let now = Utc::now();
        for rec in self.list_all("inflight").await? {
            if age(now, rec.last_modified) >= cfg.inflight_ttl {
                stale.push(rec.location);
                continue;
            }
            let body = match self.get_bytes(&rec.location, MAX_INFLIGHT_RECORD).await {
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
        let fetcher = fetch::Fetcher::new(self).await?;
        let mut manifest_ids = HashSet::new();
        for meta in self.list_all("manifests").await? {
            let Some((_, _, id)) = parse_manifest_key(&meta.location) else {
                continue;
            };
            let m = match self.read_manifest_with(&fetcher, &meta.location, &id).await {
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

        // 4. The index, whole: where each live chunk is kept.
        let index = self.load_index().await?;
        if let Some(e) = index.damage() {
            return Err(e);
        }
        let mut infos: HashMap<PackId, PackInfo> = packs
            .into_iter()
            .filter_map(|meta| {
                let id = parse_pack_key(&meta.location)?;
                Some((
                    id,
                    PackInfo {
                        meta,
                        keep: Vec::new(),
                        indexed: false,
                    },
                ))
            })
            .collect();
        // Packs written since the listing (by saves whose records this run may not have seen:
        // a pack's record is written just before it) are left alone, and their index records
        // carried over.
        let since: HashSet<PackId> = self
            .list_all("packs")
            .await?
            .iter()
            .filter_map(|m| parse_pack_key(&m.location))
            .filter(|id| !infos.contains_key(id))
            .collect();
        let mut carried: Vec<IndexRecord> = Vec::new();
        let mut kept: HashSet<ChunkHash> = HashSet::new();
        let mut dropped = false;
        for r in index.records() {
            let Some(info) = infos.get_mut(&r.at.pack) else {
                if since.contains(&r.at.pack) {
                    carried.push(*r);
                } else {
                    dropped = true; // its pack is gone
                }
                continue;
            };
            info.indexed = true;
            if live.contains(&r.hash) && kept.insert(r.hash) {
                info.keep.push(*r);
            } else {
                dropped = true; // dead, or a second copy
            }
        }

        // 5. Decide.
        let mut fates: Vec<(PackId, Fate)> = Vec::new();
        for (id, info) in &infos {
            let old = |limit: Duration| age(now, info.meta.last_modified) >= limit;
            let live_bytes: u64 = info.keep.iter().map(|r| u64::from(r.at.len)).sum();
            let fate = if !info.indexed {
                // Written by a save that has not indexed it yet, or by one that crashed.
                if old(cfg.inflight_ttl) {
                    Fate::Delete
                } else {
                    Fate::Keep
                }
            } else if !old(cfg.chunk_grace) {
                Fate::Keep
            } else if info.keep.is_empty() {
                Fate::Delete
            } else if live_bytes * 100 < info.meta.size * u64::from(cfg.repack_live_percent) {
                Fate::Repack
            } else {
                Fate::Keep
            };
            if fate != Fate::Keep {
                fates.push((*id, fate));
            }
        }
        fates.sort_by_key(|(id, _)| *id);

        // 6. Repack, until the deadline.
        let mut written: Vec<IndexRecord> = Vec::new();
        let mut done: Vec<(PackId, Fate)> = Vec::new();
        // Chunks of each kind of name go into packs of their own (see `chunk::is_sha256_form`),
        // so every pack a version before format 4 wrote or could have written stays readable
        // whole by it (its `verify` decodes every chunk of a pack).
        let new_builder = || PackBuilder::with_capacity(self.config.pack_bytes + (1 << 20));
        let mut builders = [new_builder(), new_builder()];
        for (id, fate) in fates {
            if fate == Fate::Delete {
                done.push((id, fate));
                continue;
            }
            if start.elapsed() >= cfg.gc_deadline {
                report.incomplete = true;
                break;
            }
            let keep = infos
                .get_mut(&id)
                .map(|i| std::mem::take(&mut i.keep))
                .unwrap_or_default();
            match self.copy_live(&id, &keep).await {
                Ok(blobs) => {
                    for (r, blob) in keep.iter().zip(blobs) {
                        let builder = &mut builders[usize::from(chunk::is_sha256_form(&blob))];
                        builder.push(r.hash, r.size, &blob)?;
                        if builder.len() >= self.config.pack_bytes {
                            let b = std::mem::replace(builder, new_builder());
                            written.extend(self.upload_pack(b, &mut report).await?);
                        }
                    }
                    done.push((id, fate));
                    report.packs_repacked += 1;
                }
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    // Keep it as it is: what can still be read stays readable.
                    tracing::warn!(pack = %id.to_hex(), error = %e, "a pack does not verify; not repacking it");
                    if let Some(i) = infos.get_mut(&id) {
                        i.keep = keep;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        for builder in builders {
            if !builder.is_empty() {
                written.extend(self.upload_pack(builder, &mut report).await?);
            }
        }

        // 7. The new index: every kept place in the packs that stay, and the new packs.
        let gone: HashSet<PackId> = done.iter().map(|(id, _)| *id).collect();
        let old_objects: Vec<String> = index.object_names().cloned().collect();
        let old_names: HashSet<String> = old_objects.iter().cloned().collect();
        let changed = dropped || !gone.is_empty() || !written.is_empty() || old_objects.len() > 1;
        if changed {
            let mut records: Vec<IndexRecord> = infos
                .iter()
                .filter(|(id, _)| !gone.contains(*id))
                .flat_map(|(_, i)| i.keep.iter().copied())
                .collect();
            records.extend(written);
            records.extend(carried);
            records.sort_by_key(|r| (r.at.pack, r.at.offset));
            let mut new_names = HashSet::new();
            for part in records.chunks(RECORDS_PER_OBJECT) {
                let name = self.write_index(part).await?;
                report.index_objects_written += 1;
                tracing::debug!(index = %name, records = part.len(), "index object written");
                new_names.insert(name);
            }
            // 8. Only now may the old index objects go, and after them the old packs. (An
            // index object is named by its content: one written again just now stays.)
            for name in old_objects.iter().filter(|n| !new_names.contains(*n)) {
                if start.elapsed() >= cfg.gc_deadline {
                    report.incomplete = true;
                    break;
                }
                self.delete_key(&index_key(name)).await?;
                report.index_objects_deleted += 1;
            }
            if report.index_objects_deleted + new_names.intersection(&old_names).count()
                == old_objects.len()
            {
                for (id, _) in &done {
                    if start.elapsed() >= cfg.gc_deadline {
                        report.incomplete = true;
                        break;
                    }
                    self.delete_key(&pack_key(id)).await?;
                    report.packs_deleted += 1;
                    if let Some(i) = infos.get(id) {
                        report.bytes_freed += i.meta.size;
                    }
                }
            }
        }
        report.chunks_deleted = index
            .records()
            .filter(|r| !live.contains(&r.hash))
            .map(|r| r.hash)
            .collect::<HashSet<_>>()
            .len();

        // 9. Chunks of snapshots saved before packs, one object each.
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

        // 10. Leftovers of crashed saves: old records, id entries without a manifest.
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
        report.bytes_freed = report.bytes_freed.saturating_sub(report.bytes_written);
        Ok(report)
    }

    /// Read a pack whole, check it, and return the stored forms of `keep`, each verified.
    async fn copy_live(&self, id: &PackId, keep: &[IndexRecord]) -> Result<Vec<Bytes>> {
        let data = match self.get_bytes(&pack_key(id), pack::MAX_PACK_BYTES).await {
            Ok(d) => d,
            Err(Error::Store { source, .. }) if is_not_found(&source) => {
                return Err(Error::corrupt(format!("pack {}", id.to_hex()), "gone"));
            }
            Err(e) => return Err(e),
        };
        let (id, keep) = (*id, keep.to_vec());
        tokio::task::spawn_blocking(move || {
            pack::parse(&id, &data)?;
            keep.iter()
                .map(|r| {
                    let (at, len) = (r.at.offset as usize, r.at.len as usize);
                    let blob = data
                        .get(at..at + len)
                        .map(|s| data.slice_ref(s))
                        .ok_or_else(|| Error::corrupt(format!("pack {}", id.to_hex()), "short"))?;
                    chunk::decode(blob.clone(), &r.hash, r.size)?;
                    Ok(blob)
                })
                .collect()
        })
        .await
        .map_err(joined)?
    }

    /// Seal and upload a pack written by a collection; returns its index records.
    async fn upload_pack(
        &self,
        builder: PackBuilder,
        report: &mut GcReport,
    ) -> Result<Vec<IndexRecord>> {
        let sealed = tokio::task::spawn_blocking(move || builder.seal())
            .await
            .map_err(joined)?;
        report.bytes_written += sealed.bytes.len() as u64;
        self.put(&pack_key(&sealed.id), sealed.bytes, PutMode::Overwrite)
            .await?;
        report.packs_written += 1;
        Ok(sealed
            .entries
            .iter()
            .map(|e| IndexRecord {
                hash: e.hash,
                size: e.size,
                at: Location {
                    pack: sealed.id,
                    offset: e.offset,
                    len: e.len,
                },
            })
            .collect())
    }
}
