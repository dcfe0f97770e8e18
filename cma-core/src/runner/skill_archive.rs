//! Extracting a skill archive in memory: zip, tar or gzip-compressed tar, all hostile until
//! proven otherwise.
//!
//! The formats are parsed by well-kept crates, never by hand: zip by [`zip`] (deflate through
//! `flate2` as its only codec), tar by [`tar`], gzip by [`flate2`]. This module only applies the
//! policy on top:
//!
//! * **Bounds** ([`SkillLimits`]): entries, bytes per file, bytes per archive; a zip's central
//!   directory is not even parsed when the archive names more entries than the limit; a member
//!   or a gzip stream that inflates more than [`MAX_COMPRESSION_RATIO`] times its compressed size
//!   (past [`RATIO_FLOOR`]) is a decompression bomb; declared sizes are checked against what
//!   actually comes out (a member that lies about its size is refused).
//! * **Names** ([`safe_member_name`]): no absolute paths, no `..`, no NUL or control characters,
//!   at most [`MAX_PATH_DEPTH`] components of at most [`MAX_COMPONENT_BYTES`] bytes, at most
//!   [`MAX_PATH_BYTES`] in all; two members may not land on the same path, nor a file where
//!   another member needs a directory.
//! * **Kinds**: regular files and directories are extracted; symlinks, hard links, devices,
//!   FIFOs and sockets are skipped (their names are still screened); encrypted zip members,
//!   overlapping zip members and duplicate zip names fail the archive.
//!
//! A single top-level directory shared by every entry (the usual `<skill>/…` wrapper) is
//! stripped.

use std::collections::HashSet;
use std::io::{Cursor, Read};

use bytes::Bytes;

use super::skills::SkillError;

/// Most components of a member's path.
pub const MAX_PATH_DEPTH: usize = 32;
/// Longest component of a member's path, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Longest member path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Largest ratio of inflated to compressed bytes accepted past [`RATIO_FLOOR`] (deflate can
/// reach about 1000; real files rarely pass 20).
pub const MAX_COMPRESSION_RATIO: u64 = 100;
/// Inflated size below which the ratio is not checked (tiny files compress absurdly well).
pub const RATIO_FLOOR: u64 = 1024 * 1024;

/// Bounds on one extracted skill archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkillLimits {
    /// Most entries (files and directories) one archive may hold.
    pub max_entries: usize,
    /// Largest single file.
    pub max_file_bytes: u64,
    /// Largest total of file bytes.
    pub max_total_bytes: u64,
}

impl Default for SkillLimits {
    fn default() -> Self {
        Self {
            max_entries: 4096,
            max_file_bytes: 16 * 1024 * 1024,
            max_total_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One file of an extracted archive, relative to the skill directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillFile {
    /// Clean relative path (`/`-separated, no `.`/`..`, not empty).
    pub path: String,
    /// Contents.
    pub data: Bytes,
}

/// An extracted archive: its directories and files (paths relative to the skill directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractedSkill {
    /// Directories (including empty ones).
    pub dirs: Vec<String>,
    /// Regular files.
    pub files: Vec<SkillFile>,
}

fn refuse(message: impl Into<String>) -> SkillError {
    SkillError::Archive(message.into())
}

/// A member name as a confined relative path: `\` read as `/`, empty and `.` parts dropped;
/// absolute names, `..` parts, NUL and control characters, and names past the depth and length
/// bounds refused. `Ok("")` for names that are nothing (`./`).
pub fn safe_member_name(name: &str) -> Result<String, SkillError> {
    if name.len() > MAX_PATH_BYTES {
        return Err(refuse(format!(
            "member name of {} bytes, above the {MAX_PATH_BYTES} byte limit",
            name.len()
        )));
    }
    let norm = name.replace('\\', "/");
    if norm.starts_with('/') {
        return Err(refuse(format!("member with an absolute path: {name:?}")));
    }
    if name.chars().any(char::is_control) {
        return Err(refuse(format!(
            "member name with a NUL or control character: {name:?}"
        )));
    }
    let mut parts = Vec::new();
    for p in norm.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(refuse(format!("member with a '..' component: {name:?}"))),
            p if p.len() > MAX_COMPONENT_BYTES => {
                return Err(refuse(format!(
                    "member name with a component longer than {MAX_COMPONENT_BYTES} bytes"
                )));
            }
            p => parts.push(p),
        }
    }
    if parts.len() > MAX_PATH_DEPTH {
        return Err(refuse(format!(
            "member nested {} levels deep, above the limit of {MAX_PATH_DEPTH}",
            parts.len()
        )));
    }
    Ok(parts.join("/"))
}

/// One member of an archive before the path rules are applied.
enum Member {
    Dir(String),
    File(String, Bytes),
    /// Symlink, hard link, device, FIFO, socket: only its name is screened.
    Special(String),
}

fn too_many(limits: &SkillLimits) -> SkillError {
    refuse(format!("more than {} entries", limits.max_entries))
}

/// Whether `out` inflated bytes from `compressed` is a decompression bomb.
fn bomb(out: u64, compressed: u64) -> bool {
    out > RATIO_FLOOR && out > compressed.saturating_mul(MAX_COMPRESSION_RATIO)
}

/// Counts file bytes against the per-file and per-archive limits.
struct Budget<'a> {
    limits: &'a SkillLimits,
    total: u64,
}

impl Budget<'_> {
    /// Reserve `size` declared bytes for `name`.
    fn reserve(&mut self, name: &str, size: u64) -> Result<(), SkillError> {
        if size > self.limits.max_file_bytes {
            return Err(refuse(format!(
                "member {name:?} is {size} bytes, above the {} byte limit",
                self.limits.max_file_bytes
            )));
        }
        self.total = self.total.saturating_add(size);
        if self.total > self.limits.max_total_bytes {
            return Err(refuse(format!(
                "archive holds more than {} bytes",
                self.limits.max_total_bytes
            )));
        }
        Ok(())
    }
}

/// Read exactly `declared` bytes of member `name` from `reader`, never more than `declared + 1`
/// (a member that yields more, or less, lies about its size).
fn read_declared(reader: impl Read, name: &str, declared: u64) -> Result<Vec<u8>, SkillError> {
    let mut data = Vec::with_capacity(usize::try_from(declared.min(1 << 20)).unwrap_or(0));
    reader
        .take(declared.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| refuse(format!("member {name:?}: {e}")))?;
    if data.len() as u64 != declared {
        let holds = if data.len() as u64 > declared {
            "more".to_owned()
        } else {
            data.len().to_string()
        };
        return Err(refuse(format!(
            "member {name:?} declares {declared} bytes but holds {holds}"
        )));
    }
    Ok(data)
}

fn tar_members(reader: impl Read, limits: &SkillLimits) -> Result<Vec<Member>, SkillError> {
    let bad = |e: std::io::Error| refuse(format!("malformed tar archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut out = Vec::new();
    let mut budget = Budget { limits, total: 0 };
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        if out.len() >= limits.max_entries {
            return Err(too_many(limits));
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            out.push(Member::Dir(name));
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let size = entry.header().size().map_err(bad)?;
            budget.reserve(&name, size)?;
            let data = read_declared(entry, &name, size)?;
            out.push(Member::File(name, Bytes::from(data)));
        } else {
            out.push(Member::Special(name));
        }
    }
    Ok(out)
}

/// Upper bound of a zip's entries: occurrences of the central directory header signature. Every
/// entry the zip crate can parse starts with one, so more of them than the limit refuses the
/// archive before its central directory is decoded (and allocated).
fn zip_entry_bound(bytes: &[u8]) -> usize {
    bytes.windows(4).filter(|w| *w == b"PK\x01\x02").count()
}

fn zip_members(bytes: &[u8], limits: &SkillLimits) -> Result<Vec<Member>, SkillError> {
    let bad = |e: zip::result::ZipError| refuse(format!("malformed zip archive: {e}"));
    if zip_entry_bound(bytes) > limits.max_entries {
        return Err(too_many(limits));
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(bad)?;
    if zip.len() > limits.max_entries {
        return Err(too_many(limits));
    }
    if zip.has_duplicate_names() {
        return Err(refuse("zip archive with duplicate member names"));
    }
    if zip.has_overlapping_files().map_err(bad)? {
        return Err(refuse(
            "zip archive whose members overlap (the shape of a zip bomb)",
        ));
    }
    let mut out = Vec::with_capacity(zip.len());
    let mut budget = Budget { limits, total: 0 };
    for i in 0..zip.len() {
        let file = zip.by_index(i).map_err(bad)?;
        let name = file.name().map_err(bad)?.into_owned();
        let file_type = file.unix_mode().map(|m| m & 0o170_000);
        if file.is_symlink()
            || matches!(
                file_type,
                Some(0o120_000 | 0o020_000 | 0o060_000 | 0o010_000 | 0o140_000)
            )
        {
            out.push(Member::Special(name));
            continue;
        }
        if file.is_dir() {
            out.push(Member::Dir(name));
            continue;
        }
        if file.encrypted() {
            return Err(refuse(format!(
                "encrypted member {name:?} is not supported"
            )));
        }
        let (declared, compressed) = (file.size(), file.compressed_size());
        budget.reserve(&name, declared)?;
        if bomb(declared, compressed) {
            return Err(refuse(format!(
                "member {name:?} inflates {compressed} bytes into {declared}: a decompression bomb"
            )));
        }
        let data = read_declared(file, &name, declared)?;
        out.push(Member::File(name, Bytes::from(data)));
    }
    Ok(out)
}

/// A reader that fails once it has produced more than `limit` bytes or inflated past the
/// compression-ratio bound of `compressed` input bytes.
struct Inflated<R> {
    inner: R,
    produced: u64,
    limit: u64,
    compressed: u64,
}

impl<R: Read> Read for Inflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.produced = self.produced.saturating_add(n as u64);
        if self.produced > self.limit {
            return Err(std::io::Error::other(format!(
                "the gzip stream inflates past {} bytes",
                self.limit
            )));
        }
        if bomb(self.produced, self.compressed) {
            return Err(std::io::Error::other(format!(
                "the gzip stream inflates {} bytes past {MAX_COMPRESSION_RATIO} times its size: a decompression bomb",
                self.compressed
            )));
        }
        Ok(n)
    }
}

/// Extract a skill archive in memory (zip, tar or gzip-compressed tar), applying the path rules
/// and `limits`.
pub fn extract_archive(bytes: &[u8], limits: &SkillLimits) -> Result<ExtractedSkill, SkillError> {
    let members = if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        zip_members(bytes, limits)?
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        // The tar inside carries headers and padding besides the file bytes.
        let slack = (limits.max_entries as u64)
            .saturating_add(2)
            .saturating_mul(1024);
        let reader = Inflated {
            inner: flate2::read::GzDecoder::new(bytes),
            produced: 0,
            limit: limits.max_total_bytes.saturating_add(slack),
            compressed: bytes.len() as u64,
        };
        tar_members(reader, limits)?
    } else if bytes.len() >= 512 {
        tar_members(bytes, limits)?
    } else {
        // Not even one tar header: whatever this is, it is not an archive we read.
        return Err(refuse("not a zip, tar or gzip-compressed tar archive"));
    };
    layout(members)
}

/// Apply the name rules to every member (extracted or not), refuse collisions, strip the
/// wrapper directory.
fn layout(members: Vec<Member>) -> Result<ExtractedSkill, SkillError> {
    let mut plain: Vec<(String, Option<Bytes>)> = Vec::new();
    for m in members {
        match m {
            Member::Dir(n) => plain.push((safe_member_name(&n)?, None)),
            Member::File(n, d) => plain.push((safe_member_name(&n)?, Some(d))),
            Member::Special(n) => {
                safe_member_name(&n)?;
            }
        }
    }
    // Every directory a member needs (its parents, and itself for directories) and every file:
    // a path may be a file once, and never a file and a directory.
    let mut files = HashSet::new();
    let mut dirs = HashSet::new();
    for (name, data) in &plain {
        if name.is_empty() {
            continue;
        }
        let mut parent = name.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            dirs.insert(p);
            parent = p;
        }
        if data.is_some() {
            if !files.insert(name.as_str()) {
                return Err(refuse(format!("two members extract to {name:?}")));
            }
        } else {
            dirs.insert(name.as_str());
        }
    }
    if let Some(clash) = files.iter().find(|f| dirs.contains(*f)) {
        return Err(refuse(format!(
            "member {clash:?} is a file where another member needs a directory"
        )));
    }
    let names: Vec<&str> = plain.iter().map(|(n, _)| n.as_str()).collect();
    let top = wrapper_dir(&names);
    let mut out = ExtractedSkill::default();
    for (name, data) in &plain {
        let rel = strip_top(name, top.as_deref());
        if rel.is_empty() {
            continue;
        }
        match data {
            None => {
                if !out.dirs.contains(&rel) {
                    out.dirs.push(rel);
                }
            }
            Some(data) => out.files.push(SkillFile {
                path: rel,
                data: data.clone(),
            }),
        }
    }
    Ok(out)
}

/// The single top-level directory every (non-empty) name shares, when some name is nested below
/// it; `None` otherwise.
fn wrapper_dir(names: &[&str]) -> Option<String> {
    let mut top: Option<&str> = None;
    let mut nested = false;
    for n in names.iter().filter(|n| !n.is_empty()) {
        let (first, rest) = n.split_once('/').unwrap_or((n, ""));
        if !rest.is_empty() {
            nested = true;
        }
        match top {
            None => top = Some(first),
            Some(t) if t == first => {}
            Some(_) => return None,
        }
    }
    top.filter(|_| nested).map(str::to_owned)
}

fn strip_top(path: &str, top: Option<&str>) -> String {
    match top {
        Some(t) if path == t => String::new(),
        Some(t) => path
            .strip_prefix(t)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(path)
            .to_owned(),
        None => path.to_owned(),
    }
}
