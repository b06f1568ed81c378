//! Fleet-wide model rate limits (`admit.lua`) on a real Redis: requests and
//! tokens per sliding window, settling estimates, a provider's back-off,
//! and many callers at once.

use std::time::Duration;

use exo_broker::{Admission, LimitReason, LimitRule};
use exo_testkit::TestRedis;

use crate::common::{broker, new_id, raw};

fn rule(name: &str, requests: u32, tokens: u64, window_ms: u64) -> LimitRule {
    LimitRule {
        name: name.to_owned(),
        requests,
        tokens,
        window: Duration::from_millis(window_ms),
    }
}

fn wait_of(admission: &Admission) -> (Duration, LimitReason) {
    match admission {
        Admission::Wait {
            retry_in, reason, ..
        } => (*retry_in, *reason),
        other => panic!("expected a wait, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_per_window_then_room_again_when_the_oldest_leaves() {
    let redis = TestRedis::new();
    let limits = broker(&redis).await.limits();
    let rule = rule("openai:gpt-4o-mini", 3, 0, 1500);
    for _ in 0..3 {
        assert_eq!(
            limits
                .admit(std::slice::from_ref(&rule), &new_id(), 10)
                .await
                .unwrap(),
            Admission::Granted
        );
    }
    let (retry_in, reason) = wait_of(
        &limits
            .admit(std::slice::from_ref(&rule), &new_id(), 10)
            .await
            .unwrap(),
    );
    assert_eq!(reason, LimitReason::Requests);
    assert!(
        retry_in > Duration::from_millis(1000) && retry_in <= Duration::from_millis(1502),
        "{retry_in:?}"
    );
    tokio::time::sleep(retry_in + Duration::from_millis(20)).await;
    assert_eq!(
        limits
            .admit(std::slice::from_ref(&rule), &new_id(), 10)
            .await
            .unwrap(),
        Admission::Granted,
        "the window slid"
    );
}

#[tokio::test]
async fn tokens_per_window_with_estimates_settled_to_what_was_used() {
    let redis = TestRedis::new();
    let limits = broker(&redis).await.limits();
    let rule = rule("claude", 0, 1000, 60_000);
    let first = new_id();
    assert_eq!(
        limits
            .admit(std::slice::from_ref(&rule), &first, 600)
            .await
            .unwrap(),
        Admission::Granted
    );
    let (retry_in, reason) = wait_of(
        &limits
            .admit(std::slice::from_ref(&rule), &new_id(), 500)
            .await
            .unwrap(),
    );
    assert_eq!(reason, LimitReason::Tokens);
    assert!(retry_in > Duration::from_secs(59), "{retry_in:?}");
    // The call used less than its estimate: the rest is free again.
    assert_eq!(
        limits
            .settle(std::slice::from_ref(&rule), &first, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        limits
            .admit(std::slice::from_ref(&rule), &new_id(), 500)
            .await
            .unwrap(),
        Admission::Granted
    );
    // 100 + 500 used: 400 left.
    assert_eq!(
        limits
            .admit(std::slice::from_ref(&rule), &new_id(), 400)
            .await
            .unwrap(),
        Admission::Granted
    );
    assert_eq!(
        limits
            .admit(std::slice::from_ref(&rule), &new_id(), 1001)
            .await
            .unwrap(),
        Admission::Never {
            tokens: 1000,
            rule: "claude".into()
        }
    );
    assert_eq!(
        limits
            .settle(std::slice::from_ref(&rule), "no-such-reservation", 5)
            .await
            .unwrap(),
        0,
        "an unknown reservation is not created by a settle"
    );
}

#[tokio::test]
async fn a_pause_holds_every_call_and_a_shorter_one_does_not_shorten_it() {
    let redis = TestRedis::new();
    let limits = broker(&redis).await.limits();
    let rule = rule("gpt", 100, 0, 60_000);
    limits
        .pause(&rule, Duration::from_millis(800))
        .await
        .unwrap();
    limits
        .pause(&rule, Duration::from_millis(10))
        .await
        .unwrap();
    let (retry_in, reason) = wait_of(
        &limits
            .admit(std::slice::from_ref(&rule), &new_id(), 1)
            .await
            .unwrap(),
    );
    assert_eq!(reason, LimitReason::Paused);
    assert!(retry_in > Duration::from_millis(500), "{retry_in:?}");
    tokio::time::sleep(retry_in + Duration::from_millis(20)).await;
    assert_eq!(
        limits
            .admit(std::slice::from_ref(&rule), &new_id(), 1)
            .await
            .unwrap(),
        Admission::Granted
    );
}

#[tokio::test]
async fn many_callers_at_once_get_exactly_the_limit() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let rule = rule("shared", 10, 0, 60_000);
    let calls = (0..50).map(|_| {
        let limits = broker.limits();
        let rule = rule.clone();
        tokio::spawn(async move {
            limits
                .admit(std::slice::from_ref(&rule), &new_id(), 1)
                .await
                .unwrap()
        })
    });
    let mut granted = 0;
    for call in calls {
        if call.await.unwrap() == Admission::Granted {
            granted += 1;
        }
    }
    assert_eq!(granted, 10);
}

#[tokio::test]
async fn keys_expire_and_bad_rule_names_are_refused() {
    let redis = TestRedis::new();
    let broker = broker(&redis).await;
    let limits = broker.limits();
    let rule = rule("expiring", 5, 100, 2_000);
    assert_eq!(
        limits
            .admit(std::slice::from_ref(&rule), &new_id(), 1)
            .await
            .unwrap(),
        Admission::Granted
    );
    let client = raw(&redis).await;
    for key in [
        broker.keys().limit("expiring"),
        format!("{}:tokens", broker.keys().limit("expiring")),
    ] {
        let ttl: i64 = fred::interfaces::KeysInterface::pttl(&client, &key)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 4_000, "{key}: {ttl}");
    }
    for name in [
        "",
        "with space",
        &"x".repeat(201),
        "gpt:tokens",
        "gpt:paused",
    ] {
        let error = limits
            .admit(&[self::rule(name, 1, 0, 1000)], &new_id(), 1)
            .await
            .expect_err("a bad rule name");
        assert!(
            error.to_string().contains("invalid rate-limit rule name"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_call_under_several_rules_is_reserved_in_all_or_in_none() {
    let redis = TestRedis::new();
    let limits = broker(&redis).await.limits();
    // A provider-wide rule of 3 calls and two model rules of 2 calls each.
    let provider = rule("openai:*", 3, 0, 60_000);
    let mini = rule("openai:gpt-4o-mini", 2, 0, 60_000);
    let large = rule("openai:gpt-4o", 2, 1000, 60_000);
    let mini_call = [mini.clone(), provider.clone()];
    let large_call = [large.clone(), provider.clone()];
    for _ in 0..2 {
        assert_eq!(
            limits.admit(&mini_call, &new_id(), 10).await.unwrap(),
            Admission::Granted
        );
    }
    // The model rule is full: refused, and nothing was reserved under the
    // provider's rule, which still has room for one.
    let waited = limits.admit(&mini_call, &new_id(), 10).await.unwrap();
    assert!(
        matches!(&waited, Admission::Wait { reason: LimitReason::Requests, rule, .. } if rule == "openai:gpt-4o-mini"),
        "{waited:?}"
    );
    let reserved = limits.admit(&large_call, &new_id(), 10).await.unwrap();
    assert_eq!(reserved, Admission::Granted);
    // Now the provider's rule is full although gpt-4o's has room.
    let waited = limits.admit(&large_call, &new_id(), 10).await.unwrap();
    assert!(
        matches!(&waited, Admission::Wait { reason: LimitReason::Requests, rule, .. } if rule == "openai:*"),
        "{waited:?}"
    );
    // A call larger than one rule's tokens can never pass.
    assert_eq!(
        limits.admit(&large_call, &new_id(), 5000).await.unwrap(),
        Admission::Never {
            tokens: 1000,
            rule: "openai:gpt-4o".into()
        }
    );
    // A settle reaches every rule that holds the reservation.
    let id = new_id();
    let other = rule("anthropic:*", 0, 1000, 60_000);
    let both = [rule("claude", 0, 1000, 60_000), other.clone()];
    assert_eq!(
        limits.admit(&both, &id, 900).await.unwrap(),
        Admission::Granted
    );
    assert_eq!(limits.settle(&both, &id, 100).await.unwrap(), 2);
    assert_eq!(
        limits
            .admit(std::slice::from_ref(&other), &new_id(), 900)
            .await
            .unwrap(),
        Admission::Granted,
        "the settled tokens freed the provider's rule too"
    );
}
