#!/usr/bin/env bash
# The project's test command: unit tests, contract fixtures, property tests, CLI tests and the
# real-FUSE integration tests. Fails (never skips) when a fixture file is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
RELAYFILE_CONTRACT_DIR=$(bash scripts/contract-dir.sh)
export RELAYFILE_CONTRACT_DIR
echo "contract fixtures: $RELAYFILE_CONTRACT_DIR"
cargo test --locked "$@"
