//! The scripted provider: deterministic answers for demos, examples,
//! benchmarks and tests, chosen in code or by model string. The model
//! strings and the script format are documented on [`ScriptedProvider`].

use std::{collections::VecDeque, path::Path, sync::Arc, time::Duration};

use async_trait::async_trait;
use exo_proto::{Message, Usage};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    provider::{
        ChunkStream, FinishReason, ModelProvider, ModelRequest, StreamChunk, ToolCallDelta,
    },
};

/// A scripted tool call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedToolCall {
    /// The call id.
    pub id: String,
    /// The tool name.
    pub name: String,
    /// The arguments JSON, in the fragments it streams in.
    #[serde(default, deserialize_with = "fragments")]
    pub arguments: Vec<String>,
}

impl ScriptedToolCall {
    /// A call whose arguments stream in these fragments.
    pub fn new(id: &str, name: &str, fragments: &[&str]) -> Self {
        ScriptedToolCall {
            id: id.to_owned(),
            name: name.to_owned(),
            arguments: fragments.iter().map(|&piece| piece.to_owned()).collect(),
        }
    }
}

/// One scripted model answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    /// Answer text, one chunk per string.
    #[serde(default, deserialize_with = "fragments")]
    pub text: Vec<String>,
    /// Reasoning text, one chunk per string, streamed before the text.
    #[serde(default, deserialize_with = "fragments")]
    pub reasoning: Vec<String>,
    /// Tool calls, streamed after the text.
    #[serde(default)]
    pub tool_calls: Vec<ScriptedToolCall>,
    /// Usage reported at the end.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Wait before the first chunk, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// Wait between chunks, in milliseconds.
    #[serde(default)]
    pub chunk_delay_ms: u64,
    /// Fail with this message after the turn's chunks.
    #[serde(default)]
    pub error: Option<String>,
}

impl Turn {
    /// A turn that answers these text chunks.
    pub fn text(chunks: &[&str]) -> Self {
        Turn {
            text: chunks.iter().map(|&chunk| chunk.to_owned()).collect(),
            ..Turn::default()
        }
    }

    /// A turn that fails with `message` before any chunk.
    pub fn error(message: &str) -> Self {
        Turn {
            error: Some(message.to_owned()),
            ..Turn::default()
        }
    }

    /// The same turn with a tool call added.
    pub fn with_tool_call(mut self, id: &str, name: &str, fragments: &[&str]) -> Self {
        self.tool_calls
            .push(ScriptedToolCall::new(id, name, fragments));
        self
    }

    /// The same turn reporting this usage.
    pub fn with_usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.usage = Some(Usage {
            input_tokens,
            output_tokens,
            total_tokens: input_tokens + output_tokens,
        });
        self
    }

    /// The same turn, waiting `ms` milliseconds before its first chunk.
    pub fn with_delay_ms(mut self, ms: u64) -> Self {
        self.delay_ms = ms;
        self
    }

    /// The same turn, waiting `ms` milliseconds between chunks.
    pub fn with_chunk_delay_ms(mut self, ms: u64) -> Self {
        self.chunk_delay_ms = ms;
        self
    }
}

/// A list of turns, one per model call of a run.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Script {
    /// The turns in order.
    pub turns: Vec<Turn>,
}

impl<'de> Deserialize<'de> for Script {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wrapped {
            #[serde(default)]
            turns: Vec<Turn>,
        }
        Ok(match Value::deserialize(deserializer)? {
            Value::Array(turns) => Script {
                turns: serde_json::from_value(Value::Array(turns))
                    .map_err(serde::de::Error::custom)?,
            },
            object @ Value::Object(_) => Script {
                turns: serde_json::from_value::<Wrapped>(object)
                    .map_err(serde::de::Error::custom)?
                    .turns,
            },
            other => {
                return Err(serde::de::Error::custom(format!(
                    "a script is an object with `turns` or a list of turns, found {other}"
                )));
            }
        })
    }
}

impl Script {
    /// A script of these turns.
    pub fn new(turns: Vec<Turn>) -> Self {
        Script { turns }
    }

    /// Parses a JSON script (`{"turns": [...]}` or `[...]`).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|error| Error::Config(format!("invalid scripted model script: {error}")))
    }

    /// Reads a JSON script file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            Error::Config(format!(
                "cannot read scripted model script {}: {error}",
                path.display()
            ))
        })?;
        Script::from_json(&text)
    }

    /// The reference fixture's two turns (see [`ScriptedProvider`]).
    pub fn weather() -> Self {
        Script::new(vec![
            Turn::text(&["Let me check. "])
                .with_tool_call("call_1", "get_weather", &["{\"city\": ", "\"Paris\"}"])
                .with_usage(10, 5),
            Turn::text(&["It is sunny", " in Paris."]).with_usage(20, 6),
        ])
    }
}

fn fragments<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => vec![text],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                other => Err(serde::de::Error::custom(format!(
                    "expected a string fragment, found {other}"
                ))),
            })
            .collect::<std::result::Result<_, _>>()?,
        Some(object @ Value::Object(_)) => vec![object.to_string()],
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "expected a string, a list of strings or an object, found {other}"
            )));
        }
    })
}

#[derive(Debug, Clone)]
enum Behaviour {
    Script(Arc<Script>),
    Echo,
}

/// A provider that replays a [`Script`] (or echoes the user).
///
/// # Model strings
///
/// `scripted:<spec>` (or `mock:<spec>`), where `<spec>` is one of:
///
/// | spec | behaviour |
/// |---|---|
/// | `noop` (or empty) | answers empty text |
/// | `echo` | answers the last user message's text, streamed in up to 10 chunks |
/// | `weather` | the reference fixture: turn 1 says `Let me check. ` and calls `get_weather` (id `call_1`, arguments in the fragments `{"city": ` and `"Paris"}`), usage 10/5/15; turn 2 says `It is sunny` + ` in Paris.`, usage 20/6/26 |
/// | `fail` | fails with `provider down` |
/// | `fail:<message>` | fails with `<message>` |
/// | `slow:<ms>` | waits `<ms>` milliseconds, then answers `Done after <ms> ms.` |
/// | `{...}` or `[...]` | an inline JSON script (below) |
/// | `file=<path>`, or a path starting with `/` or `.`, or ending in `.json` | a JSON script file |
///
/// # Script format
///
/// A script is `{"turns": [turn, ...]}`, or just the array of turns. A turn
/// is an object; every key is optional:
///
/// | key | type | meaning |
/// |---|---|---|
/// | `text` | string or list of strings | answer text, one chunk per string |
/// | `reasoning` | string or list of strings | reasoning text, streamed first |
/// | `tool_calls` | list of `{"id", "name", "arguments"}` | tool calls; `arguments` is a string, a list of string fragments streamed one by one, or a JSON object |
/// | `usage` | `{"input_tokens", "output_tokens", "total_tokens"}` | reported at the end of the turn |
/// | `delay_ms` | number | wait before the first chunk |
/// | `chunk_delay_ms` | number | wait between chunks |
/// | `error` | string | fail with this message after the turn's chunks |
///
/// For example
/// `scripted:{"turns":[{"text":["a","b"],"tool_calls":[{"id":"c1","name":"panic","arguments":["{}"]}]},{"text":["done"]}]}`.
///
/// # Which turn answers
///
/// Turn N answers the Nth model call of one agent run. The provider keeps
/// no state: it counts the assistant messages after the last user message
/// of the request, so one instance can serve many concurrent runs. When the
/// turns run out it answers empty text with no tool calls.
#[derive(Debug, Clone)]
pub struct ScriptedProvider {
    model: String,
    behaviour: Behaviour,
}

impl ScriptedProvider {
    /// A provider that replays `script`.
    pub fn new(script: Script) -> Self {
        ScriptedProvider {
            model: "script".to_owned(),
            behaviour: Behaviour::Script(Arc::new(script)),
        }
    }

    /// A provider that answers the last user message's text.
    pub fn echo() -> Self {
        ScriptedProvider {
            model: "echo".to_owned(),
            behaviour: Behaviour::Echo,
        }
    }

    /// The provider a model string's part after `scripted:` names (see
    /// [`ScriptedProvider`]).
    pub fn from_spec(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let named = |model: &str, script: Script| ScriptedProvider {
            model: model.to_owned(),
            behaviour: Behaviour::Script(Arc::new(script)),
        };
        if spec.starts_with('{') || spec.starts_with('[') {
            return Ok(named("inline", Script::from_json(spec)?));
        }
        if let Some(path) = spec.strip_prefix("file=") {
            return Ok(named(path, Script::from_file(Path::new(path))?));
        }
        if spec.starts_with('/') || spec.starts_with('.') || spec.ends_with(".json") {
            return Ok(named(spec, Script::from_file(Path::new(spec))?));
        }
        if let Some(ms) = spec.strip_prefix("slow:") {
            let ms: u64 = ms.trim().parse().map_err(|_| {
                Error::Config(format!(
                    "`scripted:slow:{ms}` needs a whole number of milliseconds"
                ))
            })?;
            let turn = Turn::text(&[&format!("Done after {ms} ms.")])
                .with_delay_ms(ms)
                .with_usage(1, 4);
            return Ok(named(spec, Script::new(vec![turn])));
        }
        if let Some(message) = spec.strip_prefix("fail:") {
            return Ok(named("fail", Script::new(vec![Turn::error(message)])));
        }
        match spec {
            "" | "noop" => Ok(named("noop", Script::default())),
            "echo" => Ok(ScriptedProvider::echo()),
            "weather" => Ok(named("weather", Script::weather())),
            "fail" => Ok(named(
                "fail",
                Script::new(vec![Turn::error("provider down")]),
            )),
            other => Err(Error::Config(format!(
                "unknown scripted model `{other}`: expected noop, echo, weather, fail, \
                 fail:<message>, slow:<ms>, an inline JSON script, or a script file path"
            ))),
        }
    }

    fn turn_for(&self, request: &ModelRequest) -> Turn {
        match &self.behaviour {
            Behaviour::Script(script) => script
                .turns
                .get(step_index(&request.messages))
                .cloned()
                .unwrap_or_default(),
            Behaviour::Echo => echo_turn(&request.messages),
        }
    }
}

/// The 0-based model call of the current run: the number of assistant
/// messages after the last user message.
fn step_index(messages: &[Message]) -> usize {
    messages
        .iter()
        .rev()
        .take_while(|message| !matches!(message, Message::User { .. }))
        .filter(|message| matches!(message, Message::Assistant { .. }))
        .count()
}

fn echo_turn(messages: &[Message]) -> Turn {
    let text = messages
        .iter()
        .rev()
        .find_map(|message| match message {
            Message::User { content } => Some(content.to_text()),
            _ => None,
        })
        .unwrap_or_default();
    let words = text.split_whitespace().count() as u64;
    let mut turn = Turn {
        text: split_even(&text, 10),
        ..Turn::default()
    };
    turn = turn.with_usage(words, words);
    turn
}

/// Splits `text` into `pieces` parts of nearly equal length (fewer when it
/// is shorter than that), at char boundaries.
fn split_even(text: &str, pieces: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let count = pieces.min(chars.len());
    if count == 0 {
        return Vec::new();
    }
    let (base, extra) = (chars.len() / count, chars.len() % count);
    let mut parts = Vec::with_capacity(count);
    let mut start = 0;
    for index in 0..count {
        let length = base + usize::from(index < extra);
        parts.push(chars[start..start + length].iter().collect());
        start += length;
    }
    parts
}

enum Step {
    Wait(Duration),
    Chunk(StreamChunk),
    Fail(String),
}

fn steps(turn: Turn) -> VecDeque<Step> {
    let mut steps = VecDeque::new();
    if turn.delay_ms > 0 {
        steps.push_back(Step::Wait(Duration::from_millis(turn.delay_ms)));
    }
    let gap = Duration::from_millis(turn.chunk_delay_ms);
    let mut chunks = Vec::new();
    for reasoning in turn.reasoning {
        chunks.push(StreamChunk {
            reasoning: Some(reasoning),
            ..StreamChunk::default()
        });
    }
    for text in turn.text {
        chunks.push(StreamChunk::text(text));
    }
    let has_calls = !turn.tool_calls.is_empty();
    for (index, call) in turn.tool_calls.into_iter().enumerate() {
        let index = index as u32;
        let mut fragments = call.arguments.into_iter();
        chunks.push(StreamChunk {
            tool_calls: vec![ToolCallDelta {
                index,
                id: Some(call.id),
                name: Some(call.name),
                arguments: fragments.next().unwrap_or_default(),
            }],
            ..StreamChunk::default()
        });
        for fragment in fragments {
            chunks.push(StreamChunk {
                tool_calls: vec![ToolCallDelta {
                    index,
                    id: None,
                    name: None,
                    arguments: fragment,
                }],
                ..StreamChunk::default()
            });
        }
    }
    for (position, chunk) in chunks.into_iter().enumerate() {
        if position > 0 && !gap.is_zero() {
            steps.push_back(Step::Wait(gap));
        }
        steps.push_back(Step::Chunk(chunk));
    }
    match turn.error {
        Some(message) => steps.push_back(Step::Fail(message)),
        None => steps.push_back(Step::Chunk(StreamChunk {
            finish_reason: Some(if has_calls {
                FinishReason::ToolCalls
            } else {
                FinishReason::Stop
            }),
            usage: turn.usage,
            ..StreamChunk::default()
        })),
    }
    steps
}

#[async_trait]
impl ModelProvider for ScriptedProvider {
    fn name(&self) -> &str {
        "scripted"
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn stream(&self, request: &ModelRequest) -> Result<ChunkStream> {
        let steps = steps(self.turn_for(request));
        Ok(Box::pin(futures::stream::unfold(
            steps,
            |mut steps| async move {
                loop {
                    match steps.pop_front()? {
                        Step::Wait(duration) => tokio::time::sleep(duration).await,
                        Step::Chunk(chunk) => return Some((Ok(chunk), steps)),
                        Step::Fail(message) => {
                            steps.clear();
                            return Some((Err(Error::Scripted(message)), steps));
                        }
                    }
                }
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use exo_proto::Message;

    use super::*;

    #[test]
    fn the_step_is_counted_from_the_last_user_message() {
        let history = vec![
            Message::system("s"),
            Message::user("old"),
            Message::assistant("a", vec![]),
            Message::user("new"),
        ];
        assert_eq!(step_index(&history), 0);
        let mut later = history.clone();
        later.push(Message::assistant("b", vec![]));
        later.push(Message::Tool {
            tool_call_id: "c".into(),
            tool_name: "t".into(),
            content: "r".into(),
            error: None,
        });
        assert_eq!(step_index(&later), 1);
    }

    #[test]
    fn text_splits_into_at_most_ten_even_pieces() {
        assert_eq!(split_even("", 10), Vec::<String>::new());
        assert_eq!(split_even("abc", 10), vec!["a", "b", "c"]);
        let pieces = split_even("abcdefghijklmnopqrstuvw", 10);
        assert_eq!(pieces.len(), 10);
        assert_eq!(pieces.concat(), "abcdefghijklmnopqrstuvw");
        assert_eq!(split_even("héllo wörld", 10).concat(), "héllo wörld");
    }

    #[test]
    fn scripts_parse_in_both_shapes_and_reject_unknown_keys() {
        let wrapped = Script::from_json(
            r#"{"turns":[{"text":["a","b"],"tool_calls":[{"id":"c1","name":"panic","arguments":["{}"]}]},{"text":"done"}]}"#,
        )
        .unwrap();
        let bare = Script::from_json(
            r#"[{"text":["a","b"],"tool_calls":[{"id":"c1","name":"panic","arguments":{}}]},{"text":["done"]}]"#,
        )
        .unwrap();
        assert_eq!(wrapped, bare);
        assert_eq!(wrapped.turns[1].text, vec!["done"]);
        let error = Script::from_json(r#"{"turns":[{"txt":"a"}]}"#).unwrap_err();
        assert!(
            error.to_string().contains("invalid scripted model script"),
            "{error}"
        );
    }
}
