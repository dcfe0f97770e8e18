//! The emulator's hostile mode: a fault whose [`Reply`] replaces an endpoint's answer with any
//! status, headers and body — giant, deeply nested, not JSON, not UTF-8, or never ending — so a
//! scenario can check that a client bounds what it buffers and fails with a typed error.
//!
//! Bodies are generated while they are sent ([`BodyPart::Repeat`], [`BodyPart::Endless`]), so a
//! scenario can serve gigabytes, or an endless line, without holding them. A reply marked `hang`
//! keeps the connection open after its body (until the client gives up or the emulator stops).
//!
//! ```json
//! {"endpoint": "stream", "reply": {"body": [
//!     {"text": "event: agent.tool_use\ndata: "}, {"endless": "x"}]}}
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::faults::Endpoint;
use super::http::{App, fault_error};

/// Size of the chunks generated bodies are sent in.
const CHUNK: usize = 64 * 1024;

fn ok_status() -> u16 {
    200
}

/// One piece of a hostile body, sent in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum BodyPart {
    /// These bytes (UTF-8 text).
    Text(String),
    /// This JSON value, serialized.
    Json(Value),
    /// These bytes, given as standard base64 (for bodies that are not UTF-8).
    Base64(String),
    /// `unit` repeated `times` times (generated while sent).
    Repeat {
        /// What is repeated (not empty).
        unit: String,
        /// How many times.
        times: u64,
    },
    /// This text repeated forever: the body never ends (the client must give up).
    Endless(String),
}

/// A hostile answer: status, headers and a generated body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// The status (100–599; default 200).
    #[serde(default = "ok_status")]
    pub status: u16,
    /// `content-type` (default `text/event-stream` on the stream endpoint, else
    /// `application/json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The body, part after part.
    #[serde(default)]
    pub body: Vec<BodyPart>,
    /// After the body, keep the connection open without sending anything more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hang: bool,
}

impl Reply {
    /// An empty answer with `status`.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            content_type: None,
            headers: BTreeMap::new(),
            body: Vec::new(),
            hang: false,
        }
    }

    /// Append text.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.body.push(BodyPart::Text(text.into()));
        self
    }

    /// Append a JSON value.
    pub fn json(mut self, value: Value) -> Self {
        self.body.push(BodyPart::Json(value));
        self
    }

    /// Append raw bytes (any, not only UTF-8).
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        self.body.push(BodyPart::Base64(
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ));
        self
    }

    /// Append `unit` repeated `times` times.
    pub fn repeat(mut self, unit: impl Into<String>, times: u64) -> Self {
        self.body.push(BodyPart::Repeat {
            unit: unit.into(),
            times,
        });
        self
    }

    /// End the body with `unit` repeated forever.
    pub fn endless(mut self, unit: impl Into<String>) -> Self {
        self.body.push(BodyPart::Endless(unit.into()));
        self
    }

    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Set the `content-type`.
    pub fn content_type(mut self, value: impl Into<String>) -> Self {
        self.content_type = Some(value.into());
        self
    }

    /// Keep the connection open after the body.
    pub fn hang(mut self) -> Self {
        self.hang = true;
        self
    }

    /// Check the status, headers and parts.
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=599).contains(&self.status) {
            return Err(format!(
                "reply status {} is not within 100-599",
                self.status
            ));
        }
        if let Some(c) = &self.content_type {
            HeaderValue::from_str(c).map_err(|_| "reply content_type is not a header value")?;
        }
        for (name, value) in &self.headers {
            HeaderName::try_from(name.as_str())
                .map_err(|_| format!("reply header name {name:?} is not valid"))?;
            HeaderValue::from_str(value)
                .map_err(|_| format!("reply header {name} has an invalid value"))?;
        }
        for (i, part) in self.body.iter().enumerate() {
            match part {
                BodyPart::Base64(b) => {
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map_err(|e| format!("reply body part #{i}: not base64: {e}"))?;
                }
                BodyPart::Repeat { unit, .. } | BodyPart::Endless(unit) if unit.is_empty() => {
                    return Err(format!("reply body part #{i}: the repeated unit is empty"));
                }
                BodyPart::Endless(_) if i + 1 != self.body.len() => {
                    return Err(format!(
                        "reply body part #{i}: nothing can follow an endless part"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The response for a call of `endpoint`.
    fn into_response(self, endpoint: Endpoint, cancel: CancellationToken) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let content_type = self.content_type.clone().unwrap_or_else(|| {
            if endpoint == Endpoint::Stream {
                "text/event-stream".to_owned()
            } else {
                "application/json".to_owned()
            }
        });
        let headers: Vec<(HeaderName, HeaderValue)> = self
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::try_from(k.as_str()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        let mut response = Response::new(body(self.body, self.hang, cancel));
        *response.status_mut() = status;
        if let Ok(v) = HeaderValue::from_str(&content_type) {
            response
                .headers_mut()
                .insert(axum::http::header::CONTENT_TYPE, v);
        }
        for (k, v) in headers {
            response.headers_mut().insert(k, v);
        }
        response
    }
}

/// Where the generator is in the parts.
struct Gen {
    parts: std::vec::IntoIter<BodyPart>,
    /// The unit being repeated and how many times are left (`None`: forever).
    repeating: Option<(Bytes, Option<u64>)>,
    hang: bool,
    cancel: CancellationToken,
}

fn body(parts: Vec<BodyPart>, hang: bool, cancel: CancellationToken) -> Body {
    let st = Gen {
        parts: parts.into_iter(),
        repeating: None,
        hang,
        cancel,
    };
    let s = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some((unit, left)) = st.repeating.take() {
                let per_chunk = (CHUNK / unit.len()).max(1) as u64;
                let n = left.map_or(per_chunk, |l| l.min(per_chunk));
                if n == 0 {
                    continue;
                }
                let n_usize = usize::try_from(n).unwrap_or(1);
                let chunk = Bytes::from(unit.repeat(n_usize));
                let rest = left.map(|l| l - n);
                if rest != Some(0) {
                    st.repeating = Some((unit, rest));
                }
                // Yield between chunks so an endless body never starves the runtime.
                tokio::task::yield_now().await;
                return Some((Ok::<_, std::convert::Infallible>(chunk), st));
            }
            match st.parts.next() {
                Some(BodyPart::Text(t)) => return Some((Ok(Bytes::from(t)), st)),
                Some(BodyPart::Json(v)) => return Some((Ok(Bytes::from(v.to_string())), st)),
                Some(BodyPart::Base64(b)) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .unwrap_or_default();
                    return Some((Ok(Bytes::from(bytes)), st));
                }
                Some(BodyPart::Repeat { unit, times }) => {
                    st.repeating = Some((Bytes::from(unit), Some(times)));
                }
                Some(BodyPart::Endless(unit)) => st.repeating = Some((Bytes::from(unit), None)),
                None => {
                    if st.hang {
                        st.cancel.cancelled().await;
                    }
                    return None;
                }
            }
        }
    });
    Body::from_stream(s)
}

/// The fault middleware: serves [`Reply`] faults for every endpoint, and every kind of fault
/// for the endpoints whose handlers do not consume faults themselves (skills, memory stores).
pub(crate) async fn fault_middleware(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(endpoint) = Endpoint::classify(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let fault = if endpoint.handler_consumes_faults() {
        app.fault_book().take_reply(endpoint)
    } else {
        app.fault_book().take(endpoint)
    };
    let Some(fault) = fault else {
        return next.run(req).await;
    };
    if let Some(ms) = fault.delay_ms {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = app.cancel.cancelled() => {}
        }
    }
    if let Some(status) = fault.status {
        return fault_error(&fault, status).into_response();
    }
    match fault.reply {
        Some(reply) => reply.into_response(endpoint, app.cancel.clone()),
        None => next.run(req).await,
    }
}
