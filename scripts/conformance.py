#!/usr/bin/env python3
"""POSIX conformance of the guarded view: pjdfstest and fsx against relayauth-mount (in each I/O
mode: strict, passthrough) with a full-access token on a local root, and against a native
directory for reference.

pjdfstest's configuration, with the annotated list of expected failures, is
tests/conformance/pjdfstest.toml: a test listed there must fail, every other test must pass
(or be skipped for a feature the platform lacks). fsx runs with fixed seeds in each of its
modes, with close/reopen. The run prints a table and writes bench-results/conformance.json;
it exits 1 when anything unexpected happened.

Usage: python3 scripts/conformance.py --bin PATH [--fsx-ops N] [--no-native] [--io strict,passthrough]
Run through scripts/conformance.sh, which installs the suites and the users pjdfstest needs.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devmount import mount, start_issuer, unmount  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PJD_CONFIG = ROOT / "tests/conformance/pjdfstest.toml"
FSX_DIR = ROOT / "tests/conformance"
# Every fs right on every path: conformance is about the filesystem, not the scopes.
FULL_ACCESS = ["relayfile:fs:*:*"]
# fsx modes: its defaults; every operation it knows (fallocate, punch, copy_file_range,
# sendfile, close/reopen) weighted in; and holes and preallocation dominating.
FSX_MODES = {"default": None, "full": FSX_DIR / "fsx-full.toml", "punch": FSX_DIR / "fsx-punch.toml"}
FSX_SEEDS = {"default": 42, "full": 7, "punch": 1234}
SUMMARY = re.compile(r"(\d+) failed, (\d+) skipped, (\d+) passed, (\d+) expected failures, (\d+) total")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def pjdfstest(where, label, out_dir, config):
    """Run the whole pjdfstest suite in `where`; its counts and the failed test names."""
    log(f"pjdfstest on {label} ({where}) ...")
    started = time.time()
    done = subprocess.run(["pjdfstest", "-c", str(config), "-p", str(where)],
                          capture_output=True, text=True)
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)
    (out_dir / f"pjdfstest-{label}.log").write_text(text + done.stderr)
    found = SUMMARY.search(text)
    if not found:
        raise SystemExit(f"pjdfstest on {label} printed no summary:\n{done.stderr[-2000:]}")
    failed, skipped, passed, expected, total = map(int, found.groups())
    bad = [line.split()[0] for line in text.splitlines()
           if line.rstrip().endswith("FAILED") or line.rstrip().endswith("PASSED UNEXPECTEDLY")]
    skipped_names = [line.split()[0] for line in text.splitlines() if line.rstrip().endswith("skipped")
                     and not line.startswith("Summary")]
    log(f"  {passed} passed, {failed} failed, {expected} failed as expected, {skipped} skipped "
        f"({time.time() - started:.0f} s)")
    return {"passed": passed, "failed": failed, "expected_failures": expected, "skipped": skipped,
            "total": total, "unexpected": bad, "skipped_tests": skipped_names, "exit": done.returncode}


def fsx(where, label, ops, out_dir):
    """fsx in each mode on a file in `where`: operations done, or the failure."""
    results = {}
    for mode, config in FSX_MODES.items():
        target = where / f"fsx-{mode}"
        cmd = ["fsx", "-N", str(ops), "-S", str(FSX_SEEDS[mode])]
        if config:
            cmd += ["-f", str(config)]
        cmd.append(str(target))
        log(f"fsx {mode} on {label}: {ops} operations ...")
        started = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True)
        (out_dir / f"fsx-{label}-{mode}.log").write_text(done.stdout + done.stderr)
        ok = done.returncode == 0
        results[mode] = {"ops": ops, "ok": ok, "seconds": round(time.time() - started, 1)}
        log(f"  {'ok' if ok else 'FAILED'} ({results[mode]['seconds']} s)")
        if not ok:
            log((done.stdout + done.stderr)[-3000:])
        target.unlink(missing_ok=True)
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/relayauth-mount"))
    ap.add_argument("--fsx-ops", type=int, default=100_000)
    ap.add_argument("--no-native", action="store_true", help="skip the native reference run")
    ap.add_argument("--out", default=str(ROOT / "bench-results/conformance.json"))
    ap.add_argument("--io", default="strict,passthrough",
                    help="the I/O modes to test, comma-separated (default: strict,passthrough)")
    args = ap.parse_args()
    modes = [m for m in args.io.split(",") if m]
    for tool in ["pjdfstest", "fsx", "fusermount3"]:
        if not shutil.which(tool):
            raise SystemExit(f"conformance needs {tool}: run scripts/conformance.sh, which installs it")

    # Short paths: pjdfstest binds Unix sockets, whose paths may not exceed 107 bytes, and the
    # guarded and native directories are as deep as each other.
    work = Path(tempfile.mkdtemp(prefix="rc-"))
    logs = work / "logs"
    logs.mkdir()
    native = work / "n" / "c"
    native.mkdir(parents=True)
    mnts = []
    issuer = None
    report = {"date": time.strftime("%Y-%m-%d"), "fsx_ops": args.fsx_ops}
    try:
        issuer, ready, token = start_issuer(args.bin, work, FULL_ACCESS, name="conformance")
        (work / "token").write_text(token)
        for d in (work, native.parent, native):
            d.chmod(0o755)
        for mode in modes:
            # One mount per mode, over a mirror of its own. pjdfstest switches to other users
            # (`nobody`, `tests`): they may use the mount, and the kernel checks the permission
            # bits as it does natively.
            src = work / f"r-{mode}"
            (src / "c").mkdir(parents=True)
            mnt = work / f"m-{mode}"
            mnts.append(mnt)
            mount(args.bin, src, mnt, ready, work / "token", work / f"audit-{mode}.jsonl", "c",
                  name="conformance", extra=("--allow-other-users", "--io", mode))
            guarded = mnt / "c"
            for d in (mnt, guarded):
                d.chmod(0o755)
            print(f"{mode}: pjdfstest, then fsx", flush=True)
            report[mode] = {"pjdfstest": pjdfstest(guarded, mode, logs, PJD_CONFIG),
                            "fsx": fsx(guarded, mode, args.fsx_ops, logs)}
            unmount(mnt)
        if not args.no_native:
            # The reference run expects nothing to fail.
            plain = work / "pjdfstest-native.toml"
            plain.write_text(re.sub(r"expected_failures\s*=\s*\[[^\]]*\]", "expected_failures = []",
                                    PJD_CONFIG.read_text()))
            report["native"] = {"pjdfstest": pjdfstest(native, "native", logs, plain),
                                "fsx": fsx(native, "native", args.fsx_ops, logs)}
    finally:
        for mnt in mnts:
            unmount(mnt)
        if issuer:
            issuer.kill()

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\npjdfstest (expected failures: {PJD_CONFIG.relative_to(ROOT)}); fsx {args.fsx_ops} "
          f"operations per mode, fixed seeds\n")
    print("| view | pjdfstest passed | failed | failed as expected | skipped | "
          + " | ".join(f"fsx {m}" for m in FSX_MODES) + " |")
    print("|---|---|---|---|---|" + "---|" * len(FSX_MODES))
    ok = True
    for view in ["native", *modes]:
        if view not in report:
            continue
        p = report[view]["pjdfstest"]
        f = report[view]["fsx"]
        print(f"| {view} | {p['passed']} | {p['failed']} | {p['expected_failures']} | {p['skipped']} | "
              + " | ".join("ok" if f[m]["ok"] else "FAILED" for m in FSX_MODES) + " |")
        if view != "native":
            ok = ok and p["exit"] == 0 and all(r["ok"] for r in f.values())
            if p["unexpected"]:
                print("\nunexpected pjdfstest results on the mount: " + ", ".join(p["unexpected"]))
            if "native" in report:
                extra = sorted(set(p["skipped_tests"]) - set(report["native"]["pjdfstest"]["skipped_tests"]))
                if extra:
                    print("\nskipped on the mount only: " + ", ".join(extra))
    if not ok:
        print(f"\nconformance FAILED; logs are in {logs}")
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
