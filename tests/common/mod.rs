//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Where the relayfile path contract v1 fixtures are: `RELAYFILE_CONTRACT_DIR`, or the copy
/// vendored in `tests/fixtures/relayfile-path-contract-v1` (see its PROVENANCE.md).
pub fn contract_dir() -> PathBuf {
    match std::env::var_os("RELAYFILE_CONTRACT_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/relayfile-path-contract-v1"),
    }
}

/// The built `relayauth-mount` binary.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relayauth-mount"))
}

/// Run the binary with `args`; return (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = bin()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run relayauth-mount: {e}"));
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Run the binary and parse its stdout as JSON.
pub fn run_json(args: &[&str]) -> (i32, serde_json::Value) {
    let (code, out, err) = run(args);
    let value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("stdout of {args:?} is not JSON ({e}): {out}\nstderr: {err}"));
    (code, value)
}

pub mod http;
pub mod mount;
pub mod tokens;
