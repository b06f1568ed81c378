//! The worker against real redis-servers (and PostgreSQL, SQLite and the
//! Temporal dev server for the features that need them), one test binary.

#[cfg(all(feature = "sqlite", feature = "postgres"))]
mod memory;
#[cfg(feature = "temporal")]
mod temporal;
mod worker;
