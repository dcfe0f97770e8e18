//! Adversarial suite, class "skills" (issue 11): hostile skill archives — zip, tar and tar.gz —
//! crafted byte by byte: decompression bombs, traversal, links and devices, duplicate and
//! colliding names, huge and deep names, truncation, lying sizes and checksums, overlapping zip
//! members. Every archive extracts within the limits or fails with `SkillError::Archive`.

mod adversarial;

use std::io::Write as _;
use std::time::Duration;

use cma_core::runner::skills::{
    ExtractedSkill, MAX_PATH_BYTES, MAX_PATH_DEPTH, SkillError, SkillLimits, extract_archive,
};

#[test]
fn adversarial_archives() {
    adversarial::run_cases(&[
        case!(zip_archives, Duration::from_secs(60)),
        case!(tar_archives, Duration::from_secs(60)),
        case!(gzip_archives, Duration::from_secs(60)),
    ]);
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn crc(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

/// One zip member as written: everything a hostile archive may lie about is a field.
#[derive(Clone)]
struct Z {
    name: Vec<u8>,
    data: Vec<u8>,
    mode: u32,
    deflate: bool,
    method: Option<u16>,
    declared: Option<u32>,
    crc: Option<u32>,
    flags: u16,
    /// Point the central entry at the local header of this earlier member (overlap).
    alias_of: Option<usize>,
}

fn z(name: &str, data: &[u8]) -> Z {
    Z {
        name: name.as_bytes().to_vec(),
        data: data.to_vec(),
        mode: 0o100_644,
        deflate: false,
        method: None,
        declared: None,
        crc: None,
        flags: 0,
        alias_of: None,
    }
}

fn zip_of(entries: &[Z]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cd = Vec::new();
    let mut offsets = Vec::new();
    for e in entries {
        let body = if e.deflate {
            deflate(&e.data)
        } else {
            e.data.clone()
        };
        let method = e.method.unwrap_or(if e.deflate { 8 } else { 0 });
        let crc = e.crc.unwrap_or_else(|| crc(&e.data));
        let size = e.declared.unwrap_or(e.data.len() as u32);
        let off = match e.alias_of {
            Some(i) => offsets[i],
            None => {
                let off = out.len() as u32;
                out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
                out.extend_from_slice(&20u16.to_le_bytes());
                out.extend_from_slice(&e.flags.to_le_bytes());
                out.extend_from_slice(&method.to_le_bytes());
                out.extend_from_slice(&[0; 4]);
                out.extend_from_slice(&crc.to_le_bytes());
                out.extend_from_slice(&(body.len() as u32).to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&e.name);
                out.extend_from_slice(&body);
                off
            }
        };
        offsets.push(off);
        cd.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        cd.extend_from_slice(&[20, 3, 20, 0]);
        cd.extend_from_slice(&e.flags.to_le_bytes());
        cd.extend_from_slice(&method.to_le_bytes());
        cd.extend_from_slice(&[0; 4]);
        cd.extend_from_slice(&crc.to_le_bytes());
        cd.extend_from_slice(&(body.len() as u32).to_le_bytes());
        cd.extend_from_slice(&size.to_le_bytes());
        cd.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        cd.extend_from_slice(&[0; 8]);
        cd.extend_from_slice(&(e.mode << 16).to_le_bytes());
        cd.extend_from_slice(&off.to_le_bytes());
        cd.extend_from_slice(&e.name);
    }
    let cd_off = out.len() as u32;
    out.extend_from_slice(&cd);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let n = (entries.len() as u16).to_le_bytes();
    out.extend_from_slice(&n);
    out.extend_from_slice(&n);
    out.extend_from_slice(&(cd.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_off.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

fn ok(bytes: &[u8]) -> ExtractedSkill {
    extract_archive(bytes, &SkillLimits::default()).expect("extracts")
}

/// The archive is refused with a message containing `why`.
fn refused(what: &str, bytes: &[u8], limits: &SkillLimits, why: &str) {
    match extract_archive(bytes, limits) {
        Err(SkillError::Archive(m)) => assert!(
            m.to_lowercase().contains(&why.to_lowercase()),
            "{what}: refused for another reason: {m}"
        ),
        other => panic!("{what}: expected a refusal ({why}), got {other:?}"),
    }
}

fn paths(x: &ExtractedSkill) -> Vec<&str> {
    x.files.iter().map(|f| f.path.as_str()).collect()
}

async fn zip_archives() {
    let d = SkillLimits::default();
    let text = b"# pdf skill\n".repeat(50);
    // The ordinary shape: wrapper stripped, stored and deflated members, a symlink skipped.
    let x = ok(&zip_of(&[
        Z {
            mode: 0o040_755,
            ..z("pdf/", b"")
        },
        Z {
            deflate: true,
            ..z("pdf/SKILL.md", &text)
        },
        z("pdf/run.sh", b"echo"),
        Z {
            mode: 0o120_777,
            ..z("pdf/link", b"/etc/passwd")
        },
        Z {
            mode: 0o020_644,
            ..z("pdf/tty", b"")
        },
        Z {
            mode: 0o010_644,
            ..z("pdf/fifo", b"")
        },
    ]));
    assert_eq!(paths(&x), ["SKILL.md", "run.sh"]);
    assert_eq!(&x.files[0].data[..], &text[..]);
    assert!(ok(&zip_of(&[])).files.is_empty());

    // Names.
    let deep = vec!["d"; MAX_PATH_DEPTH + 1].join("/");
    let long = "n".repeat(MAX_PATH_BYTES + 1);
    let wide = "w".repeat(256);
    for (name, why) in [
        ("../evil", "'..'"),
        ("a/../../evil", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a\\..\\..\\x", "'..'"),
        ("a\0b", "control"),
        ("a\nb", "control"),
        (deep.as_str(), "levels deep"),
        (long.as_str(), "byte limit"),
        (wide.as_str(), "component"),
    ] {
        refused(name, &zip_of(&[z(name, b"x")]), &d, why);
        // A skipped (symlink) member's name is screened too.
        refused(
            name,
            &zip_of(&[Z {
                mode: 0o120_777,
                ..z(name, b"target")
            }]),
            &d,
            why,
        );
    }
    // Collisions.
    refused(
        "duplicates",
        &zip_of(&[z("a", b"1"), z("a", b"2")]),
        &d,
        "duplicate",
    );
    refused(
        "normalised duplicates",
        &zip_of(&[z("a/b", b"1"), z("a//./b", b"2")]),
        &d,
        "two members",
    );
    refused(
        "file under a file",
        &zip_of(&[z("a", b"1"), z("a/b", b"2")]),
        &d,
        "needs a directory",
    );
    // Overlapping members: two names over one local header.
    refused(
        "overlap",
        &zip_of(&[
            z("a", b"12345678"),
            Z {
                alias_of: Some(0),
                ..z("b", b"12345678")
            },
        ]),
        &d,
        "overlap",
    );
    // Bombs and sizes.
    let zeros = vec![0u8; 3 << 20];
    refused(
        "ratio bomb",
        &zip_of(&[Z {
            deflate: true,
            ..z("zeros", &zeros)
        }]),
        &d,
        "bomb",
    );
    let small = SkillLimits {
        max_file_bytes: 10,
        ..d
    };
    refused(
        "file limit",
        &zip_of(&[z("big", &[1; 64])]),
        &small,
        "byte limit",
    );
    let small = SkillLimits {
        max_total_bytes: 100,
        ..d
    };
    refused(
        "total limit",
        &zip_of(&[z("a", &[1; 60]), z("b", &[1; 60])]),
        &small,
        "more than 100 bytes",
    );
    let small = SkillLimits {
        max_entries: 3,
        ..d
    };
    let many: Vec<Z> = (0..5).map(|i| z(&format!("f{i}"), b"x")).collect();
    refused("entries", &zip_of(&many), &small, "entries");
    let noisy = Z {
        deflate: true,
        ..z("a", &b"abcdefgh".repeat(512))
    };
    refused(
        "declares less",
        &zip_of(&[Z {
            declared: Some(10),
            ..noisy.clone()
        }]),
        &d,
        "",
    );
    refused(
        "declares more",
        &zip_of(&[Z {
            declared: Some(1 << 20),
            ..noisy.clone()
        }]),
        &d,
        "",
    );
    refused(
        "declares 4 GiB",
        &zip_of(&[Z {
            declared: Some(u32::MAX),
            ..noisy
        }]),
        &d,
        "byte limit",
    );
    // Integrity.
    refused(
        "crc",
        &zip_of(&[Z {
            crc: Some(1),
            ..z("a", b"hello")
        }]),
        &d,
        "",
    );
    refused(
        "encrypted",
        &zip_of(&[Z {
            flags: 1,
            ..z("a", b"hello")
        }]),
        &d,
        "",
    );
    refused(
        "bzip2",
        &zip_of(&[Z {
            method: Some(12),
            ..z("a", b"hello")
        }]),
        &d,
        "",
    );
    let whole = zip_of(&[z("a", b"hello"), z("b", b"world")]);
    for cut in [4, 30, whole.len() / 2, whole.len() - 10] {
        refused("truncated", &whole[..cut], &d, "");
    }
    let mut garbage = b"PK\x03\x04".to_vec();
    garbage.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    refused("garbage", &garbage, &d, "");
}

/// A tar member with a raw name and header fields (the tar crate's builder refuses unsafe names,
/// so the name is written into the header by hand).
fn tar_of(entries: &[(&[u8], tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            h.set_link_name("/etc/passwd").unwrap();
        }
        if name.len() <= 100 {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        } else {
            // Long names go through the GNU long-name extension.
            b.append_data(&mut h, std::str::from_utf8(name).unwrap(), *data)
                .unwrap();
        }
    }
    b.into_inner().unwrap()
}

async fn tar_archives() {
    use tar::EntryType as T;
    let d = SkillLimits::default();
    let x = ok(&tar_of(&[
        (b"pdf/", T::Directory, b""),
        (b"pdf/SKILL.md", T::Regular, b"# pdf"),
        (b"pdf/scripts/run.sh", T::Regular, b"echo"),
        (b"pdf/evil", T::Symlink, b""),
        (b"pdf/hard", T::Link, b""),
        (b"pdf/dev", T::Char, b""),
        (b"pdf/fifo", T::Fifo, b""),
    ]));
    assert_eq!(paths(&x), ["SKILL.md", "scripts/run.sh"]);
    for (name, why) in [
        (&b"../x"[..], "'..'"),
        (b"a/../../x", "'..'"),
        (b"/etc/x", "absolute"),
        (b"a\\..\\x", "'..'"),
        (b"a\x01b", "control"),
    ] {
        refused("tar name", &tar_of(&[(name, T::Regular, b"x")]), &d, why);
        refused(
            "tar link name",
            &tar_of(&[(name, T::Symlink, b"")]),
            &d,
            why,
        );
        refused(
            "tar hard link name",
            &tar_of(&[(name, T::Link, b"")]),
            &d,
            why,
        );
    }
    let long = "l".repeat(100_000);
    refused(
        "huge GNU long name",
        &tar_of(&[(long.as_bytes(), T::Regular, b"x")]),
        &d,
        "byte limit",
    );
    refused(
        "duplicates",
        &tar_of(&[(b"a", T::Regular, b"1"), (b"a", T::Regular, b"2")]),
        &d,
        "two members",
    );
    refused(
        "dir over file",
        &tar_of(&[(b"a", T::Regular, b"1"), (b"a", T::Directory, b"")]),
        &d,
        "needs a directory",
    );
    let small = SkillLimits {
        max_entries: 2,
        ..d
    };
    refused(
        "entries",
        &tar_of(&[
            (b"a", T::Regular, b"1"),
            (b"b", T::Regular, b"2"),
            (b"c", T::Regular, b"3"),
        ]),
        &small,
        "entries",
    );
    let small = SkillLimits {
        max_file_bytes: 3,
        ..d
    };
    refused(
        "file limit",
        &tar_of(&[(b"big", T::Regular, b"1234")]),
        &small,
        "byte limit",
    );
    // A header that declares more than the archive holds.
    let mut lying = tar_of(&[(b"a", T::Regular, b"hello")]);
    let mut h = tar::Header::new_gnu();
    h.as_mut_bytes().copy_from_slice(&lying[..512]);
    h.set_size(1 << 20);
    h.set_cksum();
    lying[..512].copy_from_slice(h.as_bytes());
    refused("lying size", &lying, &d, "");
    // A header that declares more than any limit, without the bytes behind it.
    h.set_size(u64::MAX >> 2);
    h.set_cksum();
    lying[..512].copy_from_slice(h.as_bytes());
    refused("absurd size", &lying, &d, "");
    let whole = tar_of(&[(b"a", T::Regular, &[7; 2000])]);
    refused("truncated", &whole[..1000], &d, "");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn gzip_archives() {
    use tar::EntryType as T;
    let d = SkillLimits::default();
    let t = tar_of(&[(b"s/SKILL.md", T::Regular, b"gz")]);
    let x = ok(&gzip(&t));
    assert_eq!(paths(&x), ["SKILL.md"]);
    // Gzip header fields (name, comment, extra) are the crate's to skip.
    let mut e = flate2::GzBuilder::new()
        .filename("x.tar")
        .comment("c")
        .extra(vec![1, 2, 3])
        .write(Vec::new(), flate2::Compression::fast());
    e.write_all(&t).unwrap();
    assert_eq!(paths(&ok(&e.finish().unwrap())), ["SKILL.md"]);
    // One file of zeros far past the ratio bound; many files that add up past it.
    let zeros = vec![0u8; 12 << 20];
    let big = SkillLimits {
        max_file_bytes: 1 << 30,
        max_total_bytes: 1 << 30,
        ..d
    };
    refused(
        "gzip bomb",
        &gzip(&tar_of(&[(b"z", T::Regular, &zeros)])),
        &big,
        "bomb",
    );
    let chunk = vec![0u8; 512 << 10];
    let many: Vec<(&[u8], T, &[u8])> = (0..24)
        .map(|_| (&b"z"[..], T::Regular, &chunk[..]))
        .collect();
    let names: Vec<String> = (0..24).map(|i| format!("z{i}")).collect();
    let many: Vec<(&[u8], T, &[u8])> = many
        .iter()
        .zip(&names)
        .map(|((_, k, d), n)| (n.as_bytes(), *k, *d))
        .collect();
    refused("many-file bomb", &gzip(&tar_of(&many)), &big, "bomb");
    let small = SkillLimits {
        max_total_bytes: 4096,
        max_entries: 8,
        ..d
    };
    refused("past the stream cap", &gzip(&tar_of(&many)), &small, "");
    let whole = gzip(&tar_of(&[(b"a", T::Regular, &[7; 20_000])]));
    refused("truncated gzip", &whole[..whole.len() / 2], &d, "");
    refused("only a gzip magic", &[0x1f, 0x8b], &d, "");
    refused("not an archive", b"hello, world", &d, "");
}
