//! The file operations without the helper: one exec of POSIX tools (coreutils `stat`, `cat`,
//! `mkdir`, `rm`, GNU `find`) per request, for images without `python3` or with
//! [`DockerConfig::python_helper`](super::DockerConfig::python_helper) off. Each request gives
//! the same reply (JSON head plus data) as `helper.py` would, so the callers cannot tell them
//! apart; modification times keep their nanoseconds, as the helper's `st_mtime_ns` does.

use bollard::Docker;
use bytes::Bytes;
use serde_json::{Value, json};

use super::files::{OP_TIMEOUT, Reply};
use super::process;
use crate::error::Result;
use crate::exec::ExecRequest;

/// The errno named by a tool's error message (`cat: x: No such file or directory`).
fn errno_of(stderr: &[u8]) -> i64 {
    let text = String::from_utf8_lossy(stderr);
    [
        ("No such file or directory", 2),
        ("Not a directory", 20),
        ("Is a directory", 21),
        ("Permission denied", 13),
        ("Operation not permitted", 1),
        ("File exists", 17),
        ("Directory not empty", 39),
        ("Too many levels of symbolic links", 40),
        ("Read-only file system", 30),
        ("No space left on device", 28),
        ("File name too long", 36),
    ]
    .iter()
    .find(|(m, _)| text.contains(m))
    .map_or(5, |(_, e)| *e)
}

async fn sh(
    docker: &Docker,
    container: &str,
    script: &str,
    args: &[&str],
    stdin: Option<Bytes>,
    cap: usize,
) -> Result<crate::exec::ExecOutput> {
    let mut argv = vec!["/bin/sh", "-c", script, "sh"];
    argv.extend_from_slice(args);
    let mut req = ExecRequest::argv(argv);
    req.stdin = stdin;
    req.timeout = OP_TIMEOUT;
    req.max_output_bytes = cap;
    process::run(docker, container, req, "/").await
}

fn os_err(out: &crate::exec::ExecOutput) -> Reply {
    Reply {
        head: json!({"e": "os", "errno": errno_of(&out.stderr), "msg": String::from_utf8_lossy(&out.stderr).trim().to_owned()}),
        data: Bytes::new(),
    }
}

fn ok(head: Value) -> Reply {
    Reply {
        head,
        data: Bytes::new(),
    }
}

/// Split `<digits>.<digits>` into whole seconds and nanoseconds (fraction cut or padded to 9
/// digits); `None` for anything else.
fn split_seconds(s: &str) -> Option<(i64, i64)> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: i64 = int.parse().ok()?;
    let mut ns = 0i64;
    for i in 0..9 {
        ns = ns * 10 + frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
    }
    Some((int, ns))
}

/// Nanoseconds since the epoch from `stat -c %.9Y`: a decimal number of seconds (`-1.500000000`
/// is 1.5 s before the epoch). Exact, unlike a float (which keeps ~0.2 µs at today's dates).
fn ns_from_decimal(s: &str) -> i64 {
    let s = s.trim();
    let (neg, abs) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let Some((secs, ns)) = split_seconds(abs) else {
        return 0;
    };
    let total = secs.saturating_mul(1_000_000_000).saturating_add(ns);
    if neg { -total } else { total }
}

/// Nanoseconds since the epoch from GNU find's `%T@`, which prints the whole seconds (rounded
/// down) and then the nanoseconds: `-2.5000000000` is 2 s before the epoch plus 0.5 s.
fn ns_from_find(s: &str) -> i64 {
    match split_seconds(s.trim()) {
        Some((secs, ns)) => secs.saturating_mul(1_000_000_000).saturating_add(ns),
        None => 0,
    }
}

/// Parse `stat -c '%F|%s|%.9Y'` output.
fn parse_stat_line(line: &str) -> Value {
    let mut it = line.rsplitn(3, '|');
    let (m, s, f) = (it.next(), it.next(), it.next());
    let k = match f.unwrap_or("") {
        "regular file" | "regular empty file" => "f",
        "directory" => "d",
        "symbolic link" => "l",
        _ => "o",
    };
    json!({"k": k, "s": s.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0), "m": ns_from_decimal(m.unwrap_or(""))})
}

/// One helper request served by POSIX tools in a one-shot exec.
pub(crate) async fn shell_call(
    docker: &Docker,
    container: &str,
    req: &Value,
    payload: Bytes,
) -> Result<Reply> {
    let op = req.get("op").and_then(Value::as_str).unwrap_or("");
    let p = req.get("p").and_then(Value::as_str).unwrap_or("/");
    const SMALL: usize = 1 << 20;
    match op {
        "stat" => {
            let script = if req.get("f").and_then(Value::as_bool) == Some(true) {
                "exec stat -L -c '%F|%s|%.9Y' -- \"$1\""
            } else {
                "exec stat -c '%F|%s|%.9Y' -- \"$1\""
            };
            let out = sh(docker, container, script, &[p], None, SMALL).await?;
            if !out.success() {
                return Ok(os_err(&out));
            }
            Ok(ok(parse_stat_line(
                String::from_utf8_lossy(&out.stdout).trim(),
            )))
        }
        "readlink" => {
            let out = sh(
                docker,
                container,
                "exec readlink -- \"$1\"",
                &[p],
                None,
                SMALL,
            )
            .await?;
            if !out.success() {
                let mut r = os_err(&out);
                if out.stderr.is_empty() {
                    r.head = json!({"e": "os", "errno": 22});
                }
                return Ok(r);
            }
            let mut t = String::from_utf8_lossy(&out.stdout).into_owned();
            if t.ends_with('\n') {
                t.pop();
            }
            Ok(ok(json!({"t": t})))
        }
        "read" => {
            let st = sh(
                docker,
                container,
                "exec stat -L -c '%F|%s|%.9Y' -- \"$1\"",
                &[p],
                None,
                SMALL,
            )
            .await?;
            if !st.success() {
                return Ok(os_err(&st));
            }
            let head = parse_stat_line(String::from_utf8_lossy(&st.stdout).trim());
            match head.get("k").and_then(Value::as_str) {
                Some("d") => return Ok(ok(json!({"e": "os", "errno": 21}))),
                Some("f") => {}
                _ => return Ok(ok(json!({"e": "notreg"}))),
            }
            let size = head.get("s").and_then(Value::as_u64).unwrap_or(0);
            if let Some(max) = req.get("max").and_then(Value::as_u64)
                && size > max
            {
                return Ok(ok(json!({"e": "big", "size": size, "max": max})));
            }
            let off = req.get("off").and_then(Value::as_u64).unwrap_or(0);
            let len = req.get("len").and_then(Value::as_u64);
            let cap = usize::try_from(len.unwrap_or(size).saturating_add(1)).unwrap_or(usize::MAX);
            let out = match len {
                None => sh(docker, container, "exec cat -- \"$1\"", &[p], None, cap).await?,
                Some(l) => {
                    let (off, l) = (off.to_string(), l.to_string());
                    sh(
                        docker,
                        container,
                        "exec tail -c +$(($2 + 1)) -- \"$1\" | head -c \"$3\"",
                        &[p, &off, &l],
                        None,
                        cap,
                    )
                    .await?
                }
            };
            if !out.success() {
                return Ok(os_err(&out));
            }
            Ok(Reply {
                head: json!({"size": size}),
                data: out.stdout,
            })
        }
        "write" => {
            let out = sh(
                docker,
                container,
                "d=$(dirname -- \"$1\")\n\
                 if [ -e \"$d\" ] && [ ! -d \"$d\" ]; then echo 'Not a directory' >&2; exit 1; fi\n\
                 [ -d \"$d\" ] || mkdir -p -- \"$d\" || exit 1\n\
                 if [ -d \"$1\" ]; then echo 'Is a directory' >&2; exit 1; fi\n\
                 exec cat > \"$1\"",
                &[p],
                Some(payload),
                SMALL,
            )
            .await?;
            if !out.success() {
                return Ok(os_err(&out));
            }
            Ok(ok(json!({})))
        }
        "mkdirs" => {
            let out = sh(
                docker,
                container,
                "exec mkdir -p -- \"$1\"",
                &[p],
                None,
                SMALL,
            )
            .await?;
            if !out.success() {
                return Ok(os_err(&out));
            }
            Ok(ok(json!({})))
        }
        "list" => {
            let out = sh(
                docker,
                container,
                "[ -d \"$1\" ] || { [ -e \"$1\" ] && echo 'Not a directory' >&2 || echo 'No such file or directory' >&2; exit 1; }; exec find \"$1\" -mindepth 1 -maxdepth 1 -printf '%f\\0%y\\0%s\\0%T@\\0'",
                &[p],
                None,
                64 << 20,
            )
            .await?;
            if !out.success() {
                return Ok(os_err(&out));
            }
            let fields: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
            let entries: Vec<Value> = fields
                .chunks(4)
                .filter(|c| c.len() == 4)
                .map(|c| {
                    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    let k = match &s(c[1])[..] {
                        "f" => "f",
                        "d" => "d",
                        "l" => "l",
                        _ => "o",
                    };
                    json!({"name": s(c[0]), "k": k, "s": s(c[2]).parse::<u64>().unwrap_or(0), "m": ns_from_find(&s(c[3]))})
                })
                .collect();
            Ok(ok(json!({"entries": entries})))
        }
        "remove" => {
            let script = if req.get("r").and_then(Value::as_bool) == Some(true) {
                "[ -e \"$1\" ] || [ -L \"$1\" ] || { echo 'No such file or directory' >&2; exit 1; }; exec rm -rf -- \"$1\""
            } else {
                "if [ -d \"$1\" ] && [ ! -L \"$1\" ]; then exec rmdir -- \"$1\"; else exec rm -- \"$1\"; fi"
            };
            let out = sh(docker, container, script, &[p], None, SMALL).await?;
            if !out.success() {
                return Ok(os_err(&out));
            }
            Ok(ok(json!({})))
        }
        "id" => {
            let out = sh(
                docker,
                container,
                "echo $(id -u) $(id -g)",
                &[],
                None,
                SMALL,
            )
            .await?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut it = text
                .split_whitespace()
                .map(|x| x.parse::<u64>().unwrap_or(0));
            Ok(ok(
                json!({"uid": it.next().unwrap_or(0), "gid": it.next().unwrap_or(0)}),
            ))
        }
        _ => Ok(ok(json!({"e": "other", "msg": "unknown op"}))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_keep_their_nanoseconds_before_and_after_the_epoch() {
        assert_eq!(
            ns_from_decimal("1700000000.123456789"),
            1_700_000_000_123_456_789
        );
        assert_eq!(ns_from_decimal("1700000000"), 1_700_000_000_000_000_000);
        assert_eq!(ns_from_decimal("-1.500000000"), -1_500_000_000);
        assert_eq!(ns_from_decimal("-0.250000000"), -250_000_000);
        assert_eq!(ns_from_decimal("garbage"), 0);
        // find prints the floor'd seconds, then the nanoseconds (10 digits).
        assert_eq!(
            ns_from_find("1700000000.1234567890"),
            1_700_000_000_123_456_789
        );
        assert_eq!(ns_from_find("-2.5000000000"), -1_500_000_000);
        assert_eq!(ns_from_find("-1.7500000000"), -250_000_000);
        let v = parse_stat_line("regular file|12|1700000000.000000001");
        assert_eq!(v["m"], 1_700_000_000_000_000_001i64);
        assert_eq!((v["k"].as_str(), v["s"].as_u64()), (Some("f"), Some(12)));
    }
}
