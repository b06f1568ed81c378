//! Bearer tokens with scopes and an optional tenant.
//!
//! Tokens come from a JSON file or the environment:
//! `{"tokens": [{"name": "ci", "token": "<secret>", "scopes": ["read", "submit"], "tenant": "acme"}]}`
//! (or just the array). A request presents one as `Authorization: Bearer
//! <secret>`, or as `?access_token=<secret>` where a header cannot be set
//! (a browser's `EventSource`). Secrets are compared in constant time, and
//! every configured token is compared, so the time taken says nothing about
//! which one (nearly) matched.

use std::collections::BTreeSet;

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use exo_proto::TaskResult;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::{
    api::AppState,
    error::{Error, Problem, Result},
};

/// What a token allows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read tasks, their events, and (without a tenant) the fleet and queue.
    Read,
    /// Submit tasks.
    Submit,
    /// Cancel tasks.
    Cancel,
    /// Everything, including dead-letter redrive.
    Admin,
}

/// One configured token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// A name for logs and the dashboard (never the secret).
    pub name: String,
    /// The secret (at least 16 characters).
    pub token: String,
    /// What it allows.
    pub scopes: Vec<Scope>,
    /// When set, the token sees and touches only this tenant's tasks, and
    /// tasks it submits belong to this tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TokenSpec")
            .field("name", &self.name)
            .field("token", &"***")
            .field("scopes", &self.scopes)
            .field("tenant", &self.tenant)
            .finish()
    }
}

/// Reads tokens from JSON: `{"tokens": [...]}` or `[...]`.
pub fn parse_tokens(json: &str) -> Result<Vec<TokenSpec>> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum File {
        Wrapped { tokens: Vec<TokenSpec> },
        Bare(Vec<TokenSpec>),
    }
    let file: File = serde_json::from_str(json).map_err(|error| {
        Error::Config(format!(
            "tokens are not valid: {error} (expected {{\"tokens\": [{{\"name\", \"token\", \"scopes\": [\"read\"|\"submit\"|\"cancel\"|\"admin\"], \"tenant\"?}}]}})"
        ))
    })?;
    Ok(match file {
        File::Wrapped { tokens } | File::Bare(tokens) => tokens,
    })
}

/// Who is calling: the token's name, scopes and tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name; `None` when the gateway runs without tokens.
    pub name: Option<String>,
    /// What the caller may do.
    pub scopes: BTreeSet<Scope>,
    /// The caller's tenant, if the token has one.
    pub tenant: Option<String>,
}

impl Caller {
    /// The caller of a gateway without tokens (loopback only): everything.
    pub fn open() -> Self {
        Caller {
            name: None,
            scopes: [Scope::Read, Scope::Submit, Scope::Cancel, Scope::Admin].into(),
            tenant: None,
        }
    }

    /// True when the caller holds `scope` (or `admin`).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// 403 unless the caller holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), Problem> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "this token lacks the `{}` scope",
                serde_json::to_value(scope)
                    .ok()
                    .and_then(|value| value.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )))
        }
    }

    /// 403 unless the caller holds `scope` and has no tenant (fleet-wide
    /// views and actions).
    pub fn require_fleet(&self, scope: Scope) -> Result<(), Problem> {
        self.require(scope)?;
        if self.tenant.is_some() {
            return Err(Problem::forbidden(
                "a token with a tenant sees only its own tasks, not the fleet",
            ));
        }
        Ok(())
    }

    /// True when the caller may see `task` (its tenant matches, or the
    /// caller has none).
    pub fn can_see(&self, task: &TaskResult) -> bool {
        match &self.tenant {
            None => true,
            Some(tenant) => task.tenant.as_deref() == Some(tenant.as_str()),
        }
    }
}

/// Finds the token a request presents, comparing against every configured
/// token in constant time.
pub(crate) fn authenticate(tokens: &[TokenSpec], presented: &[u8]) -> Option<Caller> {
    let mut found: Option<&TokenSpec> = None;
    for token in tokens {
        let equal: bool = token.token.as_bytes().ct_eq(presented).into();
        if equal {
            found = Some(token);
        }
    }
    found.map(|token| Caller {
        name: Some(token.name.clone()),
        scopes: token.scopes.iter().copied().collect(),
        tenant: token.tenant.clone(),
    })
}

fn presented_token(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    request.uri().query().and_then(|query| {
        query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name == "access_token").then(|| percent_decode(value))
        })
    })
}

fn percent_decode(text: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|digit| digit as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let escaped = (byte == b'%')
            .then(|| Some(hex(*bytes.get(index + 1)?)? * 16 + hex(*bytes.get(index + 2)?)?))
            .flatten();
        match (escaped, byte) {
            (Some(decoded), _) => {
                out.push(decoded);
                index += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, byte) => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The auth layer of `/v1`: puts a [`Caller`] in the request's extensions,
/// or answers 401.
pub(crate) async fn layer(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = if state.config.tokens.is_empty() {
        Caller::open()
    } else {
        match presented_token(&request) {
            None => {
                return Problem::unauthorized(
                    "a bearer token is required (Authorization: Bearer <token>, or ?access_token= for event streams)",
                )
                .into_response();
            }
            Some(token) => match authenticate(&state.config.tokens, token.as_bytes()) {
                Some(caller) => caller,
                None => return Problem::unauthorized("the token is not valid").into_response(),
            },
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, scopes: &[Scope], tenant: Option<&str>) -> TokenSpec {
        TokenSpec {
            name: name.to_owned(),
            token: secret.to_owned(),
            scopes: scopes.to_vec(),
            tenant: tenant.map(str::to_owned),
        }
    }

    #[test]
    fn tokens_parse_in_both_shapes_and_reject_unknown_fields() {
        let wrapped = r#"{"tokens": [{"name": "a", "token": "0123456789abcdef", "scopes": ["read", "admin"]}]}"#;
        let bare = r#"[{"name": "a", "token": "0123456789abcdef", "scopes": ["read", "admin"]}]"#;
        assert_eq!(parse_tokens(wrapped).unwrap(), parse_tokens(bare).unwrap());
        for bad in [
            r#"[{"name": "a", "token": "x", "scopes": ["write"]}]"#,
            r#"[{"name": "a", "token": "x", "scopes": [], "tennant": "t"}]"#,
            "not json",
        ] {
            let error = parse_tokens(bad).unwrap_err().to_string();
            assert!(error.contains("tokens are not valid"), "{error}");
        }
    }

    #[test]
    fn authentication_and_scopes() {
        let tokens = [
            token("reader", "reader-secret-0001", &[Scope::Read], None),
            token(
                "acme",
                "acme-secret-000001",
                &[Scope::Read, Scope::Submit],
                Some("acme"),
            ),
            token("root", "root-secret-000001", &[Scope::Admin], None),
        ];
        // (presented, expected name, read, submit, cancel, fleet read)
        let cases = [
            (
                "reader-secret-0001",
                Some("reader"),
                true,
                false,
                false,
                true,
            ),
            ("acme-secret-000001", Some("acme"), true, true, false, false),
            ("root-secret-000001", Some("root"), true, true, true, true),
            ("reader-secret-0002", None, false, false, false, false),
            ("reader-secret-000", None, false, false, false, false),
            ("", None, false, false, false, false),
        ];
        for (presented, name, read, submit, cancel, fleet) in cases {
            let caller = authenticate(&tokens, presented.as_bytes());
            assert_eq!(
                caller.as_ref().and_then(|c| c.name.as_deref()),
                name,
                "{presented}"
            );
            let Some(caller) = caller else { continue };
            assert_eq!(caller.require(Scope::Read).is_ok(), read, "{presented}");
            assert_eq!(caller.require(Scope::Submit).is_ok(), submit, "{presented}");
            assert_eq!(caller.require(Scope::Cancel).is_ok(), cancel, "{presented}");
            assert_eq!(
                caller.require_fleet(Scope::Read).is_ok(),
                fleet,
                "{presented}"
            );
        }
    }

    #[test]
    fn tenants_see_only_their_tasks() {
        let mut task = TaskResult::new("t1", exo_proto::TaskStatus::Pending);
        let acme = Caller {
            tenant: Some("acme".to_owned()),
            ..Caller::open()
        };
        assert!(!acme.can_see(&task));
        assert!(Caller::open().can_see(&task));
        task.tenant = Some("acme".to_owned());
        assert!(acme.can_see(&task));
        task.tenant = Some("other".to_owned());
        assert!(!acme.can_see(&task));
    }

    #[test]
    fn access_token_in_the_query_is_decoded() {
        for (query, expected) in [
            ("access_token=abc", "abc"),
            ("from=beginning&access_token=a%2Bb%3D", "a+b="),
            ("access_token=a%2", "a%2"),
        ] {
            let request = Request::builder()
                .uri(format!("/v1/tasks/x/events?{query}"))
                .body(axum::body::Body::empty())
                .unwrap();
            assert_eq!(
                presented_token(&request).as_deref(),
                Some(expected),
                "{query}"
            );
        }
    }
}
