//! `glob` and `grep` (docs/protocol.md §6.5), walking the sandbox through its file API.
//!
//! `glob` reproduces Python 3.11 `Path.glob`: `*`, `?` and `[…]` match within one name (hidden
//! names included, case-sensitive), `**` is a whole component matching the directory itself and
//! every directory below it without entering symlinked directories, a trailing `/` keeps only
//! directories. At most 50 000 matches are collected, those whose canonical path leaves the
//! search root are dropped, the rest are sorted newest-mtime first and the first 200 printed as
//! absolute sandbox paths. The mtime is compared as Python's `st_mtime` float (seconds plus
//! nanoseconds × 1e-9, so times less than ~0.2 µs apart can be equal), and equal mtimes keep
//! the walk's order.
//!
//! `grep` is the official built-in walker (this crate never runs `rg`): a Rust `regex` instead of
//! Python `re`. Python spellings the `regex` crate reads differently are rewritten first (a
//! literal `{`, `{,n}`, `\Z`, `[` and `&&` inside a class); look-around and backreferences are
//! not supported, and the text after `grep: invalid regex: ` differs from Python's. Directories
//! are walked depth-first with a directory's files before its subdirectories.
//!
//! Both walk each directory's entries in the order its file system lists them
//! ([`Sandbox::read_dirs_unsorted`](cma_sandbox::Sandbox::read_dirs_unsorted)), which is the
//! order Python's `os.scandir` gives the official tools: on the same files the two print the
//! same lines in the same order, also for entries written in the same instant (equal mtimes).
//! A sandbox without a file-system order (in memory) lists by name.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use cma_sandbox::DirEntry;
use futures::future::BoxFuture;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::path::{canonicalize, resolve_path, within, workdir};
use super::validate::parse;
use crate::context::ToolContext;
use crate::output::{ToolError, ToolOutput};
use crate::registry::Tool;

/// Most paths `glob` prints (`GLOB_RESULT_LIMIT`).
pub const GLOB_RESULT_LIMIT: usize = 200;
/// Most glob matches collected, and most files `grep` reads (`WALK_MAX_ENTRIES`).
pub const WALK_MAX_ENTRIES: usize = 50_000;
/// Output budget of `grep`, in characters (`GREP_OUTPUT_LIMIT`).
pub const GREP_OUTPUT_LIMIT: usize = 100 * 1024;
/// Longest line `grep` matches, in bytes with its newline (`GREP_MAX_LINE_LENGTH`).
pub const GREP_MAX_LINE_LENGTH: usize = 2000;
/// Time budget of one `grep` walk (wall clock here; CPU time in the official tool).
pub const GREP_TIMEOUT: Duration = Duration::from_secs(30);

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
struct SearchInput {
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
        let SearchInput { pattern, path } = parse("glob", &super::glob_schema(), input)?;
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
        let mut segments = Vec::with_capacity(parts.len());
        for p in &parts {
            segments.push(Segment::parse(p)?);
        }
        let mut matches = Vec::new();
        if ctx.sandbox.stat(&root).await.is_ok_and(|s| s.is_dir()) {
            select(ctx, &segments, 0, root.clone(), &mut matches).await;
        }
        let mut kept: Vec<(String, f64)> = Vec::new();
        for m in matches {
            let Ok(canonical) = canonicalize(ctx, &m).await else {
                continue;
            };
            if !within(&canonical, &root) {
                continue;
            }
            let mtime = match ctx.sandbox.stat(&m).await {
                Ok(st) => st.modified.map_or(0.0, py_mtime),
                Err(_) => 0.0,
            };
            kept.push((m, mtime));
        }
        if kept.is_empty() {
            return Ok(ToolOutput::text(NO_MATCHES));
        }
        // Stable: equal mtimes keep walk order, as Python's `sort(reverse=True)`.
        kept.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
        let lines: Vec<&str> = kept
            .iter()
            .take(GLOB_RESULT_LIMIT)
            .map(|(p, _)| p.as_str())
            .collect();
        Ok(ToolOutput::Text(lines.join("\n")))
    }
}

/// One component of a glob pattern.
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
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
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

/// Python's selector chain: append matches of `segs[idx..]` under `parent` to `out`.
fn select<'a>(
    ctx: &'a ToolContext,
    segs: &'a [Segment],
    idx: usize,
    parent: String,
    out: &'a mut Vec<String>,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        if out.len() >= WALK_MAX_ENTRIES {
            return;
        }
        let Some(seg) = segs.get(idx) else {
            out.push(parent);
            return;
        };
        let dironly = idx + 1 < segs.len();
        match seg {
            Segment::Precise(name) => {
                // A trailing `/` (empty name) selects `parent` itself when it is a directory;
                // pathlib prints it without the slash.
                let path = if name.is_empty() {
                    parent.clone()
                } else {
                    join(&parent, name)
                };
                let dironly = dironly || name.is_empty();
                let ok = match ctx.sandbox.stat(&path).await {
                    Ok(st) => !dironly || st.is_dir(),
                    Err(_) => false,
                };
                if ok {
                    select(ctx, segs, idx + 1, path, out).await;
                }
            }
            Segment::Wildcard(rx) => {
                let Some(entries) = list_dir(ctx, &parent).await else {
                    return;
                };
                for e in entries {
                    if out.len() >= WALK_MAX_ENTRIES {
                        return;
                    }
                    let path = join(&parent, &e.name);
                    if dironly {
                        let dir =
                            e.stat.is_dir() || (e.stat.is_symlink() && is_dir(ctx, &path).await);
                        if !dir {
                            continue;
                        }
                    }
                    if rx.is_match(&e.name) {
                        select(ctx, segs, idx + 1, path, out).await;
                    }
                }
            }
            Segment::Recursive => {
                let mut yielded: HashSet<String> = HashSet::new();
                // Pre-order walk of directories, not entering symlinked ones.
                let mut stack = vec![parent];
                while let Some(dir) = stack.pop() {
                    if out.len() >= WALK_MAX_ENTRIES {
                        return;
                    }
                    let mut found = Vec::new();
                    select(ctx, segs, idx + 1, dir.clone(), &mut found).await;
                    for p in found {
                        if out.len() >= WALK_MAX_ENTRIES {
                            return;
                        }
                        if yielded.insert(p.clone()) {
                            out.push(p);
                        }
                    }
                    if let Some(entries) = list_dir(ctx, &dir).await {
                        for e in entries.iter().rev() {
                            if e.stat.is_dir() {
                                stack.push(join(&dir, &e.name));
                            }
                        }
                    }
                }
            }
        }
    })
}

/// The official `grep` tool (built-in walker).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrepTool;

#[async_trait]
impl Tool for GrepTool {
    fn name(&self) -> &str {
        "grep"
    }
    fn description(&self) -> &str {
        "Search file contents for a regular expression."
    }
    fn input_schema(&self) -> Value {
        super::grep_schema()
    }

    async fn call(&self, ctx: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let SearchInput { pattern, path } = parse("grep", &super::grep_schema(), input)?;
        let search = match path.as_deref() {
            Some(p) if !p.is_empty() => resolve_path(ctx, p)
                .await
                .map_err(|e| ToolError::msg(format!("grep: {e}")))?,
            _ => workdir(ctx).await,
        };
        let rx = Regex::new(&python_regex_to_rust(&pattern)).map_err(|e| {
            ToolError::msg(format!("grep: invalid regex: {}", regex_error_text(&e)))
        })?;
        // A pattern without any regex syntax matches a line exactly when the line contains it:
        // a file whose bytes do not contain it at all has no match (one fast scan per file).
        let literal = (regex::escape(&pattern) == pattern
            && !pattern.is_empty()
            && !pattern.contains(['\n', '\r', '\u{FFFD}']))
        .then(|| regex::bytes::Regex::new(&regex::escape(&pattern)).ok())
        .flatten();
        let needle = literal.is_some().then(|| pattern.clone());
        let mut walk = Walk {
            rx,
            literal,
            needle,
            skip_files: 0,
            hits: Vec::new(),
            budget: GREP_OUTPUT_LIMIT as i64,
            deadline: Instant::now() + GREP_TIMEOUT,
        };
        walk.run(ctx, &search).await?;
        if walk.hits.is_empty() {
            return Ok(ToolOutput::text(NO_MATCHES));
        }
        Ok(ToolOutput::Text(walk.hits.join("\n")))
    }
}

/// Rewrite the parts of Python `re` syntax that the `regex` crate reads differently: a `{` that
/// does not start a valid repetition is a literal (`fn main() {`), `{,n}` means `{0,n}`, `\Z` is
/// `\z`, and inside a class `[` and the set operators `&&`/`~~` are literal characters.
fn python_regex_to_rust(p: &str) -> String {
    let chars: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                match chars.get(i + 1) {
                    Some('Z') => out.push_str("\\z"),
                    Some(n) => {
                        out.push('\\');
                        out.push(*n);
                    }
                    None => out.push('\\'),
                }
                i += 2;
            }
            '[' => {
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                if chars.get(i) == Some(&']') {
                    out.push_str("\\]");
                    i += 1;
                }
                while i < chars.len() && chars[i] != ']' {
                    match chars[i] {
                        '\\' if i + 1 < chars.len() => {
                            out.push('\\');
                            out.push(chars[i + 1]);
                            i += 2;
                            continue;
                        }
                        '[' => out.push_str("\\["),
                        '&' | '~' if chars.get(i + 1) == Some(&chars[i]) => {
                            out.push('\\');
                            out.push(chars[i]);
                        }
                        ch => out.push(ch),
                    }
                    i += 1;
                }
                if i < chars.len() {
                    out.push(']');
                    i += 1;
                }
            }
            '{' => {
                let mut j = i + 1;
                let lo_start = j;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                let lo: String = chars[lo_start..j].iter().collect();
                let mut hi: Option<String> = None;
                if chars.get(j) == Some(&',') {
                    j += 1;
                    let hi_start = j;
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                    hi = Some(chars[hi_start..j].iter().collect());
                }
                let closed = chars.get(j) == Some(&'}');
                let empty = lo.is_empty() && hi.is_none();
                if closed && !empty {
                    let lo = if lo.is_empty() { "0".to_owned() } else { lo };
                    match hi {
                        None => out.push_str(&format!("{{{lo}}}")),
                        Some(h) => out.push_str(&format!("{{{lo},{h}}}")),
                    }
                    i = j + 1;
                } else {
                    out.push_str("\\{");
                    i += 1;
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The last line of a `regex` error ("error: unclosed group" → "unclosed group").
fn regex_error_text(e: &regex::Error) -> String {
    let s = e.to_string();
    let last = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(&s);
    last.trim().trim_start_matches("error: ").to_owned()
}

struct Walk {
    rx: Regex,
    /// The pattern as a byte search, when it is a plain literal: files without it are skipped.
    literal: Option<regex::bytes::Regex>,
    /// The same literal, searched for inside the sandbox
    /// ([`Sandbox::find_lines`](cma_sandbox::Sandbox::find_lines)): only its lines come back.
    needle: Option<String>,
    /// Regular files (in walk order) the sandbox already searched.
    skip_files: usize,
    hits: Vec<String>,
    budget: i64,
    deadline: Instant,
}

/// Whether the walk goes on.
enum Flow {
    Continue,
    Stop,
}

impl Walk {
    fn timed_out(&self) -> Result<(), ToolError> {
        if Instant::now() >= self.deadline {
            Err(ToolError::msg(format!(
                "grep: timed out after {}s",
                GREP_TIMEOUT.as_secs()
            )))
        } else {
            Ok(())
        }
    }

    fn push(&mut self, line: String) -> Flow {
        self.budget -= line.chars().count() as i64 + 1;
        if self.budget < 0 {
            self.hits
                .push(format!("[output truncated at {GREP_OUTPUT_LIMIT} bytes]"));
            return Flow::Stop;
        }
        self.hits.push(line);
        Flow::Continue
    }

    async fn run(&mut self, ctx: &ToolContext, search: &str) -> Result<(), ToolError> {
        let needle = self.needle.clone().unwrap_or_default();
        if let Flow::Stop = self.search_tree(ctx, search, &needle).await? {
            return Ok(());
        }
        // Listing the search path first tells a directory (the usual case) without a `stat`;
        // anything else is looked at the way `stat` sees it.
        let first = ctx
            .sandbox
            .read_dirs_unsorted(&[search.to_owned()])
            .await
            .ok()
            .and_then(|mut r| r.pop());
        let root_entries = match first {
            Some(Ok(entries)) => Some(entries),
            _ => {
                let Ok(st) = ctx.sandbox.stat(search).await else {
                    return Ok(());
                };
                if st.is_file() {
                    self.scan(ctx, search).await?;
                    return Ok(());
                }
                if !st.is_dir() {
                    return Ok(());
                }
                None
            }
        };
        // Depth first, a directory's files before its subdirectories. Listings are fetched
        // ahead for the next directories on the stack and small files are read in batches
        // across directories: on a backend where each call is a round trip (Docker), a whole
        // tree costs a few calls. Reading ahead never changes the output, only what is read.
        let mut seen = 0usize;
        let mut stack = vec![search.to_owned()];
        let mut listed: HashMap<String, Option<Vec<DirEntry>>> = HashMap::new();
        if let Some(entries) = root_entries {
            listed.insert(search.to_owned(), Some(entries));
        }
        let mut pending: Vec<(String, u64)> = Vec::new();
        let mut pending_bytes = 0u64;
        while let Some(dir) = stack.pop() {
            self.timed_out()?;
            let entries = match listed.remove(&dir) {
                Some(e) => e,
                None => {
                    let mut batch = vec![dir.clone()];
                    batch.extend(
                        stack
                            .iter()
                            .rev()
                            .filter(|d| !listed.contains_key(*d))
                            .take(LIST_BATCH - 1)
                            .cloned(),
                    );
                    match ctx.sandbox.read_dirs_unsorted(&batch).await {
                        Ok(results) => {
                            let mut all = batch.into_iter().zip(results);
                            let first = all.next().and_then(|(_, r)| r.ok());
                            for (d, r) in all {
                                listed.insert(d, r.ok());
                            }
                            first
                        }
                        Err(_) => list_dir(ctx, &dir).await,
                    }
                }
            };
            let Some(entries) = entries else {
                continue;
            };
            let mut subdirs = Vec::new();
            for e in &entries {
                let full = join(&dir, &e.name);
                if e.stat.is_dir() {
                    if e.name != ".git" && e.name != "node_modules" {
                        subdirs.push(full);
                    }
                    continue;
                }
                // Symlinks (to files or directories), FIFOs, devices: never read.
                if !e.stat.is_file() {
                    continue;
                }
                seen += 1;
                if seen > WALK_MAX_ENTRIES {
                    // The files before the cap are still searched, in order.
                    self.scan_files(ctx, pending).await?;
                    return Ok(());
                }
                if seen <= self.skip_files {
                    // Searched by the sandbox already.
                    continue;
                }
                if e.stat.size <= SMALL_FILE {
                    pending_bytes += e.stat.size;
                }
                pending.push((full, e.stat.size));
                if pending_bytes >= BATCH_BYTES || pending.len() >= BATCH_FILES {
                    pending_bytes = 0;
                    if let Flow::Stop = self.scan_files(ctx, std::mem::take(&mut pending)).await? {
                        return Ok(());
                    }
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        self.scan_files(ctx, pending).await?;
        Ok(())
    }

    /// The walk done by the sandbox itself in one call
    /// ([`Sandbox::search_tree`](cma_sandbox::Sandbox::search_tree)), same order and rules as
    /// below: for a plain literal only the lines holding it come back, for a regex the text
    /// files' contents. `Stop`: done (walk complete or output full). `Continue`: go on the
    /// usual way (the sandbox cannot, the path is not a directory, or its walk stopped at its
    /// output bound: then the files it went through are skipped).
    async fn search_tree(
        &mut self,
        ctx: &ToolContext,
        search: &str,
        needle: &str,
    ) -> Result<Flow, ToolError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let mut opts = cma_sandbox::TreeSearch::new(
            WALK_MAX_ENTRIES,
            SMALL_FILE,
            GREP_MAX_LINE_LENGTH,
            if needle.is_empty() {
                TREE_CONTENT_BYTES
            } else {
                4 * GREP_OUTPUT_LIMIT
            },
            left,
        );
        opts.skip_dirs = vec![".git".into(), "node_modules".into()];
        let found = match ctx.sandbox.search_tree(search, needle, &opts).await {
            Ok(found) => found,
            Err(e) if e.kind() == cma_sandbox::SandboxErrorKind::Timeout => {
                self.timed_out()?;
                return Err(ToolError::msg(format!(
                    "grep: timed out after {}s",
                    GREP_TIMEOUT.as_secs()
                )));
            }
            Err(_) => return Ok(Flow::Continue),
        };
        for item in &found.items {
            let flow = match item {
                cma_sandbox::TreeMatch::Lines { path, found } => self.take_found(path, found),
                cma_sandbox::TreeMatch::Contents { path, data } => self.scan_bytes(path, data),
                cma_sandbox::TreeMatch::Large { path } => self.scan(ctx, path).await?,
                _ => Flow::Continue,
            };
            if let Flow::Stop = flow {
                return Ok(Flow::Stop);
            }
        }
        if found.complete {
            return Ok(Flow::Stop);
        }
        self.skip_files = found.files_seen;
        Ok(Flow::Continue)
    }

    /// Search `files` (path, size from the listing) in order. Small ones are read in batches
    /// ([`Sandbox::read_files`](cma_sandbox::Sandbox::read_files): one round trip on backends
    /// where every call costs one), bounded by [`BATCH_BYTES`]; bigger ones are streamed.
    async fn scan_files(
        &mut self,
        ctx: &ToolContext,
        files: Vec<(String, u64)>,
    ) -> Result<Flow, ToolError> {
        let mut i = 0;
        while i < files.len() {
            self.timed_out()?;
            if files[i].1 > SMALL_FILE {
                if let Flow::Stop = self.scan(ctx, &files[i].0).await? {
                    return Ok(Flow::Stop);
                }
                i += 1;
                continue;
            }
            let mut batch = Vec::new();
            let mut bytes = 0u64;
            while i < files.len()
                && files[i].1 <= SMALL_FILE
                && (batch.is_empty() || bytes + files[i].1 <= BATCH_BYTES)
            {
                bytes += files[i].1;
                batch.push(files[i].0.clone());
                i += 1;
            }
            if let Some(needle) = self.needle.clone() {
                let found = ctx
                    .sandbox
                    .find_lines(&batch, &needle, SMALL_FILE, GREP_MAX_LINE_LENGTH)
                    .await;
                let Ok(found) = found else {
                    for full in &batch {
                        if let Flow::Stop = self.scan(ctx, full).await? {
                            return Ok(Flow::Stop);
                        }
                    }
                    continue;
                };
                for (full, r) in batch.iter().zip(found) {
                    let flow = match r {
                        Ok(found) => self.take_found(full, &found),
                        Err(e) if e.kind() == cma_sandbox::SandboxErrorKind::TooLarge => {
                            self.scan(ctx, full).await?
                        }
                        Err(_) => Flow::Continue,
                    };
                    if let Flow::Stop = flow {
                        return Ok(Flow::Stop);
                    }
                }
                continue;
            }
            let Ok(results) = ctx.sandbox.read_files(&batch, SMALL_FILE).await else {
                // The batch failed as a whole: search each file on its own.
                for full in &batch {
                    if let Flow::Stop = self.scan(ctx, full).await? {
                        return Ok(Flow::Stop);
                    }
                }
                continue;
            };
            for (full, r) in batch.iter().zip(results) {
                let flow = match r {
                    Ok(data) => self.scan_bytes(full, &data),
                    // Grew past the batch cap since it was listed: stream it.
                    Err(e) if e.kind() == cma_sandbox::SandboxErrorKind::TooLarge => {
                        self.scan(ctx, full).await?
                    }
                    Err(_) => Flow::Continue,
                };
                if let Flow::Stop = flow {
                    return Ok(Flow::Stop);
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Match the lines the sandbox found for the literal (the same rules as [`Walk::scan`]:
    /// binary files skipped, over-long lines not matched).
    fn take_found(&mut self, full: &str, found: &cma_sandbox::FoundLines) -> Flow {
        if found.binary {
            return Flow::Continue;
        }
        for l in &found.lines {
            let len = usize::try_from(l.len).unwrap_or(usize::MAX);
            let fits = if l.terminated {
                len < GREP_MAX_LINE_LENGTH
            } else {
                len <= GREP_MAX_LINE_LENGTH
            };
            if fits && let Flow::Stop = self.check(full, l.number, &l.text) {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Search one file already in memory (the same rules as [`Walk::scan`]).
    fn scan_bytes(&mut self, full: &str, data: &[u8]) -> Flow {
        if data[..data.len().min(512)].contains(&0) {
            return Flow::Continue;
        }
        if let Some(lit) = &self.literal
            && !lit.is_match(data)
        {
            return Flow::Continue;
        }
        let mut lines = Lines::default();
        if let Flow::Stop = lines.feed(self, full, data) {
            return Flow::Stop;
        }
        lines.finish(self, full)
    }

    /// Search one file: skipped when its first 512 bytes hold a NUL; lines over 2000 bytes
    /// (newline included) are not matched but still counted.
    async fn scan(&mut self, ctx: &ToolContext, full: &str) -> Result<Flow, ToolError> {
        let Ok(mut reader) = ctx.sandbox.open_read(full).await else {
            return Ok(Flow::Continue);
        };
        let mut chunk = vec![0u8; 64 * 1024];
        let mut head = Vec::new();
        let mut eof = false;
        while head.len() < 512 {
            match reader.read(&mut chunk).await {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(_) => return Ok(Flow::Continue),
            }
        }
        if head[..head.len().min(512)].contains(&0) {
            return Ok(Flow::Continue);
        }
        let mut lines = Lines::default();
        if let Flow::Stop = lines.feed(self, full, &head) {
            return Ok(Flow::Stop);
        }
        while !eof {
            self.timed_out()?;
            match reader.read(&mut chunk).await {
                Ok(0) => eof = true,
                Ok(n) => {
                    if let Flow::Stop = lines.feed(self, full, &chunk[..n]) {
                        return Ok(Flow::Stop);
                    }
                }
                Err(_) => return Ok(Flow::Continue),
            }
        }
        Ok(lines.finish(self, full))
    }

    fn check(&mut self, full: &str, lineno: u64, raw: &[u8]) -> Flow {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches(['\r', '\n']);
        if self.rx.is_match(text) {
            return self.push(format!("{full}:{lineno}:{text}"));
        }
        Flow::Continue
    }
}

/// Files up to this size are read whole in batches; bigger ones are streamed.
const SMALL_FILE: u64 = 256 * 1024;
/// Most listed bytes read in one batch.
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Most bytes of file contents one `search_tree` call brings back (regex patterns).
const TREE_CONTENT_BYTES: usize = 8 * 1024 * 1024;
/// Most files read in one batch.
const BATCH_FILES: usize = 1024;
/// Most directories listed in one batch.
const LIST_BATCH: usize = 64;

/// Splits a file's bytes into lines and matches them.
#[derive(Default)]
struct Lines {
    line: Vec<u8>,
    line_len: usize,
    lineno: u64,
}

impl Lines {
    fn feed(&mut self, walk: &mut Walk, full: &str, bytes: &[u8]) -> Flow {
        for &b in bytes {
            if b == b'\n' {
                self.lineno += 1;
                if self.line_len < GREP_MAX_LINE_LENGTH
                    && let Flow::Stop = walk.check(full, self.lineno, &self.line)
                {
                    return Flow::Stop;
                }
                self.line.clear();
                self.line_len = 0;
            } else {
                self.line_len += 1;
                if self.line_len <= GREP_MAX_LINE_LENGTH {
                    self.line.push(b);
                }
            }
        }
        Flow::Continue
    }

    /// The last line when the file does not end with a newline.
    fn finish(&mut self, walk: &mut Walk, full: &str) -> Flow {
        if self.line_len > 0 {
            self.lineno += 1;
            if self.line_len <= GREP_MAX_LINE_LENGTH {
                return walk.check(full, self.lineno, &self.line);
            }
        }
        Flow::Continue
    }
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
    fn python_regex_syntax_is_translated() {
        let t = |p: &str, hay: &str| Regex::new(&python_regex_to_rust(p)).unwrap().is_match(hay);
        assert!(t("fn main() {", "fn main {"));
        assert!(t("a{", "a{"));
        assert!(t("{}", "{}"));
        assert!(t("^x{1,2}$", "xx"));
        assert!(t("^a{,3}$", "aaa"));
        assert!(!t("^a{,3}$", "aaaa"));
        assert!(t("^a{2}$", "aa"));
        assert!(t(r"foo\Z", "a foo"));
        assert!(!t(r"foo\Z", "foo bar"));
        assert!(t("[a&&b]", "&"));
        assert!(t("[]x]", "]"));
        assert!(t(r"[\]]", "]"));
        assert!(t(r"\d+\.\d", "v1.2"));
        assert!(Regex::new(&python_regex_to_rust("(")).is_err());
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
    }
}
