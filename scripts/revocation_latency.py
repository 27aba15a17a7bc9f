#!/usr/bin/env python3
"""How long a revocation takes to bite: from `POST /v1/tokens/revoke` to the first refused open
of a sub-agent started with `relayauth-mount run`, and to the unmount when the mount's own
token is revoked, over N runs per poll interval (development issuer on loopback). With
`--io passthrough` an open file outlives the revocation until its process is stopped: the last
read a process holding a file open managed after the revoke, and when it was stopped.

    python3 scripts/revocation_latency.py [--bin target/debug/relayauth-mount] [--runs 20]
        [--intervals 1s,250ms] [--json bench-results/revocation.json]

Times are CLOCK_MONOTONIC readings taken by this script (just before the revoke request) and
by the agent (at the refusal), so they share one clock. It also counts the requests the mount
made to relayauth's revocation endpoint per session per second (from the issuer's log).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import devmount  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FILE = "github/repos/acme/api/metadata.json"

AGENT = f"""
import sys, time
print('ready', flush=True)
while True:
    try:
        open({FILE!r}).read()
    except OSError:
        print(time.monotonic(), flush=True)
        break
    time.sleep(0.002)
"""


def post(ready, path, body):
    req = urllib.request.Request(ready["url"] + path, data=json.dumps(body).encode(),
                                 headers={"x-api-key": devmount.ADMIN_KEY,
                                          "content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        text = r.read()
    return json.loads(text) if text else None


SERIAL = iter(range(1 << 30))


def new_token(ready, name, scopes):
    """An access token for a fresh identity of the mount's workspace."""
    name = f"{name}-{next(SERIAL)}"
    ident = post(ready, "/v1/identities", {"name": name, "orgId": "org_scripts",
                                           "workspaceId": "ws_scripts", "sponsorId": "user_scripts",
                                           "scopes": scopes})
    return post(ready, "/v1/tokens", {"identityId": ident["id"], "expiresIn": 3600})["accessToken"]


def jti_of(token):
    import base64
    body = token.rsplit("relay_ag_", 1)[-1].split(".")[1]
    body += "=" * (-len(body) % 4)
    return json.loads(base64.urlsafe_b64decode(body))["jti"]


def sub_agent_runs(binary, work, ready, interval, runs):
    mirror, mnt = work / "mirror", work / "mnt"
    lead = new_token(ready, "lead", ["relayfile:fs:read:*"])
    (work / "lead.jwt").write_text(lead)
    devmount.mount(binary, mirror, mnt, ready, work / "lead.jwt", work / "audit.jsonl",
                   "scratch", extra=("--poll-interval", interval))
    out = []
    try:
        for i in range(runs):
            token = new_token(ready, f"sub{i}", ["relayfile:fs:read:/github/*"])
            tf = work / f"sub{i}.jwt"
            tf.write_text(token)
            agent = subprocess.Popen([binary, "run", "--mountpoint", str(mnt), "--token-file", str(tf),
                                      "--", sys.executable, "-c", AGENT], cwd=mnt,
                                     stdout=subprocess.PIPE, text=True)
            assert agent.stdout.readline().strip() == "ready"
            # A moment after the start, like a real agent at work, away from the poll's phase.
            time.sleep(0.1 + (i % 7) * 0.037)
            t0 = time.monotonic()
            post(ready, "/v1/tokens/revoke", {"tokenId": jti_of(token)})
            refused = float(agent.stdout.readline())
            agent.wait(timeout=30)
            out.append(refused - t0)
    finally:
        devmount.unmount(mnt)
        time.sleep(0.5)
    return out


def mount_session_runs(binary, work, ready, interval, runs):
    mirror, mnt = work / "mirror", work / "mnt"
    out = []
    for i in range(runs):
        token = new_token(ready, f"mount{i}", ["relayfile:fs:read:*"])
        (work / "m.jwt").write_text(token)
        devmount.mount(binary, mirror, mnt, ready, work / "m.jwt", work / "audit.jsonl", "scratch",
                       extra=("--poll-interval", interval))
        time.sleep(0.1 + (i % 7) * 0.037)
        t0 = time.monotonic()
        post(ready, "/v1/tokens/revoke", {"tokenId": jti_of(token)})
        while os.path.ismount(mnt):
            time.sleep(0.002)
        out.append(time.monotonic() - t0)
        time.sleep(0.3)
    return out


HOLDER = f"""
import os, sys, time
fd = os.open({FILE!r}, os.O_RDONLY)
print('ready', flush=True)
while True:
    os.pread(fd, 64, 0)
    print(time.monotonic(), flush=True)
    time.sleep(0.002)
"""


def passthrough_runs(binary, work, ready, interval, runs):
    """(last read after the revoke, holder stopped) per run, on a passthrough mount."""
    mirror, mnt = work / "mirror", work / "mnt"
    last, stopped = [], []
    for i in range(runs):
        token = new_token(ready, f"pt{i}", ["relayfile:fs:read:*"])
        (work / "p.jwt").write_text(token)
        devmount.mount(binary, mirror, mnt, ready, work / "p.jwt", work / "audit.jsonl", "scratch",
                       extra=("--poll-interval", interval, "--io", "passthrough"))
        holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=mnt, stdout=subprocess.PIPE,
                                  text=True)
        assert holder.stdout.readline().strip() == "ready"
        time.sleep(0.1 + (i % 7) * 0.037)
        t0 = time.monotonic()
        post(ready, "/v1/tokens/revoke", {"tokenId": jti_of(token)})
        latest = t0
        for line in holder.stdout:
            latest = max(latest, float(line))
        holder.wait(timeout=30)
        stopped.append(time.monotonic() - t0)
        last.append(latest - t0)
        while os.path.ismount(mnt):
            time.sleep(0.002)
        time.sleep(0.3)
    return last, stopped


def summary(xs):
    return {"runs": len(xs), "median_s": round(statistics.median(xs), 3),
            "worst_s": round(max(xs), 3), "best_s": round(min(xs), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target/debug/relayauth-mount"))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--intervals", default="1s,250ms")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-passthrough", action="store_true", help="skip the passthrough runs")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        shutil.copytree(ROOT / "mount-fixtures/mirrors/acme", work / "mirror")
        (work / "mirror/scratch").mkdir()
        proc, ready, _ = devmount.start_issuer(binary, work, ["relayfile:fs:read:*"])
        try:
            for interval in args.intervals.split(","):
                print(f"poll interval {interval}: {args.runs} sub-agent revocations ...", flush=True)
                sub = sub_agent_runs(binary, work, ready, interval, args.runs)
                print(f"poll interval {interval}: {args.runs} mount-session revocations ...", flush=True)
                mnt = mount_session_runs(binary, work, ready, interval, args.runs)
                results[interval] = {"sub_agent_first_refusal": summary(sub),
                                     "mount_session_unmount": summary(mnt)}
                if not args.no_passthrough:
                    print(f"poll interval {interval}: {args.runs} passthrough revocations ...", flush=True)
                    last, stopped = passthrough_runs(binary, work, ready, interval, args.runs)
                    results[interval]["passthrough_last_read"] = summary(last)
                    results[interval]["passthrough_holder_stopped"] = summary(stopped)
        finally:
            proc.terminate()
    print()
    print("| poll interval | sub-agent: first refused open, median / worst | mount session: unmounted, median / worst |")
    print("|---|---|---|")
    for interval, r in results.items():
        s, m = r["sub_agent_first_refusal"], r["mount_session_unmount"]
        print(f"| {interval} | {s['median_s']} s / {s['worst_s']} s | {m['median_s']} s / {m['worst_s']} s |")
    if any("passthrough_last_read" in r for r in results.values()):
        print()
        print("| poll interval | passthrough: last read after the revoke, median / worst | holder stopped, median / worst |")
        print("|---|---|---|")
        for interval, r in results.items():
            if "passthrough_last_read" in r:
                a, b = r["passthrough_last_read"], r["passthrough_holder_stopped"]
                print(f"| {interval} | {a['median_s']} s / {a['worst_s']} s | {b['median_s']} s / {b['worst_s']} s |")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": args.runs, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
