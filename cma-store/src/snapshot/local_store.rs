//! The store of [`SnapshotStore::local`](super::SnapshotStore::local): `object_store`'s
//! `LocalFileSystem`, with large objects written around the page cache (`O_DIRECT`, Linux).
//!
//! Why: a snapshot's packs are written once and read rarely (by a restore or a verify).
//! Through the page cache each 4 KiB of them is a fresh page to allocate and copy into, and
//! then a page a running sandbox's files are evicted for; on a virtual machine whose free
//! memory goes back to the host (virtio-balloon free page reporting, as on this project's
//! machines) every such page is a host fault as well. Measured on such a 2-core machine,
//! writing 640 MB: 1.88 s of kernel time buffered, 0.16 s with `O_DIRECT` (0.23 s buffered
//! when the pages freed just before are reused); a full save of a 1 GiB workspace spent 0.8 to
//! 2.3 s of kernel time, depending only on how long ago memory had been freed.
//!
//! The layout and the semantics are `LocalFileSystem`'s own: an object is the file its key
//! names under the root, written to a staging file `<file>#<n>` beside it and renamed
//! (overwrite) or hard-linked (create) into place, so either one reads, lists and deletes what
//! the other wrote. Only a payload of one piece that starts at a page boundary and holds at
//! least [`DIRECT_MIN`] bytes goes around the page cache (a full pack: see `pack::PackBuilder`), from
//! where it is, but for its last partial page; everything else, puts with options `O_DIRECT`
//! cannot honour the same way (attributes, conditional updates), and every put after the file
//! system refused `O_DIRECT` once (some do: ramfs, FUSE) take `LocalFileSystem`'s own path. The
//! inner store is always built without `fsync` (as `LocalFileSystem` is by default), which
//! this path matches: neither syncs.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// Objects at least this big are written with `O_DIRECT`: a full save's packs (16 MiB by
/// default). The small pack an incremental save ends with goes through the page cache: a
/// direct write of it waited for the disk on the save's critical path, and the next save
/// reads its tables back from that pack.
pub(crate) const DIRECT_MIN: usize = 8 << 20;
/// Alignment `O_DIRECT` asks of buffers, offsets and lengths (a page: enough for any logical
/// block size up to 4 KiB); packs start at such an address in their buffer.
pub(crate) const ALIGN: usize = 4096;

/// `LocalFileSystem`, writing large objects around the page cache (see the module docs).
#[derive(Debug)]
pub(crate) struct LocalStore {
    inner: Arc<LocalFileSystem>,
    /// The file system refused `O_DIRECT` once: it is not tried again.
    refused: Arc<std::sync::atomic::AtomicBool>,
}

impl LocalStore {
    /// `inner` must be built without `fsync` (see the module docs).
    pub fn new(inner: LocalFileSystem) -> Self {
        Self {
            inner: Arc::new(inner),
            refused: Arc::default(),
        }
    }
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        #[cfg(target_os = "linux")]
        if let Some(piece) = direct::eligible(&payload)
            && opts.attributes.is_empty()
            && matches!(opts.mode, PutMode::Overwrite | PutMode::Create)
            && !self.refused.load(std::sync::atomic::Ordering::Relaxed)
        {
            let file = self.inner.path_to_filesystem(location)?;
            let mode = opts.mode.clone();
            let written = tokio::task::spawn_blocking(move || direct::put(&file, &piece, &mode))
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "LocalStore",
                    source: Box::new(e),
                })??;
            match written {
                Some(done) => return Ok(done),
                None => self
                    .refused
                    .store(true, std::sync::atomic::Ordering::Relaxed),
            }
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(target_os = "linux")]
mod direct {
    //! The `O_DIRECT` write, on a blocking thread.

    use std::io::ErrorKind;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path as FsPath, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use object_store::{PutMode, PutPayload, PutResult};
    use rustix::fs::OFlags;

    use super::ALIGN;

    /// Objects written with `O_DIRECT` so far (for tests).
    pub(crate) static WRITTEN: AtomicU64 = AtomicU64::new(0);
    /// The files written with `O_DIRECT` (tests).
    #[cfg(test)]
    pub(crate) static WRITTEN_TO: std::sync::Mutex<Vec<PathBuf>> =
        std::sync::Mutex::new(Vec::new());

    /// The payload's one piece, if it can be written around the page cache from where it is:
    /// at least `DIRECT_MIN` bytes starting at a page boundary.
    pub(super) fn eligible(payload: &PutPayload) -> Option<Bytes> {
        let mut parts = payload.iter();
        match (parts.next(), parts.next()) {
            (Some(only), None)
                if only.len() >= super::DIRECT_MIN && only.as_ptr().align_offset(ALIGN) == 0 =>
            {
                Some(only.clone())
            }
            _ => None,
        }
    }

    fn generic(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> object_store::Error {
        object_store::Error::Generic {
            store: "LocalStore",
            source: source.into(),
        }
    }

    /// Whether an error says the file system does not do `O_DIRECT`.
    fn refused(e: &std::io::Error) -> bool {
        e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
    }

    /// A new staging file beside `file` (`<file>#<n>`, as `LocalFileSystem` names them),
    /// created as `LocalFileSystem` creates them and then switched to `O_DIRECT` (a file system
    /// that refuses `O_DIRECT` at open would still have created the file).
    fn staging(file: &FsPath) -> object_store::Result<(std::fs::File, PathBuf)> {
        let mut n = 1u32;
        loop {
            let mut name = file.as_os_str().to_owned();
            name.push(format!("#{n}"));
            let path = PathBuf::from(name);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => return Ok((f, path)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => n = n.saturating_add(1),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let parent = file.parent().ok_or_else(|| generic(e))?;
                    std::fs::create_dir_all(parent).map_err(generic)?;
                }
                Err(e) => return Err(generic(e)),
            }
        }
    }

    /// Write `piece` (see [`eligible`]) to `file` around the page cache and publish it as
    /// `mode` says. `Ok(None)`: the file system refuses `O_DIRECT`; nothing was left behind.
    pub(super) fn put(
        file: &FsPath,
        piece: &Bytes,
        mode: &PutMode,
    ) -> object_store::Result<Option<PutResult>> {
        let len = piece.len();
        let (staged, staging_path) = staging(file)?;
        let remove = |e: object_store::Error| {
            let _ = std::fs::remove_file(&staging_path);
            e
        };
        let written = rustix::fs::fcntl_getfl(&staged)
            .and_then(|flags| rustix::fs::fcntl_setfl(&staged, flags | OFlags::DIRECT))
            .map_err(std::io::Error::from)
            .and_then(|()| write_piece(&staged, piece));
        match written {
            Ok(()) => {}
            Err(e) if refused(&e) => {
                // Ours (created exclusively above), and holding nothing anyone reads.
                drop(staged);
                let _ = std::fs::remove_file(&staging_path);
                return Ok(None);
            }
            Err(e) => return Err(remove(generic(e))),
        }
        staged.set_len(len as u64).map_err(|e| remove(generic(e)))?;
        let meta = staged.metadata().map_err(|e| remove(generic(e)))?;
        drop(staged);
        match mode {
            PutMode::Overwrite => {
                std::fs::rename(&staging_path, file).map_err(|e| remove(generic(e)))?;
            }
            _ => {
                let linked = std::fs::hard_link(&staging_path, file);
                let _ = std::fs::remove_file(&staging_path);
                match linked {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        return Err(object_store::Error::AlreadyExists {
                            path: file.to_string_lossy().into_owned(),
                            source: Box::new(e),
                        });
                    }
                    Err(e) => return Err(generic(e)),
                }
            }
        }
        WRITTEN.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        WRITTEN_TO
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(file.to_owned());
        Ok(Some(PutResult {
            e_tag: Some(e_tag(&meta)),
            version: None,
            extensions: Default::default(),
        }))
    }

    /// Write the page-aligned `piece` to the start of `file` (opened `O_DIRECT`): its whole
    /// pages from where it is, its last partial page (if any) copied into a page of its own
    /// and padded with zeros (the caller cuts the file back to the piece's length).
    fn write_piece(file: &std::fs::File, piece: &[u8]) -> std::io::Result<()> {
        let whole = piece.len() - piece.len() % ALIGN;
        write_all_at(file, &piece[..whole], 0)?;
        if whole < piece.len() {
            let mut page = vec![0u8; 2 * ALIGN];
            let at = page.as_ptr().align_offset(ALIGN);
            let out = &mut page[at..at + ALIGN];
            out[..piece.len() - whole].copy_from_slice(&piece[whole..]);
            write_all_at(file, out, whole as u64)?;
        }
        Ok(())
    }

    fn write_all_at(file: &std::fs::File, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        while !data.is_empty() {
            match file.write_at(data, offset) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    data = &data[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The entity tag `LocalFileSystem` gives the same file: inode, modification time (µs)
    /// and size.
    fn e_tag(meta: &std::fs::Metadata) -> String {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default()
            .as_micros();
        format!("\"{:x}-{mtime:x}-{:x}\"", meta.ino(), meta.len())
    }
}

/// Whether `file` was written around the page cache (tests).
#[cfg(test)]
pub(crate) fn written_directly(file: &std::path::Path) -> bool {
    #[cfg(target_os = "linux")]
    return direct::WRITTEN_TO
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|f| f == file);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

/// `data` in one piece at a page boundary, as a pack is (tests).
#[cfg(test)]
pub(crate) fn page_aligned(data: &[u8]) -> Bytes {
    let mut buf = vec![0u8; data.len() + ALIGN];
    let at = buf.as_ptr().align_offset(ALIGN);
    buf[at..at + data.len()].copy_from_slice(data);
    Bytes::from(buf).slice(at..at + data.len())
}

/// Whether the file system of `dir` takes `O_DIRECT` (tmpfs does not) (tests).
#[cfg(test)]
pub(crate) fn takes_direct(dir: &std::path::Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let probe = dir.join(".direct-probe");
        let ok = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(&probe)
            .is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;

    fn body(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn large_objects_written_around_the_page_cache_read_back_as_local_files() {
        let dir = tempfile::tempdir().unwrap();
        let plain = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let store = LocalStore::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        // Sizes around the alignment and the threshold, in several parts (a payload of many
        // pieces is written as one), or in one page-aligned piece (0).
        let cases = [
            (DIRECT_MIN, 1),
            (DIRECT_MIN + 1, 2),
            (3 * DIRECT_MIN + 4095, 3),
            (5 * DIRECT_MIN + 123, 7),
            (DIRECT_MIN - 1, 1),
            (10, 1),
            (2 * DIRECT_MIN + 777, 0),
            (2 * DIRECT_MIN, 0),
        ];
        for (k, (n, parts)) in cases.into_iter().enumerate() {
            let data = body(n, k as u8);
            let payload: PutPayload = if parts == 0 {
                // One piece at a page boundary (as packs are): written from where it is.
                let piece = page_aligned(&data);
                assert_eq!(piece.as_ptr().align_offset(4096), 0);
                PutPayload::from(piece)
            } else {
                data.chunks(n.div_ceil(parts))
                    .map(Bytes::copy_from_slice)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .collect()
            };
            // (A piece copied into memory of its own may start at a page boundary by chance.)
            let one_aligned = payload.iter().count() == 1
                && payload.iter().all(|p| p.as_ptr().align_offset(ALIGN) == 0);
            assert!(parts != 0 || one_aligned, "case {k}");
            let key = Path::from(format!("packs/a{k}/obj"));
            let put = store.put(&key, payload).await.unwrap();
            // Only a large page-aligned piece goes around the page cache (where it can).
            if takes_direct(dir.path()) {
                assert_eq!(
                    written_directly(&dir.path().join(format!("packs/a{k}/obj"))),
                    one_aligned && n >= DIRECT_MIN,
                    "case {k}"
                );
            }
            let got = plain.get(&key).await.unwrap();
            assert_eq!(got.meta.size, n as u64, "case {k}");
            assert_eq!(put.e_tag, got.meta.e_tag, "case {k}: the same entity tag");
            assert_eq!(got.bytes().await.unwrap(), data, "case {k}");
            // Overwritten in place.
            let again = body(n, 200);
            store
                .put(&key, PutPayload::from(again.clone()))
                .await
                .unwrap();
            assert_eq!(store.get(&key).await.unwrap().bytes().await.unwrap(), again);
        }
        // No staging file is left behind; listing shows exactly the objects.
        let mut listed: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        listed.sort();
        let want: Vec<String> = (0..cases.len())
            .map(|k| format!("packs/a{k}/obj"))
            .collect();
        assert_eq!(listed, want);
        for k in 0..cases.len() {
            let d = dir.path().join(format!("packs/a{k}"));
            let names: Vec<_> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                names,
                vec![std::ffi::OsString::from("obj")],
                "{}",
                d.display()
            );
        }
    }

    #[tokio::test]
    async fn create_refuses_an_existing_object_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let key = Path::from("manifests/one");
        let first = body(2 * DIRECT_MIN + 7, 1);
        let create = || PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        store
            .put_opts(&key, PutPayload::from(page_aligned(&first)), create())
            .await
            .unwrap();
        let err = store
            .put_opts(
                &key,
                PutPayload::from(page_aligned(&body(2 * DIRECT_MIN, 9))),
                create(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, object_store::Error::AlreadyExists { .. }),
            "{err}"
        );
        assert_eq!(store.get(&key).await.unwrap().bytes().await.unwrap(), first);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("manifests"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("one")]);
    }
}
