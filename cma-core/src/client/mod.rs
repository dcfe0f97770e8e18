//! HTTP clients of the CMA protocol (docs/protocol.md §1–§4).
//!
//! One shared [`Client`] (a `reqwest` connection pool over rustls plus a [`ClientConfig`]) hands
//! out per-resource clients bound to exactly one [`Credential`]:
//!
//! * [`Client::environment`] → [`EnvironmentClient`]: the work queue of one environment
//!   (poll, ack, heartbeat, stop, list, retrieve, update, stats);
//! * [`Client::environments`] → [`EnvironmentsClient`]: environment CRUD with an API key;
//! * [`Client::session`] → [`SessionClient`]: session get, event history (with automatic
//!   pagination), event sends, and the SSE event stream ([`EventStream`],
//!   [`ReconnectingEventStream`]);
//! * [`Client::skills`] → [`SkillsClient`]: skill version lookup and archive download;
//! * [`Client::memory_store`] → [`MemoryStoreClient`]: list, retrieve, create, update (with a
//!   `content_sha256` precondition) and delete the memories of one store.
//!
//! Every request carries the headers of docs/protocol.md §1.2 and goes through the core retry policy
//! of §1.6 (see [`crate::retry`]). Errors are typed ([`ApiError`], [`ApiErrorKind`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), cma_core::client::ApiError> {
//! use cma_core::client::{Client, ClientConfig, Credential, PollParams};
//! let client = Client::new(ClientConfig::builder_from_env().worker_id("host-1").build()?)?;
//! let env = client.environment("env_123", Credential::environment_key("envkey_…"));
//! if let Some(work) = env.poll(&PollParams::long_poll()).await? {
//!     env.ack(&work.id).await?;
//! }
//! # Ok(()) }
//! ```

mod environment;
mod error;
mod json_limit;
mod memory;
mod response;
mod session;
mod skills;
mod stream;
mod transport;

pub use environment::{
    CreateEnvironment, EnvironmentClient, EnvironmentDeleted, EnvironmentsClient, HeartbeatParams,
    ListEnvironmentsParams, ListParams, MAX_BLOCK_MS, MIN_BLOCK_MS, Metadata, MetadataPatch,
    OrderedMap, PollParams, UpdateEnvironment,
};
pub use error::{ApiError, ApiErrorKind, StatusError};
pub use json_limit::{MAX_JSON_VALUES, check_json_values};
pub use memory::{
    DeletedMemory, ListMemoriesParams, MAX_EMPTY_MEMORY_PAGES, MAX_LISTED_BYTES,
    MAX_MEMORY_CONTENT_BYTES, MEMORY_PATH_CONFLICT, MEMORY_PRECONDITION_FAILED, Memory,
    MemoryListItem, MemoryPages, MemoryStoreClient, MemoryView,
};
pub use session::{
    EventOrder, HISTORY_PAGE_LIMIT, ListEventsParams, MAX_EMPTY_PAGES, SendEventsResponse,
    SessionClient, StreamParams, decode_event_lenient,
};
pub use skills::{DEFAULT_MAX_SKILL_ARCHIVE_BYTES, SkillVersion, SkillsClient};
pub use stream::{
    ConnectHook, DEFAULT_STREAM_CONNECT_TIMEOUT, EventStream, ReconnectPolicy,
    ReconnectingEventStream, StreamItem,
};
pub use transport::{
    AGENT_MEMORY_BETA, ANTHROPIC_VERSION, BASE_URL_ENV, Client, ClientConfig, ClientConfigBuilder,
    Credential, DEFAULT_BASE_URL, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRY_AFTER, DEFAULT_REQUEST_TIMEOUT, DEFAULT_USER_AGENT, Helper,
    MANAGED_AGENTS_BETA, MAX_ERROR_BODY_BYTES, Secret, encode_path_segment, encode_query,
    encode_query_component,
};
