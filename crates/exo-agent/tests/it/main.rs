//! Integration tests of exo-agent, in one test binary: runs against
//! scripted models, golden event streams, cancellation, swarms, MCP servers
//! (a fixture server that is this very binary) and an OpenAI-compatible
//! HTTP server replaying recorded responses.

mod cancel;
mod common;
mod gate;
mod golden;
mod journal;
#[cfg(feature = "mcp")]
mod mcp;
mod openai_e2e;
mod runs;
mod swarm;
