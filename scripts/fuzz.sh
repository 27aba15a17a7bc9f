#!/usr/bin/env bash
# Fuzz the parsers that read untrusted input (scopes and paths, tokens before their signature is
# checked, writeback policies and their path patterns, the control socket, the names and
# reasons `_PERMISSIONS.md` renders) with cargo-fuzz, each target for a while, starting from the
# committed seed corpus in fuzz/corpus. A crash leaves its input in fuzz/artifacts/<target>/;
# add it to the corpus as seed-<name> once fixed, and tests/fuzz_corpus.rs keeps it fixed.
#
# Usage: bash scripts/fuzz.sh [--seconds N] [TARGET...]   (default 60 s each, every target)
# The toolchain is stable, so no sanitizer: the code under test is safe Rust, where libFuzzer's
# panics and assertions are what finds the bugs.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_FUZZ_VERSION=0.13.2
seconds=60
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift ;;
    -*) echo "usage: $0 [--seconds N] [TARGET...]" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
[ ${#targets[@]} -gt 0 ] || targets=(scope token policy control notice)
command -v c++ >/dev/null 2>&1 || { echo "libFuzzer needs a C++ compiler (apt-get install g++)" >&2; exit 1; }
if ! cargo install --list | grep -q "^cargo-fuzz v$CARGO_FUZZ_VERSION:"; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install --locked)"
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
export PATH="$HOME/.cargo/bin:$PATH"
cd fuzz
echo "building the fuzz targets"
cargo fuzz build -s none
for t in "${targets[@]}"; do
  echo "fuzzing $t for $seconds s"
  # A scratch copy of the seeds: what the run adds stays out of the repository.
  work=$(mktemp -d)
  cp corpus/"$t"/seed-* "$work"/
  cargo fuzz run -s none "$t" "$work" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::number_of_executed_units)|ERROR|panicked|SUMMARY' || true
  rm -rf "$work"
  if [ -n "$(ls artifacts/"$t" 2>/dev/null)" ]; then
    echo "fuzz target $t found a failing input: fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
