"""Shared by the benchmark and conformance scripts: a development issuer on loopback, a token
for one identity, and a relayauth-mount mount of a mirror with it.

Nothing here is a test: the scripts that import it say what they measure.
"""

import json
import os
import subprocess
import time
import urllib.request

ADMIN_KEY = "dev-scripts-admin-key"  # a development issuer's key for these scripts only


def start_issuer(binary, workdir, scopes, name="scripts"):
    """Start `relayauth-mount dev-issuer` and mint a token with `scopes`: (process, READY, token)."""
    log = open(workdir / "issuer.log", "w")
    proc = subprocess.Popen([binary, "dev-issuer", "--listen", "127.0.0.1:0", "--admin-key", ADMIN_KEY],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    for line in proc.stdout:
        if line.startswith("READY "):
            ready = json.loads(line[6:])
            break
    else:
        raise SystemExit(f"dev-issuer did not start; see {workdir / 'issuer.log'}")

    def post(path, body):
        req = urllib.request.Request(ready["url"] + path, data=json.dumps(body).encode(),
                                     headers={"x-api-key": ADMIN_KEY, "content-type": "application/json"})
        return json.loads(urllib.request.urlopen(req).read())

    ident = post("/v1/identities", {"name": name, "orgId": f"org_{name}", "workspaceId": f"ws_{name}",
                                     "sponsorId": f"user_{name}", "scopes": scopes})
    token = post("/v1/tokens", {"identityId": ident["id"], "expiresIn": 7200})["accessToken"]
    return proc, ready, token


def wait_mounted(path, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        if os.path.ismount(path):
            return
        time.sleep(0.05)
    raise SystemExit(f"{path} did not mount")


def mount(binary, mirror, mnt, ready, token_file, audit, local_roots, name="scripts", extra=()):
    """Mount `mirror` at `mnt` with the token in `token_file`; returns once it is mounted."""
    mnt.mkdir(exist_ok=True)
    done = subprocess.run([binary, "mount", str(mirror), str(mnt), "--workspace", f"ws_{name}",
                           "--token-file", str(token_file), "--relayauth-url", ready["url"],
                           "--issuer", ready["iss"], "--audit-log", str(audit),
                           "--local-roots", local_roots, *extra], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"mount failed: {done.stderr.strip()}")
    wait_mounted(mnt)


def unmount(path):
    subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)
