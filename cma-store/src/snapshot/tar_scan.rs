//! Following an export stream's tar headers as the bytes go by: counting regular files and their
//! bytes (for the manifest) without parsing the archive twice, and applying, entry by entry,
//! every check a restore applies (see the `safety` module), so a save never stores what a
//! restore refuses. The first entry that fails is kept in [`TarScan::refused`]; the save stops
//! there with [`Error::UnsafeEntry`](super::Error::UnsafeEntry).
//!
//! Names are the names a tar reader sees: GNU long names and links (`L`, `K`) and PAX `path` /
//! `linkpath` records override the header's, and the ustar prefix is joined in. Metadata entries
//! are held while they are read, up to [`MAX_META_BYTES`] each.

use std::collections::HashSet;

/// Largest long-name or PAX entry accepted (what it holds is held in memory).
const MAX_META_BYTES: u64 = 1 << 20;

/// See the module docs.
#[derive(Default)]
pub(crate) struct TarScan {
    header: Vec<u8>,
    /// Data bytes of the current entry still to come.
    data_left: u64,
    /// Padding after them.
    pad_left: u64,
    /// The data of a metadata entry being collected, and its type.
    meta: Option<(u8, Vec<u8>)>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    /// Symlinks seen (clean relative paths): nothing may come beneath one.
    links: HashSet<Vec<u8>>,
    /// Regular files seen.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The first entry a restore would refuse: its name (lossy) and why.
    pub refused: Option<(String, &'static str)>,
}

impl TarScan {
    /// Take the next bytes of the archive.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.refused.is_none() {
            if self.data_left > 0 {
                let n = (self.data_left.min(data.len() as u64)) as usize;
                if let Some((_, buf)) = &mut self.meta {
                    buf.extend_from_slice(&data[..n]);
                }
                self.data_left -= n as u64;
                data = &data[n..];
                if self.data_left == 0 {
                    self.end_meta();
                }
                continue;
            }
            if self.pad_left > 0 {
                let n = (self.pad_left.min(data.len() as u64)) as usize;
                self.pad_left -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (512 - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() == 512 {
                self.parse();
                self.header.clear();
            }
        }
    }

    /// The archive ended: an entry cut short is refused as a restore would.
    pub fn finish(&mut self) {
        if self.refused.is_none()
            && (self.data_left > 0 || !self.header.is_empty() || self.meta.is_some())
        {
            self.refused = Some(("archive".into(), "the archive ends inside an entry"));
        }
    }

    fn refuse(&mut self, name: &[u8], why: &'static str) {
        if self.refused.is_none() {
            let shown: String = String::from_utf8_lossy(name).chars().take(200).collect();
            self.refused = Some((shown, why));
        }
    }

    fn end_meta(&mut self) {
        let Some((kind, buf)) = self.meta.take() else {
            return;
        };
        let trim = |mut b: Vec<u8>| {
            while b.last() == Some(&0) {
                b.pop();
            }
            b
        };
        match kind {
            b'L' => self.long_name = Some(trim(buf)),
            b'K' => self.long_link = Some(trim(buf)),
            _ => match pax_records(&buf) {
                Some(records) => {
                    for (key, value) in records {
                        match key {
                            b"path" => self.pax_path = Some(value.to_vec()),
                            b"linkpath" => self.pax_link = Some(value.to_vec()),
                            _ => {}
                        }
                    }
                }
                None => self.refuse(b"pax header", "malformed PAX extended header"),
            },
        }
    }

    fn parse(&mut self) {
        let h = std::mem::take(&mut self.header);
        self.parse_header(&h);
        self.header = h;
    }

    fn parse_header(&mut self, h: &[u8]) {
        if h.iter().all(|&b| b == 0) {
            return;
        }
        let stored_sum = octal(&h[148..156]);
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if stored_sum != Some(sum) {
            return self.refuse(field(&h[..100]), "malformed tar: header checksum mismatch");
        }
        let Some(size) = numeric(&h[124..136]) else {
            return self.refuse(field(&h[..100]), "malformed tar: bad size field");
        };
        let kind = h[156];
        self.data_left = size;
        self.pad_left = size.div_ceil(512) * 512 - size;
        match kind {
            b'L' | b'K' | b'x' => {
                if size > MAX_META_BYTES {
                    return self.refuse(field(&h[..100]), "oversized long-name or PAX entry");
                }
                self.meta = Some((kind, Vec::with_capacity(size as usize)));
                if size == 0 {
                    self.end_meta();
                }
                return;
            }
            // Global PAX records do not name entries.
            b'g' => return,
            _ => {}
        }
        let name = match (self.pax_path.take(), self.long_name.take()) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => {
                let name = field(&h[..100]);
                let prefix = if &h[257..263] == b"ustar\0" {
                    field(&h[345..500])
                } else {
                    &[]
                };
                if prefix.is_empty() {
                    name.to_vec()
                } else {
                    [prefix, b"/", name].concat()
                }
            }
        };
        let link = match (self.pax_link.take(), self.long_link.take()) {
            (Some(l), _) | (None, Some(l)) => l,
            (None, None) => field(&h[157..257]).to_vec(),
        };
        let rel = match clean(&name) {
            Ok(rel) => rel,
            Err(why) => return self.refuse(&name, why),
        };
        if numeric(&h[100..108]).is_some_and(|mode| mode & 0o7000 != 0) {
            return self.refuse(&name, "setuid, setgid and sticky bits are not allowed");
        }
        if rel.is_empty() {
            if kind != b'5' {
                self.refuse(&name, "entry has no name");
            }
            return;
        }
        if (1..rel.len())
            .filter(|&i| rel[i] == b'/')
            .any(|i| self.links.contains(&rel[..i]))
        {
            return self.refuse(&name, "entry beneath a symlink");
        }
        match kind {
            b'0' | 0 | b'7' => {
                self.files += 1;
                self.bytes += size;
            }
            b'5' => {}
            b'2' => {
                if link.is_empty() {
                    return self.refuse(&name, "empty symlink target");
                }
                self.links.insert(rel);
            }
            b'1' => self.refuse(&name, "hard links are not allowed"),
            b'3' | b'4' => self.refuse(&name, "device nodes are not allowed"),
            b'6' => self.refuse(&name, "FIFOs are not allowed"),
            _ => self.refuse(&name, "unsupported entry type"),
        }
    }
}

/// A NUL-terminated header field.
fn field(f: &[u8]) -> &[u8] {
    &f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())]
}

/// A relative name without `.` components, joined by `/`; refused as a restore refuses it.
fn clean(name: &[u8]) -> Result<Vec<u8>, &'static str> {
    if name.first() == Some(&b'/') {
        return Err("absolute paths are not allowed");
    }
    let mut out: Vec<u8> = Vec::with_capacity(name.len());
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("'..' is not allowed"),
            p => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(p);
            }
        }
    }
    Ok(out)
}

/// A tar octal field (`None` when it holds anything else).
fn octal(f: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(f).ok()?;
    let text = text.trim_matches(|c| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// A tar numeric field: octal text, or GNU base-256 when the high bit is set.
fn numeric(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        let mut v = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v.checked_mul(256)? | u64::from(b);
        }
        return Some(v);
    }
    octal(f)
}

/// The `key=value` records of a PAX extended header (`<length> <key>=<value>\n` each).
fn pax_records(mut data: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let space = data.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..space]).ok()?.parse().ok()?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return None;
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=')?;
        out.push((&record[..eq], &record[eq + 1..]));
        data = &data[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(bytes: &[u8]) -> TarScan {
        let mut s = TarScan::default();
        for piece in bytes.chunks(100) {
            s.feed(piece);
        }
        s.finish();
        s
    }

    #[test]
    fn counts_regular_files_through_long_names() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, len) in [("a", 10usize), ("d/b", 1000), ("e", 0)] {
            let mut h = tar::Header::new_gnu();
            h.set_size(len as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &vec![7u8; len][..]).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        b.append_data(&mut h, "dir", std::io::empty()).unwrap();
        let long = "x".repeat(300);
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"12345"[..]).unwrap();
        // A symlink with a long target, then a long name beneath it: refused.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, &long, "/".repeat(200)).unwrap();
        let bytes = b.into_inner().unwrap();
        let s = scan(&bytes);
        assert_eq!((s.files, s.bytes, &s.refused), (4, 1015, &None));

        let mut b = tar::Builder::new(bytes);
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("{long}/inner"), &b"1"[..])
            .unwrap();
        let s = scan(&b.into_inner().unwrap());
        assert_eq!(s.refused.map(|r| r.1), Some("entry beneath a symlink"));
    }

    #[test]
    fn a_broken_header_or_a_cut_archive_is_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(600);
        h.set_mode(0o644);
        b.append_data(&mut h, "f", &vec![1u8; 600][..]).unwrap();
        let good = b.into_inner().unwrap();
        assert_eq!(scan(&good).refused, None);
        let mut bad = good.clone();
        bad[3] ^= 1;
        assert!(scan(&bad).refused.unwrap().1.contains("checksum"));
        assert!(
            scan(&good[..700])
                .refused
                .unwrap()
                .1
                .contains("ends inside")
        );
    }

    #[test]
    fn pax_records_parse_and_lie_detected() {
        let data = b"18 path=a/b/c.txt\n15 linkpath=/x\n";
        let r = pax_records(data).unwrap();
        assert_eq!(
            r,
            vec![
                (&b"path"[..], &b"a/b/c.txt"[..]),
                (&b"linkpath"[..], &b"/x"[..])
            ]
        );
        assert!(pax_records(b"99 path=a\n").is_none());
        assert!(pax_records(b"x path=a\n").is_none());
    }

    #[test]
    fn names_are_cleaned_as_a_restore_cleans_them() {
        assert_eq!(clean(b"./a//b/.").unwrap(), b"a/b");
        assert!(clean(b"/etc/passwd").is_err());
        assert!(clean(b"a/../../x").is_err());
        assert_eq!(clean(b"./").unwrap(), b"");
    }
}
