//! Loads the test vectors produced by the official `anthropic` SDK 2.10.0
//! (`shared/vectors/sdk-test-vectors.md`) so tests read expected values from the file instead of
//! restating them.
//!
//! The file lives in the `shared/` folder next to the checkout. It is found, in order, through the
//! `CMA_VECTORS` environment variable (path to the `.md` file), then by walking up from this crate's
//! directory looking for `shared/vectors/sdk-test-vectors.md`.
//!
//! ```no_run
//! let v = cma_vectors::Vectors::load();
//! for row in v.section("## 7.").tables()[0].rows() {
//!     println!("{} -> {:?}", row.get("#"), row.code("Expected `webhook-signature`"));
//! }
//! ```
//!
//! This is a test-support crate: loading panics with a clear message when the file is missing or a
//! requested section does not exist, because a test without its vectors must fail loudly.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

/// File name of the vectors document.
pub const FILE_NAME: &str = "sdk-test-vectors.md";

/// The whole vectors document.
#[derive(Debug, Clone)]
pub struct Vectors {
    text: String,
    path: PathBuf,
}

/// Locate the vectors file without reading it.
pub fn locate() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CMA_VECTORS") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    // The running test's directory first (cargo runs tests in their package's directory): a
    // shared target dir may hold this crate compiled from another checkout, so the compile-time
    // manifest dir alone could point at the wrong place.
    let here = std::env::current_dir().ok();
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.iter()
        .map(PathBuf::as_path)
        .chain(std::iter::once(compiled))
        .flat_map(Path::ancestors)
        .map(|dir| dir.join("shared").join("vectors").join(FILE_NAME))
        .find(|p| p.is_file())
}

impl Vectors {
    /// Load the vectors file; panics with a clear message if it cannot be found.
    pub fn load() -> Self {
        let path = locate().unwrap_or_else(|| {
            panic!(
                "cannot find {FILE_NAME}: set CMA_VECTORS or place the `shared/` folder next to the checkout"
            )
        });
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Self { text, path }
    }

    /// Parse vectors from a string (for tests of this crate).
    pub fn from_text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            path: PathBuf::new(),
        }
    }

    /// Where the file was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The section whose heading line starts with `heading` (e.g. `"## 7."` or `"### 9.1"`), up to the
    /// next heading of the same or a higher level. Panics if there is no such heading.
    pub fn section(&self, heading: &str) -> Section {
        self.try_section(heading).unwrap_or_else(|| {
            panic!(
                "no section starting with {heading:?} in {}",
                self.path.display()
            )
        })
    }

    /// Like [`Vectors::section`], returning `None` when absent.
    pub fn try_section(&self, heading: &str) -> Option<Section> {
        let level = heading.chars().take_while(|c| *c == '#').count();
        let mut lines = self.text.lines();
        let mut out = Vec::new();
        for line in lines.by_ref() {
            if line.starts_with(heading) {
                out.push(line);
                break;
            }
        }
        if out.is_empty() {
            return None;
        }
        for line in lines {
            let l = line.chars().take_while(|c| *c == '#').count();
            if l > 0 && l <= level && line[l..].starts_with(' ') {
                break;
            }
            out.push(line);
        }
        Some(Section {
            text: out.join("\n"),
        })
    }
}

/// A part of the document.
#[derive(Debug, Clone)]
pub struct Section {
    text: String,
}

impl Section {
    /// The section's text, heading included.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every markdown table in the section, in order.
    pub fn tables(&self) -> Vec<Table> {
        let mut tables = Vec::new();
        let mut current: Vec<&str> = Vec::new();
        let in_fence = &mut false;
        for line in self.text.lines() {
            if line.trim_start().starts_with("```") {
                *in_fence = !*in_fence;
            }
            let t = line.trim();
            if !*in_fence && t.starts_with('|') {
                current.push(t);
            } else if !current.is_empty() {
                tables.extend(Table::parse(&current));
                current.clear();
            }
        }
        if !current.is_empty() {
            tables.extend(Table::parse(&current));
        }
        tables
    }

    /// The first table; panics if the section has none.
    pub fn table(&self) -> Table {
        self.tables()
            .into_iter()
            .next()
            .expect("section has no table")
    }

    /// The contents of every fenced code block (without the fences), in order.
    pub fn code_blocks(&self) -> Vec<String> {
        let mut blocks = Vec::new();
        let mut current: Option<Vec<&str>> = None;
        for line in self.text.lines() {
            if line.trim_start().starts_with("```") {
                match current.take() {
                    Some(lines) => blocks.push(lines.join("\n")),
                    None => current = Some(Vec::new()),
                }
            } else if let Some(lines) = current.as_mut() {
                lines.push(line);
            }
        }
        blocks
    }

    /// The row (in any table of the section) whose first cell is `id` (e.g. `"S1"`).
    pub fn row(&self, id: &str) -> Row {
        self.tables()
            .into_iter()
            .flat_map(|t| t.rows)
            .find(|r| r.cells.first().map(|c| c.1.as_str()) == Some(id))
            .unwrap_or_else(|| panic!("no row {id:?} in section"))
    }
}

/// A markdown table.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Row>,
}

impl Table {
    fn parse(lines: &[&str]) -> Option<Self> {
        let headers = split_row(lines.first()?);
        let is_rule = |l: &str| l.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '));
        let body = lines.iter().skip(1).filter(|l| !is_rule(l));
        let rows = body
            .map(|l| {
                let cells = split_row(l);
                Row {
                    cells: headers
                        .iter()
                        .cloned()
                        .zip(cells.into_iter().chain(std::iter::repeat(String::new())))
                        .collect(),
                }
            })
            .collect();
        Some(Self { headers, rows })
    }

    /// Column names.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// Body rows.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }
}

/// Split a table line into cells on unescaped `|`, turning `\|` into `|`.
fn split_row(line: &str) -> Vec<String> {
    let inner = line.trim();
    let inner = inner.strip_prefix('|').unwrap_or(inner);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cur.push('|');
                chars.next();
            }
            '|' => cells.push(std::mem::take(&mut cur).trim().to_owned()),
            c => cur.push(c),
        }
    }
    cells.push(cur.trim().to_owned());
    cells
}

/// One table row: cells keyed by column name.
#[derive(Debug, Clone)]
pub struct Row {
    cells: Vec<(String, String)>,
}

impl Row {
    /// The raw cell text of `column` (markdown included); panics if the table has no such column.
    pub fn get(&self, column: &str) -> &str {
        self.try_get(column)
            .unwrap_or_else(|| panic!("no column {column:?} in row {:?}", self.cells))
    }

    /// The raw cell text of `column`, if the column exists.
    pub fn try_get(&self, column: &str) -> Option<&str> {
        self.cells
            .iter()
            .find(|(h, _)| h == column)
            .map(|(_, v)| v.as_str())
    }

    /// The first cell (usually the vector id).
    pub fn id(&self) -> &str {
        self.cells.first().map(|c| c.1.as_str()).unwrap_or_default()
    }

    /// The contents of the first backtick code span in `column`, verbatim (no unescaping).
    pub fn code(&self, column: &str) -> Option<String> {
        code_spans(self.get(column)).into_iter().next()
    }

    /// The contents of every backtick code span in `column`, verbatim.
    pub fn codes(&self, column: &str) -> Vec<String> {
        code_spans(self.get(column))
    }

    /// All `(column, cell)` pairs.
    pub fn cells(&self) -> &[(String, String)] {
        &self.cells
    }
}

/// Every backtick code span of a markdown fragment (single or double backtick delimiters).
pub fn code_spans(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'`' {
            let mut n = 0;
            while i + n < bytes.len() && bytes[i + n] == b'`' {
                n += 1;
            }
            let delim = &text[i..i + n];
            let start = i + n;
            if let Some(end) = text[start..].find(delim) {
                let mut span = &text[start..start + end];
                if n > 1 {
                    span = span.strip_prefix(' ').unwrap_or(span);
                    span = span.strip_suffix(' ').unwrap_or(span);
                }
                out.push(span.to_owned());
                i = start + end + n;
                continue;
            }
            i = start;
        } else {
            i += 1;
        }
    }
    out
}

/// Interpret the escapes the vectors file uses inside code spans to show control bytes:
/// `\n`, `\r`, `\t`, `\0`, `\\`, `\033` / `\x1b` (ESC), `\xNN`. Other backslashes are kept.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some('n') => {
                chars.next();
                out.push('\n');
            }
            Some('r') => {
                chars.next();
                out.push('\r');
            }
            Some('t') => {
                chars.next();
                out.push('\t');
            }
            Some('\\') => {
                chars.next();
                out.push('\\');
            }
            Some('0') => {
                chars.next();
                if chars.peek() == Some(&'3') {
                    let rest: String = chars.clone().take(2).collect();
                    if rest == "33" {
                        chars.next();
                        chars.next();
                        out.push('\u{1b}');
                        continue;
                    }
                }
                out.push('\0');
            }
            Some('x') => {
                let hex: String = chars.clone().skip(1).take(2).collect();
                match u8::from_str_radix(&hex, 16) {
                    Ok(b) if hex.len() == 2 => {
                        chars.next();
                        chars.next();
                        chars.next();
                        out.push(char::from(b));
                    }
                    _ => out.push('\\'),
                }
            }
            _ => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# T\n\n## 1. One\n\n| # | a | b |\n|---|---|---|\n| R1 | `x \\| y` | text `p` and `q` |\n| R2 | `` a`b `` | |\n\n### 1.1 Sub\n```\ncode\n```\n## 2. Two\n| # | c |\n|--|--|\n| S1 | `v1,abc=` |\n";

    #[test]
    fn sections_tables_rows_and_code_spans() {
        let v = Vectors::from_text(DOC);
        let s = v.section("## 1.");
        assert!(s.text().contains("### 1.1"));
        assert!(!s.text().contains("## 2."));
        let t = s.table();
        assert_eq!(t.headers(), ["#", "a", "b"]);
        assert_eq!(t.rows()[0].code("a").as_deref(), Some("x | y"));
        assert_eq!(t.rows()[0].codes("b"), vec!["p", "q"]);
        assert_eq!(t.rows()[1].code("a").as_deref(), Some("a`b"));
        assert_eq!(s.code_blocks(), vec!["code"]);
        assert_eq!(
            v.section("## 2.").row("S1").code("c").as_deref(),
            Some("v1,abc=")
        );
        assert!(v.try_section("## 3.").is_none());
    }

    #[test]
    fn unescape_handles_the_files_escapes() {
        assert_eq!(unescape(r"a\nb\r\n\tc\\d"), "a\nb\r\n\tc\\d");
        assert_eq!(unescape(r"\033[31m"), "\u{1b}[31m");
        assert_eq!(unescape(r"\x1b!"), "\u{1b}!");
        assert_eq!(unescape(r"\q"), "\\q");
    }

    #[test]
    fn the_real_file_is_found_and_has_the_sections_tests_use() {
        let v = Vectors::load();
        for h in [
            "## 1.", "## 2.", "## 3.", "## 5.", "## 6.", "## 7.", "## 8.", "### 9.1", "## 10.",
        ] {
            assert!(!v.section(h).text().is_empty(), "{h}");
        }
        assert_eq!(
            v.section("## 7.").row("S1").code("webhook-id").as_deref(),
            Some("msg_01")
        );
    }
}
