//! The worker's [`ModelGate`]: fleet-wide model rate limits kept in Redis
//! (`exo_broker::Limits`).
//!
//! A rule's name says which calls it covers: `provider:*` every model of a
//! provider, `provider:model` one model of one provider, a bare `model`
//! that model under any provider (an agent's model string without a
//! provider is OpenAI's, as `exo_models::split_model` reads it). A call is
//! reserved against every rule that covers it at once. When the worker
//! names a credential alias for the call's provider (`--credential-alias
//! openai=team-a`: the workers that use one API key), each rule counts
//! under `{rule}@{alias}`, so workers with different keys count apart and
//! workers with the same key count together.

use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;
use exo_agent::{GateDecision, GatePermit, ModelGate};
use exo_broker::{Admission, LimitRule, Limits};
use exo_observability::record;

/// Admits model calls under the worker's rules.
#[derive(Debug, Clone)]
pub(crate) struct RedisGate {
    limits: Limits,
    rules: Vec<LimitRule>,
    /// Provider → credential alias.
    aliases: BTreeMap<String, String>,
}

/// How closely a rule names a call: a provider's (1), a bare model's (2)
/// or one provider's model (3).
fn coverage(rule: &str, model: &str) -> Option<u8> {
    let (provider, name) = exo_models::split_model(model);
    let name = name.trim();
    if let Some(rule_provider) = rule.strip_suffix(":*") {
        return (rule_provider == provider).then_some(1);
    }
    match rule.split_once(':') {
        Some((rule_provider, rule_model)) => {
            (rule_provider == provider && rule_model == name).then_some(3)
        }
        None => (rule == name).then_some(2),
    }
}

impl RedisGate {
    pub(crate) fn new(
        limits: Limits,
        rules: Vec<LimitRule>,
        aliases: BTreeMap<String, String>,
    ) -> Self {
        RedisGate {
            limits,
            rules,
            aliases,
        }
    }

    fn rules_for(&self, model: &str, most_specific: bool) -> Vec<LimitRule> {
        covering(&self.rules, &self.aliases, model, most_specific)
    }
}

/// The rules that cover a call to `model`, most specific first, each under
/// the name it counts by (with the provider's credential alias); only those
/// of the most specific kind when `most_specific`.
fn covering(
    rules: &[LimitRule],
    aliases: &BTreeMap<String, String>,
    model: &str,
    most_specific: bool,
) -> Vec<LimitRule> {
    let mut covering: Vec<(u8, &LimitRule)> = rules
        .iter()
        .filter_map(|rule| coverage(&rule.name, model).map(|level| (level, rule)))
        .collect();
    covering.sort_by_key(|(level, _)| std::cmp::Reverse(*level));
    if most_specific && let Some(&(top, _)) = covering.first() {
        covering.retain(|(level, _)| *level == top);
    }
    let (provider, _) = exo_models::split_model(model);
    let alias = aliases.get(provider);
    covering
        .into_iter()
        .map(|(_, rule)| {
            let mut rule = rule.clone();
            if let Some(alias) = alias {
                rule.name = format!("{}@{alias}", rule.name);
            }
            rule
        })
        .collect()
}

#[async_trait]
impl ModelGate for RedisGate {
    async fn admit(&self, model: &str, tokens: u64) -> Result<GateDecision, String> {
        let rules = self.rules_for(model, false);
        if rules.is_empty() {
            return Ok(GateDecision::Open);
        }
        let reservation = format!("{:032x}", rand::random::<u128>());
        match self.limits.admit(&rules, &reservation, tokens).await {
            Ok(Admission::Granted) => {
                for rule in &rules {
                    record::model_call_admitted(&rule.name);
                }
                Ok(GateDecision::Granted(GatePermit {
                    model: model.to_owned(),
                    reservation,
                }))
            }
            Ok(Admission::Wait {
                retry_in,
                reason,
                rule,
            }) => {
                record::model_call_waited(&rule, reason.as_str());
                Ok(GateDecision::Wait {
                    retry_in,
                    rule,
                    reason: reason.as_str().to_owned(),
                })
            }
            Ok(Admission::Never {
                tokens: limit,
                rule,
            }) => Ok(GateDecision::Refused(format!(
                "the model call needs about {tokens} tokens, more than the {limit} tokens per minute of the rate-limit rule `{rule}`"
            ))),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn settle(&self, permit: &GatePermit, tokens: u64) {
        let rules = self.rules_for(&permit.model, false);
        // Off the run's path: the run goes on while the tokens are settled.
        let limits = self.limits.clone();
        let reservation = permit.reservation.clone();
        tokio::spawn(async move {
            if let Err(error) = limits.settle(&rules, &reservation, tokens).await {
                // The estimate stays counted until it leaves the window:
                // the fleet runs a little under its limit, never over it.
                tracing::warn!(%error, "could not settle a model call's tokens");
            }
        });
    }

    async fn back_off(&self, model: &str, retry_after: Duration) {
        // The provider limits the call's model (or, without a rule for it,
        // what the broadest rule covers): hold the most specific rules.
        for rule in self.rules_for(model, true) {
            tracing::warn!(
                rule = rule.name,
                ?retry_after,
                "the provider asked to slow down; holding the rule's calls fleet-wide"
            );
            if let Err(error) = self.limits.pause(&rule, retry_after).await {
                tracing::warn!(%error, rule = rule.name, "could not pause the rule");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_covers_a_provider_a_bare_model_or_one_providers_model() {
        // (rule, model, coverage)
        let cases = [
            ("openai:gpt-4o", "openai:gpt-4o", Some(3)),
            ("openai:gpt-4o", "gpt-4o", Some(3)),
            ("openai:gpt-4o", "openai:gpt-4o-mini", None),
            ("openai:gpt-4o", "azure:gpt-4o", None),
            ("claude-sonnet", "anthropic:claude-sonnet", Some(2)),
            ("gpt-4o", "gpt-4o", Some(2)),
            ("gpt-4o", "openai:gpt-4o-mini", None),
            ("openai:*", "openai:gpt-4o-mini", Some(1)),
            ("openai:*", "gpt-4o", Some(1)),
            ("openai:*", "anthropic:claude-sonnet", None),
            ("anthropic:*", "openai:gpt-4o", None),
        ];
        for (rule, model, expected) in cases {
            assert_eq!(coverage(rule, model), expected, "{rule} / {model}");
        }
    }

    #[test]
    fn a_call_counts_under_every_covering_rule_and_its_credential_alias() {
        let rule = |name: &str| LimitRule {
            name: name.to_owned(),
            requests: 1,
            tokens: 0,
            window: exo_broker::DEFAULT_WINDOW,
        };
        let rules = [
            rule("openai:*"),
            rule("gpt-4o"),
            rule("openai:gpt-4o"),
            rule("claude"),
        ];
        let aliases = BTreeMap::from([("openai".to_owned(), "team-a".to_owned())]);
        let names = |model: &str, most_specific: bool| -> Vec<String> {
            covering(&rules, &aliases, model, most_specific)
                .into_iter()
                .map(|rule| rule.name)
                .collect()
        };
        assert_eq!(
            names("openai:gpt-4o", false),
            ["openai:gpt-4o@team-a", "gpt-4o@team-a", "openai:*@team-a"]
        );
        assert_eq!(names("openai:gpt-4o", true), ["openai:gpt-4o@team-a"]);
        assert_eq!(names("openai:o3", true), ["openai:*@team-a"]);
        assert_eq!(names("anthropic:claude", false), ["claude"]);
        assert!(names("anthropic:haiku", false).is_empty());
    }
}
