//! Tool input decoding: every built-in tool (and `execute`) gets an arbitrary JSON input —
//! JSON text (inputs starting with `{`, `[` or `"`; seeds in `fuzz/seeds/tool_input/`, words in
//! `fuzz/dict/tool_input.dict`), or built structurally with the keys the tools know — on a
//! small in-memory workspace. Validation must answer a result (never panic, never hang), and
//! the result must be a well-formed posted result.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use cma_fuzz::{ArbJson, arb_object, runtime};
use cma_tools::testing::MemorySandbox;
use cma_tools::toolset::ExecuteTool;
use cma_tools::{PostedResult, ToolContext, agent_toolset};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Longer than any input of this target may take: a miss is a finding (a hang).
const CALL_DEADLINE: Duration = Duration::from_secs(5);

fn sandbox() -> Arc<MemorySandbox> {
    let sb = MemorySandbox::new("/workspace");
    sb.add_file("/workspace/a.txt", "one\ntwo\nthree\n");
    sb.add_file("/workspace/dir/b.md", "# b\n\nneedle\n");
    sb.add_file("/workspace/x.png", &b"\x89PNG\r\n\x1a\n"[..]);
    sb.add_file("/workspace/bin.dat", &b"\0\xff\xfe"[..]);
    sb.add_symlink("/workspace/link", "a.txt");
    sb.add_symlink("/workspace/out", "/etc/passwd");
    sb.add_dir("/workspace/empty");
    Arc::new(sb)
}

fn check(tool: &str, r: &PostedResult) {
    assert!(!r.content.is_empty(), "{tool}: a posted result has content");
    if r.is_error && r.text() == Some(format!("tool '{tool}' timed out").as_str()) {
        panic!("{tool}: a single decoding call ran past {CALL_DEADLINE:?}");
    }
}

fn run(input: Value, only: Option<usize>) {
    let mut tools = agent_toolset();
    tools.push(Arc::new(ExecuteTool));
    runtime().block_on(async {
        for (i, tool) in tools.iter().enumerate() {
            if only.is_some_and(|o| o % tools.len() != i) {
                continue;
            }
            let mut ctx = ToolContext::new(sandbox());
            ctx.deadline = Some(tokio::time::Instant::now() + CALL_DEADLINE);
            let r = cma_tools::run_bounded(tool.as_ref(), &ctx, input.clone())
                .await
                .expect("a built-in call is never cancelled here");
            check(tool.name(), &r);
        }
    });
}

#[derive(Debug)]
enum Input {
    /// A structured JSON value for every tool.
    Any(ArbJson),
    /// An object for one tool (index modulo the number of tools).
    Object(u8, Value),
    /// An object for one tool made of its own parameter names (index modulo the number of its
    /// parameters) with arbitrary values, plus sometimes one unknown key.
    Typed(u8, Vec<(u8, ArbJson)>, Option<String>),
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0..=3u8)? {
            0 => Input::Any(u.arbitrary()?),
            1 => Input::Object(u.arbitrary()?, arb_object(u)?),
            _ => Input::Typed(u.arbitrary()?, u.arbitrary()?, u.arbitrary()?),
        })
    }
}

fuzz_target!(|data: &[u8]| {
    // Input that starts like JSON is JSON text for every tool (so seeds and the dictionary are
    // plain JSON); anything else is decoded structurally.
    if matches!(data.first(), Some(b'{' | b'[' | b'"')) {
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            run(v, None);
        }
        return;
    }
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    match input {
        Input::Any(ArbJson(v)) => run(v, None),
        Input::Object(t, v) => run(v, Some(usize::from(t))),
        Input::Typed(t, fields, unknown) => {
            let mut tools = agent_toolset();
            tools.push(Arc::new(ExecuteTool));
            let i = usize::from(t) % tools.len();
            let schema = tools[i].input_schema();
            let keys: Vec<String> = schema["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            let mut obj = serde_json::Map::new();
            for (k, ArbJson(v)) in fields.into_iter().take(6) {
                if let Some(key) = keys.get(usize::from(k) % keys.len().max(1)) {
                    obj.insert(key.clone(), v);
                }
            }
            if let Some(k) = unknown {
                obj.insert(k, Value::Null);
            }
            run(Value::Object(obj), Some(i));
        }
    }
});
