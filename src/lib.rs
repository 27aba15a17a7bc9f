//! relayauth-mount: a FUSE guard that enforces relayauth scopes over a relayfile mirror.
//!
//! The crate is a library with a thin binary on top, so that every decision can be tested
//! without FUSE. See README.md for what the tool does and DESIGN-level semantics.

pub mod audit;
pub mod authz;
pub mod cli;
pub mod daemon;
pub mod failure;
pub mod files;
pub mod fs;
pub mod fuse;
pub mod issuer;
pub mod permissions;
pub mod relayauth;
pub mod scope;
pub mod session;
pub mod token;
pub mod writeback;
