//! What a running [`Emulator`] serves, added programmatically: environments, scripted sessions
//! (with skills and memory stores attached), skill versions, memories and raw work items.

use serde_json::Value;

use crate::protocol::WorkData;

use super::error::EmulatorError;
use super::http;
use super::resources::{self, SessionAttachments};
use super::scenario::{self, Script};
use super::state::EnvOptions;
use super::{Emulator, EnvironmentInfo};

impl Emulator {
    /// Add a self-hosted environment with a random key.
    pub fn add_environment(&self, id: &str, name: &str) -> Result<EnvironmentInfo, EmulatorError> {
        self.add_environment_with_key(id, name, None)
    }

    /// Add a self-hosted environment with a given (or random) key.
    pub fn add_environment_with_key(
        &self,
        id: &str,
        name: &str,
        key: Option<&str>,
    ) -> Result<EnvironmentInfo, EmulatorError> {
        if id.trim().is_empty() {
            return Err(EmulatorError::Invalid("environment id is empty".into()));
        }
        let (env, key) = self
            .shared
            .lock()
            .add_environment(
                Some(id.to_owned()),
                name.to_owned(),
                key.map(str::to_owned),
                EnvOptions::default(),
            )
            .map_err(EmulatorError::Invalid)?;
        Ok(EnvironmentInfo {
            id: env.id.0,
            name: env.name,
            key,
        })
    }

    /// Create a scripted session (its opening events are emitted and its work item queued).
    pub fn create_session(&self, env: &str, script: Script) -> Result<String, EmulatorError> {
        self.create_session_with_id(env, None, script)
    }

    /// Create a scripted session with a chosen id.
    pub fn create_session_with_id(
        &self,
        env: &str,
        id: Option<&str>,
        script: Script,
    ) -> Result<String, EmulatorError> {
        for (i, c) in script.calls.iter().enumerate() {
            scenario::validate_call(c)
                .map_err(|m| EmulatorError::Invalid(format!("call #{i}: {m}")))?;
        }
        let sid = self
            .shared
            .lock()
            .create_session(
                env,
                id.map(str::to_owned),
                script,
                true,
                serde_json::json!({}),
                Value::Null,
            )
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
        self.shared.changed();
        Ok(sid)
    }

    /// Create a scripted session with skills and memory stores attached (in one step, so no
    /// worker sees the session without them). Unknown memory stores are created empty.
    pub fn create_session_with(
        &self,
        env: &str,
        id: Option<&str>,
        script: Script,
        attachments: &SessionAttachments,
    ) -> Result<String, EmulatorError> {
        for (i, c) in script.calls.iter().enumerate() {
            scenario::validate_call(c)
                .map_err(|m| EmulatorError::Invalid(format!("call #{i}: {m}")))?;
        }
        let sid = {
            let mut st = self.shared.lock();
            for m in &attachments.memory_stores {
                st.resources
                    .ensure_store(&m.memory_store_id)
                    .map_err(EmulatorError::Invalid)?;
            }
            let sid = st
                .create_session(
                    env,
                    id.map(str::to_owned),
                    script,
                    true,
                    serde_json::json!({}),
                    Value::Null,
                )
                .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
            st.attach(&sid, attachments)
                .map_err(EmulatorError::Invalid)?;
            sid
        };
        self.shared.changed();
        Ok(sid)
    }

    /// Serve a new version of skill `skill_id` named `name` whose archive is `archive` (tar or
    /// zip bytes, served verbatim); returns the version id. `latest` resolves to it.
    pub fn add_skill(
        &self,
        skill_id: &str,
        name: &str,
        archive: Vec<u8>,
    ) -> Result<String, EmulatorError> {
        self.shared
            .lock()
            .resources
            .add_skill(skill_id, name, archive)
            .map_err(EmulatorError::Invalid)
    }

    /// Serve a new version of skill `skill_id` whose archive is a tar of `files` (relative path
    /// → text) wrapped in a `<name>/` directory; returns the version id.
    pub fn add_skill_files(
        &self,
        skill_id: &str,
        name: &str,
        files: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, EmulatorError> {
        let tar = resources::skill_tar(name, files).map_err(EmulatorError::Invalid)?;
        self.add_skill(skill_id, name, tar)
    }

    /// Create an empty memory store (nothing happens when it exists).
    pub fn add_memory_store(&self, store_id: &str) -> Result<(), EmulatorError> {
        self.shared
            .lock()
            .resources
            .ensure_store(store_id)
            .map_err(EmulatorError::Invalid)
    }

    /// Create or overwrite the memory at `path` of a store (as another writer would), returning
    /// the memory JSON (full view).
    pub fn put_memory(
        &self,
        store_id: &str,
        path: &str,
        content: &str,
    ) -> Result<Value, EmulatorError> {
        self.shared
            .lock()
            .resources
            .put(store_id, path, content)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))
    }

    /// Queue a work item with arbitrary data (e.g. `{"type":"healthcheck","id":"…"}`).
    pub fn enqueue_work(&self, env: &str, data: WorkData) -> Result<String, EmulatorError> {
        http::enqueue(&self.shared, env, data)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))
    }
}
