//! Importing a hostile tar stream into an isolate sandbox (`Sandbox::import_workspace`): entry
//! names with `..`, absolute paths, long (GNU and PAX) names, symlinks anywhere, hard links,
//! devices, FIFOs, setuid modes, lying sizes, entries replacing one another, a stream cut short
//! or failing midway, and raw bytes.
//!
//! Checked after every input: no panic; nothing appeared outside the workspace (the scratch
//! root and a sentinel next to it are unchanged); the workspace holds no special file and no
//! setuid/setgid file. Symlink targets are link text and may be absolute or leave the
//! workspace (the import keeps them verbatim, as snapshots do); they are never followed.
#![no_main]

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use cma_fuzz::tar::{header, pad, pax_record};
use cma_fuzz::{Scratch, runtime};
use cma_sandbox::{SandboxError, SandboxErrorKind};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Comp {
    A,
    B,
    Dot,
    DotDot,
    Empty,
    Name(String),
}

impl Comp {
    fn text(&self) -> &str {
        match self {
            Comp::A => "a",
            Comp::B => "b",
            Comp::Dot => ".",
            Comp::DotDot => "..",
            Comp::Empty => "",
            Comp::Name(s) => s,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Name {
    absolute: bool,
    comps: Vec<Comp>,
    /// Pad to a long name (GNU `L` or PAX `path`).
    long: Option<u8>,
}

impl Name {
    fn render(&self) -> Vec<u8> {
        let mut s = String::new();
        if self.absolute {
            s.push('/');
        }
        let comps: Vec<&str> = self.comps.iter().take(10).map(Comp::text).collect();
        s.push_str(&comps.join("/"));
        if let Some(n) = self.long {
            s = format!("{}/{s}", "d".repeat(usize::from(n) + 100));
        }
        s.into_bytes()
    }
}

#[derive(Debug, Arbitrary)]
enum Kind {
    Regular,
    Dir,
    Symlink,
    HardLink,
    Char,
    Block,
    Fifo,
    Continuous,
    Other(u8),
}

impl Kind {
    fn flag(&self) -> u8 {
        match self {
            Kind::Regular => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
            Kind::Continuous => b'7',
            Kind::Other(b) => *b,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum LongForm {
    Gnu,
    Pax,
}

#[derive(Debug, Arbitrary)]
enum Mode {
    File,
    Exec,
    Setuid,
    Sticky,
    Any(u32),
}

impl Mode {
    fn bits(&self) -> u32 {
        match self {
            Mode::File => 0o644,
            Mode::Exec => 0o755,
            Mode::Setuid => 0o4755,
            Mode::Sticky => 0o1777,
            Mode::Any(m) => *m & 0o7777_7777,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Entry {
    kind: Kind,
    name: Name,
    link: Option<Name>,
    long_form: LongForm,
    mode: Mode,
    data: Vec<u8>,
    /// Claim this size instead of the data's.
    size_lie: Option<u16>,
}

#[derive(Debug, Arbitrary)]
enum Ending {
    /// Two zero blocks.
    Proper,
    /// The stream just stops.
    Cut,
    /// The stream fails with an error after the entries.
    Fails,
    /// Garbage after the entries.
    Trailing(Vec<u8>),
}

#[derive(Debug)]
enum Input {
    Structured {
        entries: Vec<Entry>,
        ending: Ending,
        chunk: u16,
    },
    Raw(Vec<u8>),
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(if u.ratio(1, 8)? {
            Input::Raw(u.arbitrary()?)
        } else {
            let n = u.int_in_range(0..=12usize)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(u.arbitrary()?);
            }
            Input::Structured {
                entries,
                ending: u.arbitrary()?,
                chunk: u.arbitrary()?,
            }
        })
    }
}

fn build(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let name = e.name.render();
        let link = e.link.as_ref().map(Name::render).unwrap_or_default();
        let long = name.len() > 100 || link.len() > 100;
        if long {
            match e.long_form {
                LongForm::Gnu => {
                    for (flag, value) in [(b'L', &name), (b'K', &link)] {
                        if value.len() > 100 {
                            out.extend_from_slice(&header(
                                b"././@LongLink",
                                flag,
                                0o644,
                                value.len() as u64 + 1,
                                b"",
                            ));
                            out.extend_from_slice(value);
                            out.push(0);
                            pad(&mut out);
                        }
                    }
                }
                LongForm::Pax => {
                    let mut recs = pax_record("path", &name);
                    if !link.is_empty() {
                        recs.extend(pax_record("linkpath", &link));
                    }
                    out.extend_from_slice(&header(b"pax", b'x', 0o644, recs.len() as u64, b""));
                    out.extend_from_slice(&recs);
                    pad(&mut out);
                }
            }
        }
        let data: &[u8] = match e.kind {
            Kind::Regular | Kind::Continuous | Kind::Other(_) => &e.data,
            _ => &[],
        };
        let size = e.size_lie.map_or(data.len() as u64, u64::from);
        out.extend_from_slice(&header(&name, e.kind.flag(), e.mode.bits(), size, &link));
        out.extend_from_slice(data);
        pad(&mut out);
    }
    out
}

/// Every entry of the workspace is a regular file, a directory or a symlink, and none is
/// setuid or setgid. Symlink targets are link text (absolute, escaping and dangling ones are
/// kept verbatim, as snapshots and exports write them) and are never followed here: what a
/// link could reach is covered by [`Scratch::check_contained`].
fn check_kinds(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let t = m.file_type();
        assert!(
            t.is_file() || t.is_dir() || t.is_symlink(),
            "special file imported: {}",
            p.display()
        );
        if !t.is_symlink() {
            assert_eq!(
                m.permissions().mode() & 0o6000,
                0,
                "setuid/setgid entry imported: {}",
                p.display()
            );
        }
        if t.is_dir() {
            check_kinds(&p);
        }
    }
}

fuzz_target!(|input: Input| {
    let scratch = Scratch::get();
    scratch.reset();
    let (bytes, ending, chunk) = match input {
        Input::Raw(b) => (b, Ending::Cut, 512),
        Input::Structured {
            entries,
            ending,
            chunk,
        } => (build(&entries), ending, chunk.max(1)),
    };
    let mut bytes = bytes;
    let mut fail = false;
    match &ending {
        Ending::Proper => bytes.extend_from_slice(&[0u8; 1024]),
        Ending::Cut => {}
        Ending::Fails => fail = true,
        Ending::Trailing(t) => bytes.extend_from_slice(t),
    }
    let mut pieces: Vec<Result<Bytes, SandboxError>> = bytes
        .chunks(usize::from(chunk))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    if fail {
        pieces.push(Err(SandboxError::new(
            SandboxErrorKind::Io,
            "fuzz: stream failed",
        )));
    }
    let stream = Box::pin(futures::stream::iter(pieces));
    let r = runtime().block_on(scratch.sandbox.import_workspace(stream));
    if fail && let Err(e) = &r {
        // The stream's own error is reported as such when it is what stopped the import.
        let _ = e.kind();
    }
    scratch.check_contained();
    check_kinds(scratch.workspace_path());
});
