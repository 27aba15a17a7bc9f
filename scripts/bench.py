#!/usr/bin/env python3
"""Side-by-side filesystem benchmarks: native, bindfs and relayauth-mount (strict).

Every workload runs against the same data through each view in the same run, interleaved, and
the table reports medians and ratios to native and to bindfs (absolute times drift on a shared
machine; ratios measured together are what this is for). Results go to stdout as a Markdown
table and to bench-results/latest.json.

Usage: python3 scripts/bench.py [--runs N] [--small N] [--large-mib N] [--bin PATH]
                               [--baseline PATH]
--baseline mounts a second relayauth-mount built from another commit beside the first, in the
same interleaved run, so a change is measured against what it changes (column "baseline").
Needs root (FUSE mounts, dropping the page cache), fuse3, bindfs, fio and git.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devmount import mount, start_issuer, unmount  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, **kw)


def drop_caches():
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        raise SystemExit(f"cannot drop the page cache ({e}); run the benchmarks as root")


def timed(cmd, cwd=None):
    drop_caches()
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def make_data(mirror, small, large_mib):
    data = mirror / "bench"
    for d in range(small // 100):
        sub = data / "small" / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(100):
            (sub / f"f{f:03}.json").write_text(json.dumps({"dir": d, "file": f, "body": "x" * 200}))
    sh(f"fio --name=mk --rw=write --bs=1M --size={large_mib}M --filename={data}/large.bin --end_fsync=1")
    repo = data / "repo"
    repo.mkdir()
    for d in range(40):
        sub = repo / f"pkg{d:02}"
        sub.mkdir()
        for f in range(50):
            (sub / f"mod{f:02}.go").write_text(f"package pkg{d}\n\nfunc F{f}() int {{ return {f} }}\n")
    git = "git -c user.email=b@example.com -c user.name=b"
    sh(f"{git} init -q && {git} add . && {git} commit -qm init", cwd=repo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--small", type=int, default=10000)
    ap.add_argument("--large-mib", type=int, default=1024)
    ap.add_argument("--bin", default=str(ROOT / "target/release/relayauth-mount"))
    ap.add_argument("--out", default=str(ROOT / "bench-results/latest.json"))
    ap.add_argument("--baseline", help="a second relayauth-mount binary to measure beside --bin")
    args = ap.parse_args()
    for tool in ["fio", "bindfs", "git", "fusermount3"]:
        if not shutil.which(tool):
            raise SystemExit(f"benchmarks need {tool} (apt-get install fio bindfs git fuse3)")

    work = Path(tempfile.mkdtemp(prefix="relayauth-bench-"))
    mirror = work / "mirror"
    mirror.mkdir()
    print(f"preparing {args.small} small files, a {args.large_mib} MiB file and a 2000-file git repository", file=sys.stderr)
    make_data(mirror, args.small, args.large_mib)
    views = {"native": mirror}
    mounts = []
    issuer = None
    try:
        bmnt = work / "bindfs"
        bmnt.mkdir()
        sh(f"bindfs {mirror} {bmnt}")
        mounts.append(bmnt)
        views["bindfs"] = bmnt
        issuer, ready, token = start_issuer(args.bin, work, ["relayfile:fs:read:*", "relayfile:fs:manage:/bench/**"],
                                            name="bench")
        (work / "token").write_text(token)
        guards = [("relayauth-mount", args.bin, "guard")]
        if args.baseline:
            guards.append(("baseline", args.baseline, "baseline"))
        for view, binary, name in guards:
            rmnt = work / name
            mount(binary, mirror, rmnt, ready, work / "token", work / f"{name}-audit.jsonl", "bench", name="bench")
            mounts.append(rmnt)
            views[view] = rmnt

        counter = [0]

        def create_files(view):
            counter[0] += 1
            target = f"{view}/bench/created{counter[0]}"
            return (f"python3 -c \"import os; os.mkdir('{target}'); "
                    f"[open(os.path.join('{target}', f'f{{i}}'), 'w').write('x') for i in range({args.small})]\"")

        workloads = [
            ("read 10,000 small files", lambda v: f"find {v}/bench/small -type f -print0 | xargs -0 cat > /dev/null"),
            ("walk and stat the tree (find)", lambda v: f"find {v}/bench/small -printf '%s %m\\n' > /dev/null"),
            ("sequential read of a large file (fio, 1 MiB blocks)",
             lambda v: f"fio --name=r --rw=read --bs=1M --filename={v}/bench/large.bin --readonly --size={args.large_mib}M"),
            ("create 10,000 small files", create_files),
            ("git status on a 2000-file repository",
             lambda v: f"git -C {v}/bench/repo -c safe.directory='*' status --porcelain"),
        ]
        results = []
        for name, make in workloads:
            times = {k: [] for k in views}
            for _ in range(args.runs):
                for view, path in views.items():
                    times[view].append(timed(make(path)))
            med = {k: statistics.median(v) for k, v in times.items()}
            results.append({"workload": name, "median_seconds": med, "runs": times,
                            "ratio_to_native": {k: med[k] / med["native"] for k in med},
                            "ratio_to_bindfs": {k: med[k] / med["bindfs"] for k in med}})
            print(f"  {name}: " + ", ".join(f"{k} {v:.3f}s" for k, v in med.items()), file=sys.stderr)
    finally:
        for m in reversed(mounts):
            unmount(m)
        if issuer:
            issuer.kill()
        shutil.rmtree(work, ignore_errors=True)

    kernel = os.uname().release
    cpus = os.cpu_count()
    out = {"kernel": kernel, "cpus": cpus, "runs": args.runs, "small_files": args.small,
           "large_mib": args.large_mib, "date": time.strftime("%Y-%m-%d"), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nMedians of {args.runs} interleaved runs, page cache dropped before each; kernel {kernel}, {cpus} CPUs.\n")
    base = args.baseline is not None
    print("| workload | native | bindfs | relayauth-mount | vs native | vs bindfs |"
          + (" baseline vs native | baseline vs bindfs |" if base else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if base else ""))
    for r in results:
        m = r["median_seconds"]
        row = (f"| {r['workload']} | {m['native']:.3f} s | {m['bindfs']:.3f} s | {m['relayauth-mount']:.3f} s "
               f"| {r['ratio_to_native']['relayauth-mount']:.2f}x | {r['ratio_to_bindfs']['relayauth-mount']:.2f}x |")
        if base:
            row += f" {r['ratio_to_native']['baseline']:.2f}x | {r['ratio_to_bindfs']['baseline']:.2f}x |"
        print(row)


if __name__ == "__main__":
    main()
