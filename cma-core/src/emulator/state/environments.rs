//! Environments: create, list, retrieve, update, archive and delete (docs/protocol.md §2.2).

use serde_json::{Map, Value};

use crate::protocol::{Environment, EnvironmentConfig, EnvironmentId, Extra, Page};

use super::super::error::ApiError;
use super::{EnvEntry, EnvOptions, State, now_str, page_cursor, parse_cursor, short_id};

impl State {
    pub(crate) fn env_exists(&self, id: &str) -> bool {
        self.envs.iter().any(|e| e.env.id.as_str() == id)
    }

    fn env_mut(&mut self, id: &str) -> Result<&mut EnvEntry, ApiError> {
        self.envs
            .iter_mut()
            .find(|e| e.env.id.as_str() == id)
            .ok_or_else(|| ApiError::environment_not_found(id))
    }

    pub(crate) fn env_key(&self, id: &str) -> Option<String> {
        self.envs
            .iter()
            .find(|e| e.env.id.as_str() == id)
            .map(|e| e.key.clone())
    }

    pub(crate) fn add_environment(
        &mut self,
        id: Option<String>,
        name: String,
        key: Option<String>,
        opts: EnvOptions,
    ) -> Result<(Environment, String), String> {
        let EnvOptions {
            description,
            metadata,
            config,
            scope,
        } = opts;
        let id = id.unwrap_or_else(|| format!("env_{}", short_id()));
        if self.env_exists(&id) {
            return Err(format!("environment {id} already exists"));
        }
        let key = key.unwrap_or_else(|| format!("envkey_emu_{}", uuid::Uuid::new_v4().simple()));
        if self.resolve(&key).is_some() {
            return Err("environment key already in use".into());
        }
        let now = now_str();
        let env = Environment {
            id: EnvironmentId(id.clone()),
            kind: "environment".into(),
            name,
            description,
            metadata,
            config,
            scope,
            created_at: now.clone(),
            updated_at: Some(now),
            archived_at: None,
            extra: Extra::new(),
        };
        self.envs.push(EnvEntry {
            env: env.clone(),
            key: key.clone(),
        });
        Ok((env, key))
    }

    /// (id, name, key) of every environment, in creation order.
    pub(crate) fn env_infos(&self) -> Vec<(String, String, String)> {
        self.envs
            .iter()
            .map(|e| (e.env.id.0.clone(), e.env.name.clone(), e.key.clone()))
            .collect()
    }

    pub(crate) fn get_environment(&self, id: &str) -> Result<Environment, ApiError> {
        self.envs
            .iter()
            .find(|e| e.env.id.as_str() == id)
            .map(|e| e.env.clone())
            .ok_or_else(|| ApiError::environment_not_found(id))
    }

    pub(crate) fn list_environments(
        &self,
        include_archived: bool,
        limit: usize,
        page: Option<&str>,
    ) -> Result<Page<Environment>, ApiError> {
        let start = match page {
            Some(p) => parse_cursor("envp", p)? as usize,
            None => 0,
        };
        let all: Vec<&EnvEntry> = self
            .envs
            .iter()
            .filter(|e| include_archived || e.env.archived_at.is_none())
            .collect();
        let data: Vec<Environment> = all
            .iter()
            .skip(start)
            .take(limit)
            .map(|e| e.env.clone())
            .collect();
        let end = start + data.len();
        Ok(Page {
            data,
            next_page: (end < all.len()).then(|| page_cursor("envp", end as u64)),
            extra: Extra::new(),
        })
    }

    /// Update per §2.2; `patch` is the parsed body object.
    pub(crate) fn update_environment(
        &mut self,
        id: &str,
        patch: &Map<String, Value>,
    ) -> Result<Environment, ApiError> {
        let e = self.env_mut(id)?;
        if e.env.archived_at.is_some() {
            return Err(
                ApiError::bad_request(format!("environment {id} is archived"))
                    .with_code("environment_archived"),
            );
        }
        let mut env = e.env.clone();
        for (k, v) in patch {
            match (k.as_str(), v) {
                ("name", Value::String(s)) if !s.is_empty() => env.name = s.clone(),
                ("description", Value::Null) => env.description = None,
                ("description", Value::String(s)) => env.description = Some(s.clone()),
                ("scope", Value::Null) => env.scope = None,
                ("scope", Value::String(s)) if s == "organization" || s == "account" => {
                    env.scope = Some(s.clone())
                }
                ("config", c @ Value::Object(_)) => {
                    let cfg: EnvironmentConfig = serde_json::from_value(c.clone())
                        .map_err(|e| ApiError::bad_request(format!("config: {e}")))?;
                    let same_kind = matches!(
                        (&cfg, &env.config),
                        (EnvironmentConfig::SelfHosted, EnvironmentConfig::SelfHosted)
                            | (EnvironmentConfig::Other(_), EnvironmentConfig::Other(_))
                    );
                    if !same_kind {
                        return Err(ApiError::bad_request(
                            "cannot change an environment between cloud and self_hosted",
                        )
                        .with_code("invalid_config_type_change"));
                    }
                    env.config = cfg;
                }
                ("metadata", Value::Null) => env.metadata.clear(),
                ("metadata", Value::Object(m)) => {
                    for (mk, mv) in m {
                        match mv {
                            Value::Null => {
                                env.metadata.remove(mk);
                            }
                            Value::String(s) if s.is_empty() => {
                                env.metadata.remove(mk);
                            }
                            Value::String(s) => {
                                env.metadata.insert(mk.clone(), s.clone());
                            }
                            _ => {
                                return Err(ApiError::bad_request(format!(
                                    "metadata value for {mk:?} must be a string or null"
                                ))
                                .with_code("invalid_metadata"));
                            }
                        }
                    }
                }
                (other, _) => {
                    return Err(ApiError::bad_request(format!(
                        "invalid value for field {other:?}"
                    )));
                }
            }
        }
        env.updated_at = Some(now_str());
        e.env = env.clone();
        self.webhook("environment.updated", id);
        Ok(env)
    }

    pub(crate) fn archive_environment(&mut self, id: &str) -> Result<Environment, ApiError> {
        let e = self.env_mut(id)?;
        if e.env.archived_at.is_none() {
            let now = now_str();
            e.env.archived_at = Some(now.clone());
            e.env.updated_at = Some(now);
        }
        let env = e.env.clone();
        self.webhook("environment.archived", id);
        Ok(env)
    }

    pub(crate) fn delete_environment(&mut self, id: &str) -> Result<(), ApiError> {
        self.env_mut(id)?;
        self.envs.retain(|e| e.env.id.as_str() != id);
        self.webhook("environment.deleted", id);
        Ok(())
    }

    pub(crate) fn note_environment_created(&self, id: &str) {
        self.webhook("environment.created", id);
    }
}
