//! The development issuer (DESIGN section 12): a small relayauth-compatible token issuer for
//! laptops, the demo and the tests, because the hosted relayauth cannot be reached from
//! everywhere these run. It is **not** relayauth and not for production: one admin key, state
//! in memory or in a local directory, no rate limits, no organisations beyond the strings it is
//! given.
//!
//! What it serves, in relayauth's shapes: the JWKS (an RSA and an Ed25519 key, RFC 7638
//! thumbprint kids), identities (create, read, suspend), token pairs (mint, single-use
//! refresh with reuse detection, revoke by token, session or identity), the revocation list,
//! introspection, delegation (narrower child tokens, refused with `scope_escalation` when a
//! requested scope is not within the parent's), and the audit trail. Tokens are signed with the
//! project's [`crate::token::Signer`] and verify with its [`crate::token::Verifier`]; the
//! issuer checks tokens presented to it with that same verifier.
//!
//! The pieces, one concern each:
//!
//! - `config`: [`IssuerConfig`].
//! - `server`: [`serve`] and [`RunningIssuer`] (in-process start, e.g. from tests, on an
//!   ephemeral loopback port; clean stop).
//! - `api`: the routes and handlers ([`router`]); `extract` reads bodies and queries without
//!   ever failing unreadably; `error` makes every refusal `{"error", "code"}` JSON.
//! - `app`: shared state and the credential checks (admin key, bearer tokens).
//! - `store`: identities, sessions, token records, revocation and its cascade; the operations
//!   in `identities`, `tokens` (mint, refresh) and `delegation`.
//! - `keyring`: the two signing keys; `persist`: the state directory; `audit`: the audit
//!   trail; `seed`: identities created at start; `model`: the records; `ids`: random ids and
//!   keys.

pub mod api;
pub mod app;
pub(crate) mod audit;
pub mod config;
pub(crate) mod delegation;
pub mod error;
pub(crate) mod extract;
pub(crate) mod identities;
pub(crate) mod ids;
pub(crate) mod keyring;
pub(crate) mod model;
pub(crate) mod persist;
pub mod seed;
pub mod server;
pub(crate) mod store;
pub(crate) mod tokens;

pub use api::router;
pub use app::{Issuer, TOKEN_READ_SCOPE};
pub use config::{DEFAULT_ISS, DEFAULT_LISTEN, IssuerConfig};
pub use error::{ApiError, StartError};
pub use seed::Seed;
pub use server::{RunningIssuer, serve};
