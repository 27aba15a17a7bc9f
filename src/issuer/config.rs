//! How a development issuer is set up: where it listens, its admin key, its `iss`, where it
//! keeps state, which key signs, and which identities it starts with.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::seed::Seed;
use crate::token::KeyAlgorithm;

/// The issuer string put in `iss` unless configured otherwise. Distinct from relayauth's
/// (`https://relayauth.dev`) on purpose: a mount must be told (`--issuer relayauth:dev`) that it
/// trusts a development issuer.
pub const DEFAULT_ISS: &str = "relayauth:dev";
/// The address `relayauth-mount dev-issuer` listens on unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8787);

/// Everything [`super::serve`] needs.
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    /// Where to listen; port 0 picks a free port (read it back from [`super::RunningIssuer`]).
    pub listen: SocketAddr,
    /// The API key accepted in `x-api-key` for admin calls.
    pub admin_key: String,
    /// The `iss` of every token, and what a verifier of these tokens must be configured with.
    pub issuer: String,
    /// Where keys, identities, sessions, revocations and the audit trail are kept across
    /// restarts. `None`: memory only, everything (keys included) is new at each start.
    pub state_dir: Option<PathBuf>,
    /// Which of the two keys signs: RS256 (the default) or EdDSA. Both are always published.
    pub algorithm: KeyAlgorithm,
    /// Identities to create at start (idempotent with a state directory).
    pub seed: Option<Seed>,
}

impl IssuerConfig {
    /// Loopback on an ephemeral port, issuer [`DEFAULT_ISS`], RS256, memory only, no seed.
    pub fn new(admin_key: impl Into<String>) -> IssuerConfig {
        IssuerConfig {
            listen: SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            admin_key: admin_key.into(),
            issuer: DEFAULT_ISS.to_owned(),
            state_dir: None,
            algorithm: KeyAlgorithm::Rs256,
            seed: None,
        }
    }
}
