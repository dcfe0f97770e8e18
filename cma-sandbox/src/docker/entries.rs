//! The workspace listing of [`Sandbox::workspace_entries`](crate::Sandbox::workspace_entries):
//! the helper's `tree` operation walks the workspace inside the container and sends one binary
//! record per entry (see `helper.py`), parsed here. The reply is the container's: every field is
//! checked, and a malformed record fails the whole listing.

use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::file::{FileKind, WorkspaceEntry};

/// Deepest directory nesting listed (deeper trees fail with `TooLarge`).
pub(crate) const MAX_DEPTH: usize = 128;

fn bad() -> SandboxError {
    SandboxError::new(
        SandboxErrorKind::Backend,
        "file helper sent a bad workspace listing",
    )
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.take(N)?.try_into().map_err(|_| bad())
    }
}

/// Parse the helper's records; `count` is how many the reply header announced.
pub(crate) fn parse(data: &[u8], count: u64) -> Result<Vec<WorkspaceEntry>> {
    let mut c = Cursor(data);
    let mut out = Vec::with_capacity(count.min(1 << 20) as usize);
    while !c.0.is_empty() {
        let len = u16::from_le_bytes(c.array()?) as usize;
        let path = c.take(len)?.to_vec();
        if path.is_empty()
            || path.starts_with(b"/")
            || path
                .split(|&b| b == b'/')
                .any(|p| p.is_empty() || p == b"." || p == b"..")
        {
            return Err(bad());
        }
        let kind = match c.array::<1>()?[0] {
            0 => FileKind::Dir,
            1 => FileKind::File,
            2 => FileKind::Symlink,
            _ => return Err(bad()),
        };
        let mode = u32::from_le_bytes(c.array()?);
        let size = u64::from_le_bytes(c.array()?);
        let mtime_ns = i64::from_le_bytes(c.array()?);
        let ctime_ns = i64::from_le_bytes(c.array()?);
        let inode = u64::from_le_bytes(c.array()?);
        let link_len = u16::from_le_bytes(c.array()?) as usize;
        let link = c.take(link_len)?.to_vec();
        out.push(WorkspaceEntry {
            path,
            kind,
            mode,
            size,
            mtime_ns,
            ctime_ns,
            inode,
            link_target: (kind == FileKind::Symlink).then_some(link),
        });
    }
    if out.len() as u64 != count {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &[u8], kind: u8, size: u64, link: &[u8]) -> Vec<u8> {
        let mut r = (path.len() as u16).to_le_bytes().to_vec();
        r.extend_from_slice(path);
        r.push(kind);
        r.extend_from_slice(&0o100644u32.to_le_bytes());
        r.extend_from_slice(&size.to_le_bytes());
        r.extend_from_slice(&5i64.to_le_bytes());
        r.extend_from_slice(&6i64.to_le_bytes());
        r.extend_from_slice(&7u64.to_le_bytes());
        r.extend_from_slice(&(link.len() as u16).to_le_bytes());
        r.extend_from_slice(link);
        r
    }

    #[test]
    fn records_parse_and_anything_malformed_is_refused() {
        let mut data = record(b"d", 0, 0, b"");
        data.extend(record(b"d/\xff.bin", 1, 42, b""));
        data.extend(record(b"d/l", 2, 0, b"../x"));
        let got = parse(&data, 3).unwrap();
        assert_eq!(got[1].path, b"d/\xff.bin");
        assert_eq!(
            (got[1].kind, got[1].size, got[1].inode),
            (FileKind::File, 42, 7)
        );
        assert_eq!(got[2].link_target.as_deref(), Some(&b"../x"[..]));
        assert!(parse(&data, 2).is_err());
        for cut in 1..data.len() {
            assert!(parse(&data[..cut], 3).is_err(), "{cut}");
        }
        for bad_path in [&b"/abs"[..], b"a/../b", b"a//b", b""] {
            assert!(parse(&record(bad_path, 1, 0, b""), 1).is_err());
        }
        assert!(parse(&record(b"x", 9, 0, b""), 1).is_err());
    }
}
