//! The outage test's harness: tests/support's test namespace and backends.

#[path = "../support/backends.rs"]
mod backends;
#[path = "../support/env.rs"]
mod env;

pub use backends::*;
pub use env::*;
