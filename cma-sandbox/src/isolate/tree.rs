//! Whole-tree operations of the isolate backend, walked by directory handle (`walk`): the
//! [`walk_tree`](crate::Sandbox::walk_tree) listing stream the `glob` tool walks, and the
//! [`search_tree`](crate::Sandbox::search_tree) the `grep` tool runs in one call. Both cost the
//! same per directory at any depth and run on the blocking pool; the stream is fed through a
//! small channel, so a consumer that stops reading (or drops it) stops the walk.

use std::ffi::OsString;
use std::io::Read;
use std::time::Instant;

use bytes::Bytes;
use cap_std::fs::Dir;
use tokio::sync::mpsc;

use super::MAX_DIR_ENTRIES;
use super::walk::{Listed, list, open_regular, preorder};
use super::workspace::{map_io, stat_of};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::file::{
    DirEntry, DirWalk, FoundLines, TreeFound, TreeMatch, TreeSearch, WALK_MAX_PATH_BYTES, WalkedDir,
};
use crate::walk::join;

/// Listings buffered between the walker and the stream's consumer.
const WALK_CHANNEL: usize = 2;

/// The sandbox path of the directory at `names` below `root`, built in one buffer (linear in
/// its length).
fn path_of(root: &str, names: &[OsString]) -> String {
    let len = root.len() + names.iter().map(|n| n.len() + 1).sum::<usize>();
    let mut p = String::with_capacity(len);
    p.push_str(root);
    for n in names {
        if !p.ends_with('/') {
            p.push('/');
        }
        p.push_str(&n.to_string_lossy());
    }
    p
}

/// The subdirectories of a listing a walk enters: real directories (not symlinks) with UTF-8
/// names (others could not be named by a sandbox path) whose path stays within
/// [`WALK_MAX_PATH_BYTES`], minus `skip`.
fn subdirs(path: &str, entries: &[Listed], skip: &[String]) -> Vec<OsString> {
    entries
        .iter()
        .filter(|e| e.meta.is_dir())
        .filter(|e| {
            e.name.to_str().is_some_and(|n| {
                !skip.iter().any(|s| s == n) && path.len() + 1 + n.len() <= WALK_MAX_PATH_BYTES
            })
        })
        .map(|e| e.name.clone())
        .collect()
}

fn too_many(shown: &str) -> SandboxError {
    SandboxError::new(
        SandboxErrorKind::TooLarge,
        format!("directory has more than {MAX_DIR_ENTRIES} entries"),
    )
    .with_path(shown)
}

/// The `walk_tree` stream of the directory `top`, shown as `root`.
pub(crate) fn walk(top: Dir, root: String) -> DirWalk<'static> {
    let (tx, rx) = mpsc::channel::<Result<WalkedDir>>(WALK_CHANNEL);
    tokio::task::spawn_blocking(move || {
        let mut first = true;
        let walked = preorder(top, |dir, names| {
            let path = path_of(&root, names);
            let listing = match list(dir, MAX_DIR_ENTRIES) {
                Ok(Some(l)) => Ok(l),
                Ok(None) => Err(too_many(&path)),
                Err(e) => Err(map_io(e, &path)),
            };
            let is_root = std::mem::replace(&mut first, false);
            let listing = match listing {
                Ok(l) => l,
                Err(e) if is_root => {
                    let _ = tx.blocking_send(Err(e));
                    return Ok(None);
                }
                // Passed over, as a directory that cannot be listed.
                Err(_) => return Ok(Some(Vec::new())),
            };
            let enter = subdirs(&path, &listing, &[]);
            let entries = listing
                .into_iter()
                .map(|e| DirEntry {
                    name: e.name.to_string_lossy().into_owned(),
                    stat: stat_of(&e.meta),
                })
                .collect();
            // The consumer is gone: stop.
            Ok(tx
                .blocking_send(Ok(WalkedDir::new(path, entries)))
                .ok()
                .map(|()| enter))
        });
        if let Err(e) = walked {
            let _ = tx.blocking_send(Err(map_io(e, &root)));
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// The in-sandbox search of the `grep` tool (see [`Sandbox::search_tree`](crate::Sandbox::search_tree)).
pub(crate) fn search(top: Dir, root: &str, needle: &str, opts: &TreeSearch) -> Result<TreeFound> {
    let deadline = Instant::now().checked_add(opts.timeout);
    let mut found = TreeFound {
        items: Vec::new(),
        complete: true,
        files_seen: 0,
    };
    let mut used = 0usize;
    let mut timed_out = false;
    let walked = preorder(top, |dir, names| {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            timed_out = true;
            return Ok(None);
        }
        let path = path_of(root, names);
        // Unlistable and over-full directories are passed over.
        let Ok(Some(listing)) = list(dir, MAX_DIR_ENTRIES) else {
            return Ok(Some(Vec::new()));
        };
        for e in &listing {
            if !e.meta.is_file() {
                continue;
            }
            found.files_seen += 1;
            if found.files_seen > opts.max_files {
                return Ok(None);
            }
            let Some(name) = e.name.to_str() else {
                continue;
            };
            let full = join(&path, name);
            let Ok(Some((file, size))) = open_regular(dir, &e.name) else {
                continue;
            };
            if size > opts.max_file_bytes {
                used = used.saturating_add(full.len() + 32);
                found.items.push(TreeMatch::Large { path: full });
            } else {
                // Never more than the cap, should the file grow meanwhile.
                let mut data = Vec::new();
                if file
                    .take(opts.max_file_bytes.saturating_add(1))
                    .read_to_end(&mut data)
                    .is_err()
                {
                    continue;
                }
                if data.len() as u64 > opts.max_file_bytes {
                    used = used.saturating_add(full.len() + 32);
                    found.items.push(TreeMatch::Large { path: full });
                } else if data[..data.len().min(512)].contains(&0) {
                    continue;
                } else if needle.is_empty() {
                    used = used.saturating_add(data.len() + full.len() + 32);
                    found.items.push(TreeMatch::Contents {
                        path: full,
                        data: Bytes::from(data),
                    });
                } else {
                    let lines = FoundLines::scan(&data, needle.as_bytes(), opts.max_line);
                    if lines.lines.is_empty() {
                        continue;
                    }
                    let kept: usize = lines.lines.iter().map(|l| l.text.len() + 48).sum();
                    used = used.saturating_add(kept + full.len() + 32);
                    found.items.push(TreeMatch::Lines {
                        path: full,
                        found: lines,
                    });
                }
            }
            if used > opts.max_output_bytes {
                found.complete = false;
                return Ok(None);
            }
        }
        Ok(Some(subdirs(&path, &listing, &opts.skip_dirs)))
    });
    walked.map_err(|e| map_io(e, root))?;
    if timed_out {
        return Err(
            SandboxError::new(SandboxErrorKind::Timeout, "search timed out").with_path(root),
        );
    }
    Ok(found)
}
