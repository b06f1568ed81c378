//! Integration tests of exo-memory, against the real short-term store,
//! SQLite in temporary files and a real PostgreSQL (`exo-testkit` starts
//! one per test process, or uses `EXO_TEST_POSTGRES_URL`; every test gets
//! a database of its own).
//!
//! One test binary, so one PostgreSQL server serves every test.

mod common;
mod golden;
mod policy;
mod registry;
mod suite;
