//! Incoming workspace archives: a [`ByteStream`] read as a blocking `Read`, and a guard that
//! frames the tar as it passes and stops it before the `tar` crate could be made to hold more
//! than it should.
//!
//! The `tar` crate reads a GNU long name, long link or PAX extension entry whole into memory,
//! sized by its header: one header claiming gigabytes would be taken at its word. The guard
//! ([`TarGuard`]) follows the archive's framing exactly as the crate does (the same size fields,
//! a PAX `size` record overriding the next entry's size, the same end at the first zero
//! block) and fails the read with `InvalidData` when such an entry is longer than
//! [`MAX_META_ENTRY_BYTES`], when the archive holds more than its entry limit or more bytes than
//! its byte limit, or when it has a sparse entry (whose extra headers the guard would have to
//! parse too; no workspace archive has one). Every size is checked arithmetic.

use std::io::{self, Read};

use bytes::Bytes;
use futures::StreamExt;

use crate::error::SandboxError;
use crate::file::ByteStream;

/// Longest GNU long name/link or PAX extension entry accepted (paths are at most 4096 bytes).
pub(crate) const MAX_META_ENTRY_BYTES: u64 = 64 * 1024;
/// Most entries a workspace archive may hold.
pub(crate) const MAX_ARCHIVE_ENTRIES: u64 = 1_000_000;

const BLOCK: usize = 512;

/// Turns a [`ByteStream`] into a blocking `Read` (used on a blocking thread only), keeping the
/// stream's own error so it is reported with its kind.
pub(crate) struct StreamReader {
    stream: ByteStream,
    handle: tokio::runtime::Handle,
    current: Bytes,
    pub failure: Option<SandboxError>,
}

impl StreamReader {
    pub fn new(stream: ByteStream, handle: tokio::runtime::Handle) -> Self {
        Self {
            stream,
            handle,
            current: Bytes::new(),
            failure: None,
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    self.failure = Some(e);
                    return Err(io::Error::other("archive stream failed"));
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Where the guard is in the archive.
enum State {
    /// Collecting a header block.
    Header { block: Box<[u8; BLOCK]>, got: usize },
    /// Passing an entry's data and padding; a PAX extension's data is kept to find its `size`.
    Data { left: u64, pax: Option<Vec<u8>> },
    /// Past the end-of-archive block: the crate reads no further.
    End,
}

/// A `Read` that frames a tar as it passes (see the module docs).
pub(crate) struct TarGuard<R> {
    inner: R,
    state: State,
    /// A PAX `size` for the next entry.
    pax_size: Option<u64>,
    entries: u64,
    max_entries: u64,
    bytes: u64,
    max_bytes: u64,
    /// Why the guard stopped the archive, for the caller's error.
    pub refused: Option<String>,
    /// A byte other than zero went through.
    pub nonzero: bool,
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The size the `tar` crate takes from a PAX extension's records (the first `size`).
fn pax_size(data: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse::<u64>().ok();
    }
    None
}

impl<R: Read> TarGuard<R> {
    /// Guard `inner`, allowing at most `max_entries` entries and `max_bytes` bytes.
    pub fn new(inner: R, max_entries: u64, max_bytes: u64) -> Self {
        Self {
            inner,
            state: State::Header {
                block: Box::new([0; BLOCK]),
                got: 0,
            },
            pax_size: None,
            entries: 0,
            max_entries,
            bytes: 0,
            max_bytes,
            refused: None,
            nonzero: false,
        }
    }

    /// The inner reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    fn refuse(&mut self, why: String) -> io::Error {
        self.refused = Some(why.clone());
        invalid(why)
    }

    /// A complete header block: what follows it.
    fn header(&mut self, block: &[u8; BLOCK]) -> io::Result<State> {
        if block.iter().all(|&b| b == 0) {
            return Ok(State::End);
        }
        let h = tar::Header::from_byte_slice(block);
        let t = h.entry_type();
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        let extension = t.is_gnu_longname()
            || t.is_gnu_longlink()
            || t.is_pax_local_extensions()
            || t.is_pax_global_extensions();
        // A malformed size is the crate's error to report; the guard lets it through.
        let Ok(mut size) = h.entry_size() else {
            return Ok(State::End);
        };
        let kept = recognized
            && (t.is_gnu_longname() || t.is_gnu_longlink() || t.is_pax_local_extensions());
        if kept {
            if size > MAX_META_ENTRY_BYTES {
                return Err(self.refuse(format!(
                    "an extended header entry of {size} bytes (at most {MAX_META_ENTRY_BYTES})"
                )));
            }
        } else {
            if !extension && let Some(p) = self.pax_size {
                size = p;
            }
            // The member these headers described: later ones start afresh.
            self.pax_size = None;
            if t.is_gnu_sparse() {
                return Err(self.refuse("a sparse entry".into()));
            }
            self.entries += 1;
            if self.entries > self.max_entries {
                return Err(self.refuse(format!("more than {} entries", self.max_entries)));
            }
        }
        let left = size
            .checked_add(BLOCK as u64 - 1)
            .map(|s| s & !(BLOCK as u64 - 1))
            .ok_or_else(|| self.refuse("an entry size past any archive".into()))?;
        let pax = (kept && t.is_pax_local_extensions())
            .then(|| Vec::with_capacity(usize::try_from(size).unwrap_or(0)));
        if left == 0 {
            return Ok(match pax {
                Some(data) => {
                    self.pax_size = pax_size(&data);
                    State::Header {
                        block: Box::new([0; BLOCK]),
                        got: 0,
                    }
                }
                None => State::Header {
                    block: Box::new([0; BLOCK]),
                    got: 0,
                },
            });
        }
        Ok(State::Data { left, pax })
    }

    /// Follow the framing over `buf` (bytes the caller is about to hand on).
    fn track(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match &mut self.state {
                State::End => return Ok(()),
                State::Header { block, got } => {
                    let n = (BLOCK - *got).min(buf.len());
                    block[*got..*got + n].copy_from_slice(&buf[..n]);
                    *got += n;
                    buf = &buf[n..];
                    if *got == BLOCK {
                        let block = std::mem::replace(block, Box::new([0; BLOCK]));
                        self.state = self.header(&block)?;
                    }
                }
                State::Data { left, pax } => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    if let Some(data) = pax {
                        // The record bytes, not the padding (at most the size checked above).
                        let room = MAX_META_ENTRY_BYTES as usize
                            - data.len().min(MAX_META_ENTRY_BYTES as usize);
                        data.extend_from_slice(&buf[..n.min(room)]);
                    }
                    *left -= n as u64;
                    buf = &buf[n..];
                    if *left == 0 {
                        if let Some(data) = pax.take() {
                            self.pax_size = pax_size(&data);
                        }
                        self.state = State::Header {
                            block: Box::new([0; BLOCK]),
                            got: 0,
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.bytes = self.bytes.saturating_add(n as u64);
        if self.bytes > self.max_bytes {
            let max = self.max_bytes;
            return Err(self.refuse(format!("more than {max} bytes")));
        }
        self.nonzero = self.nonzero || out[..n].iter().any(|&b| b != 0);
        self.track(&out[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: tar::EntryType, name: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    fn read_all(data: &[u8], max_entries: u64, max_bytes: u64) -> io::Result<usize> {
        let mut g = TarGuard::new(data, max_entries, max_bytes);
        let mut archive = tar::Archive::new(&mut g);
        let mut n = 0;
        for e in archive.entries()? {
            let mut e = e?;
            io::copy(&mut e, &mut io::sink())?;
            n += 1;
        }
        Ok(n)
    }

    fn archive(entries: &[(tar::Header, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (h, data) in entries {
            b.append(h, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_long_name_entry_claiming_gigabytes_is_stopped_before_it_is_read() {
        let mut raw = header(tar::EntryType::GNULongName, "././@LongLink", 1 << 40)
            .as_bytes()
            .to_vec();
        raw.extend(vec![b'a'; 4096]);
        let e = read_all(&raw, 10, u64::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn ordinary_archives_pass_and_limits_hold() {
        let long = "d/".repeat(120) + "f";
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        b.append_data(&mut h, "g", &b"xyz"[..]).unwrap();
        let data = b.into_inner().unwrap();
        assert_eq!(read_all(&data, 10, u64::MAX).unwrap(), 2);
        assert!(read_all(&data, 1, u64::MAX).is_err());
        assert!(read_all(&data, 10, 1000).is_err());
    }

    #[test]
    fn a_pax_size_moves_the_next_header_as_the_crate_reads_it() {
        let pax = b"13 size=1024\n".to_vec();
        let x = header(tar::EntryType::XHeader, "pax", pax.len() as u64);
        // The file's header says 0 bytes, its PAX record 1024: the next header is after 1024.
        let f = header(tar::EntryType::Regular, "f", 0);
        let hidden = header(tar::EntryType::GNULongName, "././@LongLink", 1 << 40);
        let mut data = archive(&[(x, pax)]);
        data.truncate(data.len() - 1024); // drop the end blocks
        data.extend_from_slice(f.as_bytes());
        // The 1024 data bytes hold what looks like a huge long-name header: it is data.
        let mut body = hidden.as_bytes().to_vec();
        body.resize(1024, 0);
        data.extend(body);
        data.extend(vec![0; 1024]);
        assert_eq!(read_all(&data, 10, u64::MAX).unwrap(), 1);
    }

    #[test]
    fn sparse_entries_and_impossible_sizes_are_refused() {
        let s = header(tar::EntryType::GNUSparse, "s", 0);
        assert!(read_all(&archive(&[(s, vec![])]), 10, u64::MAX).is_err());
        let mut raw = header(tar::EntryType::Regular, "big", 0)
            .as_bytes()
            .to_vec();
        // A base-256 size of 2^64 - 1.
        raw[124] = 0x80;
        for b in &mut raw[125..136] {
            *b = 0xff;
        }
        let cksum = {
            let mut h = tar::Header::new_old();
            h.as_mut_bytes().copy_from_slice(&raw[..512]);
            h.set_cksum();
            h.as_bytes().to_vec()
        };
        assert!(read_all(&cksum, 10, u64::MAX).is_err());
    }
}
