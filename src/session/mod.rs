//! Sessions: a verified token plus what has happened to it since (DESIGN sections 6 and 10).
//!
//! A [`Session`] is built from a token that passed verification and nothing else, so every
//! decision the filesystem makes is backed by a checked token. Its state moves from active to
//! revoked or expired (never back); a refresh swaps in a new verified token and so new scopes.
//! Reads of the current token are a shared lock and an `Arc` clone: the hot path never waits on
//! the network, which only ever writes here from background tasks.
//!
//! [`Callers`] maps a FUSE caller (a pid) to its session. With one session, every caller acts
//! under the mount's own session.

pub mod callers;
pub mod known;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};

use crate::audit::Actor;
use crate::scope::ScopeSet;

pub use callers::Callers;

/// What a session may still do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Active,
    /// relayauth said the session is revoked (or a refresh was rejected for good).
    Revoked {
        at: SystemTime,
        reason: String,
    },
    /// The access token's `exp` passed without a refresh.
    Expired {
        at: SystemTime,
    },
}

impl State {
    pub fn describe(&self) -> String {
        match self {
            State::Active => "active".to_owned(),
            State::Revoked { at, reason } => format!(
                "revoked at {} ({reason})",
                crate::token::time::format_rfc3339(*at)
            ),
            State::Expired { at } => {
                format!("expired at {}", crate::token::time::format_rfc3339(*at))
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            State::Active => "active",
            State::Revoked { .. } => "revoked",
            State::Expired { .. } => "expired",
        }
    }
}

/// The identity and grants of the token a session currently holds. Only this module makes
/// one, from a verified token, so grants are always what a verified token says.
#[derive(Debug)]
pub struct Grants {
    actor: Actor,
    scopes: Arc<ScopeSet>,
    expires_at: SystemTime,
    issued_at: SystemTime,
    /// The raw token (with any prefix), for calls back to relayauth.
    raw: Arc<str>,
    parent_token_id: Option<String>,
}

impl Grants {
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    pub fn scopes(&self) -> &Arc<ScopeSet> {
        &self.scopes
    }

    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    pub fn issued_at(&self) -> SystemTime {
        self.issued_at
    }

    /// The raw token (with any prefix), for calls back to relayauth.
    pub fn raw(&self) -> &Arc<str> {
        &self.raw
    }

    pub fn parent_token_id(&self) -> Option<&str> {
        self.parent_token_id.as_deref()
    }
}

/// A refused operation remembered for `_PERMISSIONS.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub at: SystemTime,
    pub path: String,
    pub operation: String,
    pub reason: String,
}

const RECENT_DENIALS: usize = 64;

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// The monotonic instant confirmations are counted from.
fn clock_base() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// A session.
#[derive(Debug)]
pub struct Session {
    id: String,
    grants: RwLock<Arc<Grants>>,
    state: RwLock<State>,
    denials: Mutex<VecDeque<Denial>>,
    /// When relayauth last confirmed this session is not revoked: nanoseconds after
    /// [`clock_base`], plus one (0: never). An atomic, since every read and write of an open
    /// file asks how fresh the confirmation is.
    confirmed: AtomicU64,
    /// A number no other session of this process has (sessions' ids come from tokens).
    serial: u64,
    /// Bumped whenever the grants change, so whatever was decided under the old grants (an
    /// open file's access) is decided again.
    epoch: AtomicU64,
    /// Told of every change of grants or state, so the daemon's tasks wait for one instead of
    /// polling (the value counts changes).
    changes: tokio::sync::watch::Sender<u64>,
    /// Decisions made for this session: allowed, denied (for `status`).
    decisions: [AtomicU64; 2],
    /// The tokens this session held before the current one (id, expiry), until they expire:
    /// a child delegated from an earlier token of a refreshed session is still its child.
    earlier: Mutex<Vec<(String, SystemTime)>>,
}

impl Session {
    /// A session for a verified token.
    pub fn from_token(token: &crate::token::VerifiedToken) -> Session {
        Session::from_grants(grants_of(token))
    }

    fn from_grants(grants: Grants) -> Session {
        Session {
            id: grants.actor.session_id.clone(),
            grants: RwLock::new(Arc::new(grants)),
            state: RwLock::new(State::Active),
            denials: Mutex::new(VecDeque::new()),
            confirmed: AtomicU64::new(0),
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            epoch: AtomicU64::new(0),
            changes: tokio::sync::watch::Sender::new(0),
            decisions: [AtomicU64::new(0), AtomicU64::new(0)],
            earlier: Mutex::new(Vec::new()),
        }
    }

    /// Count one decision made for this session.
    pub fn count(&self, allowed: bool) {
        self.decisions[usize::from(!allowed)].fetch_add(1, Ordering::Relaxed);
    }

    /// `(allowed, denied)` decisions made for this session so far.
    pub fn decisions(&self) -> (u64, u64) {
        (
            self.decisions[0].load(Ordering::Relaxed),
            self.decisions[1].load(Ordering::Relaxed),
        )
    }

    /// A receiver that sees every later change of this session's grants or state (a revocation,
    /// a replaced token); an expiry is a time, for the receiver to wait until.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The grants' generation: it changes whenever the token (and so the scopes) is replaced.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The current token's identity and scopes.
    pub fn grants(&self) -> Arc<Grants> {
        self.grants.read().clone()
    }

    /// A refreshed token for the same session replaces the grants (scopes are re-read). A
    /// session that ended stays ended: false, and nothing changes, when it is revoked or its
    /// token has expired (a later token cannot bring it back).
    pub fn replace_token(&self, token: &crate::token::VerifiedToken) -> bool {
        let now = SystemTime::now();
        {
            let mut grants = self.grants.write();
            let state = self.state.read();
            if *state != State::Active || now >= grants.expires_at {
                return false;
            }
            let old = std::mem::replace(&mut *grants, Arc::new(grants_of(token)));
            let mut earlier = self.earlier.lock();
            earlier.retain(|(_, exp)| *exp > now);
            earlier.push((old.actor.token_id.clone(), old.expires_at));
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.changed();
        true
    }

    /// Whether `token_id` is this session's token, now or before a refresh (and not yet
    /// expired then).
    pub fn holds_token(&self, token_id: &str) -> bool {
        self.grants.read().actor.token_id == token_id
            || self.earlier_tokens().iter().any(|(id, _)| id == token_id)
    }

    /// The tokens this session held before its current one that have not expired yet.
    pub fn earlier_tokens(&self) -> Vec<(String, SystemTime)> {
        let now = SystemTime::now();
        self.earlier
            .lock()
            .iter()
            .filter(|(_, exp)| *exp > now)
            .cloned()
            .collect()
    }

    /// The state as of `now`: an active session whose token's `exp` has passed is expired.
    pub fn state(&self, now: SystemTime) -> State {
        let state = self.state.read().clone();
        if state == State::Active {
            let exp = self.grants.read().expires_at;
            if now >= exp {
                return State::Expired { at: exp };
            }
        }
        state
    }

    pub fn is_active(&self, now: SystemTime) -> bool {
        self.state(now) == State::Active
    }

    /// End the session (idempotent: the first reason stays).
    pub fn revoke(&self, reason: &str) -> bool {
        let revoked = {
            let mut st = self.state.write();
            let active = *st == State::Active;
            if active {
                *st = State::Revoked {
                    at: SystemTime::now(),
                    reason: reason.to_owned(),
                };
            }
            active
        };
        if revoked {
            self.changed();
        }
        revoked
    }

    /// relayauth just confirmed the session is alive.
    pub fn confirm(&self) {
        let at = clock_base()
            .elapsed()
            .as_nanos()
            .min(u128::from(u64::MAX - 1)) as u64;
        self.confirmed.store(at + 1, Ordering::Release);
    }

    /// How long since relayauth last confirmed the session (`None`: never).
    pub fn since_confirmed(&self) -> Option<Duration> {
        match self.confirmed.load(Ordering::Acquire) {
            0 => None,
            at => Some(
                clock_base()
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(at - 1)),
            ),
        }
    }

    /// This session's number in this process (unique, unlike a token's session id).
    pub fn serial(&self) -> u64 {
        self.serial
    }

    pub fn remember_denial(&self, denial: Denial) {
        let mut d = self.denials.lock();
        if d.len() == RECENT_DENIALS {
            d.pop_front();
        }
        d.push_back(denial);
    }

    /// Recent denials whose path is directly in `dir` (or is `dir`).
    pub fn denials_in(&self, dir: &str) -> Vec<Denial> {
        self.denials
            .lock()
            .iter()
            .filter(|d| d.path == dir || crate::scope::path::parent(&d.path) == dir)
            .cloned()
            .collect()
    }
}

fn grants_of(token: &crate::token::VerifiedToken) -> Grants {
    Grants {
        actor: Actor {
            identity_id: token.subject().to_owned(),
            org_id: token.org().to_owned(),
            workspace_id: token.workspace().to_owned(),
            sponsor_id: token.sponsor_id().to_owned(),
            sponsor_chain: token.sponsor_chain().to_vec(),
            token_id: token.token_id().to_owned(),
            session_id: token.session_id().to_owned(),
        },
        scopes: token.scopes().clone(),
        expires_at: token.expires_at(),
        issued_at: token.issued_at(),
        raw: Arc::from(token.raw()),
        parent_token_id: token.parent_token_id().map(str::to_owned),
    }
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod testing {
    //! Sessions for unit tests of the layers above, the fuzz targets and the benchmarks (no
    //! token needed; only built for tests and with the `fuzzing` feature).
    use super::*;
    use std::time::Duration;

    /// Give `s` new grants with `scopes`, as a refreshed token would.
    #[cfg(test)]
    pub fn replace_scopes(s: &Session, scopes: &[&str]) {
        let old = s.grants();
        *s.grants.write() = Arc::new(Grants {
            actor: old.actor.clone(),
            scopes: Arc::new(ScopeSet::new(scopes)),
            expires_at: old.expires_at,
            issued_at: old.issued_at,
            raw: old.raw.clone(),
            parent_token_id: old.parent_token_id.clone(),
        });
        s.epoch.fetch_add(1, Ordering::AcqRel);
        s.changed();
    }

    pub fn session(scopes: &[&str]) -> Arc<Session> {
        Arc::new(Session::from_grants(Grants {
            actor: Actor {
                identity_id: "agent_test".into(),
                org_id: "org_acme".into(),
                workspace_id: "ws_acme".into(),
                sponsor_id: "user_alice".into(),
                sponsor_chain: vec!["user_alice".into(), "agent_test".into()],
                token_id: "tok_test".into(),
                session_id: "sess_test".into(),
            },
            scopes: Arc::new(ScopeSet::new(scopes)),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
            issued_at: SystemTime::now(),
            raw: Arc::from("test"),
            parent_token_id: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::{Session, testing};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// A verified token `jti` living `ttl` seconds (signed with a key made for the test).
    fn token(jti: &str, ttl: u64) -> crate::token::VerifiedToken {
        use crate::token::{JwksCache, Signer, Verifier, VerifierConfig, keys::SigningKey};
        let key = SigningKey::generate_ed25519().unwrap();
        let jwks = serde_json::json!({ "keys": [key.public_jwk()] }).to_string();
        let verifier = Verifier::new(
            VerifierConfig::new("ws_acme"),
            Arc::new(JwksCache::from_json(&jwks).unwrap()),
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "sub": "agent_1", "org": "org_acme", "wks": "ws_acme",
            "scopes": ["relayfile:fs:read:/github/**"], "sponsorId": "user_alice",
            "sponsorChain": ["user_alice", "agent_1"], "aud": ["relayfile"],
            "iss": "https://relayauth.dev", "iat": now - 1, "exp": now + ttl, "jti": jti,
            "sid": "sess_1", "token_type": "access",
        });
        let raw = Signer::new(key).sign(&claims).unwrap();
        verifier.verify(&raw, SystemTime::now()).unwrap()
    }

    #[test]
    fn a_refreshed_session_remembers_its_earlier_tokens_and_an_ended_one_stays_ended() {
        let s = Session::from_token(&token("tok_1", 600));
        assert!(s.replace_token(&token("tok_2", 600)));
        assert_eq!(s.grants().actor().token_id, "tok_2");
        // Children of the first token are still this session's children.
        assert!(s.holds_token("tok_1") && s.holds_token("tok_2"));
        assert!(!s.holds_token("tok_3"));
        assert!(s.revoke("test"));
        let epoch = s.epoch();
        assert!(
            !s.replace_token(&token("tok_3", 600)),
            "a revoked session came back"
        );
        assert_eq!(s.grants().actor().token_id, "tok_2");
        assert_eq!(s.epoch(), epoch);
        // An expired session is not revived by a later token either.
        let short = Session::from_token(&token("tok_4", 1));
        while short.is_active(SystemTime::now()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!short.replace_token(&token("tok_5", 600)));
        assert!(!short.is_active(SystemTime::now()));
    }

    #[test]
    fn a_revocation_or_a_new_token_is_announced_to_waiters() {
        let s = testing::session(&["relayfile:fs:read:/**"]);
        let mut rx = s.changes();
        assert!(!rx.has_changed().unwrap());
        testing::replace_scopes(&s, &["relayfile:fs:read:/a/**"]);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert!(s.revoke("test"));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        // A second revocation changes nothing, and says nothing.
        assert!(!s.revoke("again"));
        assert!(!rx.has_changed().unwrap());
    }
}
