//! The test harness: real services for tests, started on free loopback
//! ports in temporary directories and stopped afterwards.
//!
//! Tests of every crate that talks to Redis or PostgreSQL depend on this
//! crate (as a dev-dependency). It never mocks a service: it runs the real
//! `redis-server` and `postgres` binaries, or hands out an isolated slice of
//! a server named by an environment variable:
//!
//! - `EXO_TEST_REDIS_URL`: use this Redis with a unique key prefix per test
//!   instead of starting one (tests never flush a shared server).
//! - `EXO_TEST_POSTGRES_URL`: use this PostgreSQL with a unique database per
//!   test instead of starting one.
//! - `EXO_TEST_TEMPORAL_ADDRESS`: use this Temporal server (`host:port`)
//!   with a unique task queue per test instead of starting a dev server;
//!   `EXO_TEMPORAL_BIN` names the `temporal` binary to start one with.
//!
//! A missing binary fails with a message that says how to install it.
//!
//! Main types: [`RedisServer`] (a process you can stop, restart and kill),
//! [`TestRedis`] (a URL and a unique prefix), [`TestPostgres`],
//! [`TemporalDevServer`] and [`TestTemporal`] (an address and a unique
//! task queue), and
//! [`FakeLlmServer`], a local HTTP server that stands in for LLM APIs by
//! replaying recorded responses.
//!
//! For tests of exo's own processes and outputs: [`TestProcess`] (a child
//! process with its output in log files, killed when dropped),
//! [`WorkerProcess`] (an `exo start worker` that has started), [`http_get`]
//! (a raw GET for probing endpoints) and [`expect_file`] (golden files,
//! refreshed with `UPDATE_EXPECT=1`).
//!
//! # Feature flags
//!
//! None.

#![allow(clippy::print_stderr)]

mod child;
mod expect;
mod fake_llm;
mod http;
mod postgres;
mod process;
mod redis;
mod temporal;
mod topology;

pub use child::{TestProcess, WorkerProcess};
pub use expect::expect_file;
pub use fake_llm::{FakeChunk, FakeHandler, FakeLlmServer, FakeResponse, RecordedRequest};
pub use http::http_get;
pub use postgres::{PostgresServer, TestPostgres};
pub use process::{find_binary, free_port, unique_name, wait_for_port};
pub use redis::{RedisServer, TestRedis, redis_command};
pub use temporal::{TemporalDevServer, TestTemporal, temporal_binary};
pub use topology::{AclRedis, RedisCluster, RedisSentinelSet, TlsRedis};
