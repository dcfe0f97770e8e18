//! The vectors' result-content conversion cases (what the official SDK's runner posts for each
//! tool return value) and the registry's dispatch rules.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cma_tools::testing::{MemorySandbox, call_tool};
use cma_tools::{
    DispatchError, PostedResult, TOOL_TIMEOUT, Tool, ToolContext, ToolError, ToolOutput,
    ToolRegistry, custom_tool, output::well_formed_utf16,
};
use cma_vectors::{Field as _, Vectors};
use serde::Deserialize;
use serde_json::{Value, json};

/// What a case's `returns` describes, as a Rust tool result (`None` for the cases that are
/// not a return value: a call outliving the limit).
fn tool_result(returns: &Value) -> Option<Result<ToolOutput, ToolError>> {
    Some(match returns.req_str("kind") {
        "none" => Ok(ToolOutput::None),
        "text" => Ok(ToolOutput::Text(returns.req_str("text").to_owned())),
        // A Rust String cannot hold a lone surrogate; text arriving as UTF-16 is repaired on
        // decoding, as the SDK repairs it before posting.
        "text_utf16" => {
            let units: Vec<u16> = returns
                .req_array("units")
                .iter()
                .map(|u| u16::try_from(u.as_u64().unwrap()).unwrap())
                .collect();
            Ok(ToolOutput::Text(well_formed_utf16(&units)))
        }
        "blocks" => Ok(ToolOutput::Blocks(returns.req_array("blocks").to_vec())),
        "raises" => {
            let message = match returns.get("message_repeat") {
                Some(r) => r[0]
                    .as_str()
                    .unwrap()
                    .repeat(r[1].as_u64().unwrap() as usize),
                None => returns.req_str("message").to_owned(),
            };
            match returns.req_str("class") {
                "ToolError" => Err(ToolError::msg(message)),
                "RuntimeError" => Err(ToolError::runtime(message)),
                other => panic!("unmapped exception class {other}"),
            }
        }
        "outlives_limit" => return None,
        other => panic!("unknown return kind {other}"),
    })
}

#[test]
fn result_content_conversion_matches_the_sdk() {
    let cases = Vectors::load()
        .section("tool_results")
        .req("conversion")
        .req_array("cases");
    assert!(cases.len() >= 12);
    for case in cases {
        let id = case.id();
        let returns = case.req("returns");
        let got = match tool_result(returns) {
            Some(result) => PostedResult::from_result(result),
            None => {
                // The SDK's per-call limit is ours; the timing itself is covered with a paused
                // clock below.
                assert_eq!(TOOL_TIMEOUT.as_secs_f64(), returns.req_f64("limit_seconds"));
                PostedResult::timed_out("bash")
            }
        };
        assert_eq!(got.is_error, case.req_bool("is_error"), "{id}");
        match case.get("content") {
            Some(want) => assert_eq!(&Value::Array(got.content.clone()), want, "{id}"),
            None => {
                // A long text, summarised: one block, its head and length in characters.
                assert_eq!(
                    got.content.len() as u64,
                    case.req_u64("content_blocks"),
                    "{id}"
                );
                let text = got.text().unwrap();
                assert!(text.starts_with(case.req_str("content_text_head")), "{id}");
                assert_eq!(
                    text.chars().count() as u64,
                    case.req_u64("content_text_chars"),
                    "{id}"
                );
            }
        }
    }
}

#[test]
fn repr_errors_are_cut_to_4096_chars() {
    let got = PostedResult::from_error(&ToolError::runtime("x".repeat(5000)));
    let text = got.text().unwrap();
    assert_eq!(text.chars().count(), 4096);
    assert!(text.starts_with("RuntimeError('xxx"));
    // A ToolError's own text is never cut.
    let got = PostedResult::from_error(&ToolError::msg("y".repeat(5000)));
    assert_eq!(got.text().unwrap().len(), 5000);
}

struct Sleepy;

#[async_trait]
impl Tool for Sleepy {
    fn name(&self) -> &str {
        "bash"
    }
    fn description(&self) -> &str {
        "sleeps"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object"})
    }
    async fn call(&self, _ctx: &ToolContext, _input: Value) -> Result<ToolOutput, ToolError> {
        tokio::time::sleep(Duration::from_secs(1000)).await;
        Ok(ToolOutput::None)
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_past_150_s_reads_timed_out_and_later_registrations_shadow() {
    let mut reg = ToolRegistry::new();
    reg.extend(cma_tools::agent_toolset());
    reg.register(Arc::new(Sleepy));
    assert_eq!(
        reg.names(),
        ["bash", "read", "write", "edit", "glob", "grep"]
    );
    assert_eq!(reg.get("bash").unwrap().description(), "sleeps");
    let ctx = ToolContext::new(Arc::new(MemorySandbox::new("/workspace")));
    let r = reg.dispatch(&ctx, "bash", json!({})).await.unwrap();
    assert_eq!(r, PostedResult::timed_out("bash"));
    assert_eq!(r.text(), Some("tool 'bash' timed out"));
    assert!(r.is_error);
    assert_eq!(
        reg.dispatch(&ctx, "web_search", json!({})).await,
        Err(DispatchError::UnknownTool("web_search".into()))
    );
    ctx.cancel.cancel();
    assert_eq!(
        reg.dispatch(&ctx, "bash", json!({})).await,
        Err(DispatchError::Cancelled("bash".into()))
    );
}

#[derive(Deserialize)]
struct Forecast {
    city: String,
    days: Option<u32>,
}

#[tokio::test]
async fn typed_custom_tools_validate_like_function_tools() {
    let tool = custom_tool(
        "forecast",
        "Weather forecast.",
        json!({"type": "object",
               "properties": {"city": {"type": "string"},
                              "days": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": null}},
               "required": ["city"]}),
        |ctx: ToolContext, input: Forecast| async move {
            if input.city.is_empty() {
                return Err(ToolError::msg("forecast: city is empty"));
            }
            let data = ctx.sandbox.read_file("/workspace/unit.txt", None).await.ok();
            let unit = data.map(|d| String::from_utf8_lossy(&d).into_owned()).unwrap_or_default();
            Ok(format!("{}: sunny for {} days{unit}", input.city, input.days.unwrap_or(1)))
        },
    )
    .unwrap();
    let sb = Arc::new(MemorySandbox::new("/workspace"));
    sb.add_file("/workspace/unit.txt", " (C)");
    let r = call_tool(&tool, sb.clone(), json!({"city": "Oslo", "days": "3"})).await;
    assert_eq!(
        (r.is_error, r.text()),
        (false, Some("Oslo: sunny for 3 days (C)"))
    );
    for bad in [
        json!({"days": 3}),
        json!({"city": 5}),
        json!({"city": "x", "zzz": 1}),
        json!({"city": "x", "days": -1}),
    ] {
        let r = call_tool(&tool, sb.clone(), bad).await;
        assert_eq!(
            (r.is_error, r.text()),
            (
                true,
                Some("ValueError('Invalid arguments for function forecast')")
            )
        );
    }
    let r = call_tool(&tool, sb.clone(), json!({"city": ""})).await;
    assert_eq!(
        (r.is_error, r.text()),
        (true, Some("forecast: city is empty"))
    );
    let r = call_tool(&tool, sb, json!("Oslo")).await;
    assert_eq!(
        r.text(),
        Some("TypeError('Input must be a dictionary, got str')")
    );
    assert_eq!(tool.definition().name, "forecast");
    assert!(
        custom_tool("bad name", "", json!({}), |_c, _i: Value| async {
            Ok::<_, ToolError>("")
        })
        .is_err()
    );
}
