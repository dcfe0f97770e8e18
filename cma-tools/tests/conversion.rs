//! Vectors §9.5 (result-content conversion) and the registry's dispatch rules.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cma_tools::testing::{MemorySandbox, call_tool};
use cma_tools::{
    DispatchError, PostedResult, Tool, ToolContext, ToolError, ToolOutput, ToolRegistry,
    custom_tool, output::well_formed_utf16,
};
use cma_vectors::Vectors;
use serde::Deserialize;
use serde_json::{Value, json};

/// What a row's "Tool returns" cell describes, as a Rust tool result.
fn tool_result(returns: &str) -> Result<ToolOutput, ToolError> {
    let code = cma_vectors::code_spans(returns).into_iter().next().unwrap();
    if let Some(rest) = code.strip_prefix("ToolError(\"") {
        return Err(ToolError::msg(rest.trim_end_matches("\")")));
    }
    if let Some(rest) = code.strip_prefix("RuntimeError(\"") {
        return Err(ToolError::runtime(rest.trim_end_matches("\")")));
    }
    if code == "None" {
        return Ok(ToolOutput::None);
    }
    if code.contains('…') {
        // "[{"type":"image",…}]": any image block.
        return Ok(ToolOutput::image_base64("image/png", "iVBORw0KGgo="));
    }
    match serde_json::from_str::<Value>(&code).unwrap() {
        Value::String(s) => Ok(ToolOutput::Text(s)),
        Value::Array(blocks) => Ok(ToolOutput::Blocks(blocks)),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn section_9_5_result_content_conversion() {
    let v = Vectors::load();
    let rows = v.section("### 9.5").table().rows().to_vec();
    let mut checked = 0;
    for row in &rows {
        let returns = row.get("Tool returns");
        let posted = row.get("Posted content");
        let want_error = posted.contains("is_error:true");
        let got = if returns.contains("exceeds 150 s") {
            PostedResult::timed_out("bash")
        } else if returns.contains("lone surrogate") {
            // A Rust String cannot hold one; text arriving as UTF-16 is repaired on decoding.
            let text = well_formed_utf16(&[0x61, 0xD800, 0x62]);
            assert_eq!(text, "a\u{FFFD}b");
            PostedResult::from_output(ToolOutput::Text(text))
        } else {
            PostedResult::from_result(tool_result(returns))
        };
        assert_eq!(got.is_error, want_error, "{returns}");
        let want = cma_vectors::code_spans(posted)
            .into_iter()
            .find(|c| c.starts_with('['));
        match want {
            Some(w) => {
                let w: Value = serde_json::from_str(&w).unwrap();
                assert_eq!(Value::Array(got.content.clone()), w, "{returns}");
            }
            None if posted.contains("passed through unchanged") => {
                let Ok(ToolOutput::Blocks(b)) = tool_result(returns) else {
                    panic!()
                };
                assert_eq!(got.content, b);
            }
            None => assert!(returns.contains("lone surrogate"), "{returns}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 11);
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
