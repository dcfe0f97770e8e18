//! Reading and decoding response bodies: under the byte cap while reading, under the JSON value
//! cap before decoding, with typed errors for transport failures.

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::json_limit::{MAX_JSON_VALUES, check_json_values};
use super::transport::Request;

pub(super) fn unreachable_stream<T>(req: &Request) -> Result<T, ApiError> {
    Err(ApiError::Decode {
        context: req.context(),
        message: "unexpected streamed response".into(),
    })
}

/// Map a reqwest error to a typed error.
pub(crate) fn transport_error(context: &str, e: reqwest::Error, timeout: Duration) -> ApiError {
    if e.is_timeout() {
        ApiError::Timeout {
            context: context.to_owned(),
            timeout,
        }
    } else {
        ApiError::Connection {
            context: context.to_owned(),
            source: e,
        }
    }
}

/// Read a body up to `limit` bytes; `Ok(None)` when it is larger.
pub(super) async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
    context: &str,
    timeout: Duration,
) -> Result<Option<Bytes>, ApiError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut buf = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(context, e, timeout))?
    {
        if buf.len() + chunk.len() > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(Bytes::from(buf)))
}

/// Decode a JSON body with a typed error.
///
/// A document with more than [`MAX_JSON_VALUES`] values and keys is refused before decoding.
pub(crate) fn decode_json<T: DeserializeOwned>(context: &str, bytes: &[u8]) -> Result<T, ApiError> {
    check_json_values(bytes, MAX_JSON_VALUES).map_err(|limit| ApiError::Decode {
        context: context.to_owned(),
        message: format!("the response holds more than {limit} JSON values"),
    })?;
    serde_json::from_slice(bytes).map_err(|e| ApiError::Decode {
        context: context.to_owned(),
        message: e.to_string(),
    })
}
