//! Entry points for the fuzz targets in `fuzz/` (and for `tests/fuzz_corpus.rs`, which runs the
//! committed seed corpus through them on every build). Each takes untrusted bytes the way the
//! daemon meets them and checks what must hold whatever they are: no panic, and the invariants
//! named at each function. Compiled only with the `fuzzing` feature: it builds sessions without
//! a token, which nothing else may.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::authz::{self, Op, Place};
use crate::permissions::{self, Listed, ScopeJudge, Subject};
use crate::scope::{self, PathPattern, Scope, ScopeSet};
use crate::session::{Denial, State, testing};
use crate::token::{JwksCache, Verifier, VerifierConfig, keys::SigningKey};
use crate::writeback::{PolicySet, ProviderAreas};

/// The bytes as text, the way every parser here receives them (invalid UTF-8 is lossily
/// replaced, as the daemon does with file names).
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Scope strings: parsing never panics, a normalized path is absolute and contains itself (it
/// is not idempotent, by the contract: each pass trims one trailing `/`), a scope set built from
/// the input decides every operation on paths taken from it, and a pattern is within itself.
pub fn scope(data: &[u8]) {
    let input = text(data);
    let parsed = Scope::parse(&input);
    let _ = format!("{parsed:?}");
    let set = ScopeSet::new(input.split('\n'));
    for path in input.split([' ', '\n']).chain(["/", "/a/b"]) {
        let once = scope::path::normalize(path);
        assert!(once.starts_with('/'), "{once:?}");
        assert!(scope::path::contains(&once, &once), "{once:?}");
        assert!(scope::path::contains("/", &once));
        for op in [Op::See, Op::Read, Op::Write, Op::Create, Op::Delete] {
            let d = authz::decide(&set, once.as_bytes(), &Place::Content, op);
            let _ = d.describe(&set, &once);
        }
    }
    if let Ok(pattern) = PathPattern::parse(&input) {
        assert!(pattern.within(&pattern), "a pattern is within itself");
    }
    let _ = scope::within([input.as_str()], [input.as_str()]);
}

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        // A fuzzing key, generated per run: nothing the input holds can be signed by it.
        let key = SigningKey::generate_ed25519().unwrap_or_else(|e| panic!("fuzzing key: {e}"));
        let jwks = serde_json::json!({ "keys": [key.public_jwk()] }).to_string();
        let keys = JwksCache::from_json(&jwks).unwrap_or_else(|e| panic!("fuzzing JWKS: {e}"));
        Verifier::new(VerifierConfig::new("ws_fuzz"), Arc::new(keys))
    })
}

/// A bearer token, as a token file or the environment gives it: parsing the header and claims
/// before the signature never panics, and nothing the input holds is accepted.
pub fn token(data: &[u8]) {
    let input = text(data);
    assert!(verifier().verify(&input, SystemTime::now()).is_err());
}

/// A writeback policy file: parsing never panics; a parsed policy's pattern is asked about
/// paths taken from the input and about the paths relayfile would push.
pub fn policy(data: &[u8]) {
    let input = text(data);
    let Ok(set) = PolicySet::parse(&input, Path::new("fuzz/writeback-policies.json")) else {
        return;
    };
    let areas = ProviderAreas::default();
    let paths: Vec<&str> = input
        .split(['"', ' ', '\n'])
        .filter(|p| p.starts_with('/'))
        .chain(["/github/repos/a/b/pulls/1/reviews/x.json"])
        .collect();
    let scopes = ScopeSet::new(["relayfile:fs:*:*"]);
    for path in paths {
        let _ = areas.is_provider_backed(path);
        let _ = set.matching(path);
        let _ = set.authorize(&scopes, path);
        let _ = set.applying_in(path);
    }
}

/// A line on the control socket: parsing never panics, and what parses is a request the daemon
/// knows.
pub fn control(data: &[u8]) {
    let _ = crate::daemon::control::Request::parse(&text(data));
}

/// The skeleton of a rendered notice: its headings and fences, which only the renderer writes.
fn skeleton(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#') || l.starts_with("```"))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .collect()
}

/// `_PERMISSIONS.md` for names, a directory and denial reasons from the input (NUL-separated):
/// rendering never panics, and nothing from outside adds a heading or a fence. The notice for
/// the hostile names has the skeleton of the notice for plain ones.
pub fn notice(data: &[u8]) {
    let input = text(data);
    let mut parts = input.split('\0');
    let dir = format!("/d/{}", parts.next().unwrap_or_default());
    let names: Vec<String> = parts.map(str::to_owned).take(64).collect();
    let render = |dir: &str, names: &[String]| {
        let s = testing::session(&["relayfile:fs:read:*", "relayfile:fs:write:/d/**"]);
        let g = s.grants();
        let listed: Vec<Listed> = names
            .iter()
            .map(|n| Listed {
                name: n.clone(),
                kind: permissions::Kind::File,
            })
            .collect();
        let denials: Vec<Denial> = names
            .iter()
            .map(|n| Denial {
                at: SystemTime::now(),
                path: format!("{dir}/{n}"),
                operation: n.clone(),
                reason: format!("no scope grants fs:write on {dir}/{n}"),
            })
            .collect();
        let place = |p: &str, n: &str| permissions::place_of(p, n);
        let judge = ScopeJudge {
            grants: &g,
            state: &State::Active,
            place_for: &place,
        };
        let subject = Subject {
            grants: &g,
            state: &State::Active,
            now: SystemTime::now(),
            denials: &denials,
            held: None,
        };
        let view =
            permissions::compute(subject, dir, &listed, &judge, &PolicySet::default(), false);
        permissions::render(&view)
    };
    let hostile = render(&dir, &names);
    let plain_names: Vec<String> = (0..names.len()).map(|i| format!("n{i}")).collect();
    let plain = render("/d/x", &plain_names);
    assert_eq!(skeleton(&hostile), skeleton(&plain), "{hostile}");
}
