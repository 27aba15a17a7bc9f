//! relayauth-mount: a FUSE guard that enforces relayauth scopes over a relayfile mirror.
//!
//! The crate is a library with a thin binary on top, so that every decision can be tested
//! without FUSE. See README.md for what the tool does and DESIGN-level semantics.

#![deny(clippy::undocumented_unsafe_blocks)]

// The surface `main`, the tests, the benches and the docs use: the command line, the rules
// (scopes, authorization), tokens, where they come from and relayauth's endpoints, the
// development issuer, and the filesystem core with its gate. Everything else is the daemon's own.
pub mod authz;
pub mod cli;
pub mod credentials;
pub mod fs;
pub mod issuer;
pub mod relayauth;
pub mod scope;
pub mod token;

/// Entry points for the fuzz targets (`fuzz/`), behind the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

/// What the benchmarks need of private modules, behind the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod bench_support {
    pub use crate::session::Callers;
    pub use crate::session::callers::{ProcessKey, proc_stat};
    pub use crate::session::testing::session;
}

mod audit;
mod daemon;
mod failure;
mod files;
mod fuse;
mod passthrough;
mod permissions;
mod session;
mod writeback;
