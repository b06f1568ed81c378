//! Conversation history as it travels in `TaskPayload::messages`.

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};
use serde_json::Value;

/// Message content: a plain string, or a list of content blocks
/// (`{"type": "text", "text": ...}`, images, and so on) kept as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Provider-style content blocks.
    Blocks(Vec<Value>),
}

impl Default for Content {
    fn default() -> Self {
        Content::Text(String::new())
    }
}

impl From<&str> for Content {
    fn from(text: &str) -> Self {
        Content::Text(text.to_owned())
    }
}

impl From<String> for Content {
    fn from(text: String) -> Self {
        Content::Text(text)
    }
}

impl Content {
    /// The text of the content: the string itself, or the `text` of every
    /// text block joined together.
    pub fn to_text(&self) -> String {
        match self {
            Content::Text(text) => text.clone(),
            Content::Blocks(blocks) => blocks
                .iter()
                .filter_map(|block| block.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        }
    }

    /// True for an empty string or an empty block list.
    pub fn is_empty(&self) -> bool {
        match self {
            Content::Text(text) => text.is_empty(),
            Content::Blocks(blocks) => blocks.is_empty(),
        }
    }
}

/// A tool call requested by the model. `arguments` is a JSON string, exactly
/// as the model produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's call id, echoed back in the tool result.
    pub id: String,
    /// The tool name.
    pub name: String,
    /// The arguments as a JSON string (possibly invalid JSON from the model).
    #[serde(default)]
    pub arguments: String,
}

/// One message of conversation history, dispatched on `role`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    /// Instructions for the model.
    System {
        /// The instructions.
        content: String,
    },
    /// What the user said.
    User {
        /// The user's words.
        content: Content,
    },
    /// What the model said, with the tool calls it asked for.
    Assistant {
        /// The model's text.
        content: Content,
        /// Tool calls, in the order the model produced them.
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call.
    Tool {
        /// The id of the call this answers.
        tool_call_id: String,
        /// The tool that ran.
        tool_name: String,
        /// What the tool returned.
        content: Content,
        /// The error text when the tool failed.
        error: Option<String>,
    },
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message::System {
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<Content>) -> Self {
        Message::User {
            content: content.into(),
        }
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<Content>, tool_calls: Vec<ToolCall>) -> Self {
        Message::Assistant {
            content: content.into(),
            tool_calls,
        }
    }

    /// The role name as it appears on the wire.
    pub fn role(&self) -> &'static str {
        match self {
            Message::System { .. } => "system",
            Message::User { .. } => "user",
            Message::Assistant { .. } => "assistant",
            Message::Tool { .. } => "tool",
        }
    }
}

#[derive(Deserialize)]
struct SystemWire {
    #[serde(default)]
    content: Content,
}

#[derive(Deserialize)]
struct UserWire {
    #[serde(default)]
    content: Content,
}

#[derive(Deserialize)]
struct AssistantWire {
    #[serde(default, deserialize_with = "null_as_default")]
    content: Content,
    #[serde(default, deserialize_with = "null_as_default")]
    tool_calls: Vec<ToolCall>,
}

#[derive(Deserialize)]
struct ToolWire {
    tool_call_id: String,
    #[serde(default)]
    tool_name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    content: Content,
    #[serde(default)]
    error: Option<String>,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let role = match value.get("role") {
            Some(Value::String(role)) => role.clone(),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "field `role` must be a string, found {other}"
                )));
            }
            None => return Err(D::Error::custom("missing field `role`")),
        };
        let parse = |error: serde_json::Error| D::Error::custom(format!("{role} message: {error}"));
        match role.as_str() {
            "system" => {
                let wire: SystemWire = serde_json::from_value(value).map_err(parse)?;
                Ok(Message::System {
                    content: wire.content.to_text(),
                })
            }
            "user" => {
                let wire: UserWire = serde_json::from_value(value).map_err(parse)?;
                Ok(Message::User {
                    content: wire.content,
                })
            }
            "assistant" => {
                let wire: AssistantWire = serde_json::from_value(value).map_err(parse)?;
                Ok(Message::Assistant {
                    content: wire.content,
                    tool_calls: wire.tool_calls,
                })
            }
            "tool" => {
                let wire: ToolWire = serde_json::from_value(value).map_err(parse)?;
                Ok(Message::Tool {
                    tool_call_id: wire.tool_call_id,
                    tool_name: wire.tool_name,
                    content: wire.content,
                    error: wire.error,
                })
            }
            other => Err(D::Error::custom(format!(
                "unknown message role `{other}` (expected system, user, assistant or tool)"
            ))),
        }
    }
}
