"""`meshkit quickstart`: a local supervisor and two workers in a temporary directory,
a small demo graph, its progress live, then `status` and one `explain`."""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from meshkit.adapters import keyfile
from meshkit.adapters.client import SignedClient
from meshkit.adapters.wakeup import PipeEvent
from meshkit.cli import cmd_brain, cmd_tasks
from meshkit.core.clock import REAL
from meshkit.rules.auth import pick_key
from meshkit.rules.config import render_default_toml

# Demo kinds: small Python one-liners, allowlisted in the demo config like any real kind.
KINDS = {
    "fetch": "import json,sys,time; p=json.load(sys.stdin); time.sleep(p.get('sleep', 1));"
             " json.dump({'fetched': p['url']}, open('result.json', 'w'))",
    "summarize": "import json; json.dump({'summary': 'three pages fetched'}, open('result.json', 'w'))",
    "flaky": "import os,sys; a=int(os.environ['MESHKIT_ATTEMPT']); print('attempt', a);"
             " sys.exit(0 if a >= 2 else 3)",
    "slow": "import time; time.sleep(60)",
}
DEMO = [
    {"name": "fetch-1", "kind": "fetch", "payload": {"url": "https://example.org/a", "sleep": 1}},
    {"name": "fetch-2", "kind": "fetch", "payload": {"url": "https://example.org/b", "sleep": 1.5}},
    {"name": "fetch-3", "kind": "fetch", "payload": {"url": "https://example.org/c", "sleep": 1}},
    {"name": "summary", "kind": "summarize", "after": ["fetch-1", "fetch-2", "fetch-3"]},
    {"name": "flaky", "kind": "flaky", "max_attempts": 3},
    {"name": "too-slow", "kind": "slow", "timeout": 2, "max_attempts": 1},
]


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="a local demo fleet: supervisor, two workers, a task graph",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Start a supervisor and two workers in a temporary directory, run a small "
                                   "graph (parallel tasks, a dependency, a failure that retries, a timeout), "
                                   "show it live, and keep the fleet running until Ctrl-C.",
                       epilog="example:\n  python3 -m meshkit quickstart\n"
                              "  python3 -m meshkit quickstart --dir /tmp/demo --exit   # stop after the demo")
    p.add_argument("--dir", help="where to put the demo fleet (default: a new temporary directory)")
    p.add_argument("--exit", action="store_true", help="stop the fleet after the demo instead of waiting for Ctrl-C")
    p.set_defaults(func=run)


def _config(d: str) -> str:
    path = os.path.join(d, "meshkit.toml")
    text = render_default_toml({"supervisor.listen": "127.0.0.1:0", "supervisor.stale_after": 30,
                                "supervisor.cycle": 0.5, "worker.heartbeat_interval": 5, "worker.poll_wait": 10,
                                "worker.grace": 1, "tasks.backoff_base": 0.5, "tasks.backoff_cap": 1,
                                "tasks.quarantine_after": 0})
    for kind, code in KINDS.items():
        text += f"\n[worker.kinds.{kind}]\nargv = {json.dumps([sys.executable, '-c', code])}\n"
    with open(path, "w") as f:
        f.write(text)
    if not os.path.exists(os.path.join(d, "keys")):
        keyfile.create(os.path.join(d, "keys"))
    return path


def _spawn(args: list, d: str, name: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))), os.environ.get("PYTHONPATH")) if p))
    log = open(os.path.join(d, f"{name}.log"), "wb")
    return subprocess.Popen([sys.executable, "-m", "meshkit", *args], stdout=subprocess.PIPE if name == "supervisor"
                            else subprocess.DEVNULL, stderr=log, env=env, start_new_session=True)


def _watch(client, ids: dict, limit: float) -> None:
    names = {tid: name for name, tid in ids.items()}
    seen, deadline = {}, REAL.monotonic() + limit
    while REAL.monotonic() < deadline:
        done = True
        for tid in ids.values():
            task = client.call("GET", f"/v1/tasks/{tid}")["task"]
            for h in task["history"][seen.get(tid, 0):]:
                stamp = time.strftime("%H:%M:%S", time.localtime(h["at"]))
                print(f"  {stamp}  {tid:<4} {names[tid]:<9} {(h['from'] or '-'):>9} -> {h['to']:<9} {h['reason'][:40]}",
                      flush=True)
            seen[tid] = len(task["history"])
            done = done and task["state"] in ("succeeded", "failed", "cancelled")
        if done:
            return
        REAL.sleep(0.3)


def run(args) -> int:
    d = os.path.abspath(args.dir or tempfile.mkdtemp(prefix="meshkit-quickstart-"))
    os.makedirs(d, exist_ok=True)
    config = _config(d)
    print(f"meshkit quickstart in {d}")
    procs = []
    try:
        sup = _spawn(["supervisor", "--config", config], d, "supervisor")
        procs.append(sup)
        url = sup.stdout.readline().decode().strip()
        if not url.startswith("http://"):
            print(f"meshkit: the supervisor did not start; see {d}/supervisor.log", file=sys.stderr)
            return 1
        print(f"supervisor {url}; workers quick-a and quick-b (2 slots each); logs in {d}")
        for name in ("quick-a", "quick-b"):
            procs.append(_spawn(["worker", "--config", config, "--supervisor", url, "--name", name, "--slots", "2",
                                 "--work-dir", os.path.join(d, f"work-{name}")], d, name))
        kid, _, secret = pick_key(keyfile.load(os.path.join(d, "keys")), "", "admin")
        client = SignedClient(url, kid, secret)
        deadline = REAL.monotonic() + 15
        while len(client.call("GET", "/v1/status")["nodes"]) < 2 and REAL.monotonic() < deadline:
            REAL.sleep(0.2)
        tasks = client.call("POST", "/v1/graph", {"tasks": DEMO})["tasks"]
        ids = {name: t["id"] for name, t in tasks.items()}
        print("dispatched: " + ", ".join(f"{n}={t}" for n, t in ids.items()) + "\n")
        _watch(client, ids, 60)
        common = argparse.Namespace(config=config, supervisor=url, json=False)
        print("\n$ meshkit status")
        cmd_tasks.status(common)
        print(f"\n$ meshkit explain {ids['too-slow']}")
        cmd_brain.explain(argparse.Namespace(**vars(common), id=ids["too-slow"]))
        if args.exit:
            print(f"\nThe demo is done; the fleet stops now. Its files stay in {os.path.dirname(config)}.", flush=True)
        else:
            print(f"\nThe fleet keeps running. From another terminal:\n"
                  f"  export MESHKIT_CONFIG={config}\n"
                  f"  python3 -m meshkit dispatch fetch --payload '{{\"url\": \"x\", \"sleep\": 2}}' --wait\n"
                  f"  python3 -m meshkit status --watch\n"
                  f"Press Ctrl-C here to stop it.", flush=True)
            stop = PipeEvent()       # set by signal handlers: takes no lock (adapters/wakeup.py)
            signal.signal(signal.SIGINT, lambda s, f: stop.set())
            signal.signal(signal.SIGTERM, lambda s, f: stop.set())
            stop.wait()
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
            if p.stdout:
                p.stdout.close()
        print("quickstart fleet stopped")
