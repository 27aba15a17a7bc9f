//! Caller resolution, the per-request cost of several sessions: time per `Callers::resolve` for
//! a mount with only its own session (no registrations: no `/proc` read) and with 1 and 50
//! registered sessions, for a thread already resolved once (remembered, pinned by a thread
//! pidfd: one lookup and one `poll(2)`). The first request of a thread walks its ancestry in
//! `/proc` (here the benchmark's parent is registered, so two levels are read) and opens the
//! pidfd.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use relayauth_mount::bench_support::{Callers, ProcessKey, proc_stat, session};

fn bench(c: &mut Criterion) {
    let me = std::process::id();
    let mount = session(&["relayfile:fs:read:*"]);
    let alone = Callers::new(mount.clone(), false);
    c.bench_function("resolve/mount-session-only", |b| {
        b.iter(|| alone.resolve(black_box(me), 0))
    });
    let Some((parent, _)) = proc_stat(me) else {
        return;
    };
    let Some(root) = ProcessKey::of(parent) else {
        return;
    };
    for n in [1usize, 50] {
        let callers = Callers::new(mount.clone(), false);
        callers.register(root, session(&["relayfile:fs:read:/github/**"]));
        for i in 1..n {
            // Roots that are no process of ours (start time 1): never an ancestor.
            let key = ProcessKey {
                pid: 4_000_000 + i as u32,
                start_time: 1,
            };
            callers.register(key, session(&["relayfile:fs:read:/slack/**"]));
        }
        c.bench_function(&format!("resolve/{n}-registered"), |b| {
            b.iter(|| callers.resolve(black_box(me), 0))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
