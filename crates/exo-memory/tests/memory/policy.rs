//! Which store a payload gets, and which payloads are refused.

use exo_memory::{MemoryConfig, MemoryPolicy, NamedStore};
use serde_json::{Value, json};

/// Resolves `memory` (the value of `metadata.memory`) under `policy` and
/// compares the outcome: `Ok(target)` as its redacted text, or an error
/// containing the fragment.
fn check(policy: &MemoryPolicy, memory: Value, expected: Result<&str, &str>) {
    let outcome = MemoryConfig::from_value(&memory)
        .and_then(|config| policy.resolve(&config))
        .map(|target| target.to_string());
    match (&outcome, expected) {
        (Ok(target), Ok(wanted)) => assert_eq!(target, wanted, "{memory}"),
        (Err(error), Err(fragment)) => {
            let message = error.to_string();
            assert!(message.contains(fragment), "{memory}: {message}");
            assert!(
                !message.contains("s3cret"),
                "{memory}: password leaked: {message}"
            );
        }
        _ => panic!("{memory}: got {outcome:?}, expected {expected:?}"),
    }
}

#[test]
fn short_term_needs_no_store_and_no_permission() {
    let policy = MemoryPolicy::default();
    check(&policy, json!({}), Ok("short_term"));
    check(&policy, json!({"backend": "short_term"}), Ok("short_term"));
    check(
        &policy,
        json!({"backend": "short_term", "dsn": "/etc/passwd"}),
        Ok("short_term"),
    );
    check(
        &policy,
        json!({"backend": "redis"}),
        Err("unknown memory backend `redis`"),
    );
    check(
        &policy,
        json!({"store": "main"}),
        Err("unknown memory store `main`; this worker has no named stores"),
    );
}

#[test]
fn store_definitions_parse_or_say_why_not() {
    for (spec, expected) in [
        (
            "main=postgres://exo:s3cret@db/exo",
            Ok("postgres://exo:***@db/exo"),
        ),
        (
            "local=sqlite:///var/lib/exo/memory.db",
            Ok("sqlite:///var/lib/exo/memory.db"),
        ),
        (
            "plain=/var/lib/exo/memory.db",
            Ok("sqlite:///var/lib/exo/memory.db"),
        ),
        ("scratch=sqlite::memory:", Ok("sqlite::memory:")),
        ("main", Err("expected NAME=DSN")),
        ("=memory.db", Err("the name is empty")),
        ("bad name=memory.db", Err("only letters, digits")),
        ("x=", Err("the DSN is empty")),
        ("x=mysql://h/db", Err("expected sqlite:///path")),
        ("bad name=postgres://exo:s3cret@db/exo", Err("exo:***@db")),
    ] {
        match (NamedStore::parse(spec), expected) {
            (Ok(store), Ok(target)) => assert_eq!(store.target.to_string(), target, "{spec}"),
            (Err(error), Err(fragment)) => {
                let message = error.to_string();
                assert!(message.contains(fragment), "{spec}: {message}");
                assert!(
                    !message.contains("s3cret"),
                    "{spec}: password leaked: {message}"
                );
            }
            (outcome, expected) => panic!("{spec}: got {outcome:?}, expected {expected:?}"),
        }
    }
}

#[cfg(all(feature = "sqlite", feature = "postgres"))]
mod with_every_backend {
    use super::*;

    fn worker_policy(allow_payload_dsn: bool) -> MemoryPolicy {
        MemoryPolicy::from_specs(
            [
                "main=postgres://exo:s3cret@db/exo",
                "local=sqlite:///var/lib/exo/memory.db",
            ],
            allow_payload_dsn,
        )
        .unwrap()
    }

    #[test]
    fn payloads_name_stores_and_bring_no_dsn_of_their_own() {
        let policy = worker_policy(false);
        let main = Ok("postgres://exo:***@db/exo");
        let local = Ok("sqlite:///var/lib/exo/memory.db");
        let refused = Err("metadata.memory.dsn is refused");
        let cases: Vec<(Value, Result<&str, &str>)> = vec![
            (json!({"store": "main"}), main),
            (json!({"store": "main", "backend": "postgres"}), main),
            (
                json!({"store": "local", "scope": {"session_id": "s"}}),
                local,
            ),
            (
                json!({"store": "main", "backend": "sqlite"}),
                Err("store `main` is a postgres store, but `backend` asks for sqlite"),
            ),
            (
                json!({"store": "nope"}),
                Err("unknown memory store `nope`; this worker has stores `local`, `main`"),
            ),
            (
                json!({"store": "main", "dsn": "postgres://exo:s3cret@db/exo"}),
                main,
            ),
            (
                json!({"store": "main", "dsn": "postgres://exo@elsewhere/exo"}),
                Err("give only `store`"),
            ),
            (json!({"backend": "postgres"}), main),
            (json!({"backend": "sqlite"}), local),
            (
                json!({"backend": "postgres", "dsn": "postgres://exo:s3cret@db/exo"}),
                main,
            ),
            (
                json!({"backend": "sqlite", "dsn": "/var/lib/exo/memory.db"}),
                local,
            ),
            (
                json!({"backend": "sqlite", "dsn": "sqlite:///var/lib/exo/../exo/memory.db"}),
                refused,
            ),
            (
                json!({"backend": "postgres", "dsn": "postgres://attacker@evil.example/db"}),
                refused,
            ),
            (
                json!({"backend": "sqlite", "dsn": "sqlite:///etc/cron.d/x"}),
                refused,
            ),
            (json!({"dsn": "/tmp/anywhere.db"}), refused),
            (
                json!({"backend": "sqlite", "dsn": "postgres://exo:s3cret@db/exo"}),
                Err("expected sqlite:///path"),
            ),
            (
                json!({"backend": "postgres", "dsn": "/tmp/x.db"}),
                Err("expected a postgres:// or postgresql:// URL"),
            ),
        ];
        for (memory, expected) in cases {
            check(&policy, memory, expected);
        }
    }

    #[test]
    fn a_worker_may_allow_payload_dsns() {
        let policy = worker_policy(true);
        check(
            &policy,
            json!({"backend": "postgres", "dsn": "postgres://other:s3cret@db2/exo"}),
            Ok("postgres://other:***@db2/exo"),
        );
        check(
            &policy,
            json!({"backend": "sqlite", "dsn": "sqlite:///srv/tenant/memory.db"}),
            Ok("sqlite:///srv/tenant/memory.db"),
        );
        check(
            &policy,
            json!({"dsn": "sqlite::memory:"}),
            Ok("sqlite::memory:"),
        );
    }

    #[test]
    fn a_backend_without_store_needs_exactly_one_candidate() {
        let none = MemoryPolicy::default();
        check(
            &none,
            json!({"backend": "postgres"}),
            Err("this worker has no postgres store"),
        );
        let two =
            MemoryPolicy::from_specs(["a=postgres://db/a", "b=postgres://db/b"], false).unwrap();
        check(
            &two,
            json!({"backend": "postgres"}),
            Err("this worker has several (a, b)"),
        );
        check(&two, json!({"store": "b"}), Ok("postgres://db/b"));
    }

    #[test]
    fn a_name_may_be_defined_once() {
        let error =
            MemoryPolicy::from_specs(["a=postgres://db/a", "a=/tmp/a.db"], false).unwrap_err();
        assert!(
            error.to_string().contains("the name `a` is defined twice"),
            "{error}"
        );
    }
}

#[cfg(not(all(feature = "sqlite", feature = "postgres")))]
#[test]
fn a_backend_not_compiled_in_is_refused_with_its_feature() {
    for (backend, spec, compiled) in [
        ("sqlite", "x=sqlite:///tmp/x.db", cfg!(feature = "sqlite")),
        ("postgres", "x=postgres://db/x", cfg!(feature = "postgres")),
    ] {
        if compiled {
            continue;
        }
        let fragment = format!("rebuild with the cargo feature `{backend}`");
        let error = MemoryPolicy::from_specs([spec], false).unwrap_err();
        assert!(error.to_string().contains(&fragment), "{error}");
        let allowing = MemoryPolicy::from_specs(Vec::<String>::new(), true).unwrap();
        check(
            &allowing,
            json!({"backend": backend, "dsn": spec.trim_start_matches("x=")}),
            Err(&fragment),
        );
        check(&allowing, json!({"backend": backend}), Err(&fragment));
    }
}
