//! Shared pieces of the cma fuzz targets: one tokio runtime per process, a scratch isolate
//! workspace that is reset cheaply between inputs and checked for escapes, and structured
//! arbitrary JSON.
//!
//! Every target lives in `fuzz_targets/<name>.rs`; `scripts/fuzz.sh` builds and runs them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use cma_sandbox::Sandbox;
use cma_sandbox::isolate::IsolateBackend;
use serde_json::{Map, Number, Value};

/// The process's tokio runtime (multi-threaded: the isolate backend blocks on its blocking pool
/// and bridges streams with `Handle::block_on`).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(8)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// What the scratch root holds besides the workspace; it must never change.
const SENTINEL: &str = "sentinel.txt";
const SENTINEL_TEXT: &[u8] = b"outside the workspace: must never change\n";
const WORKSPACE: &str = "ws";

/// A scratch isolate sandbox over `<tempdir>/ws`, made once per process. `<tempdir>` also
/// holds a sentinel file; [`Scratch::check_contained`] asserts that nothing outside `ws` changed.
pub struct Scratch {
    root: PathBuf,
    ws: PathBuf,
    /// The sandbox whose `/workspace` is `ws`.
    pub sandbox: Arc<dyn Sandbox>,
    _dir: tempfile::TempDir,
}

impl Scratch {
    /// The process-wide scratch sandbox (created on first use, inside the runtime).
    pub fn get() -> &'static Scratch {
        static SCRATCH: OnceLock<Scratch> = OnceLock::new();
        SCRATCH.get_or_init(|| {
            // tmpfs when there is one: deep trees are made and removed for every input.
            let base = std::env::var_os("CMA_FUZZ_SCRATCH")
                .map(PathBuf::from)
                .or_else(|| {
                    let shm = PathBuf::from("/dev/shm");
                    shm.is_dir().then_some(shm)
                })
                .unwrap_or_else(std::env::temp_dir);
            let dir = tempfile::Builder::new()
                .prefix("cma-fuzz-")
                .tempdir_in(&base)
                .or_else(|_| tempfile::Builder::new().prefix("cma-fuzz-").tempdir())
                .expect("scratch tempdir");
            let root = dir.path().to_path_buf();
            let ws = root.join(WORKSPACE);
            std::fs::create_dir(&ws).expect("scratch workspace");
            std::fs::write(root.join(SENTINEL), SENTINEL_TEXT).expect("sentinel");
            let _guard = runtime().enter();
            // The backend's own root (unused by `open_directory` sandboxes) lives in the
            // workspace's parent too, so a write through it would be caught as well.
            let backend = IsolateBackend::new(root.join("backend")).expect("isolate backend");
            let sandbox = backend.open_directory(&ws).expect("open scratch workspace");
            Scratch {
                root,
                ws,
                sandbox,
                _dir: dir,
            }
        })
    }

    /// The host path of the workspace.
    pub fn workspace_path(&self) -> &Path {
        &self.ws
    }

    /// Empty the workspace (symlinks are removed, never followed).
    pub fn reset(&self) {
        clear_dir(&self.ws);
    }

    /// Panic if anything appeared, vanished or changed next to the workspace, or if the
    /// workspace holds an entry kind the sandbox must never create (devices, FIFOs, sockets,
    /// setuid/setgid files).
    pub fn check_contained(&self) {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .expect("list scratch root")
            .map(|e| {
                e.expect("scratch entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["backend", SENTINEL, WORKSPACE],
            "something was created next to the workspace"
        );
        let backend: Vec<_> = std::fs::read_dir(self.root.join("backend"))
            .expect("list backend root")
            .collect();
        assert!(
            backend.is_empty(),
            "something was written in the backend root"
        );
        let sentinel = std::fs::read(self.root.join(SENTINEL)).expect("sentinel readable");
        assert_eq!(
            sentinel, SENTINEL_TEXT,
            "the sentinel outside the workspace changed"
        );
        check_entries(&self.ws, 0);
    }
}

fn clear_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                // A directory left without write/execute permission cannot be emptied.
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
                let _ = std::fs::remove_dir_all(&p);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&p);
            }
            Err(_) => {}
        }
    }
}

fn check_entries(dir: &Path, depth: usize) {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if depth > 4096 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let ft = m.file_type();
        assert!(
            !(ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket()),
            "special file in the workspace: {}",
            p.display()
        );
        assert_eq!(
            m.permissions().mode() & 0o6000,
            0,
            "setuid/setgid entry in the workspace: {}",
            p.display()
        );
        if ft.is_dir() {
            check_entries(&p, depth + 1);
        }
    }
}

/// Arbitrary JSON of bounded depth and size, biased towards the shapes tool inputs and
/// protocol objects have (objects with known keys, small integers, extreme integers).
#[derive(Debug, Clone)]
pub struct ArbJson(pub Value);

/// Keys worth trying: every parameter name the tools and protocol objects know.
pub const KEYS: &[&str] = &[
    "file_path",
    "view_range",
    "content",
    "old_string",
    "new_string",
    "replace_all",
    "pattern",
    "path",
    "command",
    "restart",
    "timeout_ms",
    "code",
    "type",
    "id",
    "data",
    "state",
    "secret",
    "metadata",
    "error",
    "message",
    "details",
    "current_state",
    "last_heartbeat",
    "lease_extended",
    "ttl_seconds",
    "environment_id",
    "created_at",
    "name",
    "input",
    "tool_use_id",
    "custom_tool_use_id",
    "is_error",
    "stop_reason",
    "event_ids",
    "agent",
    "resources",
    "status",
    "text",
];

fn arb_number(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    const EXTREMES: &[i64] = &[i64::MIN, i64::MAX, i64::MIN + 1, i64::MAX - 1, -1, 0, 1, 2];
    Ok(match u.int_in_range(0..=9u8)? {
        0 => Value::from(u.int_in_range(-3i64..=3)?),
        1 => Value::from(i64::arbitrary(u)?),
        2..=4 => Value::from(*u.choose(EXTREMES)?),
        5 => Value::from(u64::arbitrary(u)?),
        6 => Value::from(u64::MAX),
        7 => Number::from_f64(f64::arbitrary(u)?).map_or(Value::Null, Value::Number),
        8 => Value::from(*u.choose(&[0.5f64, 1.0, -1.0, 1e30, -9.3e18, 9.3e18, 1e-9])?),
        // Integers as strings: the tools coerce them (pydantic lax mode).
        _ => Value::from(*u.choose(&[
            "-9223372036854775808",
            "9223372036854775807",
            "-1",
            "0",
            " 1_000 ",
            "5.000",
            "99999999999999999999",
        ])?),
    })
}

/// Strings worth trying: paths that exist in the targets' workspaces, hostile paths, glob and
/// regex metacharacters, lax-coercion spellings.
pub const STRINGS: &[&str] = &[
    "",
    "a.txt",
    "dir/b.md",
    "x.png",
    "bin.dat",
    "link",
    "out",
    "empty",
    "dir",
    "/workspace",
    "/workspace/a.txt",
    "..",
    "../x",
    "/etc/passwd",
    "**",
    "**/*",
    "*",
    "a/",
    ".",
    "-5",
    "1",
    "true",
    "yes",
    "a\0b",
    "[",
    "\\",
    "(a|a)*$",
    ".*",
    "x{2,}",
    "(?i)NEEDLE",
];

fn arb_string(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => (*u.choose(KEYS)?).to_owned(),
        1 | 2 => (*u.choose(STRINGS)?).to_owned(),
        _ => String::arbitrary(u)?,
    })
}

fn arb_value(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Value> {
    let leaf_only = depth >= 6;
    let pick = if leaf_only {
        u.int_in_range(0..=3u8)?
    } else {
        u.int_in_range(0..=6u8)?
    };
    Ok(match pick {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u)?),
        2 => arb_number(u)?,
        3 => Value::String(arb_string(u)?),
        4 => {
            let n = u.int_in_range(0..=4usize)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(arb_value(u, depth + 1)?);
            }
            Value::Array(v)
        }
        _ => {
            let n = u.int_in_range(0..=5usize)?;
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(arb_string(u)?, arb_value(u, depth + 1)?);
            }
            Value::Object(m)
        }
    })
}

impl<'a> Arbitrary<'a> for ArbJson {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        arb_value(u, 0).map(ArbJson)
    }
}

/// An arbitrary JSON object (the shape most decoders expect), of bounded size.
pub fn arb_object(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    let n = u.int_in_range(0..=6usize)?;
    let mut m = Map::new();
    for _ in 0..n {
        m.insert(arb_string(u)?, arb_value(u, 1)?);
    }
    Ok(Value::Object(m))
}

/// Hand-made tar pieces: headers with exactly the bytes asked for (`tar::Header` refuses `..`
/// and other hostile names, which the targets need to produce).
pub mod tar {
    fn octal(field: &mut [u8], value: u64) {
        let s = format!("{value:0width$o}", width = field.len() - 1);
        let b = s.as_bytes();
        let b = &b[b.len().saturating_sub(field.len() - 1)..];
        field[..b.len()].copy_from_slice(b);
        field[b.len()] = 0;
    }

    /// One 512-byte ustar header with exactly these bytes (no validation, unlike `tar::Header`).
    pub fn header(name: &[u8], flag: u8, mode: u32, size: u64, link: &[u8]) -> [u8; 512] {
        let mut h = [0u8; 512];
        let n = name.len().min(100);
        h[..n].copy_from_slice(&name[..n]);
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 1_700_000_000);
        h[156] = flag;
        let l = link.len().min(100);
        h[157..157 + l].copy_from_slice(&link[..l]);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        octal(&mut h[148..155], sum);
        h[155] = b' ';
        h
    }

    /// Zero-pad `out` to a 512-byte boundary.
    pub fn pad(out: &mut Vec<u8>) {
        let rem = out.len() % 512;
        if rem != 0 {
            out.resize(out.len() + 512 - rem, 0);
        }
    }

    /// One PAX extended-header record, `<len> key=value\n`.
    pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        // "<len> key=value\n" where len counts itself.
        let body_len = key.len() + value.len() + 3;
        let mut len = body_len + 1;
        while (len.to_string().len() + body_len) != len {
            len = len.to_string().len() + body_len;
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }
}
