//! `metadata.memory`: what a task payload asks of memory.

use std::fmt;

use serde_json::{Map, Value};

use crate::{
    dsn::redact_dsn,
    error::{Error, Result},
    item::{MemoryMetadata, MemoryScope},
    store::Backend,
};

/// The key of the memory config in a task's `metadata`.
pub const METADATA_KEY: &str = "memory";

/// A task's memory request, parsed from `metadata.memory`:
///
/// ```json
/// {"backend": "short_term" | "sqlite" | "postgres",
///  "store": "main",
///  "dsn": "postgres://...",
///  "scope": {"user_id": "u-1", "session_id": "s-1", "agent_id": "a-1"}}
/// ```
///
/// Every key is optional. Without `backend` and `store` the backend is
/// `short_term`, as in the reference. Which store a request really gets is
/// decided by [`crate::MemoryPolicy::resolve`]. Its `Debug` form hides
/// passwords.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct MemoryConfig {
    /// The backend asked for, if any.
    pub backend: Option<Backend>,
    /// A DSN given in the payload, if any (refused unless the policy allows
    /// it or it names a configured store).
    pub dsn: Option<String>,
    /// The name of a store configured on the worker.
    pub store: Option<String>,
    /// The conversation: user, session and agent. The task id is added by
    /// [`MemoryConfig::metadata_for_task`].
    pub scope: MemoryScope,
}

impl fmt::Debug for MemoryConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("MemoryConfig")
            .field("backend", &self.backend)
            .field("dsn", &self.dsn.as_deref().map(redact_dsn))
            .field("store", &self.store)
            .field("scope", &self.scope)
            .finish()
    }
}

const TOP_LEVEL_KEYS: &str = "backend, store, dsn, scope";
const SCOPE_KEYS: &str = "user_id, session_id, agent_id";

impl MemoryConfig {
    /// The memory config of a task, from its `metadata`: `None` when there
    /// is no `memory` key or it is `null`.
    pub fn from_task_metadata(metadata: &Map<String, Value>) -> Result<Option<Self>> {
        match metadata.get(METADATA_KEY) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => Self::from_value(value).map(Some),
        }
    }

    /// Parses the value of `metadata.memory`. Unknown keys, values of the
    /// wrong type and unknown backends are errors that say what was
    /// expected.
    pub fn from_value(value: &Value) -> Result<Self> {
        let Value::Object(object) = value else {
            return Err(Error::InvalidConfig(format!(
                "expected an object with keys {TOP_LEVEL_KEYS}, found {}",
                kind_of(value)
            )));
        };
        let mut config = MemoryConfig::default();
        for (key, value) in object {
            match key.as_str() {
                "backend" => {
                    if let Some(name) = optional_string("backend", value)? {
                        config.backend = Some(name.parse()?);
                    }
                }
                "dsn" => config.dsn = optional_string("dsn", value)?,
                "store" => config.store = optional_string("store", value)?,
                "scope" => config.scope = parse_scope(value)?,
                other => {
                    return Err(Error::InvalidConfig(format!(
                        "unknown key `{other}` (expected {TOP_LEVEL_KEYS})"
                    )));
                }
            }
        }
        Ok(config)
    }

    /// The metadata that a task's items are saved with: the scope plus the
    /// task id.
    pub fn metadata_for_task(&self, task_id: &str) -> MemoryMetadata {
        MemoryMetadata {
            task_id: Some(task_id.to_owned()),
            ..self.scope.to_metadata()
        }
    }

    /// The scope that prior history is loaded from: the conversation, over
    /// all its tasks.
    pub fn history_scope(&self) -> MemoryScope {
        MemoryScope {
            task_id: None,
            ..self.scope.clone()
        }
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A string field; `null` and the empty string count as absent.
fn optional_string(key: &str, value: &Value) -> Result<Option<String>> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) if text.is_empty() => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        other => Err(Error::InvalidConfig(format!(
            "`{key}` must be a string, found {}",
            kind_of(other)
        ))),
    }
}

fn parse_scope(value: &Value) -> Result<MemoryScope> {
    let object = match value {
        Value::Null => return Ok(MemoryScope::default()),
        Value::Object(object) => object,
        other => {
            return Err(Error::InvalidConfig(format!(
                "`scope` must be an object with keys {SCOPE_KEYS}, found {}",
                kind_of(other)
            )));
        }
    };
    let mut scope = MemoryScope::default();
    for (key, value) in object {
        let field = match key.as_str() {
            "user_id" => &mut scope.user_id,
            "session_id" => &mut scope.session_id,
            "agent_id" => &mut scope.agent_id,
            "task_id" => {
                return Err(Error::InvalidConfig(
                    "`scope.task_id` is not allowed: the worker sets the task id".into(),
                ));
            }
            other => {
                return Err(Error::InvalidConfig(format!(
                    "unknown key `scope.{other}` (expected {SCOPE_KEYS})"
                )));
            }
        };
        *field = optional_string(&format!("scope.{key}"), value)?;
    }
    Ok(scope)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::MemoryConfig;
    use crate::{Backend, MemoryScope};

    fn check_ok(value: Value, expected: MemoryConfig) {
        assert_eq!(
            MemoryConfig::from_value(&value).unwrap(),
            expected,
            "{value}"
        );
    }

    fn check_err(value: Value, fragment: &str) {
        let error = MemoryConfig::from_value(&value).unwrap_err().to_string();
        assert!(error.contains(fragment), "{value}: {error}");
    }

    #[test]
    fn parses_the_shapes_the_reference_sends() {
        check_ok(json!({}), MemoryConfig::default());
        check_ok(
            json!({"backend": "short_term", "scope": {"user_id": "u-1", "session_id": "s-1"}}),
            MemoryConfig {
                backend: Some(Backend::ShortTerm),
                scope: MemoryScope::new()
                    .with_user_id("u-1")
                    .with_session_id("s-1"),
                ..MemoryConfig::default()
            },
        );
        check_ok(
            json!({"backend": "sqlite", "dsn": "sqlite:///memory.db", "scope": {"agent_id": "a"}}),
            MemoryConfig {
                backend: Some(Backend::Sqlite),
                dsn: Some("sqlite:///memory.db".into()),
                scope: MemoryScope::new().with_agent_id("a"),
                ..MemoryConfig::default()
            },
        );
        check_ok(
            json!({"store": "main", "backend": null, "dsn": "", "scope": null}),
            MemoryConfig {
                store: Some("main".into()),
                ..MemoryConfig::default()
            },
        );
        check_ok(
            json!({"backend": "postgresql", "scope": {"user_id": null, "session_id": ""}}),
            MemoryConfig {
                backend: Some(Backend::Postgres),
                ..MemoryConfig::default()
            },
        );
    }

    #[test]
    fn explains_what_is_wrong_with_a_bad_shape() {
        check_err(json!("short_term"), "expected an object");
        check_err(
            json!({"backend": "redis"}),
            "unknown memory backend `redis`",
        );
        check_err(
            json!({"backend": 1}),
            "`backend` must be a string, found a number",
        );
        check_err(
            json!({"dsn": ["x"]}),
            "`dsn` must be a string, found a list",
        );
        check_err(json!({"scope": "s-1"}), "`scope` must be an object");
        check_err(
            json!({"scope": {"user_id": 42}}),
            "`scope.user_id` must be a string",
        );
        check_err(
            json!({"scope": {"sesion_id": "s"}}),
            "unknown key `scope.sesion_id`",
        );
        check_err(
            json!({"scope": {"task_id": "t"}}),
            "the worker sets the task id",
        );
        check_err(json!({"backnd": "sqlite"}), "unknown key `backnd`");
    }

    #[test]
    fn reads_the_memory_key_of_task_metadata() {
        let metadata = json!({"trace_context": {}, "memory": {"backend": "short_term"}});
        let config = MemoryConfig::from_task_metadata(metadata.as_object().unwrap()).unwrap();
        assert_eq!(config.unwrap().backend, Some(Backend::ShortTerm));
        for metadata in [json!({}), json!({"memory": null})] {
            let config = MemoryConfig::from_task_metadata(metadata.as_object().unwrap()).unwrap();
            assert_eq!(config, None);
        }
    }

    #[test]
    fn adds_the_task_id_to_saved_items_but_not_to_history() {
        let config = MemoryConfig {
            scope: MemoryScope::new().with_user_id("u").with_session_id("s"),
            ..MemoryConfig::default()
        };
        let metadata = config.metadata_for_task("t-1");
        assert_eq!(metadata.task_id.as_deref(), Some("t-1"));
        assert_eq!(metadata.session_id.as_deref(), Some("s"));
        assert_eq!(config.history_scope(), config.scope);
    }

    #[test]
    fn debug_hides_the_dsn_password() {
        let config = MemoryConfig {
            dsn: Some("postgres://u:s3cret@h/db".into()),
            ..MemoryConfig::default()
        };
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
