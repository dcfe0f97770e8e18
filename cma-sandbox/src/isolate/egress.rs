//! The hook through which `fetch` inside an `execute` script reaches the network. The isolate
//! backend has no sockets of its own: every request is handed to an [`EgressHook`], and the
//! default, [`DenyAllEgress`], refuses them all.

use std::time::Duration;

use bytes::Bytes;

use crate::spec::SandboxId;

/// A request made by `fetch` inside a script.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FetchRequest {
    /// The sandbox making the request.
    pub sandbox: SandboxId,
    /// Absolute URL, as the script passed it.
    pub url: String,
    /// Upper-case HTTP method.
    pub method: String,
    /// Request headers, in order.
    pub headers: Vec<(String, String)>,
    /// Request body, if any.
    pub body: Option<Bytes>,
    /// Time left before the script's wall-clock limit; the hook must answer within it.
    pub timeout: Duration,
}

/// The answer handed back to the script.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers, in order.
    pub headers: Vec<(String, String)>,
    /// Response body (the hook bounds its size).
    pub body: Bytes,
}

/// Why a request was not answered; the script sees `message` as a thrown `TypeError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    /// Shown to the script, e.g. `egress denied: GET https://example.com/: ...`.
    pub message: String,
}

/// Decides and performs outbound requests for `execute` scripts.
///
/// Called synchronously on the script's blocking thread. An implementation that needs async I/O
/// may use `tokio::runtime::Handle::block_on` (it runs outside the async workers), and must honour
/// [`FetchRequest::timeout`].
pub trait EgressHook: Send + Sync + 'static {
    /// Perform (or refuse) one request.
    fn fetch(&self, request: FetchRequest) -> Result<FetchResponse, FetchError>;

    /// Whether this hook may ever let a request through (reported as
    /// [`Capabilities::network`](crate::Capabilities::network)).
    fn allows_network(&self) -> bool {
        true
    }
}

/// The default hook: every request fails with `egress denied: <METHOD> <url>: ...`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyAllEgress;

impl EgressHook for DenyAllEgress {
    fn fetch(&self, request: FetchRequest) -> Result<FetchResponse, FetchError> {
        Err(FetchError {
            message: format!(
                "egress denied: {} {}: this sandbox has no egress policy allowing it",
                request.method, request.url
            ),
        })
    }

    fn allows_network(&self) -> bool {
        false
    }
}
