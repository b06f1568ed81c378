//! A fake LLM HTTP server: a real HTTP/1.1 server on `127.0.0.1:0` that
//! replays scripted responses and records every request.
//!
//! It is std-only (a listener thread plus one thread per connection), so
//! sync and async tests can both use it. Provider code talks to it over real
//! TCP exactly as it talks to a paid API: the OpenAI, Anthropic and Gemini
//! clients of `exo-models` are tested against it with recorded transcripts,
//! and end-to-end tests point a worker's `OPENAI_BASE_URL` at
//! [`FakeLlmServer::openai_base_url`].
//!
//! Responses are answered in order from a queue; when the queue has no
//! response for a request, the default response answers, and without a
//! default the server answers 404. Streamed bodies use chunked transfer
//! encoding, one HTTP chunk per [`FakeChunk`], each after its delay. A
//! response can drop the connection after `k` chunks without terminating
//! the chunked body, which is what a client sees when a connection dies
//! mid-stream. Every response carries `Connection: close`.
//!
//! # Transcripts
//!
//! [`FakeResponse::from_transcript`] reads a recorded response:
//!
//! ```text
//! # Comment lines before the status line are ignored.
//! HTTP/1.1 200 OK
//! content-type: text/event-stream
//!
//! data: {"choices":[...]}
//!
//! !delay 20
//! data: [DONE]
//!
//! ```
//!
//! The status line is followed by headers, an empty line and the body. For
//! `text/event-stream` bodies each event (up to and including its blank
//! line) becomes its own chunk; other bodies are one chunk. Lines starting
//! with `!` are directives, not body: `!delay <ms>` delays the next chunk,
//! `!drop` closes the connection at that point, and `!hangup` (as the
//! only body line) closes the connection before any response byte.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde_json::{Value, json};

/// One piece of a response body, written as one HTTP chunk after `delay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeChunk {
    /// How long to wait before writing this chunk.
    pub delay: Duration,
    /// The bytes of the chunk.
    pub bytes: Vec<u8>,
}

/// A scripted HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers (`Transfer-Encoding` and `Connection` are added).
    pub headers: Vec<(String, String)>,
    /// The body, chunk by chunk.
    pub chunks: Vec<FakeChunk>,
    /// Close the connection after this many chunks, without terminating
    /// the chunked body.
    pub drop_after: Option<usize>,
    /// Close the connection without sending any response byte.
    pub hang_up: bool,
    /// Answer only requests whose path (without the query) ends with this.
    pub path_suffix: Option<String>,
}

impl FakeResponse {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        FakeResponse {
            status,
            headers: Vec::new(),
            chunks: Vec::new(),
            drop_after: None,
            hang_up: false,
            path_suffix: None,
        }
    }

    /// A JSON response.
    pub fn json(status: u16, body: &Value) -> Self {
        FakeResponse::new(status)
            .header("content-type", "application/json")
            .chunk(body.to_string())
    }

    /// A `text/event-stream` response with one chunk per event; each event
    /// is sent as `data: {event}\n\n`.
    pub fn sse<I, S>(events: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        events.into_iter().fold(
            FakeResponse::new(200).header("content-type", "text/event-stream"),
            |response, event| response.chunk(format!("data: {}\n\n", event.as_ref())),
        )
    }

    /// An OpenAI chat-completions stream of `text` in `pieces` chunks, one
    /// every `every` (so a call takes about `pieces × every`): a model call
    /// with a known duration, for fault tests that look for overlaps.
    pub fn openai_text_paced(text: &str, pieces: usize, every: Duration) -> Self {
        let pieces = pieces.max(1);
        let mut response = FakeResponse::new(200).header("content-type", "text/event-stream");
        response = response.chunk(format!(
            "data: {}\n\n",
            openai_chunk(json!({"role": "assistant", "content": ""}), None)
        ));
        for _ in 0..pieces {
            response = response.chunk_after(
                every,
                format!(
                    "data: {}\n\n",
                    openai_chunk(json!({"content": format!("{text} ")}), None)
                ),
            );
        }
        response
            .chunk(format!(
                "data: {}\n\n",
                openai_chunk(json!({}), Some("stop"))
            ))
            .chunk("data: [DONE]\n\n")
    }

    /// A response that closes the connection before sending anything.
    pub fn hang_up() -> Self {
        FakeResponse {
            hang_up: true,
            ..FakeResponse::new(200)
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Appends a body chunk, sent right away.
    pub fn chunk(self, bytes: impl Into<Vec<u8>>) -> Self {
        self.chunk_after(Duration::ZERO, bytes)
    }

    /// Appends a body chunk, sent after `delay`.
    pub fn chunk_after(mut self, delay: Duration, bytes: impl Into<Vec<u8>>) -> Self {
        self.chunks.push(FakeChunk {
            delay,
            bytes: bytes.into(),
        });
        self
    }

    /// Closes the connection after `chunks` chunks, mid-body.
    pub fn drop_after(mut self, chunks: usize) -> Self {
        self.drop_after = Some(chunks);
        self
    }

    /// Answers only requests whose path ends with `suffix`.
    pub fn for_path(mut self, suffix: &str) -> Self {
        self.path_suffix = Some(suffix.to_owned());
        self
    }

    /// Parses a recorded response (see the module docs for the format).
    pub fn from_transcript(text: &str) -> Result<Self, String> {
        let mut lines = text.split_inclusive('\n').peekable();
        while let Some(line) = lines.peek() {
            if line.starts_with('#') || line.trim().is_empty() {
                lines.next();
            } else {
                break;
            }
        }
        let status_line = lines.next().ok_or("the transcript is empty")?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .filter(|_| status_line.starts_with("HTTP"))
            .ok_or_else(|| {
                format!(
                    "expected a status line like `HTTP/1.1 200 OK`, found `{}`",
                    status_line.trim_end()
                )
            })?;
        let mut response = FakeResponse::new(status);
        for line in lines.by_ref() {
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("expected a header `name: value`, found `{line}`"))?;
            response = response.header(name.trim(), value.trim());
        }
        let event_stream = response
            .header_value("content-type")
            .is_some_and(|value| value.contains("text/event-stream"));
        let mut pending = String::new();
        let mut delay = Duration::ZERO;
        let flush = |response: &mut FakeResponse, pending: &mut String, delay: &mut Duration| {
            if !pending.is_empty() {
                response.chunks.push(FakeChunk {
                    delay: std::mem::take(delay),
                    bytes: std::mem::take(pending).into_bytes(),
                });
            }
        };
        for line in lines {
            if let Some(directive) = line.strip_prefix('!') {
                flush(&mut response, &mut pending, &mut delay);
                let directive = directive.trim();
                if directive == "drop" {
                    response.drop_after = Some(response.chunks.len());
                } else if directive == "hangup" {
                    response.hang_up = true;
                } else if let Some(ms) = directive.strip_prefix("delay ") {
                    let ms: u64 = ms
                        .trim()
                        .parse()
                        .map_err(|_| format!("`!delay {ms}` needs a number of milliseconds"))?;
                    delay = Duration::from_millis(ms);
                } else {
                    return Err(format!("unknown directive `!{directive}`"));
                }
                continue;
            }
            pending.push_str(line);
            if event_stream && line.trim().is_empty() {
                flush(&mut response, &mut pending, &mut delay);
            }
        }
        flush(&mut response, &mut pending, &mut delay);
        Ok(response)
    }

    /// The first header with this name (case-insensitive).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// An OpenAI Chat Completions SSE stream that answers `text` (in a few
    /// chunks), then `finish_reason: stop`, usage and `[DONE]`. It answers
    /// requests to paths ending in `/chat/completions`.
    pub fn openai_text(text: &str) -> Self {
        let completion = text.split_whitespace().count().max(1) as u64;
        Self::openai_text_with_usage(text, 10, completion)
    }

    /// [`FakeResponse::openai_text`] reporting this usage.
    pub fn openai_text_with_usage(text: &str, prompt_tokens: u64, completion_tokens: u64) -> Self {
        let mut events = vec![openai_chunk(
            json!({"role": "assistant", "content": ""}),
            None,
        )];
        events.extend(
            split_text(text, 4)
                .into_iter()
                .map(|piece| openai_chunk(json!({ "content": piece }), None)),
        );
        events.push(openai_chunk(json!({}), Some("stop")));
        events.push(openai_usage(prompt_tokens, completion_tokens));
        events.push("[DONE]".to_owned());
        FakeResponse::sse(events).for_path("/chat/completions")
    }

    /// An OpenAI Chat Completions SSE stream that asks for these tool calls
    /// (`(id, name, arguments JSON)`), each call's arguments split in two
    /// fragments, then `finish_reason: tool_calls`, usage and `[DONE]`. It
    /// answers requests to paths ending in `/chat/completions`.
    pub fn openai_tool_calls(calls: &[(&str, &str, &str)]) -> Self {
        Self::openai_tool_calls_with_usage(calls, 10, 1)
    }

    /// [`FakeResponse::openai_tool_calls`] reporting this usage.
    pub fn openai_tool_calls_with_usage(
        calls: &[(&str, &str, &str)],
        prompt_tokens: u64,
        completion_tokens: u64,
    ) -> Self {
        let mut events = vec![openai_chunk(
            json!({"role": "assistant", "content": null}),
            None,
        )];
        for (index, (id, name, arguments)) in calls.iter().enumerate() {
            let split = arguments
                .char_indices()
                .map(|(position, _)| position)
                .nth(arguments.chars().count() / 2)
                .unwrap_or(arguments.len());
            let (head, tail) = arguments.split_at(split);
            events.push(openai_chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                    "function": {"name": name, "arguments": head}}]}),
                None,
            ));
            events.push(openai_chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": tail}}]}),
                None,
            ));
        }
        events.push(openai_chunk(json!({}), Some("tool_calls")));
        events.push(openai_usage(prompt_tokens, completion_tokens));
        events.push("[DONE]".to_owned());
        FakeResponse::sse(events).for_path("/chat/completions")
    }
}

fn openai_chunk(delta: Value, finish_reason: Option<&str>) -> String {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })
    .to_string()
}

fn openai_usage(prompt: u64, completion: u64) -> String {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion},
    })
    .to_string()
}

/// Splits `text` into at most `pieces` non-empty parts at char boundaries.
fn split_text(text: &str, pieces: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let size = chars.len().div_ceil(pieces.max(1));
    chars
        .chunks(size)
        .map(|piece| piece.iter().collect())
        .collect()
}

/// A request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target, with its query string.
    pub path: String,
    /// Headers in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// When its head arrived.
    pub received_at: std::time::Instant,
}

impl RecordedRequest {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The path without its query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or(&self.path)
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<FakeResponse>,
    default: Option<FakeResponse>,
    requests: Vec<RecordedRequest>,
}

/// Answers a request before the queue and the default do (`None`: let
/// them answer).
pub type FakeHandler = dyn Fn(&RecordedRequest) -> Option<FakeResponse> + Send + Sync;

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    handler: Mutex<Option<Arc<FakeHandler>>>,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Shared")
            .field("state", &self.state)
            .field("stopping", &self.stopping)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not poison every later test
        // assertion, so a poisoned lock is used as is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The fake server. It stops when dropped.
#[derive(Debug)]
pub struct FakeLlmServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl FakeLlmServer {
    /// Starts a server with an empty queue and no default response.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("the listener's address");
        let shared = Arc::new(Shared::default());
        let accept_shared = Arc::clone(&shared);
        let accept_thread = std::thread::Builder::new()
            .name("fake-llm-accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared))
            .expect("spawn the accept thread");
        FakeLlmServer {
            address,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// An OpenAI-compatible server: every POST to a path ending in
    /// `/chat/completions` (e.g. `/v1/chat/completions`) is answered with
    /// an SSE stream of `text`, unless a queued response comes first.
    pub fn openai(text: &str) -> Self {
        let server = FakeLlmServer::start();
        server.set_default(FakeResponse::openai_text(text));
        server
    }

    /// `http://127.0.0.1:{port}`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `http://127.0.0.1:{port}/v1`, the value for `OPENAI_BASE_URL`.
    pub fn openai_base_url(&self) -> String {
        format!("{}/v1", self.base_url())
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Queues a response; queued responses answer in order.
    pub fn push(&self, response: FakeResponse) {
        self.shared.state().queue.push_back(response);
    }

    /// Sets the response used when the queue has none for a request.
    pub fn set_default(&self, response: FakeResponse) {
        self.shared.state().default = Some(response);
    }

    /// Answers every request with `handler` first: a provider with state
    /// of its own (a rate limit it enforces, say). When it returns `None`
    /// the queue and the default answer.
    pub fn set_handler(
        &self,
        handler: impl Fn(&RecordedRequest) -> Option<FakeResponse> + Send + Sync + 'static,
    ) {
        *self
            .shared
            .handler
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(handler));
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().requests.clone()
    }

    /// The number of requests received so far.
    pub fn request_count(&self) -> usize {
        self.shared.state().requests.len()
    }

    /// The JSON bodies of every request so far (`Value::Null` for a body
    /// that is not JSON).
    pub fn json_bodies(&self) -> Vec<Value> {
        self.shared
            .state()
            .requests
            .iter()
            .map(RecordedRequest::json)
            .collect()
    }

    /// The number of queued responses not yet used.
    pub fn queued(&self) -> usize {
        self.shared.state().queue.len()
    }
}

impl Drop for FakeLlmServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(shared);
        let _ = std::thread::Builder::new()
            .name("fake-llm-conn".into())
            .spawn(move || serve_connection(stream, &shared));
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_nodelay(true);
    let Some(request) = read_request(&stream) else {
        return;
    };
    shared.state().requests.push(request.clone());
    let handler = shared
        .handler
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let handled = handler.and_then(|handler| handler(&request));
    let response = if handled.is_some() {
        handled
    } else {
        let mut state = shared.state();
        let path = request.path_only().to_owned();
        let matches = |response: &FakeResponse| {
            response
                .path_suffix
                .as_deref()
                .is_none_or(|suffix| path.ends_with(suffix))
        };
        match state.queue.iter().position(matches) {
            Some(position) => state.queue.remove(position),
            None => state.default.clone().filter(matches),
        }
    };
    let response = response.unwrap_or_else(|| {
        FakeResponse::json(
            404,
            &json!({"error": {"message": format!(
                "the fake server has no response for {} {}",
                request.method, request.path
            ), "type": "not_found"}}),
        )
    });
    write_response(stream, &response);
}

fn read_request(stream: &TcpStream) -> Option<RecordedRequest> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let received_at = std::time::Instant::now();
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.clone())
    };
    let mut body = Vec::new();
    if let Some(length) = header("content-length").and_then(|value| value.parse::<usize>().ok()) {
        body.resize(length, 0);
        reader.read_exact(&mut body).ok()?;
    } else if header("transfer-encoding").is_some_and(|value| value.contains("chunked")) {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).ok()?;
            let size_text = size_line.trim().split(';').next().unwrap_or("0");
            let size = usize::from_str_radix(size_text, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            chunk.truncate(size);
            body.extend_from_slice(&chunk);
            if size == 0 {
                break;
            }
        }
    }
    Some(RecordedRequest {
        method,
        path,
        headers,
        body,
        received_at,
    })
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Status",
    }
}

fn write_response(mut stream: TcpStream, response: &FakeResponse) {
    if response.hang_up {
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason_phrase(response.status)
    );
    for (name, value) in &response.headers {
        let lowered = name.to_ascii_lowercase();
        if lowered == "transfer-encoding" || lowered == "connection" || lowered == "content-length"
        {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).is_err() || stream.flush().is_err() {
        return;
    }
    for (index, chunk) in response.chunks.iter().enumerate() {
        if response.drop_after == Some(index) {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        if !chunk.delay.is_zero() {
            std::thread::sleep(chunk.delay);
        }
        if chunk.bytes.is_empty() {
            continue;
        }
        let mut framed = format!("{:x}\r\n", chunk.bytes.len()).into_bytes();
        framed.extend_from_slice(&chunk.bytes);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).is_err() || stream.flush().is_err() {
            return;
        }
    }
    if response.drop_after.is_some() {
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends one HTTP/1.1 request and returns the raw response bytes.
    fn raw_request(server: &FakeLlmServer, method: &str, path: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(server.address()).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    }

    #[test]
    fn queue_then_default_then_404_and_recording() {
        let server = FakeLlmServer::start();
        server.push(
            FakeResponse::json(429, &json!({"error": "slow down"})).header("retry-after", "1"),
        );
        server.set_default(FakeResponse::sse(["a", "[DONE]"]).for_path("/chat/completions"));

        let first = raw_request(&server, "POST", "/v1/chat/completions", r#"{"n":1}"#);
        assert!(first.starts_with("HTTP/1.1 429"), "{first}");
        assert!(first.contains("retry-after: 1"), "{first}");
        assert!(first.contains("slow down"), "{first}");
        assert!(first.ends_with("0\r\n\r\n"), "{first}");

        let second = raw_request(&server, "POST", "/v1/chat/completions?x=1", r#"{"n":2}"#);
        assert!(second.contains("data: a\n\n"), "{second}");
        assert!(second.contains("data: [DONE]\n\n"), "{second}");

        let third = raw_request(&server, "POST", "/v1/other", "{}");
        assert!(third.starts_with("HTTP/1.1 404"), "{third}");

        let bodies = server.json_bodies();
        assert_eq!(bodies[0], json!({"n": 1}));
        assert_eq!(bodies[1], json!({"n": 2}));
        let requests = server.requests();
        assert_eq!(requests[1].path_only(), "/v1/chat/completions");
        assert_eq!(requests[1].header("Content-Type"), Some("application/json"));
    }

    #[test]
    fn drop_after_leaves_the_chunked_body_unterminated() {
        let server = FakeLlmServer::start();
        server.push(FakeResponse::sse(["one", "two", "three"]).drop_after(2));
        let response = raw_request(&server, "POST", "/", "");
        assert!(response.contains("data: two"), "{response}");
        assert!(!response.contains("three"), "{response}");
        assert!(!response.ends_with("0\r\n\r\n"), "{response}");

        server.push(FakeResponse::hang_up());
        assert_eq!(raw_request(&server, "POST", "/", ""), "");
    }

    #[test]
    fn transcripts_split_events_and_read_directives() {
        let transcript = "# a recorded stream\nHTTP/1.1 200 OK\ncontent-type: text/event-stream\n\ndata: 1\n\n!delay 5\ndata: 2\n\n!drop\ndata: 3\n\n";
        let response = FakeResponse::from_transcript(transcript).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.chunks.len(), 3);
        assert_eq!(response.chunks[1].delay, Duration::from_millis(5));
        assert_eq!(response.chunks[1].bytes, b"data: 2\n\n");
        assert_eq!(response.drop_after, Some(2));

        let error = FakeResponse::from_transcript(
            "HTTP/1.1 429 Too Many Requests\nretry-after: 2\n\n{\"error\": {}}\n",
        )
        .unwrap();
        assert_eq!(error.status, 429);
        assert_eq!(error.header_value("Retry-After"), Some("2"));
        assert_eq!(error.chunks.len(), 1);

        assert!(FakeResponse::from_transcript("nonsense").is_err());
        assert!(FakeResponse::from_transcript("HTTP/1.1 200 OK\n\n!bogus\n").is_err());
    }

    #[test]
    fn openai_helpers_speak_chat_completions() {
        let server = FakeLlmServer::openai("hello there world");
        server.push(FakeResponse::openai_tool_calls(&[(
            "call_1",
            "get_weather",
            r#"{"city":"Paris"}"#,
        )]));
        let tools = raw_request(&server, "POST", "/v1/chat/completions", "{}");
        assert!(tools.contains(r#""name":"get_weather""#), "{tools}");
        assert!(tools.contains(r#""finish_reason":"tool_calls""#), "{tools}");
        let text = raw_request(&server, "POST", "/chat/completions", "{}");
        assert!(text.contains(r#""finish_reason":"stop""#), "{text}");
        assert!(text.contains("[DONE]"), "{text}");
        assert!(server.base_url().starts_with("http://127.0.0.1:"));
        assert!(server.openai_base_url().ends_with("/v1"));
    }
}
