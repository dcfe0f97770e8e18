//! `execute`'s engine: one JavaScript program in a fresh QuickJS runtime (rquickjs), with a heap
//! limit, a wall-clock interrupt, bounded captured output, and the sandbox reached only through
//! a [`ScriptHost`]: `fs.*` and `fetch` become [`Call`]s. There is no shell, no process
//! spawning, no module loader and no other host access.
//!
//! This runs inside a worker process (see [`super::worker`]); the host answers calls over the
//! worker's socket. The interrupt handler here is the polite stop: it lets a script that polls
//! it end with a clean [`Outcome::Timeout`] and leaves the worker reusable. It is not the guard:
//! some built-ins loop natively without polling it, and the backend kills the worker process at
//! the deadline whatever the script does.
//!
//! The script-facing API is documented on the [module](super) (`# execute`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rquickjs::context::EvalOptions;
use rquickjs::convert::Coerced;
use rquickjs::function::{Opt, Rest};
use rquickjs::{Context, Ctx, Exception, FromJs, Function, Object, Persistent, Runtime, Value};

use super::worker::ipc::{Call, Job, KIND_NAMES, Outcome, Reply};

/// QuickJS's own stack limit for a script (recursion past it throws `InternalError`); far below
/// the worker's main-thread stack.
pub const SCRIPT_STACK_BYTES: usize = 512 * 1024;
/// Largest file `fs.readFile` loads, whatever the heap limit (the copy lives outside the JS heap
/// until converted).
pub const MAX_SCRIPT_READ_BYTES: u64 = 64 * 1024 * 1024;
/// Heap limit while a runtime waits for its script (the script's own limit replaces it).
const PREPARE_HEAP_BYTES: usize = 16 * 1024 * 1024;

/// Answers a script's calls on its sandbox. `Err` is a failure of the channel itself (the
/// script sees it as a thrown error).
pub(crate) trait ScriptHost {
    fn call(&self, call: Call) -> Result<Reply, String>;
}

/// Bounded stdout/stderr capture. Past the cap, the first bytes are kept and `truncated` is set.
#[derive(Default)]
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
  globalThis.fs = Object.freeze(host.fs);
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

fn thrown(ctx: &Ctx<'_>, message: &str) -> rquickjs::Error {
    Exception::throw_message(ctx, message)
}

/// Make `call` and turn its reply into `Ok(reply)` or a thrown error (a `TypeError` for fetch,
/// an `Error` otherwise).
fn ask(ctx: &Ctx<'_>, host: &dyn ScriptHost, call: Call) -> rquickjs::Result<Reply> {
    let is_fetch = matches!(call, Call::Fetch { .. });
    match host.call(call) {
        Ok(Reply::Error(m)) if is_fetch => Err(Exception::throw_type(ctx, &m)),
        Ok(Reply::Error(m)) => Err(thrown(ctx, &m)),
        Ok(reply) => Ok(reply),
        Err(m) => Err(thrown(ctx, &m)),
    }
}

fn unexpected(ctx: &Ctx<'_>) -> rquickjs::Error {
    thrown(ctx, "execute: unexpected answer from the sandbox")
}

/// `undefined` (or absent) as `"."`, anything else as `String(v)`.
fn path_or_dot<'js>(ctx: &Ctx<'js>, v: Opt<Value<'js>>) -> rquickjs::Result<String> {
    match v.0 {
        None => Ok(".".into()),
        Some(v) if v.is_undefined() => Ok(".".into()),
        Some(v) => Coerced::<String>::from_js(ctx, v).map(|c| c.0),
    }
}

/// `globalThis.fs`: native functions (compiling JS wrappers for each would cost every script's
/// runtime time). Arguments are converted as `String(x)` would.
fn fs_object<'js>(ctx: &Ctx<'js>, host: Rc<dyn ScriptHost>) -> rquickjs::Result<Object<'js>> {
    type Path = Coerced<String>;
    let fs = Object::new(ctx.clone())?;
    let h = host.clone();
    fs.set(
        "readFile",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: Path| {
            match ask(&ctx, &*h, Call::ReadFile { path: path.0 })? {
                Reply::Text(t) => Ok(t),
                _ => Err(unexpected(&ctx)),
            }
        })?,
    )?;
    let h = host.clone();
    fs.set(
        "writeFile",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: Path, text: Path| {
            ask(
                &ctx,
                &*h,
                Call::WriteFile {
                    path: path.0,
                    text: text.0,
                },
            )
            .map(drop)
        })?,
    )?;
    let h = host.clone();
    fs.set(
        "readdir",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: Opt<Value<'js>>| {
            let path = path_or_dot(&ctx, path)?;
            match ask(&ctx, &*h, Call::ReadDir { path })? {
                Reply::Names(n) => Ok(n),
                _ => Err(unexpected(&ctx)),
            }
        })?,
    )?;
    let h = host.clone();
    fs.set(
        "exists",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: Path| {
            match ask(&ctx, &*h, Call::Exists { path: path.0 })? {
                Reply::Bool(b) => Ok(b),
                _ => Err(unexpected(&ctx)),
            }
        })?,
    )?;
    for (name, follow) in [("stat", true), ("lstat", false)] {
        let h = host.clone();
        fs.set(
            name,
            Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: Path| {
                let call = Call::Stat {
                    path: path.0,
                    follow,
                };
                let Reply::Stat(st) = ask(&ctx, &*h, call)? else {
                    return Err(unexpected(&ctx));
                };
                let o = Object::new(ctx.clone())?;
                o.set("type", KIND_NAMES[usize::from(st.kind)])?;
                o.set("size", st.size as f64)?;
                o.set("mtimeMs", st.mtime_ms)?;
                Ok::<_, rquickjs::Error>(o)
            })?,
        )?;
    }
    let h = host.clone();
    fs.set(
        "mkdir",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: Path| {
            ask(&ctx, &*h, Call::Mkdir { path: path.0 }).map(drop)
        })?,
    )?;
    let h = host.clone();
    fs.set(
        "remove",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, path: Path, opts: Opt<Value<'js>>| {
                // `!!(opts && opts.recursive)`
                let recursive = match opts.0.as_ref().and_then(Value::as_object) {
                    Some(o) => Coerced::<bool>::from_js(&ctx, o.get("recursive")?)?.0,
                    None => false,
                };
                let call = Call::Remove {
                    path: path.0,
                    recursive,
                };
                ask(&ctx, &*h, call).map(drop)
            },
        )?,
    )?;
    let h = host.clone();
    fs.set(
        "symlink",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, target: Path, path: Path| {
                let call = Call::Symlink {
                    target: target.0,
                    path: path.0,
                };
                ask(&ctx, &*h, call).map(drop)
            },
        )?,
    )?;
    fs.set(
        "readlink",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: Path| {
            match ask(&ctx, &*host, Call::ReadLink { path: path.0 })? {
                Reply::Text(t) => Ok(t),
                _ => Err(unexpected(&ctx)),
            }
        })?,
    )?;
    Ok(fs)
}

/// Build the host object the prelude receives (and hides from the script).
fn host_object<'js>(
    ctx: &Ctx<'js>,
    host: Rc<dyn ScriptHost>,
    capture: Rc<RefCell<Capture>>,
) -> rquickjs::Result<Object<'js>> {
    let obj = Object::new(ctx.clone())?;
    obj.set(
        "print",
        Function::new(ctx.clone(), move |to_err: bool, text: String| {
            capture.borrow_mut().push(to_err, &text);
        })?,
    )?;
    obj.set("fs", fs_object(ctx, host.clone())?)?;
    obj.set(
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
                let call = Call::Fetch {
                    url,
                    method,
                    body,
                    headers,
                };
                let Reply::Fetch {
                    status,
                    headers,
                    body,
                } = ask(&ctx, &*host, call)?
                else {
                    return Err(unexpected(&ctx));
                };
                let o = Object::new(ctx.clone())?;
                o.set("status", status)?;
                let flat: Vec<String> = headers.into_iter().flat_map(|(k, v)| [k, v]).collect();
                o.set("headers", flat)?;
                o.set("body", body)?;
                Ok::<_, rquickjs::Error>(o)
            },
        )?,
    )?;
    Ok(obj)
}

/// Use once what the engine and the C library initialise lazily from files, so that scripts
/// never need a file: local time makes the C library read its time zone data.
pub(crate) fn warm_up() {
    if let Ok(rt) = Runtime::new()
        && let Ok(ctx) = Context::full(&rt)
    {
        ctx.with(|ctx| {
            let _ =
                ctx.eval::<Value, _>("new Date(0).getTimezoneOffset() + new Date(0).toString()");
        });
    }
}

/// How a script ended, before mapping to an [`Outcome`].
enum Ending {
    Done,
    Thrown(String),
    OutOfMemory,
}

/// A fresh runtime with the prelude installed, waiting for its one script. Made ahead of time
/// (while the worker is idle), so a script's latency excludes building it.
pub(crate) struct Prepared {
    // Field order is drop order: the saved formatter and the context go before the runtime.
    fmt: Persistent<Function<'static>>,
    ctx: Context,
    capture: Rc<RefCell<Capture>>,
    rt: Runtime,
}

impl Prepared {
    /// A runtime whose `fs.*` and `fetch` go to `host`.
    pub(crate) fn new(host: Rc<dyn ScriptHost>) -> Result<Self, String> {
        let rt = Runtime::new().map_err(|e| e.to_string())?;
        rt.set_memory_limit(PREPARE_HEAP_BYTES);
        rt.set_max_stack_size(SCRIPT_STACK_BYTES);
        let ctx = Context::full(&rt).map_err(|e| e.to_string())?;
        let capture = Rc::new(RefCell::new(Capture::default()));
        let fmt = ctx
            .with(|ctx| -> rquickjs::Result<_> {
                let obj = host_object(&ctx, host, capture.clone())?;
                let prelude: Function = ctx.eval(PRELUDE)?;
                let fmt: Function = prelude.call((obj,))?;
                Ok(Persistent::save(&ctx, fmt))
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            fmt,
            ctx,
            capture,
            rt,
        })
    }

    /// Run `job` to completion (or its interrupt) on this thread, consuming the runtime.
    pub(crate) fn run(self, job: &Job) -> Outcome {
        let Self {
            fmt,
            ctx,
            capture,
            rt,
        } = self;
        let memory_limit = usize::try_from(job.memory_limit).unwrap_or(usize::MAX);
        capture.borrow_mut().cap = usize::try_from(job.max_output_bytes).unwrap_or(usize::MAX);
        let deadline = Instant::now().checked_add(job.timeout);
        let timed_out = Arc::new(AtomicBool::new(false));
        {
            let timed_out = timed_out.clone();
            rt.set_interrupt_handler(Some(Box::new(move || {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    timed_out.store(true, Ordering::Relaxed);
                    return true;
                }
                false
            })));
        }
        rt.set_memory_limit(memory_limit);
        let ending = ctx.with(|ctx| -> rquickjs::Result<Ending> {
            let fmt = fmt.restore(&ctx)?;
            let mut opts = EvalOptions::default();
            opts.strict = false;
            opts.backtrace_barrier = true;
            opts.filename = Some("execute.js".into());
            let outcome = (|| -> rquickjs::Result<Value<'_>> {
                let mut v: Value = ctx.eval_with_options(job.code.as_bytes().to_vec(), opts)?;
                if let Some(f) = v.as_function() {
                    v = f.call(())?;
                }
                if let Some(p) = v.as_promise() {
                    v = p.finish()?;
                }
                Ok(v)
            })();
            Ok(match outcome {
                Ok(v) => {
                    if !v.is_undefined() {
                        let text: String = fmt.call((v,))?;
                        capture.borrow_mut().push(false, &text);
                    }
                    Ending::Done
                }
                Err(rquickjs::Error::Allocation) => Ending::OutOfMemory,
                Err(rquickjs::Error::WouldBlock) => Ending::Thrown(
                    "Error: the script's promise never settled (no pending work left)".into(),
                ),
                Err(rquickjs::Error::Exception) => {
                    let exc = ctx.catch();
                    if is_oom(&exc) {
                        Ending::OutOfMemory
                    } else {
                        Ending::Thrown(
                            fmt.call::<_, String>((exc,))
                                .unwrap_or_else(|_| "exception".into()),
                        )
                    }
                }
                Err(e) => Ending::Thrown(e.to_string()),
            })
        });
        // Interrupts surface as uncatchable exceptions; the flag says it was the deadline.
        if timed_out.load(Ordering::Relaxed) {
            return Outcome::Timeout;
        }
        let ending = match ending {
            Ok(e) => e,
            Err(_) if rt_over(&rt, memory_limit) => Ending::OutOfMemory,
            Err(rquickjs::Error::Allocation) => Ending::OutOfMemory,
            Err(e) => return Outcome::Engine(e.to_string()),
        };
        let exit_code = match ending {
            Ending::Done => 0,
            Ending::OutOfMemory => return Outcome::OutOfMemory,
            Ending::Thrown(text) => {
                capture.borrow_mut().push(true, &format!("Uncaught {text}"));
                1
            }
        };
        drop(ctx);
        drop(rt);
        let cap = std::mem::take(&mut *capture.borrow_mut());
        Outcome::Finished {
            exit_code,
            stdout: cap.stdout,
            stderr: cap.stderr,
            truncated: cap.truncated,
        }
    }
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

fn rt_over(rt: &Runtime, limit: usize) -> bool {
    let used = rt.memory_usage().malloc_size;
    used >= 0 && (used as u64) * 10 >= (limit as u64) * 9
}
