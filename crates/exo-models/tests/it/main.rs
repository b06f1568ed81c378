//! Integration tests of exo-models, in one test binary: the providers
//! against a local HTTP server replaying recorded transcripts, and the
//! scripted model.

mod providers;
mod scripted;
