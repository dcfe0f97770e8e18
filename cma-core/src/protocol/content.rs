//! Content blocks of tool results and messages (docs/protocol.md §4.3).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A content block of a tool result (docs/protocol.md §4.3).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ContentBlock {
    /// `{"type":"text","text":…}`.
    Text {
        /// The text.
        text: String,
    },
    /// `image`, `document`, `search_result` or a future block type, passed through verbatim.
    Other(Value),
}

impl ContentBlock {
    /// A text block.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text { text: text.into() }
    }

    /// The text of a text block.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text { text } => Some(text),
            Self::Other(_) => None,
        }
    }
}

impl Serialize for ContentBlock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Text { text } => serde_json::json!({"type": "text", "text": text}).serialize(s),
            Self::Other(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ContentBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let is_plain_text = v.get("type").and_then(Value::as_str) == Some("text")
            && v.as_object().is_some_and(|o| o.len() == 2)
            && v.get("text").is_some_and(Value::is_string);
        if is_plain_text {
            let text = v["text"].as_str().unwrap_or_default().to_owned();
            Ok(Self::Text { text })
        } else if v.is_object() {
            Ok(Self::Other(v))
        } else {
            Err(D::Error::custom("content block must be an object"))
        }
    }
}
