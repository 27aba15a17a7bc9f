#!/usr/bin/env python3
"""Side-by-side filesystem benchmarks: native, bindfs and relayauth-mount (strict and passthrough).

Every workload runs against the same data through each view in the same run, interleaved, and
the table reports medians and ratios to native and to bindfs (absolute times drift on a shared
machine; ratios measured together are what this is for). Results go to stdout as a Markdown
table and to bench-results/latest.json.

Usage: python3 scripts/bench.py [--runs N] [--small N] [--large-mib N] [--bin PATH]
                               [--baseline PATH] [--memory-files N]
--baseline mounts a second relayauth-mount (strict) built from another commit beside the first,
in the same interleaved run, so a change is measured against what it changes.
Workloads: reading the small files (one process, and eight in parallel), walking and stat-ing
the tree, a sequential read of a large file (fio), creating small files, a build-like mix
(create, write, rename, stat), `rg` over a source tree (grep -r where ripgrep is missing) and
`git status`. Then resident memory: the daemon's RSS after walking --memory-files files and
after listing 10,000 entries of one directory.
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
    ap.add_argument("--memory-files", type=int, default=100_000)
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
        guards = [("strict", args.bin, "strict"), ("passthrough", args.bin, "passthrough")]
        if args.baseline:
            guards.append(("baseline", args.baseline, "strict"))
        for view, binary, io in guards:
            rmnt = work / view
            mount(binary, mirror, rmnt, ready, work / "token", work / f"{view}-audit.jsonl", "bench", name="bench",
                  extra=("--io", io))
            mounts.append(rmnt)
            views[view] = rmnt
        pt = json.loads(sh(f"{args.bin} status {views['passthrough']} --json").stdout)
        if pt["io"] != "passthrough":
            raise SystemExit("the passthrough mount fell back to strict; see its log")

        counter = [0]

        def create_files(view):
            counter[0] += 1
            target = f"{view}/bench/created{counter[0]}"
            return (f"python3 -c \"import os; os.mkdir('{target}'); "
                    f"[open(os.path.join('{target}', f'f{{i}}'), 'w').write('x') for i in range({args.small})]\"")

        def build_mix(view):
            counter[0] += 1
            out = f"{view}/bench/build{counter[0]}"
            # What a compiler and a test runner do: write each output under a temporary name,
            # rename it into place, then stat everything.
            return ("python3 -c \"import os\n"
                    f"o = '{out}'; os.mkdir(o)\n"
                    "for i in range(2000):\n"
                    "    t = os.path.join(o, f'.tmp{i}')\n"
                    "    with open(t, 'w') as f: f.write('y' * 4096)\n"
                    "    os.rename(t, os.path.join(o, f'obj{i}.o'))\n"
                    "for e in os.scandir(o): e.stat()\n\"")

        grep = "rg -q --no-ignore zzzz-not-there" if shutil.which("rg") else "grep -rq zzzz-not-there"
        search_tool = "rg" if shutil.which("rg") else "grep -r"

        workloads = [
            ("read 10,000 small files", lambda v: f"find {v}/bench/small -type f -print0 | xargs -0 cat > /dev/null"),
            ("read them with 8 processes in parallel",
             lambda v: f"find {v}/bench/small -type f -print0 | xargs -0 -P 8 -n 200 cat > /dev/null"),
            ("walk and stat the tree (find)", lambda v: f"find {v}/bench/small -printf '%s %m\\n' > /dev/null"),
            ("sequential read of a large file (fio, 1 MiB blocks)",
             lambda v: f"fio --name=r --rw=read --bs=1M --filename={v}/bench/large.bin --readonly --size={args.large_mib}M"),
            ("create 10,000 small files", create_files),
            ("build-like mix (2,000 x create, write, rename; stat)", build_mix),
            (f"{search_tool} over a 2000-file source tree", lambda v: f"{grep} {v}/bench/repo || true"),
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
        memory = measure_memory(args, work, ready, mounts)
    finally:
        for m in reversed(mounts):
            unmount(m)
        if issuer:
            issuer.kill()
        shutil.rmtree(work, ignore_errors=True)

    kernel = os.uname().release
    cpus = os.cpu_count()
    out = {"kernel": kernel, "cpus": cpus, "runs": args.runs, "small_files": args.small,
           "large_mib": args.large_mib, "date": time.strftime("%Y-%m-%d"), "results": results,
           "memory": memory}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nMedians of {args.runs} interleaved runs, page cache dropped before each; "
          f"{time.strftime('%Y-%m-%d')}, kernel {kernel}, {cpus} CPUs.\n")
    guarded = [v for v in ("strict", "passthrough", "baseline") if v in views]
    print("| workload | native | bindfs | " + " | ".join(guarded) + " | "
          + " | ".join(f"{g} vs native | {g} vs bindfs" for g in guarded) + " |")
    print("|---|---|---|" + "---|" * (3 * len(guarded)))
    for r in results:
        m = r["median_seconds"]
        print(f"| {r['workload']} | {m['native']:.3f} s | {m['bindfs']:.3f} s | "
              + " | ".join(f"{m[g]:.3f} s" for g in guarded) + " | "
              + " | ".join(f"{r['ratio_to_native'][g]:.2f}x | {r['ratio_to_bindfs'][g]:.2f}x" for g in guarded)
              + " |")
    print(f"\nResident memory of the daemon (strict): {memory['start_mib']:.1f} MiB mounted, "
          f"{memory['after_walk_mib']:.1f} MiB after walking {memory['files']:,} files, "
          f"{memory['after_big_dir_mib']:.1f} MiB after listing {memory['big_dir_entries']:,} entries of one directory.")


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_memory(args, work, ready, mounts):
    """The daemon's resident size after a walk of many files and after one large directory,
    on a mount of its own (strict) so the timed workloads do not count."""
    mirror = work / "memory-mirror"
    per_dir = 1000
    for d in range(args.memory_files // per_dir):
        sub = mirror / "bench" / "many" / f"d{d:04}"
        sub.mkdir(parents=True)
        for f in range(per_dir):
            (sub / f"f{f:04}").write_bytes(b"")
    big = mirror / "bench" / "big"
    big.mkdir(parents=True)
    for f in range(10_000):
        (big / f"entry{f:05}.json").write_bytes(b"{}")
    mnt = work / "memory"
    mount(args.bin, mirror, mnt, ready, work / "token", work / "memory-audit.jsonl", "bench", name="bench")
    mounts.append(mnt)
    pid = json.loads(sh(f"{args.bin} status {mnt} --json").stdout)["pid"]
    start = rss_mib(pid)
    sh(f"find {mnt}/bench/many -printf '%s\n' > /dev/null")
    walk = rss_mib(pid)
    sh(f"ls -l {mnt}/bench/big > /dev/null")
    bigdir = rss_mib(pid)
    print(f"  memory: {start:.1f} MiB, {walk:.1f} MiB after {args.memory_files} files, "
          f"{bigdir:.1f} MiB after a 10,000-entry directory", file=sys.stderr)
    return {"files": args.memory_files, "big_dir_entries": 10_000, "start_mib": start,
            "after_walk_mib": walk, "after_big_dir_mib": bigdir}


if __name__ == "__main__":
    main()
