//! Each built-in tool (`read`, `write`, `edit`, `glob`, `grep`, and `bash`, which answers an
//! error on isolate) run on a scratch isolate workspace, driven by a small op language: set up
//! files, directories, symlinks, deep chains and wide directories, then call tools with
//! structured fields (paths from a small alphabet, glob patterns, regexes, extreme integers,
//! large repeated contents).
//!
//! Checked after every input: no panic; every call answers within [`CALL_DEADLINE`] (a miss is
//! a hang or superlinear walk); nothing appeared outside the workspace; `glob`/`grep` output
//! stays within their documented caps; a successful `write` reads back identically.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use cma_fuzz::{ArbJson, Scratch, runtime};
use cma_tools::{PostedResult, Tool, ToolContext, agent_toolset};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// A single call slower than this is a finding (hang, superlinear walk).
const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// Calls slower than this are reported on stderr (not failed).
const SLOW: Duration = Duration::from_millis(500);
/// Largest generated content (a little over the 256 KiB read/edit cap).
const MAX_CONTENT: usize = 300 * 1024;
const MAX_OPS: usize = 16;
/// Deepest chain an op makes (a few hundred levels is where superlinear walks show).
const MAX_DEPTH: u16 = 400;
/// `glob` prints at most this many paths (docs/protocol.md §6.5).
const GLOB_RESULT_LIMIT: usize = 200;
/// `grep`'s output budget in characters (§6.5).
const GREP_OUTPUT_LIMIT: usize = 100 * 1024;

#[derive(Debug, Arbitrary)]
enum Comp {
    A,
    B,
    C,
    Dot,
    DotDot,
    Png,
    Hidden,
    Star,
    Workspace,
    Link,
    Name(String),
}

impl Comp {
    fn text(&self) -> &str {
        match self {
            Comp::A => "a",
            Comp::B => "b.txt",
            Comp::C => "c",
            Comp::Dot => ".",
            Comp::DotDot => "..",
            Comp::Png => "x.png",
            Comp::Hidden => ".h",
            Comp::Star => "*",
            Comp::Workspace => "workspace",
            Comp::Link => "l",
            Comp::Name(s) => s,
        }
    }
}

/// A path from a small alphabet: mostly relative, sometimes absolute.
#[derive(Debug, Arbitrary)]
struct P {
    absolute: bool,
    comps: Vec<Comp>,
}

impl P {
    fn render(&self) -> String {
        let body: Vec<&str> = self.comps.iter().take(8).map(Comp::text).collect();
        let body = body.join("/");
        if self.absolute {
            format!("/workspace/{body}")
        } else {
            body
        }
    }
}

/// A tool's path: a new one, or one an earlier op of the same input created.
#[derive(Debug, Arbitrary)]
enum Target {
    Path(P),
    Known(u8),
}

impl Target {
    fn render(&self, known: &[String]) -> String {
        match self {
            Target::Path(p) => p.render(),
            Target::Known(i) if !known.is_empty() => known[usize::from(*i) % known.len()].clone(),
            Target::Known(_) => "a".to_owned(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Content {
    Text(String),
    /// `line` repeated `n` times, each followed by a newline.
    Lines(String, u16),
    /// `s` repeated `n` times (capped at [`MAX_CONTENT`] bytes).
    Repeat(String, u32),
    Bytes(Vec<u8>),
}

impl Content {
    fn render(&self) -> String {
        let repeat = |s: &str, n: usize| {
            if s.is_empty() {
                return String::new();
            }
            s.repeat(n.min(MAX_CONTENT / s.len()))
        };
        match self {
            Content::Text(s) => s.clone(),
            Content::Lines(line, n) => repeat(&format!("{line}\n"), usize::from(*n)),
            Content::Repeat(s, n) => repeat(s, *n as usize),
            Content::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Int {
    Small(i8),
    Any(i64),
    Min,
    Max,
    Str(String),
}

impl Int {
    fn json(&self) -> Value {
        match self {
            Int::Small(n) => json!(n),
            Int::Any(n) => json!(n),
            Int::Min => json!(i64::MIN),
            Int::Max => json!(i64::MAX),
            Int::Str(s) => json!(s),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum PatComp {
    Star,
    DoubleStar,
    Question,
    Class(String),
    Lit(Comp),
    Mixed(String),
}

#[derive(Debug, Arbitrary)]
struct Pattern {
    comps: Vec<PatComp>,
    trailing_slash: bool,
}

impl Pattern {
    fn render(&self) -> String {
        let parts: Vec<String> = self
            .comps
            .iter()
            .take(8)
            .map(|c| match c {
                PatComp::Star => "*".to_owned(),
                PatComp::DoubleStar => "**".to_owned(),
                PatComp::Question => "?".to_owned(),
                PatComp::Class(s) => format!("[{s}]"),
                PatComp::Lit(c) => c.text().to_owned(),
                PatComp::Mixed(s) => format!("*{s}*"),
            })
            .collect();
        let mut p = parts.join("/");
        if self.trailing_slash {
            p.push('/');
        }
        p
    }
}

#[derive(Debug, Arbitrary)]
enum RxTok {
    Any,
    Star,
    Alt,
    Counted(u16),
    Class(String),
    Lit(String),
    Anchor,
    CaseFold,
    Group(Vec<RxTok>),
}

fn render_rx(toks: &[RxTok], out: &mut String, depth: usize) {
    for t in toks.iter().take(12) {
        match t {
            RxTok::Any => out.push('.'),
            RxTok::Star => out.push('*'),
            RxTok::Alt => out.push('|'),
            RxTok::Counted(n) => out.push_str(&format!("{{{n}}}")),
            RxTok::Class(s) => out.push_str(&format!("[{s}]")),
            RxTok::Lit(s) => out.push_str(s),
            RxTok::Anchor => out.push('^'),
            RxTok::CaseFold => out.push_str("(?i)"),
            RxTok::Group(inner) if depth < 4 => {
                out.push('(');
                render_rx(inner, out, depth + 1);
                out.push(')');
            }
            RxTok::Group(_) => {}
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Call {
    Read {
        path: Target,
        range: Option<(Int, Int)>,
    },
    Write {
        path: Target,
        content: Content,
    },
    Edit {
        path: Target,
        old: Content,
        new: Content,
        all: Option<bool>,
    },
    Glob {
        pattern: Pattern,
        path: Option<Target>,
    },
    GlobRaw {
        pattern: String,
    },
    Grep {
        pattern: Vec<RxTok>,
        path: Option<Target>,
    },
    GrepRaw {
        pattern: String,
        path: Option<Target>,
    },
    Bash {
        command: String,
    },
    /// Any JSON to any tool.
    Raw {
        tool: u8,
        input: ArbJson,
    },
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// Through the sandbox API, bypassing the tools' policy.
    Put {
        path: P,
        content: Content,
    },
    Mkdir {
        path: P,
    },
    Symlink {
        target: P,
        path: P,
    },
    Remove {
        path: P,
    },
    /// `depth` (at most [`MAX_DEPTH`]) nested directories named `name`, with a file at the bottom.
    Chain {
        name: Comp,
        depth: u16,
    },
    /// `count` files in one directory.
    Wide {
        dir: Comp,
        count: u8,
    },
    Tool(Call),
}

#[derive(Debug)]
struct Input(Vec<Op>);

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut ops = Vec::new();
        while ops.len() < MAX_OPS && !u.is_empty() {
            ops.push(u.arbitrary()?);
        }
        Ok(Input(ops))
    }
}

fn tool(tools: &[Arc<dyn Tool>], name: &str) -> Arc<dyn Tool> {
    tools
        .iter()
        .find(|t| t.name() == name)
        .cloned()
        .expect("built-in tool")
}

async fn call(tool: &dyn Tool, ctx: &ToolContext, input: Value) -> PostedResult {
    let started = Instant::now();
    let mut ctx = ctx.clone();
    ctx.deadline = Some(tokio::time::Instant::now() + CALL_DEADLINE);
    let r = cma_tools::run_bounded(tool, &ctx, input.clone())
        .await
        .expect("never cancelled here");
    let took = started.elapsed();
    if took > SLOW {
        eprintln!("SLOW {} {took:?}: {input}", tool.name());
    }
    if !r.is_error {
        return r;
    }
    if let Some(t) = r.text() {
        assert!(
            t != format!("tool '{}' timed out", tool.name()),
            "{} took longer than {CALL_DEADLINE:?} (hang or superlinear cost)",
            tool.name()
        );
    }
    r
}

/// How many paths a `glob` output holds. Names may contain newlines, so a line only starts a
/// new path once the text gathered so far names an existing entry of the workspace.
fn glob_paths(text: &str) -> usize {
    let ws = Scratch::get().workspace_path();
    let exists = |p: &str| {
        p.strip_prefix("/workspace").is_some_and(|rest| {
            ws.join(rest.trim_start_matches('/'))
                .symlink_metadata()
                .is_ok()
        })
    };
    let mut count = 0;
    let mut current: Option<String> = None;
    for line in text.split('\n') {
        current = Some(match current {
            Some(c) if !exists(&c) => c + "\n" + line,
            Some(_) => {
                count += 1;
                line.to_owned()
            }
            None => line.to_owned(),
        });
    }
    count + usize::from(current.is_some_and(|c| !c.is_empty()))
}

fn check_caps(name: &str, r: &PostedResult) {
    if r.is_error {
        return;
    }
    let Some(text) = r.text() else { return };
    match name {
        "glob" => {
            let n = glob_paths(text);
            assert!(
                n <= GLOB_RESULT_LIMIT,
                "glob printed {n} paths, more than {GLOB_RESULT_LIMIT}"
            );
        }
        "grep" => assert!(
            text.chars().count() <= GREP_OUTPUT_LIMIT + 1024,
            "grep output of {} chars exceeds its budget",
            text.chars().count()
        ),
        _ => {}
    }
}

async fn run_op(op: &Op, tools: &[Arc<dyn Tool>], ctx: &ToolContext, known: &mut Vec<String>) {
    let sb = &ctx.sandbox;
    match op {
        Op::Put { path, content } => {
            let path = path.render();
            let _ = sb.write_file(&path, Bytes::from(content.render())).await;
            known.push(path);
        }
        Op::Mkdir { path } => {
            let _ = sb.create_dir_all(&path.render()).await;
        }
        Op::Symlink { target, path } => {
            // Direct host symlinks: the workspace may hold any link a process could make,
            // including absolute and escaping ones.
            // The harness itself must not write through an earlier link: every ancestor must
            // be a real directory, every component a plain name.
            let mut host = Scratch::get().workspace_path().to_path_buf();
            let names: Vec<&str> = path.comps.iter().take(8).map(Comp::text).collect();
            let Some((last, dirs)) = names.split_last() else {
                return;
            };
            for n in names.iter() {
                if n.is_empty() || *n == "." || *n == ".." || n.contains(['/', '\0']) {
                    return;
                }
            }
            for d in dirs {
                host.push(d);
                if !std::fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir()) {
                    return;
                }
            }
            host.push(last);
            let Some(target) = confined_target(&target.render(), dirs.len()) else {
                return;
            };
            let _ = std::os::unix::fs::symlink(target, host);
        }
        Op::Remove { path } => {
            let _ = sb.remove(&path.render(), true).await;
        }
        Op::Chain { name, depth } => {
            let n = name.text();
            if n.is_empty() || n == "." || n == ".." || n.contains('/') {
                return;
            }
            if n.contains('\0') {
                return;
            }
            // Made on the host (the sandbox API costs O(depth) per level): never through a link,
            // only into real directories or new ones.
            let depth = usize::from(*depth % (MAX_DEPTH + 1));
            let mut host = Scratch::get().workspace_path().to_path_buf();
            for _ in 0..depth {
                host.push(n);
                match std::fs::symlink_metadata(&host) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return,
                    Err(_) => {
                        if std::fs::create_dir(&host).is_err() {
                            return;
                        }
                    }
                }
            }
            host.push("leaf.txt");
            if std::fs::symlink_metadata(&host).is_err()
                && std::fs::write(&host, b"leaf needle\n").is_ok()
            {
                known.push(format!("{}/leaf.txt", vec![n; depth].join("/")));
            }
        }
        Op::Wide { dir, count } => {
            let d = dir.text();
            known.push(format!("{d}/f0.txt"));
            for i in 0..*count {
                let _ = sb
                    .write_file(
                        &format!("{d}/f{i}.txt"),
                        Bytes::from(format!("line {i} needle\n")),
                    )
                    .await;
            }
        }
        Op::Tool(c) => run_call(c, tools, ctx, known).await,
    }
}

/// A link target that may leave the workspace but never the scratch root (which
/// [`Scratch::check_contained`] watches): absolute targets are re-rooted at the scratch root,
/// relative ones may climb at most one level above the workspace. `dirs` is how deep the link
/// sits below the workspace.
fn confined_target(target: &str, dirs: usize) -> Option<String> {
    if target.is_empty() || target.contains('\0') {
        return None;
    }
    if let Some(rest) = target.strip_prefix('/') {
        let root = Scratch::get()
            .workspace_path()
            .parent()?
            .to_str()?
            .to_owned();
        let rest = rest.strip_prefix("workspace").unwrap_or(rest);
        let rest = rest.trim_start_matches('/');
        return stays_below(rest, 0).then(|| format!("{root}/{rest}"));
    }
    // The link's directory is `dirs + 1` levels below the scratch root.
    stays_below(target, dirs as isize + 1).then(|| target.to_owned())
}

/// Whether `path`, resolved lexically from `depth` levels below the scratch root, stays at or
/// below it.
fn stays_below(path: &str, mut depth: isize) -> bool {
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

async fn run_call(c: &Call, tools: &[Arc<dyn Tool>], ctx: &ToolContext, known: &mut Vec<String>) {
    let (name, input) = match c {
        Call::Read { path, range } => {
            let mut v = json!({"file_path": path.render(known)});
            if let Some((a, b)) = range {
                v["view_range"] = json!([a.json(), b.json()]);
            }
            ("read", v)
        }
        Call::Write { path, content } => {
            let file_path = path.render(known);
            let content = content.render();
            known.push(file_path.clone());
            let r = call(
                tool(tools, "write").as_ref(),
                ctx,
                json!({"file_path": file_path, "content": content}),
            )
            .await;
            if !r.is_error && !content.is_empty() && content.len() <= 256 * 1024 {
                let back = call(
                    tool(tools, "read").as_ref(),
                    ctx,
                    json!({"file_path": file_path}),
                )
                .await;
                let lower = file_path.to_ascii_lowercase();
                let binary = [".png", ".jpg", ".jpeg", ".gif", ".webp", ".pdf"]
                    .iter()
                    .any(|e| lower.ends_with(e));
                // `read` picks binary blocks by the extension of the path it resolved, so a
                // write through a symlink to `x.png` reads back as an image block: then the
                // block's base64 must be as long as the content's.
                let block = back.content.first().filter(|b| {
                    matches!(
                        b.get("type").and_then(Value::as_str),
                        Some("image" | "document")
                    )
                });
                if let Some(b) = block {
                    let data = b["source"]["data"].as_str().unwrap_or_default();
                    assert_eq!(
                        data.len(),
                        content.len().div_ceil(3) * 4,
                        "binary read after write differs in size"
                    );
                } else if !binary {
                    assert!(!back.is_error, "read after write failed: {back:?}");
                    assert_eq!(
                        back.text(),
                        Some(content.as_str()),
                        "read after write differs"
                    );
                }
            }
            return;
        }
        Call::Edit {
            path,
            old,
            new,
            all,
        } => {
            let mut v = json!({"file_path": path.render(known), "old_string": old.render(), "new_string": new.render()});
            if let Some(all) = all {
                v["replace_all"] = json!(all);
            }
            ("edit", v)
        }
        Call::Glob { pattern, path } => {
            let mut v = json!({"pattern": pattern.render()});
            if let Some(p) = path {
                v["path"] = json!(p.render(known));
            }
            ("glob", v)
        }
        Call::GlobRaw { pattern } => ("glob", json!({ "pattern": pattern })),
        Call::Grep { pattern, path } => {
            let mut rx = String::new();
            render_rx(pattern, &mut rx, 0);
            let mut v = json!({ "pattern": rx });
            if let Some(p) = path {
                v["path"] = json!(p.render(known));
            }
            ("grep", v)
        }
        Call::GrepRaw { pattern, path } => {
            let mut v = json!({ "pattern": pattern });
            if let Some(p) = path {
                v["path"] = json!(p.render(known));
            }
            ("grep", v)
        }
        Call::Bash { command } => ("bash", json!({ "command": command })),
        Call::Raw { tool: t, input } => {
            let t = &tools[usize::from(*t) % tools.len()];
            let r = call(t.as_ref(), ctx, input.0.clone()).await;
            check_caps(t.name(), &r);
            return;
        }
    };
    let r = call(tool(tools, name).as_ref(), ctx, input).await;
    check_caps(name, &r);
}

fuzz_target!(|input: Input| {
    let scratch = Scratch::get();
    let started = Instant::now();
    scratch.reset();
    if std::env::var_os("CMA_FUZZ_TRACE").is_some() {
        eprintln!("{:?} reset", started.elapsed());
    }
    let tools = agent_toolset();
    let ctx = ToolContext::new(scratch.sandbox.clone());
    runtime().block_on(async {
        let mut known = Vec::new();
        let trace = std::env::var_os("CMA_FUZZ_TRACE").is_some();
        for op in &input.0 {
            let started = Instant::now();
            run_op(op, &tools, &ctx, &mut known).await;
            if trace {
                eprintln!("{:?} {op:?}", started.elapsed());
            }
        }
    });
    scratch.check_contained();
});
