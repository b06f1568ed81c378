//! Redis URLs: `redis://`, `rediss://` (TLS), `redis+sentinel://` and
//! `redis+cluster://`, and masking them for logs.

use fred::types::config::{ClusterDiscoveryPolicy, Server, ServerConfig};

use crate::error::{Error, Result};

/// A parsed Redis URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Where the servers are.
    pub servers: Servers,
    /// ACL user name.
    pub username: Option<String>,
    /// Password (never printed; see [`mask_url`]).
    pub password: Option<String>,
    /// Logical database.
    pub database: Option<u8>,
    /// Connect with TLS.
    pub tls: bool,
}

/// The deployment shape a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Servers {
    /// One server (`redis://host:port`).
    Single(String, u16),
    /// Sentinels and the service they watch (`redis+sentinel://h1,h2/service`).
    Sentinel {
        /// The sentinel nodes.
        nodes: Vec<(String, u16)>,
        /// The monitored service (primary) name.
        service: String,
    },
    /// Cluster seed nodes (`redis+cluster://h1,h2`).
    Cluster(Vec<(String, u16)>),
}

impl RedisUrl {
    /// Parses a Redis URL.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: mask_url(url),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected a scheme such as redis://"))?;
        let (tls, kind) = match scheme {
            "redis" => (false, "single"),
            "rediss" => (true, "single"),
            "redis+sentinel" | "redis-sentinel" => (false, "sentinel"),
            "rediss+sentinel" => (true, "sentinel"),
            "redis+cluster" | "redis-cluster" => (false, "cluster"),
            "rediss+cluster" => (true, "cluster"),
            other => {
                return Err(invalid(&format!(
                    "unknown scheme `{other}` (use redis, rediss, redis+sentinel or redis+cluster)"
                )));
            }
        };
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((credentials, rest)) => (Some(credentials), rest),
            None => (None, rest),
        };
        let (username, password) = match credentials {
            None => (None, None),
            Some(credentials) => match credentials.split_once(':') {
                Some((user, password)) => (
                    (!user.is_empty()).then(|| percent_decode(user)),
                    Some(percent_decode(password)),
                ),
                None => (None, Some(percent_decode(credentials))),
            },
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        if hosts.is_empty() {
            return Err(invalid("no host"));
        }
        let default_port = if kind == "sentinel" { 26379 } else { 6379 };
        let nodes = hosts
            .split(',')
            .map(|node| parse_host_port(node, default_port).map_err(|reason| invalid(&reason)))
            .collect::<Result<Vec<_>>>()?;
        let mut segments = path.split('/').filter(|segment| !segment.is_empty());
        let parse_db = |segment: Option<&str>| -> Result<Option<u8>> {
            segment
                .map(|db| {
                    db.parse::<u8>()
                        .map_err(|_| invalid("the database must be a number 0-255"))
                })
                .transpose()
        };
        let (servers, database) = match kind {
            "sentinel" => {
                let service = segments
                    .next()
                    .ok_or_else(|| invalid("a sentinel URL needs the service name: redis+sentinel://host:26379/mymaster"))?
                    .to_owned();
                (
                    Servers::Sentinel { nodes, service },
                    parse_db(segments.next())?,
                )
            }
            "cluster" => (Servers::Cluster(nodes), None),
            _ => {
                if nodes.len() != 1 {
                    return Err(invalid(
                        "a redis:// URL names one host; use redis+sentinel:// or redis+cluster:// for several",
                    ));
                }
                let (host, port) = nodes.into_iter().next().unwrap_or_default();
                (Servers::Single(host, port), parse_db(segments.next())?)
            }
        };
        Ok(RedisUrl {
            servers,
            username,
            password,
            database,
            tls,
        })
    }

    /// The server config for fred.
    pub(crate) fn server_config(&self) -> ServerConfig {
        let to_servers = |nodes: &[(String, u16)]| {
            nodes
                .iter()
                .map(|(host, port)| Server::new(host.as_str(), *port))
                .collect()
        };
        match &self.servers {
            Servers::Single(host, port) => ServerConfig::new_centralized(host.as_str(), *port),
            Servers::Sentinel { nodes, service } => ServerConfig::Sentinel {
                hosts: to_servers(nodes),
                service_name: service.clone(),
            },
            Servers::Cluster(nodes) => ServerConfig::Clustered {
                hosts: to_servers(nodes),
                policy: ClusterDiscoveryPolicy::default(),
            },
        }
    }

    /// True for a cluster URL.
    pub fn is_cluster(&self) -> bool {
        matches!(self.servers, Servers::Cluster(_))
    }
}

fn parse_host_port(node: &str, default_port: u16) -> std::result::Result<(String, u16), String> {
    let node = node.trim();
    if let Some(rest) = node.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed `[` in an IPv6 host")?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().map_err(|_| format!("bad port `{port}`"))?,
            None => default_port,
        };
        return Ok((host.to_owned(), port));
    }
    match node.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.to_owned(),
            port.parse().map_err(|_| format!("bad port `{port}`"))?,
        )),
        None if node.is_empty() => Err("empty host".to_owned()),
        None => Ok((node.to_owned(), default_port)),
    }
}

fn percent_decode(text: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|digit| digit as u8)
    }
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[index + 1]), hex(bytes[index + 2]))
        {
            decoded.push(high * 16 + low);
            index += 3;
            continue;
        }
        decoded.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The URL with any password replaced by `***`, safe for banners and logs.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((credentials, hosts)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let masked = match credentials.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{masked}@{hosts}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    type Expected<'a> =
        std::result::Result<(Servers, Option<&'a str>, Option<&'a str>, Option<u8>, bool), &'a str>;

    fn check(url: &str, expected: Expected<'_>) {
        match (RedisUrl::parse(url), expected) {
            (Ok(parsed), Ok((servers, user, password, database, tls))) => {
                assert_eq!(parsed.servers, servers, "{url}");
                assert_eq!(parsed.username.as_deref(), user, "{url}");
                assert_eq!(parsed.password.as_deref(), password, "{url}");
                assert_eq!(parsed.database, database, "{url}");
                assert_eq!(parsed.tls, tls, "{url}");
            }
            (Err(error), Err(needle)) => {
                let text = error.to_string();
                assert!(text.contains(needle), "{url}: `{text}` lacks `{needle}`");
                assert!(
                    !text.contains("hunter2"),
                    "{url}: password leaked in `{text}`"
                );
            }
            (result, expected) => panic!("{url}: got {result:?}, expected {expected:?}"),
        }
    }

    fn node(host: &str, port: u16) -> (String, u16) {
        (host.to_owned(), port)
    }

    #[test]
    fn urls() {
        check(
            "redis://localhost:6379",
            Ok((
                Servers::Single("localhost".into(), 6379),
                None,
                None,
                None,
                false,
            )),
        );
        check(
            "redis://localhost",
            Ok((
                Servers::Single("localhost".into(), 6379),
                None,
                None,
                None,
                false,
            )),
        );
        check(
            "redis://:hunter2@h:1/3",
            Ok((
                Servers::Single("h".into(), 1),
                None,
                Some("hunter2"),
                Some(3),
                false,
            )),
        );
        check(
            "rediss://exo:p%40ss@h:6380",
            Ok((
                Servers::Single("h".into(), 6380),
                Some("exo"),
                Some("p@ss"),
                None,
                true,
            )),
        );
        check(
            "redis://[::1]:7000",
            Ok((Servers::Single("::1".into(), 7000), None, None, None, false)),
        );
        check(
            "redis+sentinel://s1:26379,s2:26380/mymaster",
            Ok((
                Servers::Sentinel {
                    nodes: vec![node("s1", 26379), node("s2", 26380)],
                    service: "mymaster".into(),
                },
                None,
                None,
                None,
                false,
            )),
        );
        check(
            "redis+sentinel://u:hunter2@s1,s2/mymaster/2",
            Ok((
                Servers::Sentinel {
                    nodes: vec![node("s1", 26379), node("s2", 26379)],
                    service: "mymaster".into(),
                },
                Some("u"),
                Some("hunter2"),
                Some(2),
                false,
            )),
        );
        check(
            "redis+cluster://a:7000,b:7001",
            Ok((
                Servers::Cluster(vec![node("a", 7000), node("b", 7001)]),
                None,
                None,
                None,
                false,
            )),
        );
        check("redis+sentinel://:hunter2@s1", Err("service name"));
        check("http://:hunter2@h", Err("unknown scheme"));
        check("localhost:6379", Err("scheme"));
        check("redis://:hunter2@h:port", Err("bad port"));
        check("redis://a,b", Err("names one host"));
        check("redis://h/999", Err("database"));
    }

    #[test]
    fn masking() {
        let cases = [
            ("redis://:hunter2@h:1/0", "redis://:***@h:1/0"),
            ("redis://user:hunter2@h", "redis://user:***@h"),
            ("redis://hunter2@h", "redis://***@h"),
            ("redis://h:1", "redis://h:1"),
            (
                "redis+sentinel://u:hunter2@a,b/m",
                "redis+sentinel://u:***@a,b/m",
            ),
            ("not a url", "not a url"),
        ];
        for (url, masked) in cases {
            assert_eq!(mask_url(url), masked);
        }
    }
}
