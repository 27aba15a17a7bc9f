#!/usr/bin/env bash
# The project's test command: unit tests, the relayfile path contract fixtures (vendored in
# tests/fixtures), property tests, CLI tests and the real-FUSE integration tests, then the POSIX
# conformance suites (pjdfstest whole, fsx 20,000 operations per mode; scripts/conformance.sh
# installs them). A missing fixture or, under CI=true, a missing FUSE fails the run instead of
# skipping. Arguments go to `cargo test` and skip the conformance run (to run one suite).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked "$@"
if [ $# -eq 0 ]; then
  bash scripts/conformance.sh --quick --bin target/debug/relayauth-mount
fi
