//! The fuzz targets' committed seed corpus (`fuzz/corpus/<target>/seed-*`), run through the
//! same entry points `cargo fuzz` drives, on every build: a seed that once found a problem keeps
//! proving it fixed, without a fuzzer. Needs the `fuzzing` feature (the test command sets it).

use std::path::Path;

use relayauth_mount::fuzzing;

fn run(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seeds = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        eprintln!("{target}: {}", path.display());
        f(&data);
        seeds += 1;
    }
    assert!(seeds > 0, "no seeds for {target} in {}", dir.display());
}

#[test]
fn scope_seeds() {
    run("scope", fuzzing::scope);
}

#[test]
fn token_seeds() {
    run("token", fuzzing::token);
}

#[test]
fn policy_seeds() {
    run("policy", fuzzing::policy);
}

#[test]
fn control_seeds() {
    run("control", fuzzing::control);
}

#[test]
fn notice_seeds() {
    run("notice", fuzzing::notice);
}
