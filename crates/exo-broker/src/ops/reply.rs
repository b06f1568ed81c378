//! Reads the parts of a script or command reply.

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
    Ok(keyed_stream_entries(what, value)?
        .into_iter()
        .flat_map(|(_, entries)| entries)
        .collect())
}

/// The entries of an XREAD reply over several streams, by stream key.
pub(crate) fn keyed_stream_entries(
    what: &'static str,
    value: Value,
) -> Result<Vec<(String, Vec<StreamEntry>)>> {
    let streams: Vec<(Value, Value)> = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(parts) if parts.len() == 2 => {
                    let mut parts = parts.into_iter();
                    Some((parts.next()?, parts.next()?))
                }
                _ => None,
            })
            .collect(),
        Value::Map(map) => map
            .inner()
            .into_iter()
            .map(|(key, entries)| (Value::from(key), entries))
            .collect(),
        other => {
            return Err(Error::Reply {
                what,
                detail: format!("unexpected {:?}", other.kind()),
            });
        }
    };
    let mut keyed = Vec::with_capacity(streams.len());
    for (key, stream) in streams {
        let mut entries = Vec::new();
        for entry in array(what, stream)? {
            let mut parts = array(what, entry)?.into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                continue;
            };
            entries.push((string(what, &id)?, pairs(what, fields)?));
        }
        keyed.push((string(what, &key)?, entries));
    }
    Ok(keyed)
}

/// A script's reply read in order: each part by its type, a missing part
/// read as empty (0, "", no items), as Lua drops trailing nils.
#[derive(Debug)]
pub(crate) struct Parts {
    what: &'static str,
    items: std::vec::IntoIter<Value>,
}

impl Parts {
    pub(crate) fn new(what: &'static str, value: Value) -> Result<Self> {
        Ok(Parts {
            what,
            items: array(what, value)?.into_iter(),
        })
    }

    pub(crate) fn integer(&mut self) -> Result<i64> {
        self.items
            .next()
            .map_or(Ok(0), |value| integer(self.what, &value))
    }

    /// An integer that cannot be negative (a count).
    pub(crate) fn count(&mut self) -> Result<u64> {
        Ok(self.integer()?.max(0) as u64)
    }

    pub(crate) fn string(&mut self) -> Result<String> {
        self.items
            .next()
            .map_or(Ok(String::new()), |value| string(self.what, &value))
    }

    pub(crate) fn strings(&mut self) -> Result<Vec<String>> {
        self.items
            .next()
            .map_or(Ok(Vec::new()), |value| strings(self.what, value))
    }

    pub(crate) fn array(&mut self) -> Result<Vec<Value>> {
        self.items
            .next()
            .map_or(Ok(Vec::new()), |value| array(self.what, value))
    }
}
