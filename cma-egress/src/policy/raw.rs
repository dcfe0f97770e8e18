//! The JSON shape of policies, exactly as written: strings everywhere, no validation. Parsing
//! goes raw → validated ([`super::EgressPolicy`]); serialising goes validated → raw, which is the
//! canonical form the fingerprint hashes (normalised hosts, sorted methods, defaults omitted).

use serde::{Deserialize, Serialize};

/// A `host` field: one string (comma-separated patterns) or a list of strings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawHosts {
    One(String),
    Many(Vec<String>),
}

impl RawHosts {
    pub(crate) fn entries(&self) -> Vec<&str> {
        match self {
            RawHosts::One(s) => vec![s.as_str()],
            RawHosts::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One rule; `type` selects the kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RawRule {
    Allow {
        host: RawHosts,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        methods: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_prefix: Option<String>,
    },
    Deny {
        host: RawHosts,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        methods: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_prefix: Option<String>,
    },
    Inject {
        host: RawHosts,
        header: String,
        secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        allow_plain_http: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        methods: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_prefix: Option<String>,
    },
    Placeholder {
        host: RawHosts,
        secret: String,
        #[serde(default, skip_serializing_if = "is_false")]
        allow_plain_http: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        methods: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_prefix: Option<String>,
    },
    Route {
        host: RawHosts,
        upstream: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        methods: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_prefix: Option<String>,
    },
    Custom {
        host: RawHosts,
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        methods: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_prefix: Option<String>,
    },
}

/// A session matcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatcher {
    pub field: String,
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// One policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apply_to: Vec<RawMatcher>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub apply_to_all: bool,
    pub rules: Vec<RawRule>,
}

/// A set of policies plus what applies when none is selected.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicySet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub policies: Vec<RawPolicy>,
}

/// Deserialize `T` from JSON, naming the path of the first offending field.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(json: &[u8]) -> crate::Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let path = if path == "." { String::new() } else { path };
        let err = crate::EgressError::new(
            crate::EgressErrorKind::InvalidPolicy,
            format!("malformed policy JSON: {inner}"),
        );
        if path.is_empty() {
            err
        } else {
            err.with_field(path)
        }
    })
}
