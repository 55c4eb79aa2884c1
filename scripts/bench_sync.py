#!/usr/bin/env python3
"""Benchmark `meshkit sync memory` against the equivalent bare rsync, in one run.

A tree of 10,000 small files in 100 agent dirs (AGENT/memory/*.json + AGENT/MEMORY.md)
is synced three ways, each by bare rsync (`rsync -a --delete -m FILTERS SRC/ MIRROR/`,
the same filters meshkit uses) and by meshkit as cron runs it: a full process started by
scripts/meshkit-sync-memory (`python3 -S -m meshkit sync memory` from the checkout, like
the systemd unit); --entry module times `python3 -m meshkit sync memory` as typed in a
shell, which also loads site-packages (~20 ms on the development machine):

  initial     into an empty destination
  no-change   nothing changed since the last run
  100-changed 100 files rewritten since the last run

Each phase is repeated (--repeat) and the median is printed with the difference.
Goals (issue 8): meshkit's added time <= 0.3 s on no-change and 100-changed, and
initial <= 1.5x bare rsync.

Python's bytecode cache is used as in a normal install (this checkout is compiled
into a temporary PYTHONPYCACHEPREFIX first, even if PYTHONDONTWRITEBYTECODE is set);
--cold-start measures without it. The temporary tree is made under $TMPDIR
(TMPDIR=/dev/shm takes the disk out of the figures). The load average is printed
with the results: on a small shared machine the figures move with it.

    python3 scripts/bench_sync.py [--agents 100] [--files 100] [--repeat 5] [--cold-start] [--entry module]
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from meshkit.rules.syncplan import filter_args  # noqa: E402


def make_tree(src: str, agents: int, per_agent: int) -> list:
    """agents dirs, each with memory/ holding per_agent-1 JSON files and a MEMORY.md."""
    files = []
    for a in range(agents):
        mem = os.path.join(src, f"agent{a:03d}", "memory")
        os.makedirs(mem)
        for i in range(per_agent - 1):
            path = os.path.join(mem, f"note{i:03d}.json")
            with open(path, "w") as f:
                json.dump({"agent": a, "note": i, "text": "remember " * 8}, f)
            files.append(path)
        with open(os.path.join(src, f"agent{a:03d}", "MEMORY.md"), "w") as f:
            f.write(f"# agent {a}\n\nlong-term memory\n")
    return files


def change(files: list, n: int, rnd: random.Random) -> None:
    for path in rnd.sample(files, n):
        with open(path, "w") as f:
            json.dump({"changed": rnd.random(), "text": "updated " * 8}, f)


def timed(argv, env=None) -> float:
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"bench: {argv[:4]} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--files", type=int, default=100, help="files per agent (incl. MEMORY.md)")
    ap.add_argument("--changed", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cold-start", action="store_true", help="no bytecode cache (compile meshkit every run)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--entry", choices=("wrapper", "module"), default="wrapper",
                    help="run meshkit as cron does (scripts/meshkit-sync-memory: python3 -S from the checkout) "
                         "or as `python3 -m meshkit sync memory` typed in a shell")
    args = ap.parse_args()
    rsync = shutil.which("rsync")
    if not rsync:
        sys.exit("bench: rsync not found: install the package `rsync`")
    tmp = tempfile.mkdtemp(prefix="meshkit-bench-")
    rnd = random.Random(8)
    try:
        src = os.path.join(tmp, "src")
        files = make_tree(src, args.agents, args.files)
        env = dict(os.environ, MESHKIT_HOME=os.path.join(tmp, "home"), PYTHONPATH=ROOT)
        env.pop("MESHKIT_CONFIG", None)
        if not args.cold_start:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
            subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "meshkit")],
                           env=env, check=True, stdout=subprocess.DEVNULL)
        filters, prune = filter_args((), (), memory_default=True)
        bare_argv = [rsync, "-a", "--delete"] + (["-m"] if prune else []) + filters

        def bare(dest):
            return timed(bare_argv + [src + "/", dest + "/"])

        if args.entry == "wrapper":      # what cron and the systemd unit run (python3 -S)
            env.update(PYTHON=sys.executable, MESHKIT_DIR=ROOT)

        def mesh(dest):
            if args.entry == "wrapper":
                return timed([os.path.join(ROOT, "scripts", "meshkit-sync-memory"), src, dest], env)
            return timed([sys.executable, "-m", "meshkit", "sync", "memory", "--source", src,
                          "--dest", dest, "--quiet"], env)

        results = {"initial": ([], []), "no-change": ([], []), f"{args.changed}-changed": ([], [])}
        for r in range(args.repeat):
            b, m = os.path.join(tmp, f"bare{r}"), os.path.join(tmp, f"mesh{r}")
            order = [(0, bare, b), (1, mesh, m)] if r % 2 == 0 else [(1, mesh, m), (0, bare, b)]
            for i, fn, d in order:
                results["initial"][i].append(fn(d))
        b, m = os.path.join(tmp, "bare0"), os.path.join(tmp, "mesh0")
        for r in range(args.repeat):
            for i, fn, d in ([(0, bare, b), (1, mesh, m)] if r % 2 == 0 else [(1, mesh, m), (0, bare, b)]):
                results["no-change"][i].append(fn(d))
        for r in range(args.repeat):
            change(files, args.changed, rnd)
            results[f"{args.changed}-changed"][0].append(bare(b))
            results[f"{args.changed}-changed"][1].append(mesh(m))

        total = args.agents * args.files
        print(f"meshkit sync memory vs bare rsync: {total} files in {args.agents} agent dirs, "
              f"median of {args.repeat} runs, {'cold start (no bytecode cache)' if args.cold_start else 'bytecode cached'}, "
              f"{'scripts/meshkit-sync-memory (as cron runs it)' if args.entry == 'wrapper' else 'python3 -m meshkit'}; "
              f"{os.path.dirname(tmp)}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{'phase':<14}{'bare rsync':>12}{'meshkit':>12}{'added':>10}{'ratio':>8}  goal")
        ok = True
        for phase, (bs, ms) in results.items():
            bm, mm = statistics.median(bs), statistics.median(ms)
            added = mm - bm
            if phase == "initial":
                met, goal = mm <= 1.5 * bm, "<= 1.5x bare"
            else:
                met, goal = added <= 0.3, "added <= 0.30 s"
            ok &= met
            print(f"{phase:<14}{bm:>11.3f}s{mm:>11.3f}s{added:>+9.3f}s{mm / bm:>7.2f}x  {goal}: {'met' if met else 'MISSED'}")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
