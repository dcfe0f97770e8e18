//! The `call_service` custom tool (feature `egress`): the agent calls a named private service
//! through the session's egress policy, without the service's address or credentials ever
//! entering the sandbox.
//!
//! Input `{service, path, method?, headers?, body?}` becomes a request to
//! `http://<service>.service<path>` sent in process as the calling session's sandbox
//! ([`SessionEgress`]), so the policy decides it like any request from the sandbox: a `route`
//! rule for `<service>.service` names the real upstream (an address the sandbox cannot reach),
//! `inject` rules add the credentials, and the audit log records it (`via: in_process`). A
//! request the policy refuses, a failure, or a response status of 400 or more is a tool error;
//! a success is `HTTP <status>` and the response body (text, cut at
//! [`CallServiceLimits::max_response_bytes`]).
//!
//! ```json
//! {"type": "route", "host": "billing.service", "upstream": "http://10.20.0.7:8080"}
//! {"type": "inject", "host": "billing.service", "header": "authorization",
//!  "secret": "BILLING_TOKEN", "value": "Bearer {secret}"}
//! ```
//!
//! Register it with [`ToolsetFactory::with_tool`](super::tools::ToolsetFactory::with_tool)
//! (`call_service_tool(egress)`), for hosts that enable it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cma_tools::{Tool, ToolContext, ToolError, custom_tool};
use serde::Deserialize;
use serde_json::json;

use super::egress::SessionEgress;

/// The tool's name.
pub const CALL_SERVICE: &str = "call_service";
/// The pseudo top-level domain service names live under in policies.
pub const SERVICE_SUFFIX: &str = "service";

/// Bounds of one call.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct CallServiceLimits {
    /// Longest a call may take.
    pub timeout: Duration,
    /// Largest response body read; more fails the call.
    pub max_response_bytes: usize,
    /// Largest request body accepted from the agent.
    pub max_request_bytes: usize,
}

impl Default for CallServiceLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_response_bytes: 256 * 1024,
            max_request_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Input {
    service: String,
    path: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    body: Option<String>,
}

fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "service": {"type": "string", "description": "Name of the service (letters, digits, '-')."},
            "path": {"type": "string", "description": "Request path starting with '/', with an optional query string."},
            "method": {"type": "string", "description": "HTTP method (default GET)."},
            "headers": {"type": "object", "description": "Extra request headers (string values)."},
            "body": {"type": "string", "description": "Request body (text)."}
        },
        "required": ["service", "path"]
    })
}

/// Whether `name` is a valid service name: one DNS label of lower-case letters, digits and `-`.
fn valid_service(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn build(input: &Input, limits: &CallServiceLimits) -> Result<http::Request<Bytes>, String> {
    if !valid_service(&input.service) {
        return Err(format!(
            "invalid service name {:?}: use lower-case letters, digits and '-'",
            input.service.chars().take(64).collect::<String>()
        ));
    }
    if !input.path.starts_with('/') || input.path.len() > 4096 {
        return Err("the path must start with '/' (at most 4096 bytes)".into());
    }
    let method = input
        .method
        .as_deref()
        .unwrap_or("GET")
        .to_ascii_uppercase();
    let method =
        http::Method::from_bytes(method.as_bytes()).map_err(|_| "invalid method".to_owned())?;
    if method == http::Method::CONNECT {
        return Err("CONNECT is not available".into());
    }
    let uri: http::Uri = format!("http://{}.{SERVICE_SUFFIX}{}", input.service, input.path)
        .parse()
        .map_err(|_| "invalid path".to_owned())?;
    let body = input.body.clone().unwrap_or_default();
    if body.len() > limits.max_request_bytes {
        return Err(format!(
            "the body is larger than {} bytes",
            limits.max_request_bytes
        ));
    }
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in input.headers.iter().flatten() {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| format!("invalid value of header {name}"))?;
        b = b.header(name, value);
    }
    b.body(Bytes::from(body))
        .map_err(|_| "invalid request".to_owned())
}

/// The `call_service` tool over `egress`, with default limits.
pub fn call_service_tool(egress: Arc<SessionEgress>) -> Arc<dyn Tool> {
    call_service_tool_with(egress, CallServiceLimits::default())
}

/// The `call_service` tool over `egress`, with `limits`.
pub fn call_service_tool_with(
    egress: Arc<SessionEgress>,
    limits: CallServiceLimits,
) -> Arc<dyn Tool> {
    let tool = custom_tool(
        CALL_SERVICE,
        "Call a private service by name through the session's egress policy: an HTTP request to \
         the service's path, answered with the response status and body. Credentials are added \
         outside the sandbox; do not send your own.",
        schema(),
        move |ctx: ToolContext, input: Input| {
            let egress = egress.clone();
            async move { call(&egress, &limits, &ctx, input).await }
        },
    )
    .expect("the call_service definition is valid");
    Arc::new(tool)
}

async fn call(
    egress: &SessionEgress,
    limits: &CallServiceLimits,
    ctx: &ToolContext,
    input: Input,
) -> Result<String, ToolError> {
    let fail = |why: String| ToolError::msg(format!("call_service: {why}"));
    let sandbox_id = ctx.sandbox.id().as_str();
    let identity = egress
        .identity(sandbox_id)
        .ok_or_else(|| fail("this session has no egress".into()))?;
    let request = build(&input, limits).map_err(fail)?;
    let client = egress.proxy().in_process(identity);
    let reply = client
        .fetch(request, limits.timeout, limits.max_response_bytes)
        .await
        .map_err(|e| {
            if e.kind().is_refusal() {
                fail(format!("denied: {}", e.context()))
            } else {
                fail(e.context().to_owned())
            }
        })?;
    let body = String::from_utf8_lossy(&reply.body);
    let text = format!("HTTP {}\n{}", reply.status.as_u16(), body);
    if reply.status.as_u16() >= 400 {
        return Err(ToolError::msg(text));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(service: &str, path: &str) -> Input {
        Input {
            service: service.into(),
            path: path.into(),
            method: None,
            headers: None,
            body: None,
        }
    }

    #[test]
    fn requests_go_to_the_service_pseudo_domain() {
        let l = CallServiceLimits::default();
        let r = build(&input("billing", "/v1/invoices?x=1"), &l).unwrap();
        assert_eq!(
            r.uri().to_string(),
            "http://billing.service/v1/invoices?x=1"
        );
        assert_eq!(r.method(), http::Method::GET);
        for bad in ["", "Billing", "a.b", "evil.com/x", "-a", "a b", "a@b"] {
            assert!(build(&input(bad, "/"), &l).is_err(), "{bad:?}");
        }
        for bad in ["x", "", "//evil.test/x\r\n"] {
            assert!(build(&input("billing", bad), &l).is_err(), "{bad:?}");
        }
        let mut i = input("billing", "/");
        i.method = Some("connect".into());
        assert!(build(&i, &l).is_err());
        let mut i = input("billing", "/");
        i.headers = Some(BTreeMap::from([("x-a".into(), "b\r\nc".into())]));
        assert!(build(&i, &l).is_err());
    }
}
