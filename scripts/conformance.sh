#!/usr/bin/env bash
# POSIX conformance of the guarded view: installs pjdfstest and fsx (cargo install --locked,
# pinned versions), the packages and the users pjdfstest needs, then runs
# scripts/conformance.py: pjdfstest whole and fsx in every mode against relayauth-mount with a
# full-access token on a local root, and against native for reference, printing a table.
#
# Usage: bash scripts/conformance.sh [--quick] [--bin PATH]
#   --quick   fsx 20,000 operations per mode and no native reference run (what CI runs);
#             by default 100,000 operations per mode and the native run beside it
#   --bin     the relayauth-mount binary (default: a release build, built if missing)
# Needs root (FUSE mounts, switching users) and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."

PJDFSTEST_VERSION=0.2.2
FSX_VERSION=0.3.2
quick=0
bin=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --bin) bin=$2; shift ;;
    *) echo "usage: $0 [--quick] [--bin PATH]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "conformance runs as root (pjdfstest switches users, FUSE mounts)" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "conformance needs /dev/fuse" >&2; exit 1; }

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
[ -e /usr/include/sys/acl.h ] || need+=(libacl1-dev)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# pjdfstest acts as `nobody` and as `tests` (each with its own group).
id nobody >/dev/null 2>&1 || useradd --system --user-group --no-create-home nobody
id tests >/dev/null 2>&1 || useradd --system --user-group --no-create-home tests

installed() { cargo install --list | grep -q "^$1 v$2:"; }
for tool in "pjdfstest $PJDFSTEST_VERSION" "fsx $FSX_VERSION"; do
  set -- $tool
  if ! installed "$1" "$2"; then
    echo "installing $1 $2 (cargo install --locked)"
    cargo install --locked --quiet "$1" --version "$2"
  fi
done
export PATH="$HOME/.cargo/bin:$PATH"

if [ -z "$bin" ]; then
  bin=target/release/relayauth-mount
  [ -x "$bin" ] || cargo build --release --locked
fi
args=(--bin "$bin")
if [ "$quick" = 1 ]; then
  # The quick run (the test command's) leaves the committed full-run report alone.
  args+=(--fsx-ops 20000 --no-native --out "${TMPDIR:-/tmp}/relayauth-conformance-quick.json")
fi
python3 scripts/conformance.py "${args[@]}"
