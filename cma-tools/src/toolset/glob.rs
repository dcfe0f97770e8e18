//! `glob` (docs/protocol.md §6.5): Python 3.11 `Path.glob` over the sandbox's file API.
//!
//! `*`, `?` and `[…]` match within one name (hidden names included, case-sensitive), `**` is a
//! whole component matching the directory itself and every directory below it without entering
//! symlinked directories, a trailing `/` keeps only directories. At most 50 000 matches are
//! collected, those whose canonical path leaves the search root are dropped, the rest are
//! sorted newest-mtime first and the first 200 printed as absolute sandbox paths. The mtime is
//! compared as Python's `st_mtime` float (seconds plus nanoseconds × 1e-9, so times less than
//! ~0.2 µs apart can be equal), and equal mtimes keep the walk's order.
//!
//! # Cost
//! A `**` walks through [`Sandbox::walk_tree`](cma_sandbox::Sandbox::walk_tree) (by directory
//! handle where the backend has one), and the segment after it is matched against each
//! directory's listing, so a directory costs the same at any depth. A match reached through
//! real directories only (no symlink on the way from the root) is its own canonical path, and
//! its mtime comes from its listing: only matches through symlinks are resolved and `stat`ed
//! one by one. Consecutive `**` are one (`**/**` selects what `**` selects, in the same order).
//! Nothing grows with the number of matches but the 200 kept: matches are counted, filtered and
//! ranked as they are found; the duplicates a pattern with several `**` can produce are
//! remembered as 128-bit hashes, at most [`MAX_DEDUP_ENTRIES`] of them.
//!
//! A `**` after another `**` (`**/a/**/f`) is started from many points, and Python walks below
//! each of them again: on a chain, the depth to the power of the number of `**`. Here a `**`
//! remembers every directory its completed walks visited (as hashes, within the same bound)
//! and is not started again from one of them: that walk covered the same subtree with the same
//! selectors after it, so everything it would select was already selected, and dropped as a
//! duplicate (the printed paths and their order are Python's). Starts come in walk order, each
//! either inside a completed walk or past it, so each `**` lists a directory at most once while
//! the hashes fit: the cost is linear in the directories times the number of `**`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};
use std::hash::BuildHasher;

use async_trait::async_trait;
use cma_sandbox::DirEntry;
use futures::StreamExt;
use futures::future::BoxFuture;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::path::{canonicalize, resolve_path, within, workdir};
use super::validate::parse;
use crate::context::ToolContext;
use crate::output::{ToolError, ToolOutput};
use crate::registry::Tool;

/// Most paths `glob` prints (`GLOB_RESULT_LIMIT`).
pub const GLOB_RESULT_LIMIT: usize = 200;
/// Most glob matches collected (`WALK_MAX_ENTRIES`).
pub const GLOB_MAX_MATCHES: usize = 50_000;
/// Most paths remembered to drop the duplicates of a pattern with several `**`; past it the
/// glob ends as if it had collected all it may.
pub const MAX_DEDUP_ENTRIES: usize = 1 << 20;

const NO_MATCHES: &str = "no matches";

fn join(parent: &str, name: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The official `glob` tool.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobTool;

#[derive(Deserialize)]
struct GlobInput {
    pattern: String,
    path: Option<String>,
}

#[async_trait]
impl Tool for GlobTool {
    fn name(&self) -> &str {
        "glob"
    }
    fn description(&self) -> &str {
        "List files matching a glob pattern, newest first."
    }
    fn input_schema(&self) -> Value {
        super::glob_schema()
    }

    async fn call(&self, ctx: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let GlobInput { pattern, path } = parse("glob", &super::glob_schema(), input)?;
        if pattern.starts_with('/') {
            return Err(ToolError::msg(
                "glob: absolute pattern not permitted; pass a relative pattern (and optionally path)",
            ));
        }
        let mut parts: Vec<String> = pattern
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .map(str::to_owned)
            .collect();
        if parts.iter().any(|p| p == "..") {
            return Err(ToolError::msg("glob: '..' is not permitted in the pattern"));
        }
        let root = match path.as_deref() {
            Some(p) if !p.is_empty() => resolve_path(ctx, p)
                .await
                .map_err(|e| ToolError::msg(format!("glob: {e}")))?,
            _ => workdir(ctx).await,
        };
        if pattern.is_empty() {
            return Err(ToolError::msg(format!(
                "glob: Unacceptable pattern: {}",
                crate::pyfmt::repr_str(&pattern)
            )));
        }
        if pattern.ends_with('/') {
            parts.push(String::new());
        }
        if parts.is_empty() {
            // What Python's selector factory raises for a pattern of only `.` components.
            return Err(ToolError::Exception {
                type_name: "IndexError".into(),
                message: "tuple index out of range".into(),
            });
        }
        let mut segments: Vec<Segment> = Vec::with_capacity(parts.len());
        for p in &parts {
            let seg = Segment::parse(p)?;
            // `**/**` selects what `**` selects, in the same order.
            if matches!(seg, Segment::Recursive)
                && matches!(segments.last(), Some(Segment::Recursive))
            {
                continue;
            }
            segments.push(seg);
        }
        let mut sink = Sink::new(root.clone());
        if ctx.sandbox.stat(&root).await.is_ok_and(|s| s.is_dir()) {
            let start = Point {
                path: root.clone(),
                via_link: false,
                mtime: None,
            };
            select(ctx, &segments, 0, start, None, &mut sink).await;
        }
        let kept = sink.into_ranked();
        if kept.is_empty() {
            return Ok(ToolOutput::text(NO_MATCHES));
        }
        Ok(ToolOutput::Text(kept.join("\n")))
    }
}

enum Segment {
    /// `**`.
    Recursive,
    /// A name with wildcards.
    Wildcard(Regex),
    /// A literal name (`""` for a trailing `/`).
    Precise(String),
}

impl Segment {
    fn parse(part: &str) -> Result<Self, ToolError> {
        if part == "**" {
            return Ok(Self::Recursive);
        }
        if part.contains("**") {
            return Err(ToolError::msg(
                "glob: Invalid pattern: '**' can only be an entire path component",
            ));
        }
        if part.contains(['*', '?', '[']) {
            let rx = Regex::new(&fnmatch_to_regex(part))
                .map_err(|e| ToolError::msg(format!("glob: {e}")))?;
            return Ok(Self::Wildcard(rx));
        }
        Ok(Self::Precise(part.to_owned()))
    }
}

/// Translate one `fnmatch` pattern into an anchored regex (`*`, `?`, `[seq]`, `[!seq]`; a `[`
/// without its `]` is literal; reversed ranges are dropped; an empty set never matches).
fn fnmatch_to_regex(pat: &str) -> String {
    let chars: Vec<char> = pat.chars().collect();
    // Where the next `]` at or after each position is: finding a set's end is then one look-up,
    // not a scan (a pattern of many unclosed `[` would otherwise cost its length squared).
    let mut next_close = vec![chars.len(); chars.len() + 1];
    for k in (0..chars.len()).rev() {
        next_close[k] = if chars[k] == ']' {
            k
        } else {
            next_close[k + 1]
        };
    }
    let mut out = String::from("(?s)^");
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                if !out.ends_with(".*") {
                    out.push_str(".*");
                }
            }
            '?' => out.push('.'),
            '[' => {
                let mut j = i;
                if j < chars.len() && chars[j] == '!' {
                    j += 1;
                }
                if j < chars.len() && chars[j] == ']' {
                    j += 1;
                }
                j = next_close[j.min(chars.len())];
                if j >= chars.len() {
                    out.push_str(r"\[");
                    continue;
                }
                let body = &chars[i..j];
                i = j + 1;
                let (negate, body) = match body.first() {
                    Some('!') => (true, &body[1..]),
                    _ => (false, body),
                };
                let mut items = Vec::new();
                let mut k = 0;
                while k < body.len() {
                    if k + 2 < body.len() && body[k + 1] == '-' {
                        if body[k] <= body[k + 2] {
                            items.push(format!(
                                "\\x{{{:x}}}-\\x{{{:x}}}",
                                body[k] as u32,
                                body[k + 2] as u32
                            ));
                        }
                        k += 3;
                    } else {
                        items.push(format!("\\x{{{:x}}}", body[k] as u32));
                        k += 1;
                    }
                }
                match (items.is_empty(), negate) {
                    (true, false) => out.push_str("[^\\x{0}-\\x{10ffff}]"),
                    (true, true) => out.push('.'),
                    (false, neg) => {
                        out.push('[');
                        if neg {
                            out.push('^');
                        }
                        out.push_str(&items.concat());
                        out.push(']');
                    }
                }
            }
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out.push('$');
    out
}

/// A time as Python's `os.stat_result.st_mtime`: `sec + nsec * 1e-9` in doubles, with `nsec`
/// in `0..1e9` also before the epoch. Rust's `Duration::as_secs_f64` divides instead and can
/// round to a neighbouring double, which reorders files less than a microsecond apart.
fn py_mtime(t: std::time::SystemTime) -> f64 {
    let ns: i128 = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    let sec = ns.div_euclid(1_000_000_000);
    let nsec = ns.rem_euclid(1_000_000_000);
    sec as f64 + nsec as f64 * 1e-9
}

/// A path reached by the selectors.
struct Point {
    path: String,
    /// A symlink was followed on the way from the root (or is the path itself): its canonical
    /// path must be computed.
    via_link: bool,
    /// Its mtime, when known from a listing (not through a symlink).
    mtime: Option<f64>,
}

/// One ranked match: newest first, then in walk order.
struct Ranked {
    mtime: f64,
    seq: u64,
    path: String,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    /// "Better" is greater: a newer mtime, then an earlier match.
    fn cmp(&self, other: &Self) -> Ordering {
        self.mtime
            .total_cmp(&other.mtime)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Where matches go: counted (the first [`GLOB_MAX_MATCHES`]), checked against the root,
/// ranked, and only the best [`GLOB_RESULT_LIMIT`] kept.
struct Sink {
    root: String,
    count: usize,
    /// The worst kept match on top.
    best: BinaryHeap<std::cmp::Reverse<Ranked>>,
    /// One set per active `**` whose successors can repeat a path (innermost last).
    dedup: Vec<HashSet<u128>>,
    dedup_entries: usize,
    /// `(segment index, directory)` of every directory a completed walk of a `**` after another
    /// `**` visited (see the module docs).
    walked: HashSet<u128>,
    hasher: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
    done: bool,
}

impl Sink {
    fn new(root: String) -> Self {
        Self {
            root,
            count: 0,
            best: BinaryHeap::new(),
            dedup: Vec::new(),
            dedup_entries: 0,
            walked: HashSet::new(),
            hasher: Default::default(),
            done: false,
        }
    }

    fn hash(&self, path: &str) -> u128 {
        let h = |s: &std::collections::hash_map::RandomState| s.hash_one(path);
        (u128::from(h(&self.hasher.0)) << 64) | u128::from(h(&self.hasher.1))
    }

    /// The hash of `path` as a start of the `**` at segment `idx`.
    fn hash_at(&self, idx: usize, path: &str) -> u128 {
        let h = |s: &std::collections::hash_map::RandomState| s.hash_one((idx, path));
        (u128::from(h(&self.hasher.0)) << 64) | u128::from(h(&self.hasher.1))
    }

    /// Remember the directories a completed walk visited (as many as the bound leaves room
    /// for: forgetting some costs time, never correctness).
    fn remember_walked(&mut self, visited: Vec<u128>) {
        let room = MAX_DEDUP_ENTRIES.saturating_sub(self.walked.len());
        self.walked.extend(visited.into_iter().take(room));
    }

    /// Take one match; `false` once nothing more is wanted.
    async fn push(&mut self, ctx: &ToolContext, p: Point) -> bool {
        if self.done {
            return false;
        }
        if !self.dedup.is_empty() {
            let h = self.hash(&p.path);
            for set in self.dedup.iter_mut().rev() {
                if !set.insert(h) {
                    return true;
                }
                self.dedup_entries += 1;
            }
            if self.dedup_entries > MAX_DEDUP_ENTRIES {
                self.done = true;
                return false;
            }
        }
        self.count += 1;
        if self.count >= GLOB_MAX_MATCHES {
            self.done = true;
        }
        // A match reached through real directories from the (canonical) root is canonical.
        if p.via_link {
            let Ok(canonical) = canonicalize(ctx, &p.path).await else {
                return !self.done;
            };
            if !within(&canonical, &self.root) {
                return !self.done;
            }
        }
        let mtime = match p.mtime {
            Some(m) if !p.via_link => m,
            _ => match ctx.sandbox.stat(&p.path).await {
                Ok(st) => st.modified.map_or(0.0, py_mtime),
                Err(_) => 0.0,
            },
        };
        let ranked = Ranked {
            mtime,
            seq: self.count as u64,
            path: p.path,
        };
        if self.best.len() < GLOB_RESULT_LIMIT {
            self.best.push(std::cmp::Reverse(ranked));
        } else if self
            .best
            .peek()
            .is_some_and(|std::cmp::Reverse(worst)| ranked > *worst)
        {
            self.best.pop();
            self.best.push(std::cmp::Reverse(ranked));
        }
        !self.done
    }

    /// The kept paths, newest first (equal mtimes in walk order).
    fn into_ranked(self) -> Vec<String> {
        let mut kept: Vec<Ranked> = self.best.into_iter().map(|r| r.0).collect();
        kept.sort_by(|a, b| b.cmp(a));
        kept.into_iter().map(|r| r.path).collect()
    }
}

/// A directory's entries in the order its file system lists them (what Python's `os.scandir`
/// gives the official tools); `None` when it cannot be listed.
async fn list_dir(ctx: &ToolContext, dir: &str) -> Option<Vec<DirEntry>> {
    ctx.sandbox
        .read_dirs_unsorted(&[dir.to_owned()])
        .await
        .ok()?
        .pop()?
        .ok()
}

async fn is_dir(ctx: &ToolContext, path: &str) -> bool {
    ctx.sandbox.stat(path).await.is_ok_and(|s| s.is_dir())
}

/// Whether the selectors after `idx` can yield one path twice (only through another `**`).
fn repeats(segs: &[Segment], idx: usize) -> bool {
    segs.get(idx + 1..)
        .is_some_and(|rest| rest.iter().any(|s| matches!(s, Segment::Recursive)))
}

/// Whether the selectors after `idx` yield the directory they start from (a pattern ending in
/// `**` or `**/`): its own mtime is then wanted.
fn yields_start(segs: &[Segment], idx: usize) -> bool {
    match segs.get(idx + 1..) {
        Some([]) => true,
        Some([Segment::Precise(name)]) => name.is_empty(),
        _ => false,
    }
}

/// Python's selector chain: send the matches of `segs[idx..]` under `parent` to `sink`.
/// `listing` is `parent`'s listing when the caller has it. Returns `false` once the sink wants
/// no more.
fn select<'a>(
    ctx: &'a ToolContext,
    segs: &'a [Segment],
    idx: usize,
    parent: Point,
    listing: Option<&'a [DirEntry]>,
    sink: &'a mut Sink,
) -> BoxFuture<'a, bool> {
    Box::pin(async move {
        let Some(seg) = segs.get(idx) else {
            return sink.push(ctx, parent).await;
        };
        let dironly = idx + 1 < segs.len();
        match seg {
            Segment::Precise(name) if name.is_empty() => {
                // A trailing `/` selects `parent` itself (a directory here); pathlib prints it
                // without the slash.
                select(ctx, segs, idx + 1, parent, None, sink).await
            }
            Segment::Precise(name) => {
                let path = join(&parent.path, name);
                let child = match listing {
                    Some(entries) => match entries.iter().find(|e| e.name == *name) {
                        None => return true,
                        Some(e) if !e.stat.is_symlink() => {
                            (e.stat.is_dir(), false, e.stat.modified)
                        }
                        Some(_) => match ctx.sandbox.stat(&path).await {
                            Ok(st) => (st.is_dir(), true, None),
                            Err(_) => return true,
                        },
                    },
                    None => match ctx.sandbox.lstat(&path).await {
                        Ok(st) if !st.is_symlink() => (st.is_dir(), false, st.modified),
                        Ok(_) => match ctx.sandbox.stat(&path).await {
                            Ok(st) => (st.is_dir(), true, None),
                            Err(_) => return true,
                        },
                        Err(_) => return true,
                    },
                };
                let (is_dir, link, modified) = child;
                if dironly && !is_dir {
                    return true;
                }
                let next = Point {
                    path,
                    via_link: parent.via_link || link,
                    mtime: modified.map(py_mtime),
                };
                select(ctx, segs, idx + 1, next, None, sink).await
            }
            Segment::Wildcard(rx) => {
                let owned;
                let entries = match listing {
                    Some(l) => l,
                    None => {
                        let Some(l) = list_dir(ctx, &parent.path).await else {
                            return true;
                        };
                        owned = l;
                        &owned[..]
                    }
                };
                for e in entries {
                    if !rx.is_match(&e.name) {
                        continue;
                    }
                    let path = join(&parent.path, &e.name);
                    let link = e.stat.is_symlink();
                    if dironly && !(e.stat.is_dir() || (link && is_dir(ctx, &path).await)) {
                        continue;
                    }
                    let next = Point {
                        path,
                        via_link: parent.via_link || link,
                        mtime: if link {
                            None
                        } else {
                            e.stat.modified.map(py_mtime)
                        },
                    };
                    if !select(ctx, segs, idx + 1, next, None, sink).await {
                        return false;
                    }
                }
                true
            }
            Segment::Recursive => {
                // Pre-order walk of directories, not entering symlinked ones.
                let dedup = repeats(segs, idx);
                if dedup {
                    sink.dedup.push(HashSet::new());
                }
                let more = recursive(ctx, segs, idx, parent, sink).await;
                if dedup && let Some(set) = sink.dedup.pop() {
                    sink.dedup_entries -= set.len();
                }
                more
            }
        }
    })
}

/// The `**` at `segs[idx]`: each directory under `parent` (itself first, pre-order) goes through
/// the selectors after it, with its listing.
async fn recursive(
    ctx: &ToolContext,
    segs: &[Segment],
    idx: usize,
    parent: Point,
    sink: &mut Sink,
) -> bool {
    // Started again from a directory one of its completed walks visited: nothing new below.
    let memo = segs
        .get(..idx)
        .is_some_and(|before| before.iter().any(|s| matches!(s, Segment::Recursive)));
    if memo && sink.walked.contains(&sink.hash_at(idx, &parent.path)) {
        return true;
    }
    let mut visited: Vec<u128> = Vec::new();
    let mut walk = match ctx.sandbox.walk_tree(&parent.path).await {
        Ok(w) => w,
        Err(_) => return select(ctx, segs, idx + 1, parent, None, sink).await,
    };
    // The mtimes of directories listed but not visited yet, when the selectors want them.
    let want_mtimes = yields_start(segs, idx);
    let mut mtimes: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    // Below the start, directories are real ones: through a symlink only if the start was.
    let via_link = parent.via_link;
    let mut first = Some(parent);
    while let Some(item) = walk.next().await {
        let dir = match item {
            Ok(dir) => dir,
            // The start cannot be listed: it is still selected from (as Python yields it
            // before listing it).
            Err(_) => match first.take() {
                Some(p) => return select(ctx, segs, idx + 1, p, None, sink).await,
                None => continue,
            },
        };
        let point = match first.take() {
            Some(p) => p,
            None => Point {
                mtime: mtimes.remove(&dir.path),
                path: dir.path.clone(),
                via_link,
            },
        };
        if memo && visited.len() < MAX_DEDUP_ENTRIES {
            visited.push(sink.hash_at(idx, &point.path));
        }
        if want_mtimes {
            for e in dir.entries.iter().filter(|e| e.stat.is_dir()) {
                if let Some(m) = e.stat.modified {
                    mtimes.insert(join(&dir.path, &e.name), py_mtime(m));
                }
            }
        }
        if !select(ctx, segs, idx + 1, point, Some(&dir.entries), sink).await {
            return false;
        }
    }
    if memo {
        sink.remember_walked(visited);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pat: &str, name: &str) -> bool {
        Regex::new(&fnmatch_to_regex(pat)).unwrap().is_match(name)
    }

    #[test]
    fn mtimes_are_the_floats_python_compares() {
        use std::time::{Duration, UNIX_EPOCH};
        // `3 * 1e-9` is one ulp above `3 / 1e9`: Python's `st_mtime` is the former.
        let t = UNIX_EPOCH + Duration::from_nanos(3);
        assert_eq!(py_mtime(t).to_bits(), (3.0f64 * 1e-9).to_bits());
        assert_ne!(py_mtime(t), Duration::from_nanos(3).as_secs_f64());
        // Before the epoch: floor'd seconds plus positive nanoseconds, as `os.stat` has them.
        assert_eq!(py_mtime(UNIX_EPOCH - Duration::from_millis(1500)), -1.5);
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(py_mtime(t), 1_700_000_000f64 + 123_456_789f64 * 1e-9);
        // ~0.24 µs is one double at today's dates: 100 ns apart can compare equal, as in Python.
        let a = UNIX_EPOCH + Duration::new(1_700_000_000, 10);
        let b = UNIX_EPOCH + Duration::new(1_700_000_000, 110);
        assert_eq!(py_mtime(a), py_mtime(b));
    }

    #[test]
    fn fnmatch_translation_matches_python_semantics() {
        assert!(m("*.txt", "a.txt"));
        assert!(m("*.txt", ".hidden.txt"));
        assert!(!m("*.txt", "a.txt.bak"));
        assert!(m("?.py", "x.py"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[!a-c]x", "bx"));
        assert!(m("[!a-c]x", "dx"));
        assert!(m("[x", "[x"));
        assert!(m("a[-z]", "a-"));
        assert!(!m("[z-a]", "m"));
        assert!(m("a+b.(c)", "a+b.(c)"));
        assert!(!m("*.TXT", "a.txt"));
        // Unclosed sets are literal, found in linear time.
        let many = "[".repeat(100_000);
        assert!(m(&many, &many));
        assert!(m("[!]]x", "ax"));
        assert!(m("[]]", "]"));
    }
}
