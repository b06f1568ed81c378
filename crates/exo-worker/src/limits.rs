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
//!
//! What a call used is settled with the worker's next reservation, in the
//! same round trip, or after [`SETTLE_DELAY`] when none comes: a
//! rate-limited call costs one round trip, not two.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use exo_agent::{GateDecision, GatePermit, ModelGate};
use exo_broker::{Admission, LimitRule, Limits, Settlement};
use exo_observability::record;

/// Admits model calls under the worker's rules.
#[derive(Debug, Clone)]
pub(crate) struct RedisGate {
    limits: Limits,
    rules: Vec<LimitRule>,
    /// Provider → credential alias.
    aliases: BTreeMap<String, String>,
    /// Settlements not sent yet.
    pending: Arc<Mutex<Pending>>,
}

/// The longest a settlement waits for the next reservation to carry it.
/// Until it is sent the call's estimate counts, which is on the high side.
pub(crate) const SETTLE_DELAY: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
struct Pending {
    settlements: Vec<Settlement>,
    /// A task sends what is pending after [`SETTLE_DELAY`].
    flush_scheduled: bool,
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
            pending: Arc::default(),
        }
    }

    fn take_pending(&self) -> Vec<Settlement> {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::take(&mut pending.settlements)
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
        let settlements = self.take_pending();
        match self
            .limits
            .admit_settling(&rules, &reservation, tokens, &settlements)
            .await
        {
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
        let rules = self
            .rules_for(&permit.model, false)
            .into_iter()
            .map(|rule| rule.name)
            .collect();
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pending.settlements.push(Settlement {
            rules,
            reservation: permit.reservation.clone(),
            tokens,
        });
        if pending.flush_scheduled {
            return;
        }
        pending.flush_scheduled = true;
        drop(pending);
        // Off the run's path: sent with the next reservation, or by this
        // task when none comes soon.
        let limits = self.limits.clone();
        let shared = Arc::clone(&self.pending);
        tokio::spawn(async move {
            tokio::time::sleep(SETTLE_DELAY).await;
            let settlements = {
                let mut pending = shared
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                pending.flush_scheduled = false;
                std::mem::take(&mut pending.settlements)
            };
            if settlements.is_empty() {
                return;
            }
            if let Err(error) = limits.settle_all(&settlements).await {
                // The estimates stay counted until they leave the window:
                // the fleet runs a little under its limit, never over it.
                tracing::warn!(%error, "could not settle model calls' tokens");
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

    /// `FCALL` and `EVALSHA` calls the server has served.
    async fn evalsha_calls(client: &fred::prelude::Client) -> u64 {
        use fred::prelude::ClientLike;
        let info: String = client
            .info(Some(fred::types::InfoKind::CommandStats))
            .await
            .unwrap();
        info.lines()
            .filter_map(|line| {
                line.strip_prefix("cmdstat_evalsha:")
                    .or_else(|| line.strip_prefix("cmdstat_fcall:"))
            })
            .filter_map(|rest| rest.split(',').find_map(|part| part.strip_prefix("calls=")))
            .filter_map(|calls| calls.parse::<u64>().ok())
            .sum()
    }

    #[tokio::test]
    async fn a_limited_call_costs_one_round_trip_and_its_settlement_rides_on_the_next() {
        let redis = exo_testkit::TestRedis::dedicated();
        let config = exo_broker::BrokerConfig::new(redis.url())
            .with_keys(exo_proto::Keys::with_prefix(redis.prefix()));
        let broker = exo_broker::Broker::connect(config).await.unwrap();
        let rules = vec![
            LimitRule {
                name: "openai:*".into(),
                requests: 100,
                tokens: 10_000,
                window: exo_broker::DEFAULT_WINDOW,
            },
            LimitRule {
                name: "gpt-4o".into(),
                requests: 100,
                tokens: 0,
                window: exo_broker::DEFAULT_WINDOW,
            },
        ];
        let gate = RedisGate::new(broker.limits(), rules, BTreeMap::new());
        let client = {
            use fred::prelude::ClientLike;
            let client = fred::prelude::Builder::from_config(
                fred::prelude::Config::from_url(redis.url()).unwrap(),
            )
            .build()
            .unwrap();
            client.init().await.unwrap();
            client
        };
        // The first call of a script may load it first.
        broker
            .limits()
            .settle(&gate.rules, "warm-up", 0)
            .await
            .unwrap();
        let before = evalsha_calls(&client).await;
        // Five calls one after another, each estimated at 1,000 tokens and
        // using 100.
        for _ in 0..5 {
            let GateDecision::Granted(permit) = gate.admit("openai:gpt-4o", 1000).await.unwrap()
            else {
                panic!("not granted");
            };
            gate.settle(&permit, 100).await;
        }
        let during = evalsha_calls(&client).await - before;
        assert_eq!(during, 5, "one round trip per call");
        // The last settlement goes alone once nothing carries it.
        tokio::time::sleep(SETTLE_DELAY * 3).await;
        assert_eq!(evalsha_calls(&client).await - before, 6);
        // All five count 100 tokens: 500 used, 9,500 free for one call.
        let values: Vec<String> = fred::prelude::HashesInterface::hvals(
            &client,
            broker.keys().limit("openai:*") + ":tokens",
        )
        .await
        .unwrap();
        assert_eq!(values, ["100"; 5]);
        assert!(matches!(
            gate.admit("openai:gpt-4o-mini", 9_500).await.unwrap(),
            GateDecision::Granted(_)
        ));
    }
}
