//! The step journal of a task: what a run finished, so that a later attempt
//! (a retry, a reclaim, a resume after an approval) does not do it again.
//!
//! Records are JSON, one per list element of `{prefix}journal:{task_id}`
//! (an extension key; reference workers never read it). A run is
//! deterministic given the answers of its model calls and tools, so a
//! record is found again by its place in the run: the *scope* (the agent's
//! name, or the path to it inside a delegation), the number of the scope's
//! model call (1, 2, ...), and for a tool the call id the model gave in
//! that (replayed) answer.

use serde::{Deserialize, Serialize};

use crate::{ToolCall, ToolOutput, Usage};

/// One finished piece of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JournalRecord {
    /// A model call that returned its whole answer.
    Model(ModelRecord),
    /// A tool call that returned (a result or an error for the model).
    Tool(ToolRecord),
    /// A person's decision on a call to a tool that needs approval.
    Decision(DecisionRecord),
}

/// Where a record belongs in a run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StepKey {
    /// The agent's name, or `lead>call_id>member` inside a delegation.
    pub scope: String,
    /// The scope's model call, from 1.
    pub call: u32,
}

/// A model call's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Where it belongs.
    #[serde(flatten)]
    pub key: StepKey,
    /// The attempt that made the call.
    #[serde(default)]
    pub attempt: u32,
    /// The answer's text.
    #[serde(default)]
    pub text: String,
    /// The tool calls it asked for.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// What the provider reported it cost.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// A tool call's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolRecord {
    /// The model call that asked for it.
    #[serde(flatten)]
    pub key: StepKey,
    /// The attempt that ran it.
    #[serde(default)]
    pub attempt: u32,
    /// The model's id for the call.
    pub tool_call_id: String,
    /// The tool's name.
    #[serde(default)]
    pub tool_name: String,
    /// What it returned.
    #[serde(default)]
    pub output: ToolOutput,
    /// Its error text, for the model, when it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// How long it ran.
    #[serde(default)]
    pub duration_ms: f64,
}

/// A decision on a call that waited for approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The model call that asked for the tool.
    #[serde(flatten)]
    pub key: StepKey,
    /// The model's id for the call.
    pub tool_call_id: String,
    /// Approved (the tool runs) or denied (the model is told why).
    pub approved: bool,
    /// Who decided (`exo` when the wait passed its deadline).
    #[serde(default)]
    pub by: String,
    /// Why, for a denial.
    #[serde(default)]
    pub reason: Option<String>,
    /// Arguments (a JSON object as text) that replace the model's.
    #[serde(default)]
    pub arguments: Option<String>,
    /// When (Unix seconds).
    #[serde(default)]
    pub at: f64,
}

/// A call to a tool named in `hitl_tools` that waits for a person: kept in
/// the task hash (`approval`) while the task waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Where the call belongs.
    #[serde(flatten)]
    pub key: StepKey,
    /// The agent that called the tool.
    pub agent_name: String,
    /// The model's id for the call.
    pub tool_call_id: String,
    /// The tool's name.
    pub tool_name: String,
    /// The model's arguments (JSON text).
    #[serde(default)]
    pub arguments: String,
}

/// The records of earlier attempts, looked up by their place in the run.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    models: std::collections::HashMap<StepKey, ModelRecord>,
    tools: std::collections::HashMap<(StepKey, String), ToolRecord>,
    decisions: std::collections::HashMap<(StepKey, String), DecisionRecord>,
}

impl Journal {
    /// Reads stored records; ones that do not decode are skipped (the steps
    /// they stood for run again), and so is a repeat of a place already
    /// recorded (the first one counts).
    pub fn from_json<'a>(records: impl IntoIterator<Item = &'a str>) -> Self {
        let mut journal = Journal::default();
        for text in records {
            if let Ok(record) = serde_json::from_str::<JournalRecord>(text) {
                journal.insert(record);
            }
        }
        journal
    }

    /// Adds one record (a repeat of its place is ignored).
    pub fn insert(&mut self, record: JournalRecord) {
        match record {
            JournalRecord::Model(model) => {
                self.models.entry(model.key.clone()).or_insert(model);
            }
            JournalRecord::Tool(tool) => {
                self.tools
                    .entry((tool.key.clone(), tool.tool_call_id.clone()))
                    .or_insert(tool);
            }
            JournalRecord::Decision(decision) => {
                self.decisions
                    .entry((decision.key.clone(), decision.tool_call_id.clone()))
                    .or_insert(decision);
            }
        }
    }

    /// The answer of a model call, when an earlier attempt got it.
    pub fn model(&self, key: &StepKey) -> Option<&ModelRecord> {
        self.models.get(key)
    }

    /// The result of a tool call, when an earlier attempt ran it.
    pub fn tool(&self, key: &StepKey, tool_call_id: &str) -> Option<&ToolRecord> {
        self.tools.get(&(key.clone(), tool_call_id.to_owned()))
    }

    /// The decision on a call that waited for approval.
    pub fn decision(&self, key: &StepKey, tool_call_id: &str) -> Option<&DecisionRecord> {
        self.decisions.get(&(key.clone(), tool_call_id.to_owned()))
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty() && self.tools.is_empty() && self.decisions.is_empty()
    }

    /// How many model calls are recorded.
    pub fn model_calls(&self) -> usize {
        self.models.len()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn records_read_back_by_their_place() {
        let key = |call| StepKey {
            scope: "helper".into(),
            call,
        };
        let stored = [
            json!({"kind": "model", "scope": "helper", "call": 1, "attempt": 1, "text": "",
                   "tool_calls": [{"id": "c1", "name": "echo", "arguments": "{}"}]})
            .to_string(),
            json!({"kind": "tool", "scope": "helper", "call": 1, "tool_call_id": "c1",
                   "tool_name": "echo", "output": "hi"})
            .to_string(),
            // A repeat of the same place: the first one counts.
            json!({"kind": "tool", "scope": "helper", "call": 1, "tool_call_id": "c1",
                   "tool_name": "echo", "output": "again"})
            .to_string(),
            json!({"kind": "decision", "scope": "helper", "call": 2, "tool_call_id": "c2",
                   "approved": false, "by": "exo", "reason": "no decision in time", "at": 1.5})
            .to_string(),
            "not json".to_owned(),
            json!({"kind": "unknown"}).to_string(),
        ];
        let journal = Journal::from_json(stored.iter().map(String::as_str));
        assert_eq!(journal.model_calls(), 1);
        assert_eq!(journal.model(&key(1)).unwrap().tool_calls[0].id, "c1");
        assert!(journal.model(&key(2)).is_none());
        assert_eq!(
            journal.tool(&key(1), "c1").unwrap().output,
            ToolOutput::Text("hi".into())
        );
        assert!(journal.tool(&key(1), "c2").is_none());
        let decision = journal.decision(&key(2), "c2").unwrap();
        assert!(!decision.approved);
        assert_eq!(decision.reason.as_deref(), Some("no decision in time"));
    }
}
