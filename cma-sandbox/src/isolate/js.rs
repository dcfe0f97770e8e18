//! `execute`: one JavaScript program in a fresh QuickJS runtime (rquickjs), with a heap limit,
//! a wall-clock limit, bounded captured output, the sandbox's files as `fs.*` functions and
//! `fetch` routed through the sandbox's [`EgressHook`]. There is no shell, no process spawning,
//! no module loader and no other host access.
//!
//! The script-facing API is documented on the [module](super) (`# execute`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use rquickjs::context::EvalOptions;
use rquickjs::function::Rest;
use rquickjs::{Context, Ctx, Exception, Function, Object, Runtime, Value};

use super::egress::{EgressHook, FetchRequest};
use super::workspace::Workspace;
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::exec::{ExecOutput, ExecuteRequest};
use crate::file::FileKind;
use crate::spec::SandboxId;

/// QuickJS's own stack limit for a script (recursion past it throws `InternalError`); well below
/// the 2 MiB of a tokio blocking thread.
pub const SCRIPT_STACK_BYTES: usize = 512 * 1024;
/// Largest file `fs.readFile` loads, whatever the heap limit (the copy lives outside the JS heap
/// until converted).
pub const MAX_SCRIPT_READ_BYTES: u64 = 64 * 1024 * 1024;

/// Everything a script can reach.
pub(crate) struct ScriptEnv {
    pub sandbox: SandboxId,
    pub workspace: Arc<Workspace>,
    pub egress: Arc<dyn EgressHook>,
    /// Set when the caller went away; the interrupt handler then stops the script.
    pub cancelled: Arc<AtomicBool>,
}

/// Bounded stdout/stderr capture. Past the cap, the first bytes are kept and `truncated` is set.
struct Capture {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capture {
    fn push(&mut self, to_stderr: bool, text: &str) {
        let cap = self.cap;
        let buf = if to_stderr {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        let room = cap.saturating_sub(buf.len());
        if text.len() < room {
            buf.extend_from_slice(text.as_bytes());
            buf.push(b'\n');
        } else {
            let mut cut = room;
            while cut > 0 && !text.is_char_boundary(cut) {
                cut -= 1;
            }
            buf.extend_from_slice(&text.as_bytes()[..cut]);
            self.truncated = true;
        }
    }
}

const PRELUDE: &str = r#"(function (host) {
  "use strict";
  const fmt = (v) => {
    if (typeof v === "string") return v;
    if (v === undefined) return "undefined";
    if (typeof v === "function") return "[Function" + (v.name ? ": " + v.name : "") + "]";
    if (typeof v === "symbol" || typeof v === "bigint") return String(v);
    if (v instanceof Error) {
      const head = v.name + ": " + v.message;
      return v.stack ? head + "\n" + String(v.stack).replace(/\n$/, "") : head;
    }
    try { const s = JSON.stringify(v); return s === undefined ? String(v) : s; }
    catch (_) { return String(v); }
  };
  const print = (toErr) => (...args) => host.print(toErr, args.map(fmt).join(" "));
  globalThis.console = Object.freeze({
    log: print(false), info: print(false), debug: print(false),
    warn: print(true), error: print(true),
  });
  const p = (path) => String(path);
  globalThis.fs = Object.freeze({
    readFile: (path) => host.readFile(p(path)),
    writeFile: (path, text) => { host.writeFile(p(path), String(text)); },
    readdir: (path) => host.readdir(path === undefined ? "." : p(path)),
    exists: (path) => host.exists(p(path)),
    stat: (path) => host.stat(p(path), true),
    lstat: (path) => host.stat(p(path), false),
    mkdir: (path) => { host.mkdir(p(path)); },
    remove: (path, opts) => { host.remove(p(path), !!(opts && opts.recursive)); },
    symlink: (target, path) => { host.symlink(String(target), p(path)); },
    readlink: (path) => host.readlink(p(path)),
  });
  globalThis.fetch = async (input, init) => {
    init = init || {};
    const flat = [];
    if (init.headers) for (const [k, v] of Object.entries(init.headers)) flat.push(String(k), String(v));
    const method = String(init.method || "GET").toUpperCase();
    const body = init.body === undefined || init.body === null ? undefined : String(init.body);
    const r = host.fetch(String(input), method, body, ...flat);
    const headers = {};
    for (let i = 0; i + 1 < r.headers.length; i += 2) headers[r.headers[i].toLowerCase()] = r.headers[i + 1];
    return Object.freeze({
      status: r.status, ok: r.status >= 200 && r.status < 300, headers,
      text: async () => r.body, json: async () => JSON.parse(r.body),
    });
  };
  return fmt;
})"#;

fn throw(ctx: &Ctx<'_>, e: &SandboxError) -> rquickjs::Error {
    Exception::throw_message(ctx, &e.to_string())
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Other => "other",
    }
}

/// Build the host object the prelude receives (and hides from the script).
fn host_object<'js>(
    ctx: &Ctx<'js>,
    env: &ScriptEnv,
    capture: Rc<RefCell<Capture>>,
    deadline: Instant,
    read_cap: u64,
) -> rquickjs::Result<Object<'js>> {
    let host = Object::new(ctx.clone())?;
    host.set(
        "print",
        Function::new(ctx.clone(), move |to_err: bool, text: String| {
            capture.borrow_mut().push(to_err, &text);
        })?,
    )?;
    let ws = env.workspace.clone();
    host.set(
        "readFile",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: String| {
            let bytes = ws
                .read_file(&path, Some(read_cap))
                .map_err(|e| throw(&ctx, &e))?;
            String::from_utf8(bytes.to_vec()).map_err(|_| {
                Exception::throw_message(&ctx, &format!("{path}: not valid UTF-8 text"))
            })
        })?,
    )?;
    let ws = env.workspace.clone();
    host.set(
        "writeFile",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, path: String, text: String| {
                ws.write_file(&path, text.as_bytes())
                    .map_err(|e| throw(&ctx, &e))
            },
        )?,
    )?;
    let ws = env.workspace.clone();
    host.set(
        "readdir",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: String| {
            ws.read_dir(&path)
                .map(|v| v.into_iter().map(|e| e.name).collect::<Vec<_>>())
                .map_err(|e| throw(&ctx, &e))
        })?,
    )?;
    let ws = env.workspace.clone();
    host.set(
        "exists",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: String| {
            match ws.stat(&path) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == SandboxErrorKind::NotFound => Ok(false),
                Err(e) => Err(throw(&ctx, &e)),
            }
        })?,
    )?;
    let ws = env.workspace.clone();
    host.set(
        "stat",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, path: String, follow: bool| {
                let st = if follow {
                    ws.stat(&path)
                } else {
                    ws.lstat(&path)
                }
                .map_err(|e| throw(&ctx, &e))?;
                let o = Object::new(ctx.clone())?;
                o.set("type", kind_name(st.kind))?;
                o.set("size", st.size as f64)?;
                let mtime = st
                    .modified
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as f64);
                o.set("mtimeMs", mtime)?;
                Ok::<_, rquickjs::Error>(o)
            },
        )?,
    )?;
    let ws = env.workspace.clone();
    host.set(
        "mkdir",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: String| {
            ws.create_dir_all(&path).map_err(|e| throw(&ctx, &e))
        })?,
    )?;
    let ws = env.workspace.clone();
    host.set(
        "remove",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, path: String, rec: bool| {
                ws.remove(&path, rec).map_err(|e| throw(&ctx, &e))
            },
        )?,
    )?;
    let ws = env.workspace.clone();
    host.set(
        "symlink",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, target: String, path: String| {
                ws.symlink(&target, &path).map_err(|e| throw(&ctx, &e))
            },
        )?,
    )?;
    let ws = env.workspace.clone();
    host.set(
        "readlink",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: String| {
            ws.read_link(&path).map_err(|e| throw(&ctx, &e))
        })?,
    )?;
    let egress = env.egress.clone();
    let sandbox = env.sandbox.clone();
    host.set(
        "fetch",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  url: String,
                  method: String,
                  body: Option<String>,
                  flat: Rest<String>| {
                let headers = flat
                    .0
                    .chunks_exact(2)
                    .map(|kv| (kv[0].clone(), kv[1].clone()))
                    .collect();
                let request = FetchRequest {
                    sandbox: sandbox.clone(),
                    url,
                    method,
                    headers,
                    body: body.map(Bytes::from),
                    timeout: deadline.saturating_duration_since(Instant::now()),
                };
                let resp = egress
                    .fetch(request)
                    .map_err(|e| Exception::throw_type(&ctx, &e.message))?;
                let o = Object::new(ctx.clone())?;
                o.set("status", resp.status)?;
                let flat: Vec<String> =
                    resp.headers.into_iter().flat_map(|(k, v)| [k, v]).collect();
                o.set("headers", flat)?;
                o.set("body", String::from_utf8_lossy(&resp.body).into_owned())?;
                Ok::<_, rquickjs::Error>(o)
            },
        )?,
    )?;
    Ok(host)
}

/// How a script ended, before mapping to the public result.
enum Ending {
    Done,
    Thrown(String),
    OutOfMemory,
}

/// Run one script to completion on the current (blocking) thread.
pub(crate) fn run(req: &ExecuteRequest, env: &ScriptEnv) -> Result<ExecOutput> {
    let start = Instant::now();
    let deadline = start + req.timeout;
    let engine_err = |e: rquickjs::Error| {
        SandboxError::new(
            SandboxErrorKind::Backend,
            "execute: JavaScript engine failure",
        )
        .with_source(e)
    };
    let rt = Runtime::new().map_err(engine_err)?;
    rt.set_memory_limit(req.memory_limit);
    rt.set_max_stack_size(SCRIPT_STACK_BYTES);
    let timed_out = Arc::new(AtomicBool::new(false));
    {
        let timed_out = timed_out.clone();
        let cancelled = env.cancelled.clone();
        rt.set_interrupt_handler(Some(Box::new(move || {
            if cancelled.load(Ordering::Relaxed) {
                return true;
            }
            if Instant::now() >= deadline {
                timed_out.store(true, Ordering::Relaxed);
                return true;
            }
            false
        })));
    }
    let ctx = match Context::full(&rt) {
        Ok(c) => c,
        Err(rquickjs::Error::Allocation) => return Err(out_of_memory(req)),
        Err(e) => return Err(engine_err(e)),
    };
    let capture = Rc::new(RefCell::new(Capture {
        stdout: Vec::new(),
        stderr: Vec::new(),
        cap: req.max_output_bytes,
        truncated: false,
    }));
    let read_cap = (req.memory_limit as u64).min(MAX_SCRIPT_READ_BYTES);

    let ending = ctx.with(|ctx| -> Result<Ending> {
        let fmt: Function = {
            let host =
                host_object(&ctx, env, capture.clone(), deadline, read_cap).map_err(engine_err)?;
            let prelude: Function = ctx.eval(PRELUDE).map_err(engine_err)?;
            prelude.call((host,)).map_err(engine_err)?
        };
        let mut opts = EvalOptions::default();
        opts.strict = false;
        opts.backtrace_barrier = true;
        opts.filename = Some("execute.js".into());
        let outcome = (|| -> rquickjs::Result<Value<'_>> {
            let mut v: Value = ctx.eval_with_options(req.code.as_bytes().to_vec(), opts)?;
            if let Some(f) = v.as_function() {
                v = f.call(())?;
            }
            if let Some(p) = v.as_promise() {
                v = p.finish()?;
            }
            Ok(v)
        })();
        match outcome {
            Ok(v) => {
                if !v.is_undefined() {
                    let text: String = fmt.call((v,)).map_err(engine_err)?;
                    capture.borrow_mut().push(false, &text);
                }
                Ok(Ending::Done)
            }
            Err(rquickjs::Error::Allocation) => Ok(Ending::OutOfMemory),
            Err(rquickjs::Error::WouldBlock) => Ok(Ending::Thrown(
                "Error: the script's promise never settled (no pending work left)".into(),
            )),
            Err(rquickjs::Error::Exception) => {
                let exc = ctx.catch();
                if is_oom(&exc) {
                    return Ok(Ending::OutOfMemory);
                }
                let text = fmt
                    .call::<_, String>((exc,))
                    .unwrap_or_else(|_| "exception".into());
                Ok(Ending::Thrown(text))
            }
            Err(e) => Ok(Ending::Thrown(e.to_string())),
        }
    });
    // Interrupts surface as uncatchable exceptions; the flags say which limit it was.
    if timed_out.load(Ordering::Relaxed) {
        return Err(SandboxError::new(
            SandboxErrorKind::Timeout,
            format!("execute: script timed out after {:?}", req.timeout),
        ));
    }
    if env.cancelled.load(Ordering::Relaxed) {
        return Err(SandboxError::new(
            SandboxErrorKind::Timeout,
            "execute: cancelled by the caller",
        ));
    }
    let ending = match ending {
        Ok(e) => e,
        Err(e) if e.kind() == SandboxErrorKind::Backend && rt_over(&rt, req) => Ending::OutOfMemory,
        Err(e) => return Err(e),
    };
    let exit_code = match ending {
        Ending::Done => 0,
        Ending::OutOfMemory => return Err(out_of_memory(req)),
        Ending::Thrown(text) => {
            capture.borrow_mut().push(true, &format!("Uncaught {text}"));
            1
        }
    };
    drop(ctx);
    drop(rt);
    let cap = Rc::try_unwrap(capture)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| {
            let c = rc.borrow();
            Capture {
                stdout: c.stdout.clone(),
                stderr: c.stderr.clone(),
                cap: c.cap,
                truncated: c.truncated,
            }
        });
    Ok(ExecOutput {
        exit_code: Some(exit_code),
        stdout: Bytes::from(cap.stdout),
        stderr: Bytes::from(cap.stderr),
        truncated: cap.truncated,
    })
}

fn out_of_memory(req: &ExecuteRequest) -> SandboxError {
    SandboxError::new(
        SandboxErrorKind::ResourceLimit,
        format!(
            "execute: script exceeded its memory limit of {} bytes",
            req.memory_limit
        ),
    )
}

/// QuickJS reports heap exhaustion as `InternalError: out of memory`, or, when even that
/// object cannot be allocated, as a `null` exception.
fn is_oom(exc: &Value<'_>) -> bool {
    if exc.is_null() {
        return true;
    }
    exc.as_exception()
        .and_then(Exception::message)
        .is_some_and(|m| m == "out of memory")
}

fn rt_over(rt: &Runtime, req: &ExecuteRequest) -> bool {
    let used = rt.memory_usage().malloc_size;
    used >= 0 && (used as u64) * 10 >= (req.memory_limit as u64) * 9
}
