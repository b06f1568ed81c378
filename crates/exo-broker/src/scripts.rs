//! The Lua scripts, one per atomic operation, each prefixed with
//! `common.lua` and loaded once (EVALSHA, reloaded on NOSCRIPT).

use fred::types::scripts::Script;

macro_rules! script {
    ($file:literal) => {
        Script::from_lua(concat!(
            include_str!("scripts/common.lua"),
            include_str!(concat!("scripts/", $file))
        ))
    };
}

#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) submit: Script,
    pub(crate) claim: Script,
    pub(crate) finish: Script,
    pub(crate) publish: Script,
    pub(crate) cancel: Script,
    pub(crate) heartbeat: Script,
    pub(crate) reap: Script,
    pub(crate) release: Script,
    pub(crate) fleet: Script,
    pub(crate) list: Script,
    pub(crate) stats: Script,
    pub(crate) redrive: Script,
    pub(crate) deregister: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            submit: script!("submit.lua"),
            claim: script!("claim.lua"),
            finish: script!("finish.lua"),
            publish: script!("publish.lua"),
            cancel: script!("cancel.lua"),
            heartbeat: script!("heartbeat.lua"),
            reap: script!("reap.lua"),
            release: script!("release.lua"),
            fleet: script!("fleet.lua"),
            list: script!("list.lua"),
            stats: script!("stats.lua"),
            redrive: script!("redrive.lua"),
            deregister: script!("deregister.lua"),
        }
    }
}

/// Reads a script reply's parts.
pub(crate) mod reply {
    use fred::types::Value;

    use crate::error::{Error, Result};

    pub(crate) fn array(what: &'static str, value: Value) -> Result<Vec<Value>> {
        match value {
            Value::Array(items) => Ok(items),
            Value::Null => Ok(Vec::new()),
            other => Err(Error::Reply {
                what,
                detail: format!("expected an array, got {:?}", other.kind()),
            }),
        }
    }

    pub(crate) fn string(what: &'static str, value: &Value) -> Result<String> {
        match value {
            Value::String(text) => Ok(text.to_string()),
            Value::Bytes(bytes) => Ok(String::from_utf8_lossy(bytes).into_owned()),
            Value::Integer(number) => Ok(number.to_string()),
            Value::Double(number) => Ok(number.to_string()),
            Value::Null => Ok(String::new()),
            other => Err(Error::Reply {
                what,
                detail: format!("expected a string, got {:?}", other.kind()),
            }),
        }
    }

    /// A string reply, or `None` when its bytes are not UTF-8.
    pub(crate) fn utf8(what: &'static str, value: &Value) -> Result<Option<String>> {
        match value {
            Value::Bytes(bytes) => Ok(String::from_utf8(bytes.to_vec()).ok()),
            other => string(what, other).map(Some),
        }
    }

    pub(crate) fn integer(what: &'static str, value: &Value) -> Result<i64> {
        match value {
            Value::Integer(number) => Ok(*number),
            Value::String(_) | Value::Bytes(_) => {
                string(what, value)?.parse().map_err(|_| Error::Reply {
                    what,
                    detail: "expected an integer".to_owned(),
                })
            }
            Value::Null => Ok(0),
            other => Err(Error::Reply {
                what,
                detail: format!("expected an integer, got {:?}", other.kind()),
            }),
        }
    }

    pub(crate) fn strings(what: &'static str, value: Value) -> Result<Vec<String>> {
        array(what, value)?
            .iter()
            .map(|item| string(what, item))
            .collect()
    }

    /// A flat `field, value, ...` list as pairs.
    pub(crate) fn pairs(what: &'static str, value: Value) -> Result<Vec<(String, String)>> {
        if let Value::Map(map) = value {
            return map
                .inner()
                .into_iter()
                .map(|(key, value)| {
                    let key = key.as_str().map(|key| key.to_string()).unwrap_or_default();
                    Ok((key, string(what, &value)?))
                })
                .collect();
        }
        let items = strings(what, value)?;
        Ok(items
            .chunks(2)
            .filter(|pair| pair.len() == 2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect())
    }

    /// A stream entry: its id and its fields.
    pub(crate) type StreamEntry = (String, Vec<(String, String)>);

    /// The entries of an XREAD / XREADGROUP reply (RESP2 or RESP3 shape), as
    /// `(id, fields)`.
    pub(crate) fn stream_entries(what: &'static str, value: Value) -> Result<Vec<StreamEntry>> {
        let streams: Vec<Value> = match value {
            Value::Null => return Ok(Vec::new()),
            Value::Array(streams) => streams
                .into_iter()
                .filter_map(|stream| match stream {
                    Value::Array(mut parts) if parts.len() == 2 => Some(parts.remove(1)),
                    _ => None,
                })
                .collect(),
            Value::Map(map) => map.inner().into_values().collect(),
            other => {
                return Err(Error::Reply {
                    what,
                    detail: format!("unexpected {:?}", other.kind()),
                });
            }
        };
        let mut entries = Vec::new();
        for stream in streams {
            for entry in array(what, stream)? {
                let mut parts = array(what, entry)?.into_iter();
                let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                    continue;
                };
                entries.push((string(what, &id)?, pairs(what, fields)?));
            }
        }
        Ok(entries)
    }
}
