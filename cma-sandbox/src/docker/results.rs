//! What the file helper's replies mean: errors, stats, listings and the per-path results of
//! batch replies, turned into the crate's types. Every length and offset in a reply is checked
//! against the data that actually came (the helper is not trusted).

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::reply::{Entry, EntryKind, Head, Item, MatchRow};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::file::{DirEntry, FileKind, FileStat, FoundLines, LineMatch, TreeFound, TreeMatch};

/// The time `ns` nanoseconds after (negative: before) the Unix epoch.
pub(crate) fn time_from_ns(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    let t = if ns >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(d)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(d)
    };
    t.unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Map an errno from the helper to a kind.
pub(crate) fn errno_kind(errno: i64) -> SandboxErrorKind {
    match errno {
        2 => SandboxErrorKind::NotFound,
        20 => SandboxErrorKind::NotADirectory,
        21 => SandboxErrorKind::IsADirectory,
        1 | 13 | 30 => SandboxErrorKind::PermissionDenied,
        17 => SandboxErrorKind::AlreadyExists,
        39 => SandboxErrorKind::DirectoryNotEmpty,
        40 => SandboxErrorKind::SymlinkLoop,
        22 | 36 => SandboxErrorKind::InvalidInput,
        28 => SandboxErrorKind::StorageFull,
        122 => SandboxErrorKind::QuotaExceeded,
        27 => SandboxErrorKind::ResourceLimit,
        _ => SandboxErrorKind::Io,
    }
}

/// A message from the helper, cut to a readable length.
fn short(msg: &str) -> String {
    let mut out: String = msg.chars().take(200).collect();
    if out.len() < msg.len() {
        out.push('…');
    }
    out
}

/// The error a reply of error kind `kind` stands for.
pub(crate) fn reply_error(kind: &str, head: &Head, path: &str) -> SandboxError {
    match kind {
        "os" => {
            let k = errno_kind(head.errno);
            if k == SandboxErrorKind::Io {
                let msg = short(head.msg.as_deref().unwrap_or("i/o error")).to_lowercase();
                SandboxError::new(k, msg).with_path(path)
            } else {
                SandboxError::at_path(k, path)
            }
        }
        "timeout" => {
            SandboxError::new(SandboxErrorKind::Timeout, "search timed out").with_path(path)
        }
        "notreg" => SandboxError::new(SandboxErrorKind::PermissionDenied, "not a regular file")
            .with_path(path),
        "deep" => SandboxError::new(SandboxErrorKind::TooLarge, "directory nesting too deep")
            .with_path(path),
        "bigdir" => SandboxError::new(
            SandboxErrorKind::TooLarge,
            format!(
                "directory has more than {} entries or its listing is too large",
                head.max.unwrap_or(0)
            ),
        )
        .with_path(path),
        "big" => SandboxError::too_large(path, head.size.unwrap_or(0), head.max.unwrap_or(0)),
        _ => SandboxError::new(
            SandboxErrorKind::Backend,
            short(head.msg.as_deref().unwrap_or("file helper error")),
        )
        .with_path(path),
    }
}

fn file_kind(k: EntryKind) -> FileKind {
    match k {
        EntryKind::File => FileKind::File,
        EntryKind::Dir => FileKind::Dir,
        EntryKind::Symlink => FileKind::Symlink,
        EntryKind::Other => FileKind::Other,
    }
}

/// The stat in a `stat` reply (`k`, `s`, `m`).
pub(crate) fn parse_stat(h: &Head) -> FileStat {
    let kind = match h.k.as_deref() {
        Some("f") => FileKind::File,
        Some("d") => FileKind::Dir,
        Some("l") => FileKind::Symlink,
        _ => FileKind::Other,
    };
    FileStat {
        kind,
        size: h.s,
        modified: h.m.map(time_from_ns),
    }
}

fn dir_entry(e: Entry) -> DirEntry {
    DirEntry {
        name: e.name,
        stat: FileStat {
            kind: file_kind(e.k),
            size: e.s,
            modified: e.m.map(time_from_ns),
        },
    }
}

/// The entries of a `list` reply, sorted by name or (`sorted` false) in the order the helper
/// listed them (`readdir`'s).
pub(crate) fn parse_entries(h: Head, sorted: bool) -> Vec<DirEntry> {
    let mut out: Vec<DirEntry> = h
        .entries
        .unwrap_or_default()
        .into_iter()
        .map(dir_entry)
        .collect();
    if sorted {
        out.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out
}

/// One path's answer in a batch reply: served, or left for a later call (the reply's budget
/// was used up).
pub(crate) enum Batched<T> {
    /// The result for this path.
    Served(Result<T>),
    /// Not served in this reply: ask again.
    Later,
}

/// The per-path answers of a batch reply: each requested path gets `each(head, path)` of its
/// head in order, unless it could not be resolved (`abs`: such paths were not sent), the
/// helper reported an error for it or left it for later, or the reply has too few heads.
fn per_path<T>(
    heads: Option<Vec<Head>>,
    paths: &[String],
    abs: Vec<Result<String>>,
    mut each: impl FnMut(Head, &str) -> Result<T>,
) -> Vec<Batched<T>> {
    let mut heads = heads.unwrap_or_default().into_iter();
    paths
        .iter()
        .zip(abs)
        .map(|(path, a)| {
            if let Err(e) = a {
                return Batched::Served(Err(e));
            }
            let Some(h) = heads.next() else {
                return Batched::Served(Err(SandboxError::new(
                    SandboxErrorKind::Backend,
                    "file helper sent too few results",
                )
                .with_path(path)));
            };
            match h.e.as_deref() {
                Some("later") => Batched::Later,
                Some(kind) => Batched::Served(Err(reply_error(kind, &h, path))),
                None => Batched::Served(each(h, path)),
            }
        })
        .collect()
}

fn short_reply(path: &str) -> SandboxError {
    SandboxError::new(SandboxErrorKind::Backend, "file helper sent a short reply").with_path(path)
}

/// The next `len` bytes of a reply's data from `off`, or `None` past its end.
fn take(data: &Bytes, off: &mut usize, len: u64) -> Option<Bytes> {
    let end = usize::try_from(len)
        .ok()
        .and_then(|n| off.checked_add(n))
        .filter(|end| *end <= data.len())?;
    let out = data.slice(*off..end);
    *off = end;
    Some(out)
}

/// Split a `readmany` reply into one answer per requested path. `abs` holds each path's
/// resolved form (or why it could not be resolved: such paths were not sent).
pub(crate) fn split_many(
    head: Head,
    data: &Bytes,
    paths: &[String],
    abs: Vec<Result<String>>,
) -> Vec<Batched<Bytes>> {
    let mut off = 0usize;
    per_path(head.r, paths, abs, |h, path| {
        take(data, &mut off, h.l).ok_or_else(|| short_reply(path))
    })
}

/// Split a `listmany` reply into one listing per requested path (see [`split_many`]), each
/// sorted by name or in `readdir` order.
pub(crate) fn split_dirs(
    head: Head,
    paths: &[String],
    abs: Vec<Result<String>>,
    sorted: bool,
) -> Vec<Batched<Vec<DirEntry>>> {
    per_path(head.r, paths, abs, |h, _| Ok(parse_entries(h, sorted)))
}

/// The line matches of one file and their kept texts (taken from the data in order).
fn parse_matches(ms: Option<Vec<MatchRow>>, data: &Bytes, off: &mut usize) -> Option<FoundLines> {
    let mut found = FoundLines::default();
    for [number, len, terminated, kept] in ms.unwrap_or_default() {
        found.lines.push(LineMatch {
            number,
            len,
            terminated: terminated == 1,
            text: take(data, off, kept)?,
        });
    }
    Some(found)
}

/// Split a `findmany` reply into one answer per requested path (see [`split_many`]).
pub(crate) fn split_found(
    head: Head,
    data: &Bytes,
    paths: &[String],
    abs: Vec<Result<String>>,
) -> Vec<Batched<FoundLines>> {
    let mut off = 0usize;
    per_path(head.r, paths, abs, |h, path| {
        if h.b.is_some() {
            return Ok(FoundLines {
                binary: true,
                ..FoundLines::default()
            });
        }
        parse_matches(h.ms, data, &mut off).ok_or_else(|| short_reply(path))
    })
}

/// Parse a `findtree` reply.
pub(crate) fn parse_tree(head: Head, data: &Bytes, root: &str) -> Result<TreeFound> {
    let mut out = TreeFound {
        items: Vec::new(),
        complete: head.done == Some(1),
        files_seen: head
            .seen
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let mut off = 0usize;
    for Item {
        p: path,
        big,
        c,
        ms,
    } in head.items.unwrap_or_default()
    {
        if big.is_some() {
            out.items.push(TreeMatch::Large { path });
            continue;
        }
        if let Some(len) = c {
            let data = take(data, &mut off, len).ok_or_else(|| short_reply(root))?;
            out.items.push(TreeMatch::Contents { path, data });
            continue;
        }
        let found = parse_matches(ms, data, &mut off).ok_or_else(|| short_reply(root))?;
        out.items.push(TreeMatch::Lines { path, found });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(json: &str) -> Head {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn batch_answers_check_every_length_against_the_data() {
        let paths: Vec<String> = ["/a", "/b", "/c"].map(String::from).to_vec();
        let abs = || paths.iter().map(|p| Ok(p.clone())).collect::<Vec<_>>();
        let data = Bytes::from_static(b"abcd");
        let out = split_many(
            head(r#"{"r":[{"l":3},{"e":"later"},{"l":2}]}"#),
            &data,
            &paths,
            abs(),
        );
        assert!(matches!(&out[0], Batched::Served(Ok(d)) if &d[..] == b"abc"));
        assert!(matches!(out[1], Batched::Later));
        // Two more bytes announced than sent: refused, not read past the end.
        assert!(
            matches!(&out[2], Batched::Served(Err(e)) if e.kind() == SandboxErrorKind::Backend)
        );
        let huge = split_many(
            head(&format!(r#"{{"r":[{{"l":{}}}]}}"#, u64::MAX)),
            &data,
            &paths[..1],
            vec![Ok("/a".into())],
        );
        assert!(matches!(&huge[0], Batched::Served(Err(_))));
        let lines = split_found(
            head(r#"{"r":[{"ms":[[1,2,1,2],[9,99,0,9]]}]}"#),
            &data,
            &paths[..1],
            vec![Ok("/a".into())],
        );
        assert!(matches!(&lines[0], Batched::Served(Err(_))));
        let tree = parse_tree(head(r#"{"items":[{"p":"/x","c":5}]}"#), &data, "/");
        assert!(tree.is_err());
    }

    #[test]
    fn times_far_from_the_epoch_do_not_panic() {
        let _ = time_from_ns(i64::MIN);
        let _ = time_from_ns(i64::MAX);
        assert_eq!(
            time_from_ns(-1_500_000_000),
            SystemTime::UNIX_EPOCH - Duration::from_millis(1500)
        );
    }
}
