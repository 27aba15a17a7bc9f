//! relayauth, as the daemon talks to it: HTTP client construction ([`http`]), revocation
//! checks ([`revocation`]) and rotating a credentials bundle's token pair ([`refresh`]).
//! Nothing here runs on a filesystem call; where tokens come from is `crate::credentials`
//! (no HTTP), and verifying them is `crate::token`.

pub mod delegate;
pub mod http;
pub mod refresh;
pub mod revocation;

pub use refresh::{RefreshError, RefreshOptions, Refreshed, Refresher, should_refresh};
pub use revocation::*;
