//! Skill archive parsing (`cma_core::runner::skills`): zip (stored or deflated, with lying
//! sizes, offsets, CRCs, flags, Unix modes), tar and gzip-compressed tar, built structurally or
//! given as raw bytes; plus the skill directory name chosen from API identifiers.
//!
//! Checked: no panic; an accepted archive yields only clean relative paths within the path
//! bounds (depth, component and path length, no control characters), no path twice and no file
//! where a directory is needed, and respects its limits; a directory name is always one safe
//! path component.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use std::collections::HashSet;

use cma_core::runner::skill_archive::{MAX_COMPONENT_BYTES, MAX_PATH_BYTES, MAX_PATH_DEPTH};
use cma_core::runner::skills::{
    SkillLimits, extract_archive, is_single_component, safe_member_name, skill_dir_name,
};
use cma_fuzz::tar::{header, pad};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Comp {
    A,
    Wrapper,
    Dot,
    DotDot,
    Empty,
    Backslash,
    Name(String),
}

impl Comp {
    fn text(&self) -> &str {
        match self {
            Comp::A => "a",
            Comp::Wrapper => "skill",
            Comp::Dot => ".",
            Comp::DotDot => "..",
            Comp::Empty => "",
            Comp::Backslash => "..\\x",
            Comp::Name(s) => s,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Name {
    absolute: bool,
    comps: Vec<Comp>,
    dir: bool,
}

impl Name {
    fn render(&self) -> String {
        let mut s = if self.absolute {
            "/".to_owned()
        } else {
            String::new()
        };
        let comps: Vec<&str> = self.comps.iter().take(8).map(Comp::text).collect();
        s.push_str(&comps.join("/"));
        if self.dir {
            s.push('/');
        }
        s
    }
}

#[derive(Debug, Arbitrary)]
struct ZipEntry {
    name: Name,
    data: Vec<u8>,
    deflate: bool,
    /// Unix mode in the external attributes (made by Unix).
    unix_mode: Option<u16>,
    encrypted: bool,
    /// Overrides: compressed size, uncompressed size, CRC, local header offset, method.
    csize: Option<u32>,
    usize_: Option<u32>,
    crc: Option<u32>,
    offset: Option<u32>,
    method: Option<u16>,
}

#[derive(Debug, Arbitrary)]
struct TarEntry {
    name: Name,
    flag: u8,
    data: Vec<u8>,
    size_lie: Option<u32>,
}

#[derive(Debug, Arbitrary)]
enum Archive {
    Zip {
        entries: Vec<ZipEntry>,
        count: Option<u16>,
        cd_offset: Option<u32>,
        comment: Vec<u8>,
    },
    Tar(Vec<TarEntry>),
    Tgz {
        entries: Vec<TarEntry>,
        flags: u8,
        extra: Vec<u8>,
    },
    Raw(Vec<u8>),
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn zip(
    entries: &[ZipEntry],
    count: Option<u16>,
    cd_offset: Option<u32>,
    comment: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for e in entries.iter().take(16) {
        let name = e.name.render();
        let stored = if e.deflate {
            miniz_oxide::deflate::compress_to_vec(&e.data, 6)
        } else {
            e.data.clone()
        };
        let method = e.method.unwrap_or(if e.deflate { 8 } else { 0 });
        let crc = e.crc.unwrap_or_else(|| crc32(&e.data));
        let csize = e.csize.unwrap_or(stored.len() as u32);
        let usize_ = e.usize_.unwrap_or(e.data.len() as u32);
        let flags: u16 = if e.encrypted { 1 } else { 0 };
        let offset = e.offset.unwrap_or(out.len() as u32);
        let nb = name.as_bytes();
        // Local header.
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&csize.to_le_bytes());
        out.extend_from_slice(&usize_.to_le_bytes());
        out.extend_from_slice(&(nb.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(nb);
        out.extend_from_slice(&stored);
        // Central directory entry.
        let made_by: u16 = if e.unix_mode.is_some() {
            3 << 8 | 20
        } else {
            20
        };
        let eattr = u32::from(e.unix_mode.unwrap_or(0)) << 16;
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&made_by.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&flags.to_le_bytes());
        central.extend_from_slice(&method.to_le_bytes());
        central.extend_from_slice(&[0; 4]);
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&csize.to_le_bytes());
        central.extend_from_slice(&usize_.to_le_bytes());
        central.extend_from_slice(&(nb.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 8]);
        central.extend_from_slice(&eattr.to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(nb);
    }
    let cd_at = cd_offset.unwrap_or(out.len() as u32);
    let n = count.unwrap_or(entries.len().min(16) as u16);
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_at.to_le_bytes());
    let c = &comment[..comment.len().min(64)];
    out.extend_from_slice(&(c.len() as u16).to_le_bytes());
    out.extend_from_slice(c);
    out
}

fn tar(entries: &[TarEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries.iter().take(16) {
        let size = e.size_lie.map_or(e.data.len() as u64, u64::from);
        out.extend_from_slice(&header(
            e.name.render().as_bytes(),
            e.flag,
            0o644,
            size,
            b"",
        ));
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn gzip(body: &[u8], flags: u8, extra: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 3];
    if flags & 4 != 0 {
        let x = &extra[..extra.len().min(64)];
        out.extend_from_slice(&(x.len() as u16).to_le_bytes());
        out.extend_from_slice(x);
    }
    if flags & 8 != 0 {
        out.extend_from_slice(b"name\0");
    }
    if flags & 16 != 0 {
        out.extend_from_slice(b"comment\0");
    }
    if flags & 2 != 0 {
        out.extend_from_slice(&[0, 0]);
    }
    out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(body, 6));
    out.extend_from_slice(&crc32(body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out
}

fn clean(path: &str) {
    assert!(!path.is_empty(), "empty extracted path");
    assert!(!path.starts_with('/'), "absolute extracted path {path:?}");
    assert!(
        !path.contains('\\') && !path.chars().any(char::is_control),
        "unclean extracted path {path:?}"
    );
    assert!(path.len() <= MAX_PATH_BYTES, "extracted path too long");
    let comps: Vec<&str> = path.split('/').collect();
    assert!(comps.len() <= MAX_PATH_DEPTH, "extracted path too deep");
    for c in comps {
        assert!(
            !matches!(c, "" | "." | ".."),
            "unclean extracted path {path:?}"
        );
        assert!(
            c.len() <= MAX_COMPONENT_BYTES,
            "extracted component too long"
        );
    }
}

fn check_dir_name(name: &str, id: &str) {
    let Ok(d) = skill_dir_name(name, id) else {
        return;
    };
    assert!(
        !d.is_empty()
            && d != "."
            && d != ".."
            && !d.contains(['/', '\\'])
            && !d.chars().any(char::is_control),
        "skill directory name {d:?} (from name {name:?}, id {id:?}) is not one safe component"
    );
    assert!(is_single_component(&d), "{d:?} fails is_single_component");
}

#[derive(Debug)]
struct Input {
    archive: Archive,
    small: bool,
    names: (String, String),
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Input {
            small: u.arbitrary()?,
            names: u.arbitrary()?,
            archive: u.arbitrary()?,
        })
    }
}

fuzz_target!(|input: Input| {
    check_dir_name(&input.names.0, &input.names.1);
    if let Ok(n) = safe_member_name(&input.names.0)
        && !n.is_empty()
    {
        clean(&n);
    }
    let bytes = match &input.archive {
        Archive::Zip {
            entries,
            count,
            cd_offset,
            comment,
        } => zip(entries, *count, *cd_offset, comment),
        Archive::Tar(entries) => tar(entries),
        Archive::Tgz {
            entries,
            flags,
            extra,
        } => gzip(&tar(entries), *flags, extra),
        Archive::Raw(b) => b.clone(),
    };
    let limits = if input.small {
        SkillLimits {
            max_entries: 4,
            max_file_bytes: 64,
            max_total_bytes: 128,
        }
    } else {
        SkillLimits::default()
    };
    let Ok(x) = extract_archive(&bytes, &limits) else {
        return;
    };
    assert!(
        x.dirs.len() + x.files.len() <= limits.max_entries,
        "more entries than the limit"
    );
    let mut total = 0u64;
    for d in &x.dirs {
        clean(d);
    }
    // No file twice, and no file where a directory is (a directory member, or the parent of
    // any member). A directory listed twice is harmless.
    let mut files = HashSet::new();
    for f in &x.files {
        assert!(
            files.insert(f.path.as_str()),
            "{:?} extracted twice",
            f.path
        );
    }
    let needed: HashSet<&str> = x
        .dirs
        .iter()
        .chain(x.files.iter().map(|f| &f.path))
        .flat_map(|p| p.match_indices('/').map(move |(i, _)| &p[..i]))
        .chain(x.dirs.iter().map(String::as_str))
        .collect();
    for f in &x.files {
        assert!(
            !needed.contains(f.path.as_str()),
            "file {:?} where a directory is needed",
            f.path
        );
        clean(&f.path);
        assert!(
            f.data.len() as u64 <= limits.max_file_bytes,
            "file over the limit"
        );
        total += f.data.len() as u64;
    }
    assert!(
        total <= limits.max_total_bytes,
        "archive over the total limit"
    );
});
