//! What the HTTP providers share: one client per process, retries with
//! backoff, error classification, and turning an SSE body into chunks.

use std::{collections::VecDeque, sync::OnceLock, time::Duration};

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use exo_proto::{Backoff, Jitter};
use futures::{Stream, StreamExt, stream::BoxStream};
use rand::RngExt;
use reqwest::{RequestBuilder, Response, StatusCode, header::HeaderMap};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    provider::{ChunkStream, StreamChunk},
};

/// How long to wait for a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a response may stay silent between two reads. Reasoning models
/// can think for minutes before their first token, so this is generous.
pub const READ_TIMEOUT: Duration = Duration::from_secs(180);

/// The most of an error body that is read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The process-wide HTTP client, so that calls reuse connections. It has
/// the connect and read timeouts above.
pub fn shared_client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_keepalive(Duration::from_secs(30))
                .user_agent(concat!("exo-models/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "could not build the tuned HTTP client; using the default one");
                    reqwest::Client::new()
                })
        })
        .clone()
}

/// How to reach a model behind an HTTP API: what the OpenAI, Anthropic and
/// Gemini providers each need. Each provider has a constructor with its
/// API's base URL ([`HttpProviderConfig::openai`],
/// [`HttpProviderConfig::anthropic`], [`HttpProviderConfig::gemini`]).
#[derive(Debug, Clone)]
pub struct HttpProviderConfig {
    /// The model name, e.g. `gpt-4o`, `claude-sonnet-4-5` or
    /// `gemini-2.5-flash`.
    pub model: String,
    /// The base URL the provider's paths are joined to.
    pub base_url: String,
    /// The API key, sent the way the provider's API wants it; no key
    /// header is sent without one (local OpenAI-compatible servers often
    /// need none).
    pub api_key: Option<String>,
    /// How transient failures are retried.
    pub retry: RetryPolicy,
}

impl HttpProviderConfig {
    /// A model at `base_url`, with the default retry policy.
    pub fn new(
        model: impl Into<String>,
        base_url: impl Into<String>,
        api_key: Option<String>,
    ) -> Self {
        HttpProviderConfig {
            model: model.into(),
            base_url: base_url.into(),
            api_key,
            retry: RetryPolicy::default(),
        }
    }

    /// The same config with another base URL.
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// The same config with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// How transient failures are retried: exponential backoff with jitter,
/// or the provider's `retry-after` when it gives one (capped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The backoff before the first retry; it doubles for each retry.
    pub initial_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// The longest wait a `retry-after` header can ask for.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The backoff between retries: `initial_backoff`, doubling, at most
    /// `max_backoff`. Full jitter in the upper half keeps a herd of workers
    /// apart without making the wait much shorter than the backoff.
    fn backoff(&self) -> Backoff {
        Backoff {
            base: self.initial_backoff,
            multiplier: 2,
            max: self.max_backoff,
            jitter: Jitter::UpperHalf,
        }
    }

    /// The wait before retry number `retry` (0-based).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.max_retry_after);
        }
        self.backoff()
            .jittered(retry, rand::rng().random_range(0.0..=1.0))
    }
}

/// Sends the request built by `build`, retrying transient failures until
/// the first byte of a successful body has arrived, and returns the body.
pub(crate) async fn open_stream(
    provider: &'static str,
    retry: &RetryPolicy,
    build: impl Fn() -> RequestBuilder,
) -> Result<BoxStream<'static, reqwest::Result<Bytes>>> {
    let mut retries = 0;
    loop {
        match attempt(provider, build()).await {
            Ok(body) => return Ok(body),
            Err(error) if error.is_retryable() && retries < retry.max_retries => {
                let wait = retry.delay(retries, error.retry_after());
                tracing::warn!(
                    provider,
                    %error,
                    retry = retries + 1,
                    wait_ms = wait.as_millis() as u64,
                    "model call failed; retrying"
                );
                tokio::time::sleep(wait).await;
                retries += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn attempt(
    provider: &'static str,
    request: RequestBuilder,
) -> Result<BoxStream<'static, reqwest::Result<Bytes>>> {
    let response = request.send().await.map_err(|error| Error::Transport {
        provider,
        message: describe(&error),
    })?;
    let status = response.status();
    if !status.is_success() {
        let headers = response.headers().clone();
        let body = read_error_body(response).await;
        return Err(classify(provider, status, &headers, &body));
    }
    let mut body = response.bytes_stream();
    loop {
        match body.next().await {
            Some(Ok(bytes)) if bytes.is_empty() => continue,
            Some(Ok(bytes)) => {
                return Ok(futures::stream::once(async move { Ok(bytes) })
                    .chain(body)
                    .boxed());
            }
            Some(Err(error)) => {
                return Err(Error::Transport {
                    provider,
                    message: format!(
                        "the connection failed before the first byte of the answer: {}",
                        describe(&error)
                    ),
                });
            }
            None => {
                return Err(Error::Transport {
                    provider,
                    message: "the server closed the response without sending a body".into(),
                });
            }
        }
    }
}

/// A reqwest error with its causes, which is where the useful part is.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        text.push_str(" (timed out)");
    }
    text
}

async fn read_error_body(mut response: Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    String::from_utf8_lossy(&body).into_owned()
}

/// The longest wait a provider's `retry-after` may ask for; longer asks
/// (`1e300`, say) are cut to this.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The wait a response asks for: `retry-after-ms`, else `retry-after` in
/// seconds, at most [`MAX_RETRY_AFTER`]. An HTTP date is not supported and
/// counts as no wait given.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|value| value.is_finite() && *value >= 0.0)
    };
    let seconds = |value: f64| {
        Duration::try_from_secs_f64(value)
            .unwrap_or(MAX_RETRY_AFTER)
            .min(MAX_RETRY_AFTER)
    };
    number("retry-after-ms")
        .map(|ms| seconds(ms / 1000.0))
        .or_else(|| number("retry-after").map(seconds))
}

#[cfg(test)]
mod retry_after_tests {
    use super::*;

    #[test]
    fn huge_or_odd_waits_are_capped_not_panics() {
        let cases: &[(&str, &str, Option<Duration>)] = &[
            ("retry-after", "2", Some(Duration::from_secs(2))),
            ("retry-after-ms", "1500", Some(Duration::from_millis(1500))),
            ("retry-after", "1e300", Some(MAX_RETRY_AFTER)),
            ("retry-after-ms", "1e308", Some(MAX_RETRY_AFTER)),
            ("retry-after", "-1", None),
            ("retry-after", "NaN", None),
            ("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT", None),
        ];
        for (name, value, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(*name, value.parse().unwrap());
            assert_eq!(retry_after(&headers), *expected, "{name}: {value}");
        }
    }
}

/// The message and code of a provider error body. OpenAI, Anthropic and
/// Gemini all use `{"error": {"message": ..., "type"/"code"/"status": ...}}`.
fn error_details(body: &str) -> (String, String) {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed
        .as_ref()
        .map(|value| value.get("error").unwrap_or(value));
    let message = error
        .and_then(|error| error.get("message").or_else(|| error.get("detail")))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| error.and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| {
            let trimmed = body.trim();
            if trimmed.is_empty() {
                "(empty body)".to_owned()
            } else {
                trimmed.chars().take(500).collect()
            }
        });
    let code = error
        .map(|error| {
            ["code", "type", "status"]
                .iter()
                .filter_map(|key| error.get(*key))
                .map(|value| match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    (message, code)
}

/// True when a 400 says the prompt does not fit the context window, in any
/// of the ways the providers and OpenAI-compatible servers say it.
fn is_context_length(message: &str, code: &str) -> bool {
    let text = format!("{message} {code}").to_lowercase();
    [
        "context_length_exceeded",
        "context length",
        "context window",
        "maximum context",
        "prompt is too long",
        "too many tokens",
        "exceeds the maximum number of tokens",
        "input token count",
        "reduce the length",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Turns a failed HTTP response into a typed error.
pub(crate) fn classify(
    provider: &'static str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
) -> Error {
    let (message, code) = error_details(body);
    let status_code = status.as_u16();
    match status_code {
        401 | 403 => Error::Auth {
            provider,
            status: status_code,
            message,
        },
        429 => Error::RateLimited {
            provider,
            retry_after: retry_after(headers),
            message,
        },
        413 => Error::ContextLength { provider, message },
        400 | 422 if is_context_length(&message, &code) => {
            Error::ContextLength { provider, message }
        }
        408 | 500..=599 => Error::Server {
            provider,
            status: status_code,
            message,
        },
        _ => Error::BadRequest {
            provider,
            status: status_code,
            message,
        },
    }
}

/// Turns an error object that arrived inside a stream into a typed error,
/// using the HTTP status it would have had.
pub(crate) fn classify_stream_error(provider: &'static str, error: &Value) -> Error {
    let kind = ["type", "code", "status"]
        .iter()
        .find_map(|key| error.get(*key).and_then(Value::as_str))
        .unwrap_or_default()
        .to_lowercase();
    let status = if kind.contains("rate_limit") || kind.contains("resource_exhausted") {
        429
    } else if kind.contains("overloaded") {
        529
    } else if kind.contains("invalid_request") || kind.contains("invalid_argument") {
        400
    } else if kind.contains("authentication") || kind.contains("permission") {
        401
    } else {
        error
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|code| u16::try_from(code).ok())
            .filter(|code| (400..600).contains(code))
            .unwrap_or(500)
    };
    let body = serde_json::json!({ "error": error }).to_string();
    classify(
        provider,
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &HeaderMap::new(),
        &body,
    )
}

/// What a provider does with each SSE event.
pub(crate) trait SseDecoder: Send + 'static {
    /// The chunks one event carries.
    fn decode(&mut self, event: &Event) -> Result<Vec<StreamChunk>>;

    /// True once the model has finished its answer (a finish reason or the
    /// provider's end marker has arrived).
    fn finished(&self) -> bool;

    /// True once the provider's end-of-stream marker has arrived; nothing
    /// after it is read.
    fn done(&self) -> bool {
        false
    }

    /// Chunks to add when the stream ends cleanly.
    fn at_end(&mut self) -> Vec<StreamChunk> {
        Vec::new()
    }
}

struct Pump<D> {
    provider: &'static str,
    events: BoxStream<'static, std::result::Result<Event, EventStreamError<reqwest::Error>>>,
    decoder: D,
    pending: VecDeque<StreamChunk>,
    over: bool,
}

/// Turns an SSE body into a chunk stream with `decoder`. A body that ends
/// before the decoder saw the model finish is an [`Error::Interrupted`].
pub(crate) fn sse_chunks<S, D>(provider: &'static str, body: S, decoder: D) -> ChunkStream
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    D: SseDecoder,
{
    let pump = Pump {
        provider,
        events: body.eventsource().boxed(),
        decoder,
        pending: VecDeque::new(),
        over: false,
    };
    Box::pin(futures::stream::unfold(pump, |mut pump| async move {
        loop {
            if let Some(chunk) = pump.pending.pop_front() {
                return Some((Ok(chunk), pump));
            }
            if pump.over {
                return None;
            }
            if pump.decoder.done() {
                pump.over = true;
                pump.pending.extend(pump.decoder.at_end());
                continue;
            }
            match pump.events.next().await {
                Some(Ok(event)) => match pump.decoder.decode(&event) {
                    Ok(chunks) => pump.pending.extend(chunks),
                    Err(error) => {
                        pump.over = true;
                        return Some((Err(error), pump));
                    }
                },
                Some(Err(error)) => {
                    pump.over = true;
                    let error = match error {
                        EventStreamError::Transport(error) => Error::Interrupted {
                            provider: pump.provider,
                            message: describe(&error),
                        },
                        other => Error::InvalidResponse {
                            provider: pump.provider,
                            message: format!("unreadable event stream: {other}"),
                        },
                    };
                    return Some((Err(error), pump));
                }
                None => {
                    pump.over = true;
                    if pump.decoder.finished() {
                        pump.pending.extend(pump.decoder.at_end());
                        continue;
                    }
                    let error = Error::Interrupted {
                        provider: pump.provider,
                        message: "the connection closed before the model finished its answer"
                            .into(),
                    };
                    return Some((Err(error), pump));
                }
            }
        }
    }))
}

/// Parses an event's data as JSON.
pub(crate) fn event_json(provider: &'static str, event: &Event) -> Result<Value> {
    serde_json::from_str(&event.data).map_err(|error| Error::InvalidResponse {
        provider,
        message: format!(
            "event data is not JSON ({error}): {}",
            truncate(&event.data)
        ),
    })
}

fn truncate(text: &str) -> String {
    text.chars().take(200).collect()
}

/// Joins a base URL and a path with exactly one slash.
pub(crate) fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, headers: &[(&str, &str)], body: &str, expected: &str) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let error = classify("openai", StatusCode::from_u16(status).unwrap(), &map, body);
        let actual = format!(
            "{} retryable={} retry_after={:?}: {error}",
            error.error_type(),
            error.is_retryable(),
            error.retry_after()
        );
        assert_eq!(actual, expected);
    }

    #[test]
    fn http_errors_are_classified() {
        check(
            401,
            &[],
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#,
            "AuthenticationError retryable=false retry_after=None: openai: authentication failed (HTTP 401): Incorrect API key provided",
        );
        check(
            429,
            &[("retry-after", "2")],
            r#"{"error":{"message":"Rate limit reached"}}"#,
            "RateLimitError retryable=true retry_after=Some(2s): openai: rate limited (HTTP 429): Rate limit reached",
        );
        check(
            429,
            &[("retry-after-ms", "250"), ("retry-after", "9")],
            "",
            "RateLimitError retryable=true retry_after=Some(250ms): openai: rate limited (HTTP 429): (empty body)",
        );
        check(
            503,
            &[],
            "upstream unavailable",
            "InternalServerError retryable=true retry_after=None: openai: server error (HTTP 503): upstream unavailable",
        );
        check(
            400,
            &[],
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens.","code":"context_length_exceeded"}}"#,
            "ContextLengthExceededError retryable=false retry_after=None: openai: the request exceeds the model's context length: This model's maximum context length is 8192 tokens.",
        );
        check(
            400,
            &[],
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
            "ContextLengthExceededError retryable=false retry_after=None: openai: the request exceeds the model's context length: prompt is too long: 210000 tokens > 200000 maximum",
        );
        check(
            400,
            &[],
            r#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#,
            "BadRequestError retryable=false retry_after=None: openai: bad request (HTTP 400): Invalid JSON payload",
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            max_retry_after: Duration::from_secs(2),
        };
        for retry in 0..5 {
            let delay = policy.delay(retry, None);
            let full = Duration::from_millis(100 * 2u64.pow(retry)).min(Duration::from_millis(300));
            assert!(delay >= full / 2 && delay <= full, "{retry}: {delay:?}");
        }
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(120))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn urls_join_with_one_slash() {
        assert_eq!(join_url("http://h/v1/", "/chat"), "http://h/v1/chat");
        assert_eq!(join_url("http://h/v1", "chat"), "http://h/v1/chat");
    }
}
