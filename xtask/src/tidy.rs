//! `cargo xtask tidy`: the layering rules of `docs/architecture.md`, read
//! from `cargo metadata`, and the checks of the deployment files
//! ([`deploy`]). Each check is also an ordinary `#[test]` of this crate, so
//! `cargo test -p xtask` (and `cargo test --workspace`) enforces tidy.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub(crate) mod deploy;

/// The internal crates each crate may depend on (normal dependencies;
/// dev-dependencies are free). Anything not listed is an upward or sideways
/// edge.
const ALLOWED: &[(&str, &[&str])] = &[
    ("exo-proto", &[]),
    ("exo-testkit", &[]),
    ("exo-models", &["exo-proto"]),
    ("exo-agent", &["exo-proto", "exo-models"]),
    ("exo-broker", &["exo-proto"]),
    ("exo-memory", &["exo-proto"]),
    ("exo-observability", &["exo-proto"]),
    ("exo-temporal", &["exo-proto"]),
    (
        "exo-gateway",
        &["exo-proto", "exo-broker", "exo-observability"],
    ),
    (
        "exo-worker",
        &[
            "exo-proto",
            "exo-models",
            "exo-agent",
            "exo-broker",
            "exo-memory",
            "exo-observability",
            "exo-temporal",
        ],
    ),
    (
        "exo-cli",
        &[
            "exo-proto",
            "exo-models",
            "exo-agent",
            "exo-broker",
            "exo-memory",
            "exo-observability",
            "exo-worker",
            "exo-temporal",
            "exo-gateway",
        ],
    ),
    ("exo-e2e", &["exo-testkit"]),
    ("xtask", &["exo-proto", "exo-broker", "exo-testkit"]),
];

/// External crates a crate's whole normal dependency graph must not contain.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("exo-proto", &["tokio", "fred", "reqwest", "sqlx"]),
    ("exo-models", &["fred", "sqlx"]),
    ("exo-agent", &["fred", "sqlx"]),
    ("exo-memory", &["fred"]),
    ("exo-observability", &["fred"]),
];

/// External crates only these crates may name directly.
const OWNED: &[(&str, &str)] = &[
    ("fred", "exo-broker"),
    ("sqlx", "exo-memory"),
    ("anyhow", "exo-cli"),
    ("axum", "exo-gateway"),
    ("utoipa", "exo-gateway"),
    ("temporalio-sdk", "exo-temporal"),
    ("temporalio-client", "exo-temporal"),
    ("temporalio-common", "exo-temporal"),
    ("temporalio-macros", "exo-temporal"),
    ("temporalio-workflow", "exo-temporal"),
    ("temporalio-sdk-core", "exo-temporal"),
];

pub(crate) fn tidy(metadata: &Value) -> Result<()> {
    let packages = metadata["packages"]
        .as_array()
        .context("no packages in cargo metadata")?;
    let members: BTreeSet<String> = metadata["workspace_members"]
        .as_array()
        .context("no workspace members")?
        .iter()
        .filter_map(|id| {
            let id = id.as_str()?;
            packages
                .iter()
                .find(|package| package["id"] == id)
                .and_then(|package| package["name"].as_str())
                .map(str::to_owned)
        })
        .collect();
    let mut problems = Vec::new();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    for package in packages {
        let name = package["name"].as_str().unwrap_or_default();
        if !members.contains(name) {
            continue;
        }
        let Some(allowed_edges) = allowed.get(name) else {
            problems.push(format!("{name} is not in the layering table of xtask/src/tidy.rs (add it with its allowed edges)"));
            continue;
        };
        for dependency in package["dependencies"].as_array().into_iter().flatten() {
            let dependency_name = dependency["name"].as_str().unwrap_or_default();
            let normal = dependency["kind"].is_null();
            if normal
                && members.contains(dependency_name)
                && !allowed_edges.contains(&dependency_name)
            {
                problems.push(format!(
                    "{name} depends on {dependency_name}: not allowed by the layering"
                ));
            }
            for (owned, owner) in OWNED {
                if dependency_name == *owned && name != *owner && name != "xtask" && normal {
                    problems.push(format!(
                        "{name} depends on {owned} directly; only {owner} may"
                    ));
                }
            }
        }
    }
    // Whole-graph checks use the resolved dependency graph.
    let resolve = &metadata["resolve"];
    if !resolve.is_null() {
        let names: BTreeMap<&str, &str> = packages
            .iter()
            .filter_map(|package| Some((package["id"].as_str()?, package["name"].as_str()?)))
            .collect();
        let nodes: BTreeMap<&str, Vec<&str>> = resolve["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|node| {
                let id = node["id"].as_str()?;
                let dependencies = node["deps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|dependency| {
                        dependency["dep_kinds"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|kind| kind["kind"].is_null())
                    })
                    .filter_map(|dependency| dependency["pkg"].as_str())
                    .collect();
                Some((id, dependencies))
            })
            .collect();
        for (crate_name, forbidden) in FORBIDDEN {
            let Some(root) = names
                .iter()
                .find(|(_, name)| *name == crate_name)
                .map(|(id, _)| *id)
            else {
                continue;
            };
            let mut seen = BTreeSet::new();
            let mut stack = vec![root];
            while let Some(id) = stack.pop() {
                if !seen.insert(id) {
                    continue;
                }
                let name = names.get(id).copied().unwrap_or_default();
                if forbidden.contains(&name) {
                    problems.push(format!(
                        "{crate_name} pulls in {name} (through its normal dependencies)"
                    ));
                }
                stack.extend(nodes.get(id).into_iter().flatten().copied());
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("layering problems:\n  {}", problems.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::tidy;

    fn package(name: &str, dependencies: &[(&str, Option<&str>)]) -> serde_json::Value {
        json!({
            "id": format!("{name} 0.1.0"),
            "name": name,
            "dependencies": dependencies.iter().map(|(dependency, kind)| json!({"name": dependency, "kind": kind})).collect::<Vec<_>>(),
        })
    }

    fn metadata(packages: Vec<serde_json::Value>, edges: &[(&str, &str)]) -> serde_json::Value {
        let ids: Vec<String> = packages
            .iter()
            .map(|package| package["id"].as_str().unwrap().to_owned())
            .collect();
        let members: Vec<String> = ids
            .iter()
            .filter(|id| id.starts_with("exo"))
            .cloned()
            .collect();
        let nodes: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| {
                let deps: Vec<serde_json::Value> = edges
                    .iter()
                    .filter(|(from, _)| id.starts_with(&format!("{from} ")))
                    .map(|(_, to)| json!({"pkg": format!("{to} 0.1.0"), "dep_kinds": [{"kind": null}]}))
                    .collect();
                json!({"id": id, "deps": deps})
            })
            .collect();
        json!({"packages": packages, "workspace_members": members, "resolve": {"nodes": nodes}})
    }

    /// The workspace itself, so that `cargo test -p xtask` enforces the
    /// layering as `cargo xtask tidy` does.
    #[test]
    fn the_workspace_layering_holds() {
        let metadata = crate::workspace_metadata().expect("cargo metadata");
        if let Err(error) = tidy(&metadata) {
            panic!("{error:#}");
        }
    }

    #[test]
    fn upward_edges_forbidden_crates_and_owned_crates_are_caught() {
        let cases: Vec<(serde_json::Value, Option<&str>)> = vec![
            (
                metadata(
                    vec![
                        package("exo-proto", &[]),
                        package("exo-broker", &[("exo-proto", None)]),
                    ],
                    &[("exo-broker", "exo-proto")],
                ),
                None,
            ),
            (
                metadata(
                    vec![
                        package("exo-proto", &[("exo-broker", None)]),
                        package("exo-broker", &[]),
                    ],
                    &[("exo-proto", "exo-broker")],
                ),
                Some("exo-proto depends on exo-broker"),
            ),
            (
                metadata(
                    vec![
                        package("exo-proto", &[("exo-broker", Some("dev"))]),
                        package("exo-broker", &[]),
                    ],
                    &[],
                ),
                None,
            ),
            (
                metadata(
                    vec![
                        package("exo-proto", &[("serde", None)]),
                        package("serde", &[]),
                        package("tokio", &[]),
                    ],
                    &[("exo-proto", "serde"), ("serde", "tokio")],
                ),
                Some("exo-proto pulls in tokio"),
            ),
            (
                metadata(
                    vec![
                        package("exo-agent", &[("fred", None)]),
                        package("fred", &[]),
                    ],
                    &[("exo-agent", "fred")],
                ),
                Some("only exo-broker may"),
            ),
        ];
        for (metadata, expected) in cases {
            match (tidy(&metadata), expected) {
                (Ok(()), None) => {}
                (Err(error), Some(needle)) => {
                    assert!(error.to_string().contains(needle), "{error}")
                }
                (result, expected) => panic!("{result:?}, expected {expected:?}"),
            }
        }
    }
}
