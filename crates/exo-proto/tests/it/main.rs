//! Integration tests of exo-proto, in one test binary: golden round trips,
//! decode errors and properties of the wire types.

mod decode_errors;
mod golden;
mod properties;
