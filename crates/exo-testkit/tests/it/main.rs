//! Integration tests of the harness itself, in one test binary.

mod harness;
