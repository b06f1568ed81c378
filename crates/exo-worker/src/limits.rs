//! The worker's [`ModelGate`]: fleet-wide model rate limits kept in Redis
//! (`exo_broker::Limits`), one rule per model.

use std::time::Duration;

use async_trait::async_trait;
use exo_agent::{GateDecision, GatePermit, ModelGate};
use exo_broker::{Admission, LimitRule, Limits};
use exo_observability::record;

/// Admits model calls under the worker's rules.
#[derive(Debug, Clone)]
pub(crate) struct RedisGate {
    limits: Limits,
    rules: Vec<LimitRule>,
}

impl RedisGate {
    pub(crate) fn new(limits: Limits, rules: Vec<LimitRule>) -> Self {
        RedisGate { limits, rules }
    }

    fn rule_for(&self, model: &str) -> Option<&LimitRule> {
        rule_for(&self.rules, model)
    }

    fn rule_named(&self, name: &str) -> Option<&LimitRule> {
        self.rules.iter().find(|rule| rule.name == name)
    }
}

/// The rule for an agent's model string: one named exactly so, or named as
/// the model after its provider prefix (`gpt-4o` for `openai:gpt-4o`).
fn rule_for<'a>(rules: &'a [LimitRule], model: &str) -> Option<&'a LimitRule> {
    let bare = model.split_once(':').map(|(_, name)| name);
    rules
        .iter()
        .find(|rule| rule.name == model)
        .or_else(|| bare.and_then(|bare| rules.iter().find(|rule| rule.name == bare)))
}

#[async_trait]
impl ModelGate for RedisGate {
    async fn admit(&self, model: &str, tokens: u64) -> Result<GateDecision, String> {
        let Some(rule) = self.rule_for(model) else {
            return Ok(GateDecision::Open);
        };
        let reservation = format!("{:032x}", rand::random::<u128>());
        match self.limits.admit(rule, &reservation, tokens).await {
            Ok(Admission::Granted) => {
                record::model_call_admitted(&rule.name);
                Ok(GateDecision::Granted(GatePermit {
                    rule: rule.name.clone(),
                    reservation,
                }))
            }
            Ok(Admission::Wait { retry_in, reason }) => {
                record::model_call_waited(&rule.name, reason.as_str());
                Ok(GateDecision::Wait {
                    retry_in,
                    rule: rule.name.clone(),
                    reason: reason.as_str().to_owned(),
                })
            }
            Ok(Admission::Never { tokens: limit }) => Ok(GateDecision::Refused(format!(
                "the model call needs about {tokens} tokens, more than the {limit} tokens per minute of the rate-limit rule `{}`",
                rule.name
            ))),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn settle(&self, permit: &GatePermit, tokens: u64) {
        let Some(rule) = self.rule_named(&permit.rule).cloned() else {
            return;
        };
        // Off the run's path: the run goes on while the tokens are settled.
        let limits = self.limits.clone();
        let reservation = permit.reservation.clone();
        tokio::spawn(async move {
            if let Err(error) = limits.settle(&rule, &reservation, tokens).await {
                // The estimate stays counted until it leaves the window:
                // the fleet runs a little under its limit, never over it.
                tracing::warn!(%error, rule = rule.name, "could not settle a model call's tokens");
            }
        });
    }

    async fn back_off(&self, model: &str, retry_after: Duration) {
        let Some(rule) = self.rule_for(model) else {
            return;
        };
        tracing::warn!(
            rule = rule.name,
            ?retry_after,
            "the provider asked to slow down; holding the rule's calls fleet-wide"
        );
        if let Err(error) = self.limits.pause(rule, retry_after).await {
            tracing::warn!(%error, rule = rule.name, "could not pause the rule");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_the_model_or_its_bare_name() {
        let rule = |name: &str| LimitRule {
            name: name.to_owned(),
            requests: 1,
            tokens: 0,
            window: exo_broker::DEFAULT_WINDOW,
        };
        let rules = [rule("openai:gpt-4o"), rule("claude-sonnet")];
        let matched = |model: &str| rule_for(&rules, model).map(|rule| rule.name.clone());
        assert_eq!(matched("openai:gpt-4o").as_deref(), Some("openai:gpt-4o"));
        assert_eq!(
            matched("anthropic:claude-sonnet").as_deref(),
            Some("claude-sonnet")
        );
        assert_eq!(matched("gpt-4o"), None);
        assert_eq!(matched("openai:gpt-4o-mini"), None);
    }
}
