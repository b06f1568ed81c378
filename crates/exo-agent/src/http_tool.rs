//! `http_request`: a tool that calls HTTP endpoints the operator allowed,
//! with the call's idempotency key.

use std::time::Duration;

use async_trait::async_trait;
use exo_proto::ToolOutput;
use serde_json::{Map, Value, json};
use url::Url;

use crate::tool::{Tool, ToolContext};

/// The most response body the model gets back.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Calls HTTP(S) endpoints under the URL prefixes its operator allows, and
/// nothing else (redirects are not followed, so none can lead elsewhere).
///
/// Every request carries `Idempotency-Key`: the same for every run of one
/// call, whichever attempt or worker makes it (see
/// [`ToolContext::idempotency_key`]), so an endpoint that deduplicates on it
/// sees a side effect once even when a worker died after sending it.
///
/// Arguments: `url`, `method` (`GET`, `POST`, `PUT`, `PATCH` or `DELETE`;
/// `POST` by default), `body` (text, or JSON sent as JSON). The result is
/// the status line and the body (up to 64 KiB); a status of 400 or more is
/// an error for the model.
#[derive(Debug, Clone)]
pub struct HttpTool {
    allowed: Vec<Url>,
    client: reqwest::Client,
}

impl HttpTool {
    /// A tool allowed to call URLs under each of `prefixes` (scheme, host,
    /// port and path prefix must match; `https://api.example.com/hooks/`).
    pub fn new<I, S>(prefixes: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut allowed = Vec::new();
        for prefix in prefixes {
            let prefix = prefix.as_ref();
            let url =
                Url::parse(prefix).map_err(|error| format!("`{prefix}` is not a URL: {error}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!("`{prefix}` is not an http(s) URL with a host"));
            }
            allowed.push(url);
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .build()
            .map_err(|error| format!("the HTTP client could not be built: {error}"))?;
        Ok(HttpTool { allowed, client })
    }

    /// Whether `url` is under one of the allowed prefixes.
    fn allows(&self, url: &Url) -> bool {
        self.allowed.iter().any(|prefix| {
            prefix.scheme() == url.scheme()
                && prefix.host_str() == url.host_str()
                && prefix.port_or_known_default() == url.port_or_known_default()
                && url.path().starts_with(prefix.path())
        })
    }
}

#[async_trait]
impl Tool for HttpTool {
    fn name(&self) -> &str {
        "http_request"
    }

    fn description(&self) -> &str {
        "Send an HTTP request to an allowed endpoint and return the status and body."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "The URL."},
                "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
                "body": {"description": "The request body: text, or JSON."},
            },
            "required": ["url"],
        })
    }

    async fn call(
        &self,
        arguments: Map<String, Value>,
        context: &ToolContext,
    ) -> Result<ToolOutput, String> {
        let text = arguments
            .get("url")
            .and_then(Value::as_str)
            .ok_or("http_request needs a string argument `url`")?;
        let url = Url::parse(text).map_err(|error| format!("`{text}` is not a URL: {error}"))?;
        if !self.allows(&url) {
            return Err(format!("`{url}` is not an endpoint this worker may call"));
        }
        let method = match arguments.get("method").and_then(Value::as_str) {
            None => reqwest::Method::POST,
            Some(name) => match name.to_ascii_uppercase().as_str() {
                "GET" => reqwest::Method::GET,
                "POST" => reqwest::Method::POST,
                "PUT" => reqwest::Method::PUT,
                "PATCH" => reqwest::Method::PATCH,
                "DELETE" => reqwest::Method::DELETE,
                _ => return Err(format!("method `{name}` is not supported")),
            },
        };
        let mut request = self
            .client
            .request(method, url.clone())
            .header("Idempotency-Key", &context.idempotency_key);
        request = match arguments.get("body") {
            None | Some(Value::Null) => request,
            Some(Value::String(body)) => request.body(body.clone()),
            Some(body) => request
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        };
        let send = request.send();
        let response = tokio::select! {
            response = send => response.map_err(|error| format!("`{url}`: {error}"))?,
            () = context.cancel.cancelled() => return Err("the request was cancelled".to_owned()),
        };
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| format!("`{url}`: reading the body: {error}"))?;
        let shown = &bytes[..bytes.len().min(MAX_BODY_BYTES)];
        let text = format!(
            "HTTP {}\n{}",
            status.as_u16(),
            String::from_utf8_lossy(shown)
        );
        if status.as_u16() >= 400 {
            Err(text)
        } else {
            Ok(ToolOutput::Text(text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_prefixes() {
        let tool =
            HttpTool::new(["https://api.example.com/hooks/", "http://127.0.0.1:8080/"]).unwrap();
        let cases = [
            ("https://api.example.com/hooks/a", true),
            ("https://api.example.com:443/hooks/a", true),
            ("https://api.example.com/other", false),
            ("http://api.example.com/hooks/a", false),
            ("https://api.example.com.evil.test/hooks/a", false),
            ("http://127.0.0.1:8080/x", true),
            ("http://127.0.0.1:8081/x", false),
            ("http://localhost:8080/x", false),
        ];
        for (url, allowed) in cases {
            assert_eq!(tool.allows(&Url::parse(url).unwrap()), allowed, "{url}");
        }
        assert!(HttpTool::new(["file:///etc/"]).is_err());
        assert!(HttpTool::new(["not a url"]).is_err());
    }
}
