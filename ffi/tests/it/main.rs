//! Tests of the C ABI: the header, and C and Python programs compiled/run against the built
//! library (`libtailor_ffi.so`, which `cargo test -p tailor-ffi` builds beside the tests).

mod c_flow;
mod example;
mod header;
mod hostile;
mod python;
mod symbols;
mod support;
