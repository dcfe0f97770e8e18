//! Session endpoints the worker uses (docs/protocol.md §4).

use std::collections::{HashSet, VecDeque};
use std::fmt;

use futures::stream::{self, BoxStream, StreamExt};
use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::stream::{EventStream, ReconnectPolicy, ReconnectingEventStream};
use super::transport::{Client, Credential, Helper, Request, encode_path_segment};
use crate::protocol::{
    Extra, GenericEvent, Page, SendEvent, SendEventsRequest, Session, SessionEvent, SessionId,
};

/// Page size the worker uses when reading history.
pub const HISTORY_PAGE_LIMIT: u32 = 1000;
/// Most empty pages in a row [`SessionClient::list_all_events`] follows before giving up.
pub const MAX_EMPTY_PAGES: usize = 100;

/// Sort order of `GET …/events` (by `processed_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventOrder {
    /// Oldest first (the server default).
    Asc,
    /// Newest first.
    Desc,
}

impl EventOrder {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asc => "asc",
            Self::Desc => "desc",
        }
    }
}

/// Query of `GET /v1/sessions/{id}/events`. Encoded in the SDK's order:
/// `created_at[gt|gte|lt|lte]`, `limit`, `order`, `page`, `types[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListEventsParams {
    /// `created_at[gt]`.
    pub created_at_gt: Option<String>,
    /// `created_at[gte]`.
    pub created_at_gte: Option<String>,
    /// `created_at[lt]`.
    pub created_at_lt: Option<String>,
    /// `created_at[lte]`.
    pub created_at_lte: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// Sort order.
    pub order: Option<EventOrder>,
    /// Cursor.
    pub page: Option<String>,
    /// Only these event types (`types[]`, repeated).
    pub types: Vec<String>,
}

impl ListEventsParams {
    /// The worker's reconcile read: `limit=1000`, everything else default.
    pub fn history() -> Self {
        Self {
            limit: Some(HISTORY_PAGE_LIMIT),
            ..Self::default()
        }
    }

    fn apply(&self, mut req: Request) -> Request {
        req = req
            .query_opt("created_at[gt]", self.created_at_gt.as_deref())
            .query_opt("created_at[gte]", self.created_at_gte.as_deref())
            .query_opt("created_at[lt]", self.created_at_lt.as_deref())
            .query_opt("created_at[lte]", self.created_at_lte.as_deref())
            .query_opt("limit", self.limit)
            .query_opt("order", self.order.map(EventOrder::as_str))
            .query_opt("page", self.page.as_deref());
        for t in &self.types {
            req = req.query("types[]", t.clone());
        }
        req
    }
}

/// Query of `GET /v1/sessions/{id}/events/stream`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamParams {
    /// `event_deltas[]` (the worker sends none).
    pub event_deltas: Vec<String>,
}

/// Response of `POST /v1/sessions/{id}/events`: the stored events, kept as JSON so an
/// unexpected echo never turns a delivered result into a failure (and a duplicate resend).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendEventsResponse {
    /// The events as stored (with server `id` and `processed_at`).
    #[serde(default)]
    pub data: Vec<Value>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Decode a session event leniently: unknown types become `Other`, and a known type whose body
/// does not match its typed form is kept as `Other` too (with a warning) instead of failing.
pub fn decode_event_lenient(v: Value) -> Result<SessionEvent, serde_json::Error> {
    match SessionEvent::from_value(v.clone()) {
        Ok(ev) => Ok(ev),
        Err(e) => {
            let generic: GenericEvent = serde_json::from_value(v)?;
            tracing::warn!(kind = %generic.kind, error = %e, "malformed session event kept untyped");
            Ok(SessionEvent::Other(generic))
        }
    }
}

/// The endpoints of one session, bound to one credential (its work item's sessions token, or the
/// environment key as fallback).
#[derive(Clone)]
pub struct SessionClient {
    client: Client,
    id: SessionId,
    credential: Credential,
    helper: Option<Helper>,
}

impl fmt::Debug for SessionClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionClient")
            .field("id", &self.id)
            .field("helper", &self.helper)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The client of session `session_id`, authenticated with `credential`.
    pub fn session(
        &self,
        session_id: impl Into<SessionId>,
        credential: Credential,
    ) -> SessionClient {
        SessionClient {
            client: self.clone(),
            id: session_id.into(),
            credential,
            helper: None,
        }
    }
}

impl SessionClient {
    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The credential requests carry.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The same session with another credential.
    pub fn with_credential(&self, credential: Credential) -> Self {
        Self {
            credential,
            ..self.clone()
        }
    }

    /// The same client tagging requests with `x-stainless-helper` (or not).
    pub fn with_helper(&self, helper: Option<Helper>) -> Self {
        Self {
            helper,
            ..self.clone()
        }
    }

    /// The shared client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn path(&self, suffix: &str) -> Result<String, ApiError> {
        Ok(format!(
            "/v1/sessions/{}{suffix}",
            encode_path_segment("session id", self.id.as_str())?
        ))
    }

    fn request(&self, method: Method, suffix: &str) -> Result<Request, ApiError> {
        let mut r = Request::new(method, self.path(suffix)?);
        r.helper = self.helper;
        Ok(r)
    }

    /// `GET /v1/sessions/{id}`.
    pub async fn get(&self) -> Result<Session, ApiError> {
        let req = self.request(Method::GET, "")?;
        self.client.json(&req, &self.credential).await
    }

    /// `GET /v1/sessions/{id}/events`: one page of history (events decoded leniently).
    pub async fn list_events(
        &self,
        params: &ListEventsParams,
    ) -> Result<Page<SessionEvent>, ApiError> {
        let req = params.apply(self.request(Method::GET, "/events")?);
        let context = format!("GET {}", req.path);
        let page: Page<Value> = self.client.json(&req, &self.credential).await?;
        let data = page
            .data
            .into_iter()
            .map(decode_event_lenient)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::Decode {
                context,
                message: e.to_string(),
            })?;
        Ok(Page {
            data,
            next_page: page.next_page,
            extra: page.extra,
        })
    }

    /// Every event from `params` on, following `next_page` cursors until the last page.
    ///
    /// Pages are fetched lazily, one at a time; an error ends the stream after being yielded. A
    /// server that hands out a cursor it handed out before in this walk (a loop), or more than
    /// [`MAX_EMPTY_PAGES`] empty pages in a row, ends the stream with a decode error instead of
    /// looping forever.
    pub fn list_all_events(
        &self,
        params: ListEventsParams,
    ) -> BoxStream<'static, Result<SessionEvent, ApiError>> {
        struct St {
            client: SessionClient,
            params: ListEventsParams,
            buf: VecDeque<SessionEvent>,
            more: bool,
            cursors: HashSet<String>,
            empty_pages: usize,
        }
        let st = St {
            client: self.clone(),
            params,
            buf: VecDeque::new(),
            more: true,
            cursors: HashSet::new(),
            empty_pages: 0,
        };
        stream::unfold(st, |mut st| async move {
            loop {
                if let Some(ev) = st.buf.pop_front() {
                    return Some((Ok(ev), st));
                }
                if !st.more {
                    return None;
                }
                match st.client.list_events(&st.params).await {
                    Ok(page) => {
                        let next = page.next_cursor().map(str::to_owned);
                        st.empty_pages = if page.data.is_empty() {
                            st.empty_pages + 1
                        } else {
                            0
                        };
                        st.buf.extend(page.data);
                        let refused = match &next {
                            Some(c) if !st.cursors.insert(c.clone()) => {
                                Some("server handed out a page cursor it had handed out before")
                            }
                            Some(_) if st.empty_pages > MAX_EMPTY_PAGES => {
                                Some("server keeps answering empty pages with a next cursor")
                            }
                            _ => None,
                        };
                        if let Some(message) = refused {
                            st.more = false;
                            let context = format!("GET /v1/sessions/{}/events", st.client.id);
                            st.buf.clear();
                            return Some((
                                Err(ApiError::Decode {
                                    context,
                                    message: message.into(),
                                }),
                                st,
                            ));
                        }
                        match next {
                            Some(cursor) => st.params.page = Some(cursor),
                            None => st.more = false,
                        }
                    }
                    Err(e) => {
                        st.more = false;
                        return Some((Err(e), st));
                    }
                }
            }
        })
        .boxed()
    }

    /// `POST /v1/sessions/{id}/events` with `{"events":[…]}` — one request, no client-side retry
    /// beyond the core policy (the runner's send-retry loop wraps this).
    pub async fn send_events(&self, events: &[SendEvent]) -> Result<SendEventsResponse, ApiError> {
        if events.is_empty() {
            return Err(ApiError::invalid("send_events needs at least one event"));
        }
        let req = self
            .request(Method::POST, "/events")?
            .json(&SendEventsRequest { events })?;
        self.client.json(&req, &self.credential).await
    }

    /// Open `GET /v1/sessions/{id}/events/stream` (core retries apply until the headers of a 2xx
    /// arrive). The returned stream yields events until the body ends or an error occurs.
    pub async fn stream(&self, params: &StreamParams) -> Result<EventStream, ApiError> {
        let mut req = self.request(Method::GET, "/events/stream")?;
        for d in &params.event_deltas {
            req = req.query("event_deltas[]", d.clone());
        }
        let context = format!("GET {}", req.path);
        let response = self.client.execute_stream(&req, &self.credential).await?;
        Ok(EventStream::from_response(
            response,
            context,
            self.client.config().sse_limits(),
            self.client.config().request_timeout(),
        ))
    }

    /// A stream that reconnects with the runner's policy (see [`ReconnectingEventStream`]).
    pub fn reconnecting_stream(
        &self,
        params: StreamParams,
        policy: ReconnectPolicy,
    ) -> ReconnectingEventStream {
        ReconnectingEventStream::new(self.clone(), params, policy)
    }
}
