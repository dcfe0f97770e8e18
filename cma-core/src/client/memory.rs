//! The memory-store endpoints the worker syncs a session's memory with (docs/protocol.md §4, §5.3):
//! `/v1/memory_stores/{memory_store_id}/memories[/{memory_id}]`, beta `agent-memory-2026-07-22`.
//!
//! They accept a work item's sessions token (the server rejects the environment key). An update
//! or delete whose `content_sha256` precondition fails answers 409
//! `memory_precondition_failed_error`; a create or rename onto a taken path answers 409
//! `memory_path_conflict_error` (see [`ApiError::error_type`]).

use std::collections::HashSet;
use std::fmt;

use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::transport::{Beta, Client, Credential, Helper, Request, encode_path_segment};
use crate::protocol::{Extra, Page};

/// Largest memory content the server takes (100 kB).
pub const MAX_MEMORY_CONTENT_BYTES: usize = 102_400;
/// `error.type` of a failed `content_sha256` precondition (HTTP 409).
pub const MEMORY_PRECONDITION_FAILED: &str = "memory_precondition_failed_error";
/// `error.type` of a create or rename onto a path that is taken (HTTP 409).
pub const MEMORY_PATH_CONFLICT: &str = "memory_path_conflict_error";

/// Whether a memory in a response carries its `content`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryView {
    /// Paths and hashes, `content: null` (list default; 100 items per page at most).
    Basic,
    /// With `content` (retrieve default; 20 items per list page at most).
    Full,
}

impl MemoryView {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::Full => "full",
        }
    }
}

fn memory_type() -> String {
    "memory".to_owned()
}

/// One memory (`BetaManagedAgentsMemory`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// `mem_…`; stays the same when the path changes.
    pub id: String,
    /// Always `memory`.
    #[serde(rename = "type", default = "memory_type")]
    pub kind: String,
    /// The path, starting with `/`.
    pub path: String,
    /// Lower-case hex SHA-256 of the content; always set, whatever the view.
    pub content_sha256: String,
    /// Content size in bytes.
    #[serde(default)]
    pub content_size_bytes: u64,
    /// The content (`null` in the basic view).
    #[serde(default)]
    pub content: Option<String>,
    /// The store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_store_id: Option<String>,
    /// The version this content is (`memver_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_version_id: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One item of a memory listing: a memory, or a `memory_prefix` rollup (with `depth`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MemoryListItem {
    /// A memory.
    Memory(Memory),
    /// A directory rollup: `path` ends with `/`.
    Prefix {
        /// The prefix.
        path: String,
    },
    /// An item of a type this version does not know, verbatim.
    Other(Value),
}

impl<'de> Deserialize<'de> for MemoryListItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        match v.get("type").and_then(Value::as_str) {
            Some("memory") => serde_json::from_value(v)
                .map(Self::Memory)
                .map_err(serde::de::Error::custom),
            Some("memory_prefix") => Ok(Self::Prefix {
                path: v
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }),
            _ => Ok(Self::Other(v)),
        }
    }
}

/// The answer of a delete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeletedMemory {
    /// The deleted memory's id.
    pub id: String,
    /// Always `memory_deleted`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Query of `GET …/memories`, encoded in the SDK's order: `depth`, `limit`, `page`,
/// `path_prefix`, `view`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListMemoriesParams {
    /// How far below `path_prefix` to list (0 = everything).
    pub depth: Option<u32>,
    /// Page size (1–100; at most 20 with the full view).
    pub limit: Option<u32>,
    /// Cursor.
    pub page: Option<String>,
    /// Only paths under this prefix (ends with `/`).
    pub path_prefix: Option<String>,
    /// Whether items carry their content.
    pub view: Option<MemoryView>,
}

impl ListMemoriesParams {
    /// The whole store in `view`, at that view's largest page size (100 basic, 20 full).
    pub fn all(view: MemoryView) -> Self {
        Self {
            limit: Some(match view {
                MemoryView::Basic => 100,
                MemoryView::Full => 20,
            }),
            view: Some(view),
            ..Self::default()
        }
    }
}

#[derive(Serialize)]
struct CreateBody<'a> {
    content: &'a str,
    path: &'a str,
}

#[derive(Serialize)]
struct Precondition<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    content_sha256: &'a str,
}

#[derive(Serialize)]
struct UpdateBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    precondition: Option<Precondition<'a>>,
}

/// The memories of one store, bound to one credential (a work item's sessions token).
#[derive(Clone)]
pub struct MemoryStoreClient {
    client: Client,
    store_id: String,
    credential: Credential,
    helper: Option<Helper>,
}

impl fmt::Debug for MemoryStoreClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStoreClient")
            .field("store_id", &self.store_id)
            .field("helper", &self.helper)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The memories of store `memory_store_id`, authenticated with `credential`.
    pub fn memory_store(
        &self,
        memory_store_id: impl Into<String>,
        credential: Credential,
    ) -> MemoryStoreClient {
        MemoryStoreClient {
            client: self.clone(),
            store_id: memory_store_id.into(),
            credential,
            helper: None,
        }
    }
}

impl MemoryStoreClient {
    /// The store id.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// The same client tagging requests with `x-stainless-helper` (or not).
    pub fn with_helper(&self, helper: Option<Helper>) -> Self {
        Self {
            helper,
            ..self.clone()
        }
    }

    fn request(&self, method: Method, memory_id: Option<&str>) -> Result<Request, ApiError> {
        let mut path = format!(
            "/v1/memory_stores/{}/memories",
            encode_path_segment("memory store id", &self.store_id)?
        );
        if let Some(id) = memory_id {
            path.push('/');
            path.push_str(&encode_path_segment("memory id", id)?);
        }
        let mut r = Request::new(method, path);
        r.helper = self.helper;
        r.beta = Beta::Memory;
        Ok(r)
    }

    /// `GET …/memories`: one page.
    pub async fn list(
        &self,
        params: &ListMemoriesParams,
    ) -> Result<Page<MemoryListItem>, ApiError> {
        let req = self
            .request(Method::GET, None)?
            .query_opt("depth", params.depth)
            .query_opt("limit", params.limit)
            .query_opt("page", params.page.as_deref())
            .query_opt("path_prefix", params.path_prefix.as_deref())
            .query_opt("view", params.view.map(MemoryView::as_str));
        self.client.json(&req, &self.credential).await
    }

    /// Every memory of the store in `view` (prefix rollups and unknown items skipped), following
    /// cursors; at most `max_items` memories and [`MAX_LISTED_BYTES`] of paths and contents (more
    /// is an error rather than unbounded memory). See [`MemoryStoreClient::pages`].
    pub async fn list_all(
        &self,
        view: MemoryView,
        max_items: usize,
    ) -> Result<Vec<Memory>, ApiError> {
        let mut pages = self.pages(view, max_items);
        let mut out = Vec::new();
        while let Some(page) = pages.next_page().await? {
            out.extend(page);
        }
        Ok(out)
    }

    /// Walk the store in `view` one page at a time (so a caller can write each page away before
    /// the next arrives), with the bounds of [`MemoryPages`].
    pub fn pages(&self, view: MemoryView, max_items: usize) -> MemoryPages {
        MemoryPages {
            client: self.clone(),
            params: ListMemoriesParams::all(view),
            view,
            max_items,
            items: 0,
            bytes: 0,
            cursors: HashSet::new(),
            empty_pages: 0,
            done: false,
        }
    }

    /// `GET …/memories/{memory_id}?view=…`.
    pub async fn retrieve(&self, memory_id: &str, view: MemoryView) -> Result<Memory, ApiError> {
        let req = self
            .request(Method::GET, Some(memory_id))?
            .query("view", view.as_str());
        self.client.json(&req, &self.credential).await
    }

    /// `POST …/memories` with `{"content", "path"}` (`path` starts with `/`).
    pub async fn create(&self, path: &str, content: &str) -> Result<Memory, ApiError> {
        let req = self
            .request(Method::POST, None)?
            .json(&CreateBody { content, path })?;
        self.client.json(&req, &self.credential).await
    }

    /// `POST …/memories/{memory_id}` with the new `content`, applied only while the memory's
    /// content still hashes to `expected_sha256` when given (`precondition` of type
    /// `content_sha256`; a mismatch is a 409 `memory_precondition_failed_error`).
    pub async fn update(
        &self,
        memory_id: &str,
        content: &str,
        expected_sha256: Option<&str>,
    ) -> Result<Memory, ApiError> {
        let body = UpdateBody {
            content: Some(content),
            path: None,
            precondition: expected_sha256.map(|sha| Precondition {
                kind: "content_sha256",
                content_sha256: sha,
            }),
        };
        let req = self.request(Method::POST, Some(memory_id))?.json(&body)?;
        self.client.json(&req, &self.credential).await
    }

    /// `DELETE …/memories/{memory_id}[?expected_content_sha256=…]` (a mismatch is a 409).
    pub async fn delete(
        &self,
        memory_id: &str,
        expected_sha256: Option<&str>,
    ) -> Result<DeletedMemory, ApiError> {
        let req = self
            .request(Method::DELETE, Some(memory_id))?
            .query_opt("expected_content_sha256", expected_sha256);
        self.client.json(&req, &self.credential).await
    }
}

/// Most bytes of paths and contents one listing of a store may add up to (a store holds at most
/// 2000 memories of 100 kB on the server).
pub const MAX_LISTED_BYTES: u64 = 256 * 1024 * 1024;
/// Most empty pages in a row a listing follows before giving up.
pub const MAX_EMPTY_MEMORY_PAGES: usize = 100;

/// A bounded walk over a store's memories ([`MemoryStoreClient::pages`]).
///
/// A listing fails with a decode error when the server hands out a cursor twice, more than
/// [`MAX_EMPTY_MEMORY_PAGES`] empty pages in a row, more than `max_items` memories, more than
/// [`MAX_LISTED_BYTES`] of paths and contents, or a memory whose content is above
/// [`MAX_MEMORY_CONTENT_BYTES`]. In the basic view a content the server sent anyway is dropped.
#[derive(Debug)]
pub struct MemoryPages {
    client: MemoryStoreClient,
    params: ListMemoriesParams,
    view: MemoryView,
    max_items: usize,
    items: usize,
    bytes: u64,
    cursors: HashSet<String>,
    empty_pages: usize,
    done: bool,
}

impl MemoryPages {
    fn refuse(&mut self, message: String) -> ApiError {
        self.done = true;
        ApiError::Decode {
            context: format!("GET /v1/memory_stores/{}/memories", self.client.store_id),
            message,
        }
    }

    /// The next page's memories; `None` after the last page.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Memory>>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let page = match self.client.list(&self.params).await {
            Ok(p) => p,
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        };
        let next = page.next_cursor().map(str::to_owned);
        let mut out = Vec::new();
        for item in page.data {
            let MemoryListItem::Memory(mut m) = item else {
                continue;
            };
            if self.view == MemoryView::Basic {
                m.content = None;
            }
            let content = m.content.as_deref().map_or(0, str::len);
            if content > MAX_MEMORY_CONTENT_BYTES {
                return Err(self.refuse(format!(
                    "memory {:?} holds {content} bytes, above the {MAX_MEMORY_CONTENT_BYTES} byte limit",
                    m.path
                )));
            }
            self.items += 1;
            if self.items > self.max_items {
                let max = self.max_items;
                return Err(self.refuse(format!("the store lists more than {max} memories")));
            }
            self.bytes = self
                .bytes
                .saturating_add((m.path.len() + content + m.content_sha256.len()) as u64);
            if self.bytes > MAX_LISTED_BYTES {
                return Err(self.refuse(format!(
                    "the store lists more than {MAX_LISTED_BYTES} bytes"
                )));
            }
            out.push(m);
        }
        self.empty_pages = if out.is_empty() {
            self.empty_pages + 1
        } else {
            0
        };
        match next {
            Some(c) if !self.cursors.insert(c.clone()) => {
                return Err(
                    self.refuse("server handed out a page cursor it had handed out before".into())
                );
            }
            Some(_) if self.empty_pages > MAX_EMPTY_MEMORY_PAGES => {
                return Err(
                    self.refuse("server keeps answering empty pages with a next cursor".into())
                );
            }
            Some(c) => self.params.page = Some(c),
            None => self.done = true,
        }
        Ok(Some(out))
    }
}
