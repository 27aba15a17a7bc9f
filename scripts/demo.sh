#!/usr/bin/env bash
# The end-to-end demo: a development issuer, the acme fixture mirror, a mount with the lead
# agent's token, an allowed read, a denied write, a validated writeback, _PERMISSIONS.md, and a
# revocation that takes the mount down. Everything happens in a temporary directory that is
# removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if ! command -v fusermount3 >/dev/null 2>&1 || [ ! -e /dev/fuse ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing fuse3"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
  fi
fi
if ! command -v fusermount3 >/dev/null 2>&1 || [ ! -e /dev/fuse ]; then
  echo "the demo needs FUSE: install the fuse3 package and make sure /dev/fuse exists" >&2
  exit 1
fi
for tool in curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "the demo needs $tool" >&2; exit 1; }
done

say "building relayauth-mount"
cargo build --release --locked --quiet
bin=$PWD/target/release/relayauth-mount

work=$(mktemp -d)
issuer_pid=
cleanup() {
  if [ -d "$work/mnt" ] && grep -q " $work/mnt " /proc/self/mountinfo 2>/dev/null; then
    "$bin" unmount "$work/mnt" >/dev/null 2>&1 || fusermount3 -uz "$work/mnt" 2>/dev/null || true
  fi
  [ -n "$issuer_pid" ] && kill "$issuer_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

say "starting the development issuer (not relayauth; for laptops, demos and tests)"
admin=demo-admin-key-not-secret
"$bin" dev-issuer --listen 127.0.0.1:0 --admin-key "$admin" \
  --seed mount-fixtures/identities/acme.json >"$work/issuer.log" 2>&1 &
issuer_pid=$!
for _ in $(seq 1 100); do
  grep -q '^READY ' "$work/issuer.log" 2>/dev/null && break
  sleep 0.1
done
ready=$(grep '^READY ' "$work/issuer.log" | sed 's/^READY //')
url=$(echo "$ready" | json 'd["url"]')
iss=$(echo "$ready" | json 'd["iss"]')
lead=$(echo "$ready" | json 'd["identities"]["acme-lead"]')
echo "issuer $url (iss $iss); the seeded lead agent is $lead"

say "minting the lead agent's token"
curl -sf -X POST "$url/v1/tokens" -H "x-api-key: $admin" -H 'content-type: application/json' \
  -d "{\"identityId\": \"$lead\"}" | json 'd["accessToken"]' >"$work/token"
sid=$(python3 -c "import base64,json; t=open('$work/token').read().split('.')[1]; t+='='*(-len(t)%4); print(json.loads(base64.urlsafe_b64decode(t))['sid'])")
echo "session $sid"

say "mounting a copy of the acme mirror"
cp -r mount-fixtures/mirrors/acme "$work/mirror"
mkdir "$work/mnt"
"$bin" mount "$work/mirror" "$work/mnt" --workspace ws_acme --org org_acme \
  --token-file "$work/token" --relayauth-url "$url" --issuer "$iss" \
  --audit-log "$work/audit.jsonl" --poll-interval 500ms
m=$work/mnt

say "an allowed read: cat github/repos/acme/api/pulls/42/metadata.json"
head -c 300 "$m/github/repos/acme/api/pulls/42/metadata.json"; echo " ..."

say "a denied write: the lead may read acme/web but not write it"
if echo '{}' >"$m/github/repos/acme/web/pulls/18/metadata.json"; then
  echo "UNEXPECTED: the write was allowed" >&2; exit 1
fi

say "a writeback: a review draft that matches the policy's schema lands in the mirror"
printf '{"event": "COMMENT", "body": "Looks good; please add a test for the eviction path."}\n' \
  >"$m/github/repos/acme/api/pulls/42/reviews/demo-review.json"
ls -l "$work/mirror/github/repos/acme/api/pulls/42/reviews/demo-review.json"

say "an invalid writeback is refused at close() and never reaches the mirror"
python3 - "$m/github/repos/acme/api/pulls/42/reviews/bad-review.json" <<'EOF'
import sys
f = open(sys.argv[1], "w")
f.write('{"event": "LGTM"}')
try:
    f.close()
except OSError as e:
    print("close() failed:", e)
else:
    sys.exit("UNEXPECTED: the invalid review was accepted")
EOF
[ ! -e "$work/mirror/github/repos/acme/api/pulls/42/reviews/bad-review.json" ] \
  || { echo "UNEXPECTED: the invalid review reached the mirror" >&2; exit 1; }

say "_PERMISSIONS.md in github/repos/acme/api (without its closing json block)"
sed '/^```json/,$d' "$m/github/repos/acme/api/_PERMISSIONS.md"

say "status"
"$bin" status "$m"

say "revoking the session at the issuer"
curl -sf -X POST "$url/v1/tokens/revoke" -H "x-api-key: $admin" -H 'content-type: application/json' \
  -d "{\"sessionId\": \"$sid\"}"
for _ in $(seq 1 100); do
  grep -q " $m " /proc/self/mountinfo || break
  sleep 0.1
done
if grep -q " $m " /proc/self/mountinfo; then
  echo "UNEXPECTED: still mounted after the revocation" >&2; exit 1
fi
echo "the daemon saw the revocation and unmounted $m"

say "the audit trail (action, result, path)"
python3 - "$work/audit.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    print(f'{e["action"]:24} {e["result"]:8} {e.get("path") or ""}')
EOF
say "done"
