//! The skills endpoints the worker uses to download a session agent's skills (docs/protocol.md §4,
//! §5.3): `GET /v1/skills/{skill_id}/versions/{version}` and
//! `GET /v1/skills/{skill_id}/versions/{version_id}/content`.
//!
//! Skills carry no resource beta (only the configured extra betas, and no `anthropic-beta`
//! header at all when there are none), like the SDK's skills resource.

use std::fmt;

use bytes::Bytes;
use http::Method;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::transport::{Beta, Client, Credential, Helper, Request, encode_path_segment};
use crate::protocol::Extra;

/// Default cap on a downloaded skill archive.
pub const DEFAULT_MAX_SKILL_ARCHIVE_BYTES: usize = 32 * 1024 * 1024;

fn skill_version_type() -> String {
    "skill_version".to_owned()
}

/// A skill version (`BetaSkillVersion`); the worker reads `id` and `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkillVersion {
    /// The version id (what the content download is addressed by, even when `latest` was asked).
    pub id: String,
    /// Always `skill_version`.
    #[serde(rename = "type", default = "skill_version_type")]
    pub kind: String,
    /// The skill's kebab-case slug: the directory name under `{workdir}/skills/`.
    #[serde(default)]
    pub name: String,
    /// The skill id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_id: Option<String>,
    /// Description from the skill's `SKILL.md`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The skills endpoints, bound to one credential (a work item's sessions token, else the
/// environment key).
#[derive(Clone)]
pub struct SkillsClient {
    client: Client,
    credential: Credential,
    helper: Option<Helper>,
    max_archive_bytes: usize,
}

impl fmt::Debug for SkillsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkillsClient")
            .field("helper", &self.helper)
            .field("max_archive_bytes", &self.max_archive_bytes)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The skills endpoints, authenticated with `credential`.
    pub fn skills(&self, credential: Credential) -> SkillsClient {
        SkillsClient {
            client: self.clone(),
            credential,
            helper: None,
            max_archive_bytes: DEFAULT_MAX_SKILL_ARCHIVE_BYTES
                .min(self.config().max_response_bytes()),
        }
    }
}

impl SkillsClient {
    /// The same client tagging requests with `x-stainless-helper` (or not).
    pub fn with_helper(&self, helper: Option<Helper>) -> Self {
        Self {
            helper,
            ..self.clone()
        }
    }

    /// The same client with another archive size cap (never above the client's response cap).
    pub fn with_max_archive_bytes(&self, limit: usize) -> Self {
        Self {
            max_archive_bytes: limit.min(self.client.config().max_response_bytes()),
            ..self.clone()
        }
    }

    /// The archive size cap.
    pub fn max_archive_bytes(&self) -> usize {
        self.max_archive_bytes
    }

    fn request(&self, skill_id: &str, version: &str, suffix: &str) -> Result<Request, ApiError> {
        let path = format!(
            "/v1/skills/{}/versions/{}{suffix}",
            encode_path_segment("skill id", skill_id)?,
            encode_path_segment("skill version", version)?
        );
        let mut r = Request::new(Method::GET, path);
        r.helper = self.helper;
        r.beta = Beta::None;
        Ok(r)
    }

    /// `GET /v1/skills/{skill_id}/versions/{version}` (`version` may be `latest`).
    pub async fn retrieve_version(
        &self,
        skill_id: &str,
        version: &str,
    ) -> Result<SkillVersion, ApiError> {
        let req = self.request(skill_id, version, "")?;
        self.client.json(&req, &self.credential).await
    }

    /// `GET /v1/skills/{skill_id}/versions/{version_id}/content` with
    /// `Accept: application/binary`: the archive (zip or tar), at most
    /// [`max_archive_bytes`](Self::max_archive_bytes).
    pub async fn download(&self, skill_id: &str, version_id: &str) -> Result<Bytes, ApiError> {
        let mut req = self.request(skill_id, version_id, "/content")?;
        req.accept = "application/binary";
        let bytes = self.client.bytes(&req, &self.credential).await?;
        if bytes.len() > self.max_archive_bytes {
            return Err(ApiError::BodyTooLarge {
                context: format!("GET {}", req.path),
                limit: self.max_archive_bytes,
            });
        }
        Ok(bytes)
    }
}
