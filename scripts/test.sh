#!/usr/bin/env bash
# The project's test command: unit tests, the relayfile path contract fixtures (vendored in
# tests/fixtures), property tests, CLI tests and the real-FUSE integration tests. A missing
# fixture or, under CI=true, a missing FUSE fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked "$@"
