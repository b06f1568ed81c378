//! Integration tests of exo-temporal against a Temporal dev server, in one
//! test binary.

mod dev_server;
