//! `grep` (docs/protocol.md §6.5), walking the sandbox through its file API.
//!
//! `grep` is the official built-in walker (this crate never runs `rg`): a Rust `regex` instead of
//! Python `re`. Python spellings the `regex` crate reads differently are rewritten first (a
//! literal `{`, `{,n}`, `\Z`, `[` and `&&` inside a class); look-around and backreferences are
//! not supported, and the text after `grep: invalid regex: ` differs from Python's. Directories
//! are walked depth-first with a directory's files before its subdirectories.
//!
//! It walks each directory's entries in the order its file system lists them
//! ([`Sandbox::read_dirs_unsorted`](cma_sandbox::Sandbox::read_dirs_unsorted)), which is the
//! order Python's `os.scandir` gives the official tool: on the same files the two print the
//! same lines in the same order.
//! A sandbox without a file-system order (in memory) lists by name.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use cma_sandbox::DirEntry;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::path::{resolve_path, workdir};
use super::validate::parse;
use crate::context::ToolContext;
use crate::output::{ToolError, ToolOutput};
use crate::registry::Tool;

/// Most files `grep` reads (`WALK_MAX_ENTRIES`).
pub const WALK_MAX_ENTRIES: usize = 50_000;
/// Output budget of `grep`, in characters (`GREP_OUTPUT_LIMIT`).
pub const GREP_OUTPUT_LIMIT: usize = 100 * 1024;
/// Longest line `grep` matches, in bytes with its newline (`GREP_MAX_LINE_LENGTH`).
pub const GREP_MAX_LINE_LENGTH: usize = 2000;
/// Time budget of one `grep` walk (wall clock here; CPU time in the official tool).
pub const GREP_TIMEOUT: Duration = Duration::from_secs(30);

const NO_MATCHES: &str = "no matches";

#[derive(Deserialize)]
struct SearchInput {
    pattern: String,
    path: Option<String>,
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

fn join(parent: &str, name: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
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
}
