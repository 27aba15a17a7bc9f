#!/usr/bin/env bash
# Walk through the development issuer's API with curl only (python3 reads the JSON): create an
# identity, mint a pair, refresh it, reuse the old refresh token (401, and the session dies),
# delegate (a narrower child: 201; an escalation: 403 scope_escalation), check the revocation
# list and introspection, revoke, and read the audit trail. Any unexpected answer stops it with
# a message and a non-zero exit.
#
# It starts nothing: point it at a running issuer, e.g.
#   relayauth-mount dev-issuer --admin-key dev-key &
#   ISSUER_URL=http://127.0.0.1:8787 ADMIN_KEY=dev-key bash scripts/dev-issuer-walkthrough.sh
set -euo pipefail

: "${ISSUER_URL:?set ISSUER_URL to the issuer URL (the url of its READY line)}"
: "${ADMIN_KEY:?set ADMIN_KEY to the issuer admin key (the admin_key of its READY line)}"
ISSUER_URL=${ISSUER_URL%/}
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is needed" >&2; exit 1; }
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
BODY="$TMP/body"

# call METHOD PATH [JSON_BODY] [extra curl args...]: sets STATUS, leaves the answer in $BODY.
call() {
  local method=$1 path=$2 data=${3-}
  shift $(( $# < 3 ? $# : 3 ))
  local args=(-sS -o "$BODY" -w '%{http_code}' -X "$method" "$ISSUER_URL$path" "$@")
  if [ -n "$data" ]; then
    args+=(-H 'content-type: application/json' --data "$data")
  fi
  STATUS=$(curl "${args[@]}") || { echo "FAIL: curl could not reach $ISSUER_URL$path" >&2; exit 1; }
}
admin() { local m=$1 p=$2 d=${3-}; call "$m" "$p" "$d" -H "x-api-key: $ADMIN_KEY"; }
bearer() { local m=$1 p=$2 t=$3 d=${4-}; call "$m" "$p" "$d" -H "authorization: Bearer $t"; }

# expect STATUS WHAT: the last answer had this status.
expect() {
  if [ "$STATUS" != "$1" ]; then
    echo "FAIL: $2: expected HTTP $1, got $STATUS: $(head -c 2000 "$BODY")" >&2
    exit 1
  fi
  echo "ok   $2 (HTTP $STATUS)"
}

# get PATH [FILE]: a member of the JSON in FILE (default: the last answer), by a dotted path
# (`entries.0.action`); strings raw, anything else as JSON; fails when absent.
get() {
  python3 - "$1" "${2:-$BODY}" <<'PY'
import json, sys
path, file = sys.argv[1], sys.argv[2]
v = json.load(open(file))
for part in [p for p in path.split(".") if p]:
    if isinstance(v, list) and part.isdigit() and int(part) < len(v):
        v = v[int(part)]
    elif isinstance(v, dict) and part in v:
        v = v[part]
    else:
        sys.exit(f"no {path!r} in {json.dumps(v)[:500]}")
print(v if isinstance(v, str) else json.dumps(v))
PY
}

# claims TOKEN: the token's payload (not verified: the issuer's own tokens, for reading ids).
claims() {
  python3 - "$1" > "$TMP/claims" <<'PY'
import base64, json, sys
p = sys.argv[1].split(".")[1]
print(json.dumps(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))))
PY
  echo "$TMP/claims"
}

# check WHAT ACTUAL EXPECTED
check() {
  if [ "$2" != "$3" ]; then
    echo "FAIL: $1: expected $3, got $2" >&2
    exit 1
  fi
  echo "ok   $1"
}

# contains WHAT HAYSTACK NEEDLE
contains() {
  case "$2" in
    *"$3"*) echo "ok   $1" ;;
    *) echo "FAIL: $1: $3 not found in $2" >&2; exit 1 ;;
  esac
}

echo "== issuer at $ISSUER_URL"
call GET /.well-known/jwks.json
expect 200 "JWKS"
check "JWKS has an RS256 and an EdDSA key" "$(python3 -c 'import json,sys; print(sorted(k["alg"] for k in json.load(open(sys.argv[1]))["keys"]))' "$BODY")" "['EdDSA', 'RS256']"

echo "== identity"
call POST /v1/identities '{"name":"x","orgId":"o","workspaceId":"w","sponsorId":"s"}'
expect 401 "an admin call without the admin key is refused"
NAME="walkthrough-lead-$$-$RANDOM"
admin POST /v1/identities "{\"name\":\"$NAME\",\"orgId\":\"org_acme\",\"workspaceId\":\"ws_acme\",\"sponsorId\":\"user_alice\",\"scopes\":[\"relayfile:fs:read:/github/*\",\"relayfile:fs:write:/github/*/reviews/*\"]}"
expect 201 "create identity $NAME"
LEAD=$(get id)
contains "identity id" "$LEAD" "agent_"
check "sponsor chain" "$(get sponsorChain)" "[\"user_alice\", \"$LEAD\"]"
admin GET "/v1/identities/$LEAD"
expect 200 "read identity"

echo "== mint"
admin POST /v1/tokens "{\"identityId\":\"$LEAD\"}"
expect 201 "mint a token pair"
check "tokenType" "$(get tokenType)" "Bearer"
A1=$(get accessToken); R1=$(get refreshToken)
C=$(claims "$A1")
check "sub is the identity" "$(get sub "$C")" "$LEAD"
check "token_type" "$(get token_type "$C")" "access"
check "aud" "$(get aud "$C")" '["relayfile"]'
check "meta.refreshTokenTtl (24 h default)" "$(get meta.refreshTokenTtl "$C")" "86400"
SID1=$(get sid "$C")

echo "== refresh"
call POST /v1/tokens/refresh "{\"refreshToken\":\"$R1\"}"
expect 200 "rotate the pair"
A2=$(get accessToken); R2=$(get refreshToken)
check "the session id is kept" "$(get sid "$(claims "$A2")")" "$SID1"
call POST /v1/tokens/refresh "{\"refreshToken\":\"$R1\"}"
expect 401 "reusing the old refresh token"
check "reuse code" "$(get code)" "refresh_token_reused"
call POST /v1/tokens/refresh "{\"refreshToken\":\"$R2\"}"
expect 401 "the newer refresh token died with its session"
admin GET "/v1/tokens/introspect?token=$A2"
expect 200 "introspect the newer access token"
check "it is inactive" "$(cat "$BODY")" "null"

echo "== delegate"
admin POST /v1/tokens "{\"identityId\":\"$LEAD\"}"
expect 201 "mint a fresh pair for the lead"
PARENT=$(get accessToken)
PC=$(claims "$PARENT"); cp "$PC" "$TMP/parent"; PC="$TMP/parent"
PARENT_JTI=$(get jti "$PC"); PARENT_SID=$(get sid "$PC")
bearer POST /v1/tokens/delegate "$PARENT" '{"agentName":"review-bot","requestedScopes":["relayfile:fs:read:/github/repos/acme/api/pulls/*"],"ttlSeconds":900}'
expect 201 "delegate relayfile:fs:read:/github/repos/acme/api/pulls/*"
CHILD=$(get accessToken)
CC=$(claims "$CHILD")
check "child scopes" "$(get scopes "$CC")" '["relayfile:fs:read:/github/repos/acme/api/pulls/*"]'
check "child parentTokenId" "$(get parentTokenId "$CC")" "$PARENT_JTI"
CHILD_ID=$(get sub "$CC")
check "child sponsor chain" "$(get sponsorChain "$CC")" "[\"user_alice\", \"$LEAD\", \"$CHILD_ID\"]"
CHILD_JTI=$(get jti "$CC")
bearer POST /v1/tokens/delegate "$PARENT" '{"agentName":"slack-bot","requestedScopes":["relayfile:fs:write:/slack/*"],"ttlSeconds":900}'
expect 403 "delegate relayfile:fs:write:/slack/* (escalation)"
check "escalation code" "$(get code)" "scope_escalation"
check "offending scopes" "$(get offending)" '["relayfile:fs:write:/slack/*"]'

echo "== revocation list and introspection"
admin GET "/v1/tokens/revocation?jti=$CHILD_JTI"
expect 200 "revocation list for the child"
check "child not revoked" "$(get revoked)" "false"
admin GET "/v1/tokens/introspect?token=$CHILD"
expect 200 "introspect the child"
check "introspection names the child" "$(get sub)" "$CHILD_ID"
bearer GET "/v1/tokens/introspect?token=$PARENT" "$PARENT"
expect 403 "probe with a live token lacking relayauth:token:read:*"

echo "== revoke"
admin POST /v1/tokens/revoke '{"tokenId":"tok_does_not_exist"}'
expect 404 "revoking an unknown token"
admin POST /v1/tokens/revoke "{\"sessionId\":\"$PARENT_SID\"}"
expect 204 "revoke the lead's session"
admin GET "/v1/tokens/revocation?jti=$PARENT_JTI"
check "parent revoked" "$(get revoked)" "true"
admin GET "/v1/tokens/revocation?jti=$CHILD_JTI"
check "child revoked with its parent session" "$(get revoked)" "true"
admin GET "/v1/tokens/introspect?token=$CHILD"
check "child inactive" "$(cat "$BODY")" "null"
bearer GET "/v1/tokens/introspect?token=$PARENT" "$PARENT"
expect 401 "probe with the revoked token"

echo "== suspend"
admin POST "/v1/identities/$LEAD/suspend" '{"reason":"walkthrough done"}'
expect 200 "suspend the lead"
check "status" "$(get status)" "suspended"
admin POST /v1/tokens "{\"identityId\":\"$LEAD\"}"
expect 403 "a suspended identity mints nothing"

echo "== audit"
admin GET "/v1/audit?limit=200"
expect 200 "read the audit trail"
ACTIONS=$(python3 -c 'import json,sys; print(" ".join(sorted({e["action"] for e in json.load(open(sys.argv[1]))["entries"]})))' "$BODY")
for action in identity.created identity.suspended token.issued token.refreshed token.revoked token.reuse_detected scope.escalation_denied; do
  contains "audit has $action" "$ACTIONS" "$action"
done
admin GET "/v1/audit?action=scope.escalation_denied&limit=1"
expect 200 "filter the audit trail"
check "the escalation entry names the offending scope" "$(get entries.0.metadata.offending)" "relayfile:fs:write:/slack/*"
check "and who asked" "$(get entries.0.identityId)" "$LEAD"

echo "walkthrough passed"
