#!/usr/bin/env bash
# Prints the directory of the relayfile path contract v1 fixtures, or fails saying how to fix it.
# Looks at RELAYFILE_CONTRACT_DIR, then ../shared beside this checkout, then ../shared beside the
# checkout this one was cloned from (a clone in a temporary directory keeps its origin).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rel=shared/contract/relayfile-path-contract-v1
candidates=()
if [ -n "${RELAYFILE_CONTRACT_DIR:-}" ]; then
  candidates+=("$RELAYFILE_CONTRACT_DIR")
else
  candidates+=("$root/../$rel")
  origin=$(git -C "$root" remote get-url origin 2>/dev/null || true)
  if [ -n "$origin" ] && [ -d "$origin" ]; then
    candidates+=("$(cd "$origin" && pwd)/../$rel")
  fi
fi
for dir in "${candidates[@]}"; do
  if [ -f "$dir/auth-matching.json" ]; then
    (cd "$dir" && pwd)
    exit 0
  fi
done
echo "relayfile path contract fixtures not found (looked in: ${candidates[*]});" \
  "set RELAYFILE_CONTRACT_DIR to the relayfile-path-contract-v1 directory" >&2
exit 1
