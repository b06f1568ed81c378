//! Integration tests of the `exo` binary, in one test binary.

mod cli;
