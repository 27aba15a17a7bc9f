//! Stamps the binary with the commit it was built from (`relayauth-mount --version`), or
//! `unknown commit` outside a git checkout (a source archive).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let stamp = match commit {
        Some(c) => format!("commit {c}"),
        None => "unknown commit".to_owned(),
    };
    println!("cargo:rustc-env=RELAYAUTH_MOUNT_COMMIT={stamp}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
}
