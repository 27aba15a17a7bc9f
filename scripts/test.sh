#!/usr/bin/env bash
# The project's test command: unit tests, the relayfile path contract fixtures (vendored in
# tests/fixtures), property tests, CLI tests, the fuzz targets' seed corpus and the real-FUSE
# integration tests, then the POSIX conformance suites (pjdfstest whole, fsx 20,000 operations
# per mode; scripts/conformance.sh installs them) and a short fuzz run (15 s per target;
# scripts/fuzz.sh). A missing fixture or, under CI=true, a missing FUSE fails the run instead of
# skipping. Arguments go to `cargo test` and skip the conformance and fuzz runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --features fuzzing "$@"
if [ $# -eq 0 ]; then
  bash scripts/conformance.sh --quick --bin target/debug/relayauth-mount
  bash scripts/fuzz.sh --seconds 15
fi
