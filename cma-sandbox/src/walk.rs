//! The default [`Sandbox::walk_tree`](crate::Sandbox::walk_tree): a pre-order walk through
//! [`Sandbox::read_dirs_unsorted`](crate::Sandbox::read_dirs_unsorted), listing the next
//! directories on its stack together (one call for several on backends where each call is a
//! round trip).

use std::collections::HashMap;

use crate::backend::Sandbox;
use crate::error::Result;
use crate::file::{DirEntry, DirWalk, WALK_MAX_PATH_BYTES, WalkedDir};

/// Most directories listed in one call.
const LIST_BATCH: usize = 64;

/// `parent/name` for sandbox paths.
pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

struct State<'a, S: ?Sized> {
    sandbox: &'a S,
    /// Directories still to list, next last.
    stack: Vec<String>,
    /// Listings fetched ahead.
    listed: HashMap<String, Result<Vec<DirEntry>>>,
    started: bool,
}

/// The walk of `root` as a stream (see the trait method).
pub(crate) fn listing_walk<'a, S: Sandbox + ?Sized>(sandbox: &'a S, root: String) -> DirWalk<'a> {
    let state = State {
        sandbox,
        stack: vec![root],
        listed: HashMap::new(),
        started: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            let dir = st.stack.pop()?;
            let listing = match st.listed.remove(&dir) {
                Some(l) => l,
                None => {
                    let mut batch = vec![dir.clone()];
                    batch.extend(
                        st.stack
                            .iter()
                            .rev()
                            .filter(|d| !st.listed.contains_key(*d))
                            .take(LIST_BATCH - 1)
                            .cloned(),
                    );
                    match st.sandbox.read_dirs_unsorted(&batch).await {
                        Ok(results) => {
                            let mut all = batch.into_iter().zip(results);
                            let first = all.next().map(|(_, r)| r);
                            st.listed.extend(all);
                            first.unwrap_or_else(|| Ok(Vec::new()))
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            let is_root = !st.started;
            st.started = true;
            let entries = match listing {
                Ok(entries) => entries,
                // The root's failure is the stream's only item; others are passed over.
                Err(e) if is_root => return Some((Err(e), st)),
                Err(_) => continue,
            };
            let subdirs: Vec<String> = entries
                .iter()
                .filter(|e| e.stat.is_dir())
                .map(|e| join(&dir, &e.name))
                .filter(|p| p.len() <= WALK_MAX_PATH_BYTES)
                .collect();
            st.stack.extend(subdirs.into_iter().rev());
            return Some((Ok(WalkedDir::new(dir, entries)), st));
        }
    }))
}
