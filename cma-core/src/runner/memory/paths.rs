//! Where a session's memory stores live in its sandbox, and which paths from the API are
//! acceptable: `mount_path`s, store folder names and memory paths are untrusted, so each is
//! checked (absolute or relative as required, no `.`/`..`, no control characters, bounded in
//! length and depth) before it becomes a path, and two stores never share or nest folders.

use super::{
    MAX_MEMORY_PATH_BYTES, MAX_MEMORY_STORES_PER_SESSION, MAX_PATH_SEGMENTS, MAX_SEGMENT_BYTES,
    MemoryError,
};
use crate::protocol::Session;

/// Where one attached store lives in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryMount {
    /// `memstore_…`.
    pub store_id: String,
    /// Sandbox path of the store's folder.
    pub root: String,
    /// Attached `read_only`: pulled, never pushed, refused by `write`/`edit`.
    pub read_only: bool,
}

/// A `mount_path` the runner accepts: absolute, no `.`/`..` or empty segments (a trailing `/`
/// aside), no control characters, at most [`MAX_MEMORY_PATH_BYTES`] bytes and
/// [`MAX_PATH_SEGMENTS`] segments of at most [`MAX_SEGMENT_BYTES`] bytes.
fn clean_absolute(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segments: Vec<&str> = rest.split('/').collect();
    path.len() <= MAX_MEMORY_PATH_BYTES
        && !path.chars().any(char::is_control)
        && (rest.is_empty()
            || (segments.len() <= MAX_PATH_SEGMENTS
                && segments.iter().all(|p| {
                    !p.is_empty() && *p != "." && *p != ".." && p.len() <= MAX_SEGMENT_BYTES
                })))
}

fn single_component(name: &str) -> Option<&str> {
    let n = name.trim();
    (!n.is_empty()
        && n.len() <= MAX_SEGMENT_BYTES
        && n != "."
        && n != ".."
        && !n.contains('/')
        && !n.contains('\\')
        && !n.chars().any(char::is_control))
    .then_some(n)
}

/// Whether one folder is the other or inside it.
fn nested(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    within(a, b) || within(b, a)
}

/// The folders of every memory store attached to `session`, for a sandbox whose workdir is
/// `workdir`.
pub fn memory_mounts(session: &Session, workdir: &str) -> Result<Vec<MemoryMount>, MemoryError> {
    let stores = session
        .resources
        .iter()
        .filter(|r| r.kind == "memory_store");
    let count = stores.clone().count();
    if count > MAX_MEMORY_STORES_PER_SESSION {
        return Err(MemoryError::TooManyStores { count });
    }
    let mut out: Vec<MemoryMount> = Vec::new();
    for r in stores {
        let store_id = r.memory_store_id.clone().unwrap_or_default();
        let root = match r.mount_path.as_deref().filter(|p| !p.is_empty()) {
            Some(p) if clean_absolute(p) => {
                let t = p.trim_end_matches('/');
                if t.is_empty() {
                    "/".to_owned()
                } else {
                    t.to_owned()
                }
            }
            Some(p) => {
                return Err(MemoryError::BadMountPath {
                    store_id,
                    path: p.to_owned(),
                });
            }
            None => {
                let name = r
                    .name
                    .as_deref()
                    .and_then(single_component)
                    .or_else(|| single_component(&store_id))
                    .unwrap_or("store");
                format!("{}/memory/{name}", workdir.trim_end_matches('/'))
            }
        };
        if root == "/" {
            return Err(MemoryError::BadMountPath {
                store_id,
                path: root,
            });
        }
        if let Some(other) = out.iter().find(|m| nested(&m.root, &root)) {
            return Err(MemoryError::OverlappingMounts {
                first: other.store_id.clone(),
                first_root: other.root.clone(),
                second: store_id,
                second_root: root,
            });
        }
        out.push(MemoryMount {
            store_id,
            root,
            read_only: r.access.as_deref() == Some("read_only"),
        });
    }
    Ok(out)
}

/// Whether `session` has memory stores attached.
pub fn has_memory_stores(session: &Session) -> bool {
    session.resources.iter().any(|r| r.kind == "memory_store")
}

/// A memory path (`/a/b.md`) as a clean relative path, or `None` when it cannot be one.
pub(super) fn rel_of(path: &str) -> Option<String> {
    let rel = path.trim_start_matches('/');
    let parts: Vec<&str> = rel.split('/').collect();
    if rel.is_empty()
        || path.len() > MAX_MEMORY_PATH_BYTES
        || parts.len() > MAX_PATH_SEGMENTS
        || rel.chars().any(char::is_control)
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == ".." || p.len() > MAX_SEGMENT_BYTES)
    {
        return None;
    }
    Some(rel.to_owned())
}
