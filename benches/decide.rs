//! The decision engine alone: ns per `check` for a 10-scope and a 500-scope grant set.
//!
//! Scopes are a realistic mix (exact files, `/**`, `/*`, name prefixes, other requirements,
//! an invalid mid-path glob); paths are typical relayfile paths, allowed and denied.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use relayauth_mount::scope::{Requirement, ScopeSet};

fn scopes(n: usize) -> Vec<String> {
    let mut v = vec![
        "relayfile:fs:read:/github/repos/acme/api/**".to_owned(),
        "relayfile:fs:write:/github/repos/acme/api/pulls/*".to_owned(),
        "relayfile:fs:read:/slack/channels/c123/messages/**".to_owned(),
        "relayfile:fs:create:/linear/issues/acme-*".to_owned(),
        "relayfile:ops:read:/github/**".to_owned(),
        "relayfile:sync:read:*".to_owned(),
        "relayfile:fs:write:/github/repos/acme/api/pulls/*/reviews/*".to_owned(),
        "relayfile:fs:read:/notion/pages/roadmap.md".to_owned(),
        "workspace:lead:read:/docs/**".to_owned(),
        "relayfile:fs:manage:/scratch/**".to_owned(),
    ];
    let mut i = 0;
    while v.len() < n {
        v.push(match i % 5 {
            0 => format!("relayfile:fs:read:/github/repos/org{i}/repo{i}/**"),
            1 => format!("relayfile:fs:write:/slack/channels/c{i}/messages/*"),
            2 => format!("relayfile:fs:read:/linear/issues/team{i}-*"),
            3 => format!("relayfile:fs:read:/github/repos/org{i}/repo/pulls/{i}/metadata.json"),
            _ => format!("relayfile:ops:read:/github/repos/org{i}/**"),
        });
        i += 1;
    }
    v.truncate(n);
    v
}

fn bench(c: &mut Criterion) {
    let read = Requirement::parse("fs:read").unwrap_or_else(|e| panic!("{e}"));
    let write = Requirement::parse("fs:write").unwrap_or_else(|e| panic!("{e}"));
    let paths = [
        (
            "allowed-deep",
            &read,
            "/github/repos/acme/api/pulls/42/reviews/7.json",
        ),
        (
            "allowed-write",
            &write,
            "/github/repos/acme/api/pulls/42/metadata.json",
        ),
        (
            "denied-deep",
            &write,
            "/slack/channels/c999/messages/1710000000.json",
        ),
        ("denied-top", &read, "/gmail/inbox/1.json"),
    ];
    for n in [10, 500] {
        let set = ScopeSet::new(scopes(n));
        for (name, req, path) in &paths {
            c.bench_function(&format!("check/{n}-scopes/{name}"), |b| {
                b.iter(|| set.check_exact(black_box(req), black_box(path.as_bytes())))
            });
        }
        c.bench_function(&format!("visible/{n}-scopes"), |b| {
            b.iter(|| set.visible(black_box(b"/github/repos/acme/api/pulls/42")))
        });
        c.bench_function(&format!("compile/{n}-scopes"), |b| {
            b.iter(|| ScopeSet::new(black_box(scopes(n))))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
