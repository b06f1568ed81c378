//! Memory items, their scope metadata, and their conversion to and from
//! [`Message`].

use std::{fmt, str::FromStr};

use exo_proto::{Content, Message, ToolCall};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::{
    clock,
    error::{Error, Result},
};

/// Where an item is in its life: drafts become accepted or discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MemoryStatus {
    /// Written but not yet confirmed.
    Draft,
    /// Part of the memory (the default).
    #[default]
    Accepted,
    /// Rejected; kept for the record but left out of history.
    Discard,
}

impl MemoryStatus {
    /// The name stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryStatus::Draft => "draft",
            MemoryStatus::Accepted => "accepted",
            MemoryStatus::Discard => "discard",
        }
    }
}

impl fmt::Display for MemoryStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for MemoryStatus {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "draft" => Ok(MemoryStatus::Draft),
            "accepted" => Ok(MemoryStatus::Accepted),
            "discard" => Ok(MemoryStatus::Discard),
            other => Err(Error::InvalidItem(format!(
                "unknown status `{other}` (expected draft, accepted or discard)"
            ))),
        }
    }
}

/// A filter on the scope fields of [`MemoryMetadata`].
///
/// A field filters only when it is set to a non-empty string; an empty
/// scope matches every item. This is the reference's rule too.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryScope {
    /// Only items of this user.
    pub user_id: Option<String>,
    /// Only items of this conversation.
    pub session_id: Option<String>,
    /// Only items written by this task.
    pub task_id: Option<String>,
    /// Only items of this agent.
    pub agent_id: Option<String>,
}

impl MemoryScope {
    /// The empty scope, which matches everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// This scope, restricted to one user.
    pub fn with_user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// This scope, restricted to one session.
    pub fn with_session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// This scope, restricted to one task.
    pub fn with_task_id(mut self, task_id: impl Into<String>) -> Self {
        self.task_id = Some(task_id.into());
        self
    }

    /// This scope, restricted to one agent.
    pub fn with_agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(agent_id.into());
        self
    }

    /// True when no field filters.
    pub fn is_empty(&self) -> bool {
        self.filters().next().is_none()
    }

    /// The fields that filter, as (metadata key, value) pairs.
    pub(crate) fn filters(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("user_id", &self.user_id),
            ("session_id", &self.session_id),
            ("task_id", &self.task_id),
            ("agent_id", &self.agent_id),
        ]
        .into_iter()
        .filter_map(|(key, value)| match value.as_deref() {
            Some(value) if !value.is_empty() => Some((key, value)),
            _ => None,
        })
    }

    /// True when `metadata` is inside this scope.
    pub fn matches(&self, metadata: &MemoryMetadata) -> bool {
        self.filters()
            .all(|(key, wanted)| metadata.field(key) == Some(wanted))
    }

    /// Metadata carrying exactly these scope fields and no extras.
    pub fn to_metadata(&self) -> MemoryMetadata {
        MemoryMetadata {
            user_id: self.user_id.clone(),
            session_id: self.session_id.clone(),
            task_id: self.task_id.clone(),
            agent_id: self.agent_id.clone(),
            extra: Map::new(),
        }
    }
}

/// Who and what an item belongs to: the `metadata` column.
///
/// It is stored as `{"user_id", "session_id", "task_id", "agent_id",
/// "extra"}` with unset fields as `null`, in that key order, as the
/// reference stores it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MemoryMetadata {
    /// The user the conversation is with.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The conversation.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The task that wrote the item.
    #[serde(default)]
    pub task_id: Option<String>,
    /// The agent that took part.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Anything else, free-form.
    #[serde(default, deserialize_with = "null_as_empty_map")]
    pub extra: Map<String, Value>,
}

fn null_as_empty_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Map<String, Value>, D::Error> {
    Ok(Option::<Map<String, Value>>::deserialize(deserializer)?.unwrap_or_default())
}

impl MemoryMetadata {
    /// The scope fields of this metadata, as a filter.
    pub fn scope(&self) -> MemoryScope {
        MemoryScope {
            user_id: self.user_id.clone(),
            session_id: self.session_id.clone(),
            task_id: self.task_id.clone(),
            agent_id: self.agent_id.clone(),
        }
    }

    pub(crate) fn field(&self, key: &str) -> Option<&str> {
        match key {
            "user_id" => self.user_id.as_deref(),
            "session_id" => self.session_id.as_deref(),
            "task_id" => self.task_id.as_deref(),
            "agent_id" => self.agent_id.as_deref(),
            _ => None,
        }
    }

    /// The JSON text stored in the `metadata` column.
    #[cfg(any(feature = "sqlite", feature = "postgres", test))]
    pub(crate) fn to_json(&self) -> String {
        let stored = MemoryMetadata {
            extra: sorted_object(self.extra.clone()),
            ..self.clone()
        };
        serde_json::to_string(&stored).expect("metadata is plain JSON")
    }
}

/// What an item is, with the fields only that kind has.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MemoryKind {
    /// Instructions (`memory_type` `system`).
    System,
    /// What the user said (`human`).
    Human,
    /// What the model said (`ai`), with the tool calls it asked for.
    Ai {
        /// The tool calls, in order.
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call (`tool`).
    Tool {
        /// The call this answers.
        tool_call_id: String,
        /// The tool that ran.
        tool_name: String,
        /// The error text when the tool failed (`is_error` in the row).
        error: Option<String>,
    },
    /// Any other `memory_type` (the reference also writes `snapshot`),
    /// kept with its `extra_json` so it survives a round trip.
    Other {
        /// The stored `memory_type`.
        memory_type: String,
        /// The stored `extra_json` object.
        extra: Map<String, Value>,
    },
}

impl MemoryKind {
    /// The name stored in the `memory_type` column.
    pub fn memory_type(&self) -> &str {
        match self {
            MemoryKind::System => "system",
            MemoryKind::Human => "human",
            MemoryKind::Ai { .. } => "ai",
            MemoryKind::Tool { .. } => "tool",
            MemoryKind::Other { memory_type, .. } => memory_type,
        }
    }

    /// True for the kinds that make up a conversation.
    pub fn is_conversation(&self) -> bool {
        !matches!(self, MemoryKind::Other { .. })
    }
}

/// The kinds that [`crate::MemoryStore::history`] returns.
pub(crate) const CONVERSATION_TYPES: [&str; 4] = ["system", "human", "ai", "tool"];

/// The `extra_json` key holding content blocks, so that content that is not
/// plain text (images, for instance) survives a round trip. The `content`
/// column holds the blocks' text, as the reference expects.
const CONTENT_BLOCKS: &str = "content_blocks";

/// The `extra_json` key holding a failed tool's error text. The reference
/// keeps only `is_error`; we keep the text as well.
const TOOL_ERROR: &str = "error";

/// One entry of memory: a message of a conversation, with its scope.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryItem {
    /// 32 lowercase hex characters (a uuid4) for new items.
    pub id: String,
    /// What the item is.
    pub kind: MemoryKind,
    /// The content. Text is stored as is; blocks are stored as their text,
    /// and the blocks themselves in `extra_json`.
    pub content: Content,
    /// Draft, accepted or discarded.
    pub status: MemoryStatus,
    /// Who and what it belongs to.
    pub metadata: MemoryMetadata,
    /// ISO-8601 UTC with `+00:00`, set when the item is made. An upsert
    /// keeps the first value.
    pub created_at: String,
    /// ISO-8601 UTC with `+00:00`.
    pub updated_at: String,
    /// 1 for a new item; each upsert of the same id adds one. Stores set it;
    /// [`crate::MemoryStore::add`] ignores the value given.
    pub version: i64,
}

impl MemoryItem {
    /// A new accepted item with a fresh id, stamped now.
    pub fn new(kind: MemoryKind, content: impl Into<Content>, metadata: MemoryMetadata) -> Self {
        let now = clock::now_iso();
        MemoryItem {
            id: uuid::Uuid::new_v4().simple().to_string(),
            kind,
            content: content.into(),
            status: MemoryStatus::Accepted,
            metadata,
            created_at: now.clone(),
            updated_at: now,
            version: 1,
        }
    }

    /// A system item.
    pub fn system(text: impl Into<String>, metadata: MemoryMetadata) -> Self {
        Self::new(MemoryKind::System, text.into(), metadata)
    }

    /// A human item.
    pub fn human(content: impl Into<Content>, metadata: MemoryMetadata) -> Self {
        Self::new(MemoryKind::Human, content, metadata)
    }

    /// An AI item.
    pub fn ai(
        content: impl Into<Content>,
        tool_calls: Vec<ToolCall>,
        metadata: MemoryMetadata,
    ) -> Self {
        Self::new(MemoryKind::Ai { tool_calls }, content, metadata)
    }

    /// A tool item.
    pub fn tool(
        tool_call_id: impl Into<String>,
        tool_name: impl Into<String>,
        content: impl Into<Content>,
        error: Option<String>,
        metadata: MemoryMetadata,
    ) -> Self {
        let kind = MemoryKind::Tool {
            tool_call_id: tool_call_id.into(),
            tool_name: tool_name.into(),
            error,
        };
        Self::new(kind, content, metadata)
    }

    /// This item with another id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// This item with another status.
    pub fn with_status(mut self, status: MemoryStatus) -> Self {
        self.status = status;
        self
    }

    /// The name stored in the `memory_type` column.
    pub fn memory_type(&self) -> &str {
        self.kind.memory_type()
    }

    /// A new item holding `message`: user becomes `human`, assistant `ai`,
    /// tool `tool` and system `system`.
    pub fn from_message(message: &Message, metadata: MemoryMetadata) -> Self {
        match message {
            Message::System { content } => Self::system(content.clone(), metadata),
            Message::User { content } => Self::human(content.clone(), metadata),
            Message::Assistant {
                content,
                tool_calls,
            } => Self::ai(content.clone(), tool_calls.clone(), metadata),
            Message::Tool {
                tool_call_id,
                tool_name,
                content,
                error,
            } => Self::tool(
                tool_call_id.clone(),
                tool_name.clone(),
                content.clone(),
                error.clone(),
                metadata,
            ),
        }
    }

    /// The message this item holds, or `None` for a kind that is not part of
    /// a conversation.
    pub fn to_message(&self) -> Option<Message> {
        let content = self.content.clone();
        Some(match &self.kind {
            MemoryKind::System => Message::System {
                content: content.to_text(),
            },
            MemoryKind::Human => Message::User { content },
            MemoryKind::Ai { tool_calls } => Message::Assistant {
                content,
                tool_calls: tool_calls.clone(),
            },
            MemoryKind::Tool {
                tool_call_id,
                tool_name,
                error,
            } => Message::Tool {
                tool_call_id: tool_call_id.clone(),
                tool_name: tool_name.clone(),
                content,
                error: error.clone(),
            },
            MemoryKind::Other { .. } => return None,
        })
    }

    /// Checks what every store requires before writing.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.id.is_empty() {
            return Err(Error::InvalidItem("the id is empty".into()));
        }
        if self.memory_type().is_empty() {
            return Err(Error::InvalidItem(format!(
                "item `{}` has an empty memory_type",
                self.id
            )));
        }
        Ok(())
    }

    /// The kind-specific fields as stored in `extra_json`.
    pub(crate) fn extra_json(&self) -> Map<String, Value> {
        encode_extra(&self.kind, &self.content)
    }

    /// The text stored in the `content` column.
    pub(crate) fn content_text(&self) -> String {
        self.content.to_text()
    }
}

/// The messages held by `items`, in the same order, skipping kinds that are
/// not part of a conversation.
pub fn messages_from_items<'a>(items: impl IntoIterator<Item = &'a MemoryItem>) -> Vec<Message> {
    items
        .into_iter()
        .filter_map(MemoryItem::to_message)
        .collect()
}

/// `object` with the keys of every nested object in sorted order.
///
/// serde_json keeps insertion order when any crate in the build enables its
/// `preserve_order` feature, and sorts keys otherwise. Sorting first makes
/// the stored text the same either way.
#[cfg(any(feature = "sqlite", feature = "postgres", test))]
pub(crate) fn sorted_object(object: Map<String, Value>) -> Map<String, Value> {
    fn sorted(value: Value) -> Value {
        match value {
            Value::Object(object) => Value::Object(sorted_object(object)),
            Value::Array(values) => Value::Array(values.into_iter().map(sorted).collect()),
            other => other,
        }
    }
    let mut entries: Vec<(String, Value)> = object.into_iter().collect();
    entries.sort_by(|(left, _), (right, _)| left.cmp(right));
    entries
        .into_iter()
        .map(|(key, value)| (key, sorted(value)))
        .collect()
}

/// The `extra_json` object of a kind and its content.
fn encode_extra(kind: &MemoryKind, content: &Content) -> Map<String, Value> {
    let mut extra = match kind {
        MemoryKind::System | MemoryKind::Human => Map::new(),
        MemoryKind::Ai { tool_calls } => {
            let calls = tool_calls
                .iter()
                .map(|call| {
                    serde_json::json!({
                        "id": call.id,
                        "name": call.name,
                        "arguments": call.arguments,
                    })
                })
                .collect();
            Map::from_iter([("tool_calls".to_owned(), Value::Array(calls))])
        }
        MemoryKind::Tool {
            tool_call_id,
            tool_name,
            error,
        } => {
            let mut extra = Map::new();
            extra.insert("tool_call_id".into(), Value::from(tool_call_id.as_str()));
            extra.insert("tool_name".into(), Value::from(tool_name.as_str()));
            extra.insert("is_error".into(), Value::Bool(error.is_some()));
            if let Some(error) = error {
                extra.insert(TOOL_ERROR.into(), Value::from(error.as_str()));
            }
            extra
        }
        MemoryKind::Other { extra, .. } => extra.clone(),
    };
    if let Content::Blocks(blocks) = content {
        extra.insert(CONTENT_BLOCKS.into(), Value::Array(blocks.clone()));
    }
    extra
}

/// Rebuilds a kind and its content from the stored columns, leniently as the
/// reference reads them: missing fields take their defaults.
pub(crate) fn decode_kind(
    memory_type: &str,
    content: String,
    mut extra: Map<String, Value>,
) -> std::result::Result<(MemoryKind, Content), String> {
    let content = match extra.remove(CONTENT_BLOCKS) {
        Some(Value::Array(blocks)) => Content::Blocks(blocks),
        Some(Value::Null) | None => Content::Text(content),
        Some(other) => {
            return Err(format!(
                "extra_json.{CONTENT_BLOCKS} must be a list, found {other}"
            ));
        }
    };
    let kind = match memory_type {
        "system" => MemoryKind::System,
        "human" => MemoryKind::Human,
        "ai" => {
            let tool_calls = match extra.get("tool_calls") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(calls)) => calls
                    .iter()
                    .enumerate()
                    .map(|(index, call)| decode_tool_call(index, call))
                    .collect::<std::result::Result<_, _>>()?,
                Some(other) => {
                    return Err(format!(
                        "extra_json.tool_calls must be a list, found {other}"
                    ));
                }
            };
            MemoryKind::Ai { tool_calls }
        }
        "tool" => {
            let is_error = match extra.get("is_error") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(flag)) => *flag,
                Some(other) => {
                    return Err(format!(
                        "extra_json.is_error must be a boolean, found {other}"
                    ));
                }
            };
            // The reference keeps no error text and reads a failed tool's
            // content as its error; we do the same when no text was stored.
            let error = is_error
                .then(|| string_field(&extra, TOOL_ERROR).unwrap_or_else(|| content.to_text()));
            MemoryKind::Tool {
                tool_call_id: string_field(&extra, "tool_call_id").unwrap_or_default(),
                tool_name: string_field(&extra, "tool_name").unwrap_or_default(),
                error,
            }
        }
        other => MemoryKind::Other {
            memory_type: other.to_owned(),
            extra,
        },
    };
    Ok((kind, content))
}

fn string_field(object: &Map<String, Value>, key: &str) -> Option<String> {
    object.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn decode_tool_call(index: usize, call: &Value) -> std::result::Result<ToolCall, String> {
    let Value::Object(call) = call else {
        return Err(format!(
            "extra_json.tool_calls[{index}] must be an object, found {call}"
        ));
    };
    // Arguments are a JSON string on the wire; an object written by another
    // program is kept as its JSON text.
    let arguments = match call.get("arguments") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    Ok(ToolCall {
        id: string_field(call, "id").unwrap_or_default(),
        name: string_field(call, "name").unwrap_or_default(),
        arguments,
    })
}

/// The fields of one stored row, as both SQL backends read and write them.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Debug)]
pub(crate) struct StoredRow {
    pub(crate) id: String,
    pub(crate) content: String,
    pub(crate) memory_type: String,
    pub(crate) status: String,
    pub(crate) metadata: String,
    pub(crate) extra_json: String,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    pub(crate) version: i64,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl StoredRow {
    /// The row that stores `item`.
    pub(crate) fn from_item(item: &MemoryItem) -> Self {
        StoredRow {
            id: item.id.clone(),
            content: item.content_text(),
            memory_type: item.memory_type().to_owned(),
            status: item.status.as_str().to_owned(),
            metadata: item.metadata.to_json(),
            extra_json: Value::Object(sorted_object(item.extra_json())).to_string(),
            created_at: item.created_at.clone(),
            updated_at: item.updated_at.clone(),
            version: item.version,
        }
    }

    /// The item stored in this row.
    pub(crate) fn into_item(self) -> Result<MemoryItem> {
        let id = self.id;
        let invalid = |reason: String| Error::InvalidRow {
            id: id.clone(),
            reason,
        };
        let metadata: MemoryMetadata = serde_json::from_str(&self.metadata)
            .map_err(|error| invalid(format!("metadata is not a metadata object: {error}")))?;
        let extra = match serde_json::from_str::<Value>(&self.extra_json) {
            Ok(Value::Object(extra)) => extra,
            Ok(Value::Null) => Map::new(),
            Ok(other) => return Err(invalid(format!("extra_json is not an object: {other}"))),
            Err(error) => return Err(invalid(format!("extra_json is not JSON: {error}"))),
        };
        let status = self
            .status
            .parse::<MemoryStatus>()
            .map_err(|error| invalid(error.to_string()))?;
        let (kind, content) =
            decode_kind(&self.memory_type, self.content, extra).map_err(invalid)?;
        Ok(MemoryItem {
            id,
            kind,
            content,
            status,
            metadata,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use exo_proto::{Content, Message, ToolCall};
    use serde_json::{Value, json};

    use super::{MemoryItem, MemoryKind, MemoryMetadata, MemoryScope, decode_kind};

    fn metadata() -> MemoryMetadata {
        MemoryScope::new()
            .with_user_id("u-1")
            .with_session_id("s-1")
            .to_metadata()
    }

    /// Converts `message` to an item, checks the stored columns against
    /// `expected_type` and `expected_extra`, decodes the columns again and
    /// checks the message comes back unchanged.
    fn check_round_trip(message: Message, expected_type: &str, expected_extra: Value) {
        let item = MemoryItem::from_message(&message, metadata());
        assert_eq!(item.memory_type(), expected_type);
        let extra = item.extra_json();
        assert_eq!(Value::Object(extra.clone()), expected_extra, "{message:?}");
        let (kind, content) = decode_kind(expected_type, item.content_text(), extra).unwrap();
        assert_eq!(kind, item.kind);
        assert_eq!(content, item.content);
        assert_eq!(item.to_message(), Some(message));
    }

    #[test]
    fn every_role_round_trips_through_the_stored_columns() {
        check_round_trip(Message::system("be brief"), "system", json!({}));
        check_round_trip(Message::user("hello"), "human", json!({}));
        check_round_trip(
            Message::assistant(
                "let me check",
                vec![ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city": "Paris"}"#.into(),
                }],
            ),
            "ai",
            json!({"tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}]}),
        );
        check_round_trip(
            Message::assistant("plain", vec![]),
            "ai",
            json!({"tool_calls": []}),
        );
        check_round_trip(
            Message::Tool {
                tool_call_id: "call_1".into(),
                tool_name: "get_weather".into(),
                content: "sunny".into(),
                error: None,
            },
            "tool",
            json!({"tool_call_id": "call_1", "tool_name": "get_weather", "is_error": false}),
        );
        check_round_trip(
            Message::Tool {
                tool_call_id: "call_2".into(),
                tool_name: "get_weather".into(),
                content: "".into(),
                error: Some("city not found".into()),
            },
            "tool",
            json!({"tool_call_id": "call_2", "tool_name": "get_weather", "is_error": true, "error": "city not found"}),
        );
        let blocks = vec![
            json!({"type": "text", "text": "what is "}),
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}),
            json!({"type": "text", "text": "this?"}),
        ];
        check_round_trip(
            Message::user(Content::Blocks(blocks.clone())),
            "human",
            json!({"content_blocks": blocks}),
        );
    }

    /// Decodes columns as the reference writes them and checks the kind.
    fn check_decode(memory_type: &str, content: &str, extra: Value, expected: MemoryKind) {
        let Value::Object(extra) = extra else {
            panic!("extra must be an object")
        };
        let (kind, decoded) = decode_kind(memory_type, content.into(), extra).unwrap();
        assert_eq!(kind, expected, "{memory_type} {content}");
        assert_eq!(decoded, Content::Text(content.into()));
    }

    #[test]
    fn reads_reference_rows_leniently() {
        check_decode("ai", "hi", json!({}), MemoryKind::Ai { tool_calls: vec![] });
        check_decode(
            "ai",
            "",
            json!({"tool_calls": [{"id": "c", "name": "n", "arguments": {"a": 1}}]}),
            MemoryKind::Ai {
                tool_calls: vec![ToolCall {
                    id: "c".into(),
                    name: "n".into(),
                    arguments: r#"{"a":1}"#.into(),
                }],
            },
        );
        check_decode(
            "tool",
            "boom",
            json!({"tool_call_id": "c", "tool_name": "n", "is_error": true}),
            MemoryKind::Tool {
                tool_call_id: "c".into(),
                tool_name: "n".into(),
                error: Some("boom".into()),
            },
        );
        check_decode(
            "tool",
            "",
            json!({}),
            MemoryKind::Tool {
                tool_call_id: String::new(),
                tool_name: String::new(),
                error: None,
            },
        );
        check_decode(
            "snapshot",
            "summary",
            json!({"snapshot_version": 2, "raw_item_count": 7}),
            MemoryKind::Other {
                memory_type: "snapshot".into(),
                extra: serde_json::from_value(json!({"snapshot_version": 2, "raw_item_count": 7}))
                    .unwrap(),
            },
        );
    }

    #[test]
    fn rejects_extra_json_of_the_wrong_shape() {
        for (memory_type, extra, fragment) in [
            (
                "ai",
                json!({"tool_calls": "x"}),
                "tool_calls must be a list",
            ),
            (
                "ai",
                json!({"tool_calls": [1]}),
                "tool_calls[0] must be an object",
            ),
            (
                "tool",
                json!({"is_error": "yes"}),
                "is_error must be a boolean",
            ),
            (
                "human",
                json!({"content_blocks": 3}),
                "content_blocks must be a list",
            ),
        ] {
            let Value::Object(extra) = extra else {
                unreachable!()
            };
            let error = decode_kind(memory_type, String::new(), extra).unwrap_err();
            assert!(error.contains(fragment), "{error}");
        }
    }

    #[test]
    fn metadata_is_stored_with_every_key_and_nulls() {
        let stored = metadata().to_json();
        assert_eq!(
            stored,
            r#"{"user_id":"u-1","session_id":"s-1","task_id":null,"agent_id":null,"extra":{}}"#
        );
        let back: MemoryMetadata = serde_json::from_str(r#"{"user_id":"u","extra":null}"#).unwrap();
        assert_eq!(back, MemoryScope::new().with_user_id("u").to_metadata());
    }

    #[test]
    fn a_scope_field_filters_only_when_set_and_not_empty() {
        let item_metadata = metadata();
        for (scope, matches) in [
            (MemoryScope::new(), true),
            (MemoryScope::new().with_user_id("u-1"), true),
            (MemoryScope::new().with_user_id(""), true),
            (MemoryScope::new().with_user_id("u-2"), false),
            (
                MemoryScope::new()
                    .with_user_id("u-1")
                    .with_session_id("s-1"),
                true,
            ),
            (MemoryScope::new().with_task_id("t"), false),
            (MemoryScope::new().with_agent_id("a"), false),
        ] {
            assert_eq!(scope.matches(&item_metadata), matches, "{scope:?}");
        }
    }

    #[test]
    fn new_items_have_uuid4_hex_ids_and_iso_timestamps() {
        let item = MemoryItem::human("hi", MemoryMetadata::default());
        assert_eq!(item.id.len(), 32);
        assert!(
            item.id
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert!(item.created_at.ends_with("+00:00"), "{}", item.created_at);
        assert_eq!(
            item.created_at.len(),
            "2024-01-01T00:00:00.000000+00:00".len()
        );
        assert_eq!(item.version, 1);
    }
}
