//! Model providers behind one trait: stream a model's answer, whatever API
//! serves it.
//!
//! `exo-agent` depends on this crate to call models, and the worker uses it
//! to build its provider factory. It knows the provider APIs and nothing
//! else: not Redis, not tasks, not agents. Everything crosses its boundary
//! as `exo-proto` types ([`exo_proto::Message`], [`exo_proto::Usage`]) or the
//! small types below; HTTP bodies stay private.
//!
//! # Main types
//!
//! - [`ModelProvider`]: the trait. [`ModelProvider::stream`] yields
//!   [`StreamChunk`]s (a text delta, an optional reasoning delta, tool call
//!   fragments by index with optional id and name, a finish reason, usage);
//!   [`ModelProvider::complete`] collects them into a [`Completion`].
//! - [`resolve_provider`] builds a provider from a `provider:model` string
//!   and the environment; [`ProviderFactory`] is the function type the
//!   worker holds (see [`default_factory`] and [`fixed_factory`]).
//! - [`HttpProviderConfig`]: how to reach a model behind an HTTP API
//!   (model, base URL, key, [`RetryPolicy`]), the one config the OpenAI,
//!   Anthropic and Gemini providers take.
//! - [`Error`]: typed failures (auth, rate limit with `retry-after`, server
//!   error, context length, bad request, transport, interrupted stream),
//!   each saying whether it is retryable.
//!
//! # Providers and model strings
//!
//! A model string is split at its first colon into provider and model; a
//! bare name means openai.
//!
//! | provider | API | environment |
//! |---|---|---|
//! | `openai` | Chat Completions streaming ([`OpenAiProvider`]) | `OPENAI_API_KEY`, `OPENAI_BASE_URL` (default `https://api.openai.com/v1`) |
//! | `ollama` | the same, on Ollama | `OLLAMA_BASE_URL` (default `http://localhost:11434/v1`), optional `OLLAMA_API_KEY` |
//! | `vllm` | the same, on vLLM | `VLLM_BASE_URL` (default `http://localhost:8000/v1`), optional `VLLM_API_KEY` |
//! | `anthropic` | Messages streaming ([`AnthropicProvider`]) | `ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL` |
//! | `gemini` (or `google`) | `streamGenerateContent?alt=sse` ([`GeminiProvider`]) | `GEMINI_API_KEY` (or `GOOGLE_API_KEY`), `GEMINI_BASE_URL` |
//! | `scripted` (or `mock`) | replays a script, no network ([`ScriptedProvider`]) | none; see [`ScriptedProvider`] for the forms |
//!
//! The `openai` provider speaks to any OpenAI-compatible server: Ollama,
//! vLLM, the llama.cpp server, LM Studio, LiteLLM and others. Point
//! `OPENAI_BASE_URL` at the server's `/v1` (e.g. `http://localhost:1234/v1`
//! for LM Studio, `http://localhost:8080/v1` for llama.cpp); the API key is
//! then optional. `ollama:` and `vllm:` are the same provider with their
//! usual local base URLs as defaults.
//!
//! # Network behaviour
//!
//! All HTTP providers share one `reqwest` client per process
//! ([`shared_client`]), so calls reuse connections; it has a connect
//! timeout ([`CONNECT_TIMEOUT`]) and a read timeout between bytes
//! ([`READ_TIMEOUT`]). Transient failures (429, 5xx, a connection that
//! fails before the first byte of the answer) are retried with exponential
//! backoff and jitter, honouring `retry-after` up to a cap ([`RetryPolicy`]).
//! Once the answer has started streaming nothing is retried: an error
//! surfaces, and a stream that ends before the model finished is an
//! [`Error::Interrupted`], never a silently short answer.
//!
//! # Feature flags
//!
//! None. Every provider is plain HTTP on `reqwest` with rustls.

mod anthropic;
mod error;
mod gemini;
mod http;
mod openai;
mod provider;
mod resolve;
mod scripted;

pub use anthropic::{
    ANTHROPIC_BASE_URL, ANTHROPIC_DEFAULT_MAX_TOKENS, ANTHROPIC_VERSION, AnthropicProvider,
};
pub use error::{Error, Result};
pub use gemini::{GEMINI_BASE_URL, GeminiProvider};
pub use http::{CONNECT_TIMEOUT, HttpProviderConfig, READ_TIMEOUT, RetryPolicy, shared_client};
pub use openai::{OPENAI_BASE_URL, OpenAiProvider};
pub use provider::{
    ChunkStream, Completion, FinishReason, ModelProvider, ModelRequest, StreamChunk, ToolCallDelta,
    ToolDefinition,
};
pub use resolve::{
    OLLAMA_BASE_URL, PROVIDERS, ProviderFactory, SHORT_MODEL_NAME_MAX, VLLM_BASE_URL,
    default_factory, fixed_factory, resolve_provider, resolve_provider_with_env, short_model_name,
    split_model,
};
pub use scripted::{Script, ScriptedProvider, ScriptedToolCall, Turn};
