#!/usr/bin/env python3
"""Chaos run: a real supervisor and 3 real workers, N tasks, K kill -9s, then the proof.

    python3 scripts/chaos.py [--tasks 500] [--kills 10] [--seed S] [--keep DIR]

Starts `python -m meshkit supervisor` and three `python -m meshkit worker` processes in a
temp dir, dispatches N tasks (mixed kinds; some with --after dependencies; some failing on
purpose) while a chaos thread kills the supervisor or a worker with SIGKILL at random
moments K times and restarts each. Then it checks, from the SQLite database and the
workers' outboxes:

  - every acknowledged dispatch is in the database (once), nothing else is;
  - every task reached its expected end state (and a succeeded one carries its own result);
  - no task has two `succeeded` history rows;
  - every outbox is empty;
  - the invariant checker (meshkit.rules.heal) is clean, the supervisor recorded no
    violation (data/invariant_violations.jsonl), PRAGMA integrity_check is ok.

Prints one summary line and exits 1 on any loss, duplicate or violation (2 on a setup error).
"""

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from meshkit.adapters import keyfile, runner  # noqa: E402
from meshkit.adapters.client import SignedClient  # noqa: E402
from meshkit.core.errors import ApiError, ClientError  # noqa: E402
from meshkit.rules import heal  # noqa: E402
from meshkit.rules.auth import pick_key  # noqa: E402
from meshkit.rules.config import render_default_toml  # noqa: E402
from tests.helpers import read_line  # noqa: E402

TASK_SCRIPT = r'''
import json, os, sys, time
mode = sys.argv[1]
p = json.load(sys.stdin)
time.sleep(p.get("sleep", 0))
if mode == "ok":
    json.dump({"echo": p}, open("result.json", "w"))
elif mode == "plain":
    print("plain", p.get("i"))
else:
    print("failing on purpose", file=sys.stderr)
    sys.exit(3)
'''

# Fast timings (as tests/test_worker_harness.py): poll_wait < stale_after, heartbeats often,
# short backoffs; a lease given to a worker that never heard of it (claim answer lost in a
# supervisor kill) is reaped after start_timeout / lease_ttl. Kinds that fail on purpose are
# never quarantined.
CONFIG = {
    "worker.heartbeat_interval": 0.5, "worker.poll_interval": 0.5, "worker.poll_wait": 1.0,
    "worker.grace": 0.3, "worker.retry_base": 0.1, "worker.retry_cap": 0.5,
    "worker.breaker_cooldown": 1.0, "worker.drain_timeout": 10,
    "tasks.backoff_base": 0.05, "tasks.backoff_cap": 0.2, "tasks.quarantine_after": 0,
    "supervisor.cycle": 0.2, "supervisor.stale_after": 3, "supervisor.lease_ttl": 5,
    "supervisor.start_timeout": 4,
}
WORKERS = ("w1", "w2", "w3")
TERMINAL = ("succeeded", "failed", "cancelled")


def child_env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    for k in ("MESHKIT_CONFIG", "MESHKIT_SUPERVISOR", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        e.pop(k, None)
    return e


class Cluster:
    def __init__(self, d: str, slots: int = 2):
        self.dir = d
        self.config = os.path.join(d, "meshkit.toml")
        self.db = os.path.join(d, "data", "meshkit.db")
        self.slots = slots
        with open(self.config, "w") as f:
            f.write(render_default_toml(CONFIG))
            script = os.path.join(d, "task.py")
            for mode in ("ok", "plain", "fail"):
                f.write(f'\n[worker.kinds.{mode}]\nargv = {json.dumps([sys.executable, script, mode])}\n')
        with open(os.path.join(d, "task.py"), "w") as f:
            f.write(TASK_SCRIPT)
        keyfile.create(os.path.join(d, "keys"))
        self.keys = keyfile.load(os.path.join(d, "keys"))
        self.sup = None
        self.port = 0
        self.url = None
        self.workers = {}
        self.lock = threading.Lock()

    def client(self, role="admin") -> SignedClient:
        kid, _, secret = pick_key(self.keys, "", role)
        return SignedClient(self.url, kid, secret, timeout=5)

    def start_supervisor(self) -> None:
        log = open(os.path.join(self.dir, "supervisor.log"), "ab")
        proc = subprocess.Popen([sys.executable, "-m", "meshkit", "supervisor", "--config", self.config,
                                 "--listen", f"127.0.0.1:{self.port}"], cwd=ROOT, env=child_env(),
                                stdout=subprocess.PIPE, stderr=log)
        log.close()
        url = read_line(proc, 30)
        if not url.startswith("http://"):
            proc.kill()
            raise RuntimeError(f"the supervisor did not start ({url!r}); see {self.dir}/supervisor.log")
        self.url, self.port, self.sup = url, int(url.rsplit(":", 1)[1]), proc

    def work_dir(self, name: str) -> str:
        return os.path.join(self.dir, f"work-{name}")

    def start_worker(self, name: str) -> None:
        log = open(os.path.join(self.dir, f"worker-{name}.log"), "ab")
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "meshkit", "worker", "--config", self.config, "--supervisor", self.url,
             "--name", name, "--slots", str(self.slots), "--work-dir", self.work_dir(name)],
            cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        log.close()

    def kill(self, target: str) -> None:
        proc = self.sup if target == "supervisor" else self.workers[target]
        proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()

    def restart(self, target: str) -> None:
        if target == "supervisor":
            self.start_supervisor()
        else:
            self.start_worker(target)

    def outbox(self, name: str) -> list:
        d = os.path.join(self.work_dir(name), "outbox")
        return sorted(n for n in os.listdir(d) if n.endswith(".json")) if os.path.isdir(d) else []

    def stop_all(self) -> None:
        procs = list(self.workers.values()) + ([self.sup] if self.sup else [])
        for p in procs[:-1]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs[:-1]:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self.sup and self.sup.poll() is None:
            self.sup.send_signal(signal.SIGTERM)
            try:
                self.sup.wait(15)
            except subprocess.TimeoutExpired:
                self.sup.kill()
                self.sup.wait(5)
        if self.sup and self.sup.stdout:
            self.sup.stdout.close()
        for name in WORKERS:
            runner.signal_marked(runner.marker_prefix(self.work_dir(name)), signal.SIGKILL)

    def db_rows(self, sql: str, args=()) -> list:
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            db.row_factory = sqlite3.Row
            return db.execute(sql, args).fetchall()
        finally:
            db.close()


class Dispatcher:
    """Dispatches the planned tasks, each with an idempotency key, retrying through kills."""

    def __init__(self, cluster: Cluster, plan: list, pace: float, rand: random.Random):
        self.cluster, self.plan, self.pace, self.rand = cluster, plan, pace, rand
        self.acked = {}         # plan index -> task id (a 2xx answer came back)
        self.refused = []       # (index, error) a 4xx: a bug in the plan or the server
        self.retries = 0
        self.done = threading.Event()

    def run(self) -> None:
        client = None
        try:
            for i, spec in enumerate(self.plan):
                body = {k: v for k, v in spec.items() if not k.startswith("_")}
                if spec.get("_after"):
                    body["after"] = [self.acked[j] for j in spec["_after"]]
                while True:
                    if client is None or client.url != self.cluster.url:
                        client = self.cluster.client("admin")
                    try:
                        answer = client.call("POST", "/v1/tasks", body)
                        self.acked[i] = answer["task"]["id"]
                        break
                    except ApiError as e:
                        if e.status < 500:
                            self.refused.append((i, e.message))
                            break
                    except ClientError:
                        pass
                    self.retries += 1
                    client.close()
                    time.sleep(0.05 + self.rand.random() * 0.1)
                if self.pace:
                    time.sleep(self.rand.uniform(0, 2 * self.pace))
        finally:
            self.done.set()


def make_plan(n: int, rand: random.Random, seed) -> list:
    """Task specs with their expected end state (_expect) and dependencies (_after: plan indexes)."""
    plan = []
    for i in range(n):
        key = f"chaos-{seed}-{i}"
        r = rand.random()
        sleep = round(rand.uniform(0, 0.3), 3)
        if r < 0.50 or (r >= 0.85 and i < 5):
            spec = {"kind": "ok", "payload": {"i": i, "sleep": sleep}, "max_attempts": 30, "_expect": "succeeded"}
        elif r < 0.65:
            spec = {"kind": "plain", "payload": {"i": i, "sleep": sleep}, "max_attempts": 30, "_expect": "succeeded"}
        elif r < 0.85:
            spec = {"kind": "fail", "payload": {"i": i}, "max_attempts": rand.choice((1, 2)), "_expect": "failed"}
        else:      # after 1-2 recent tasks: succeeds only if they all succeed
            deps = sorted(set(rand.sample(range(max(0, i - 20), i), min(i, rand.choice((1, 2))))))
            ok = all(plan[j]["_expect"] == "succeeded" for j in deps)
            spec = {"kind": "ok", "payload": {"i": i, "sleep": sleep}, "max_attempts": 30, "_after": deps,
                    "_expect": "succeeded" if ok else "failed"}
        spec["key"] = key
        plan.append(spec)
    return plan


def chaos(cluster: Cluster, kills: int, interval: float, rand: random.Random, log: list, stop: threading.Event):
    """K kill -9s at random moments (at least one of the supervisor and one of a worker)."""
    targets = []
    if kills >= 1:
        targets.append("supervisor")
    if kills >= 2:
        targets.append(rand.choice(WORKERS))
    targets += [rand.choice(("supervisor",) + WORKERS) for _ in range(kills - len(targets))]
    rand.shuffle(targets)
    for target in targets:
        if stop.wait(rand.uniform(0.3 * interval, 1.7 * interval)):
            return
        with cluster.lock:
            cluster.kill(target)
            log.append((round(time.monotonic(), 2), target))
            time.sleep(rand.uniform(0.05, 0.8))      # down for a moment
            cluster.restart(target)


def check(cluster: Cluster, plan: list, disp: Dispatcher) -> dict:
    """The proof, from the database and the outboxes."""
    problems = []
    rows = {r["n"]: r for r in cluster.db_rows("SELECT * FROM tasks")}
    by_key = {r["key"]: r for r in rows.values()}
    lost = duplicated = violations = wrong = 0
    for i, spec in enumerate(plan):
        tid = disp.acked.get(i)
        if tid is None:
            lost += 1
            problems.append(f"plan {i}: dispatch never acknowledged")
            continue
        row = rows.get(int(tid[1:]))
        if row is None or row["key"] != spec["key"]:
            lost += 1
            problems.append(f"{tid} ({spec['key']}): acknowledged but not in the database")
            continue
        if row["state"] not in TERMINAL:
            lost += 1
            problems.append(f"{tid}: never ended (still {row['state']})")
        elif row["state"] != spec["_expect"]:
            wrong += 1
            problems.append(f"{tid}: ended {row['state']}, expected {spec['_expect']}")
        elif row["state"] == "succeeded" and spec["kind"] == "ok":
            result = json.loads(row["result"] or "null") or {}
            if result.get("result") != {"echo": spec["payload"]}:
                wrong += 1
                problems.append(f"{tid}: succeeded with someone else's result {str(result.get('result'))[:80]}")
    extra = [k for k in by_key if k not in {s["key"] for s in plan}]
    if len(rows) != len(plan) or extra:
        duplicated += abs(len(rows) - len(plan))
        problems.append(f"{len(rows)} tasks in the database for {len(plan)} dispatched")
    for r in cluster.db_rows("SELECT task, COUNT(*) AS c FROM history WHERE to_state='succeeded'"
                             " GROUP BY task HAVING c > 1"):
        duplicated += 1
        problems.append(f"t{r['task']}: {r['c']} succeeded rows")
    for r in cluster.db_rows("SELECT h.task, COUNT(*) AS c FROM history h JOIN results x ON x.task=h.task"
                             " WHERE h.to_state='succeeded' GROUP BY h.task HAVING c > 1"):
        pass   # the results table keeps every (task, fence) answered; several fences are normal
    for name in WORKERS:
        left = cluster.outbox(name)
        if left:
            lost += len(left)
            problems.append(f"{name}: outbox still holds {', '.join(left[:5])}")
    last = {r["task"]: r["to_state"] for r in cluster.db_rows(
        "SELECT h.task, h.to_state FROM history h JOIN (SELECT task, MAX(seq) AS s FROM history GROUP BY task) m"
        " ON m.task=h.task AND m.s=h.seq")}
    found = heal.invariant_violations([dict(r) for r in rows.values()], last)
    for v in found:
        violations += 1
        problems.append(f"invariant: {v['invariant']}: {v['task']} {v['detail']}")
    vfile = os.path.join(cluster.dir, "data", "invariant_violations.jsonl")
    if os.path.exists(vfile):
        with open(vfile) as f:
            recorded = [line for line in f if line.strip()]
        violations += len(recorded)
        problems += [f"recorded by the supervisor: {line.strip()[:200]}" for line in recorded[:5]]
    integrity = cluster.db_rows("PRAGMA integrity_check")[0][0]
    if integrity != "ok":
        violations += 1
        problems.append(f"integrity_check: {integrity}")
    for i, msg in disp.refused:
        problems.append(f"plan {i}: dispatch refused: {msg}")
    attempts = sum(r["attempts"] for r in rows.values())
    requeued = cluster.db_rows("SELECT COUNT(*) FROM history WHERE from_state IN ('leased','running')"
                               " AND to_state='queued' AND actor IN ('reaper','heal','invariants')")[0][0]
    return {"lost": lost, "duplicated": duplicated, "violations": violations, "wrong": wrong,
            "problems": problems, "attempts": attempts, "requeued": requeued,
            "succeeded": sum(1 for r in rows.values() if r["state"] == "succeeded"),
            "failed": sum(1 for r in rows.values() if r["state"] == "failed")}


def wait_all_ended(cluster: Cluster, n: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            open_ = cluster.db_rows(f"SELECT COUNT(*) FROM tasks WHERE state NOT IN {TERMINAL}")[0][0]
            total = cluster.db_rows("SELECT COUNT(*) FROM tasks")[0][0]
            if open_ == 0 and total >= n:
                return True
        except sqlite3.Error:
            pass
        time.sleep(0.2)
    return False


def wait_outboxes_empty(cluster: Cluster, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if not any(cluster.outbox(w) for w in WORKERS):
            return True
        time.sleep(0.1)
    return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Kill -9 the supervisor and workers under load; prove nothing was "
                                             "lost or run twice.")
    ap.add_argument("--tasks", type=int, default=500, help="tasks to dispatch (default 500)")
    ap.add_argument("--kills", type=int, default=10, help="kill -9s (default 10)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: time-based; printed)")
    ap.add_argument("--keep", metavar="DIR", help="run in DIR (must not exist) and keep it")
    ap.add_argument("--interval", type=float, default=1.2, help="mean seconds between kills (default 1.2)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds to wait for every task to end")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    rand = random.Random(seed)
    if args.keep:
        os.makedirs(args.keep)
        d = os.path.abspath(args.keep)
    else:
        d = tempfile.mkdtemp(prefix="meshkit-chaos-")
    t0 = time.monotonic()
    cluster = Cluster(d)
    kill_log = []
    stop = threading.Event()
    ok = False
    try:
        cluster.start_supervisor()
        for w in WORKERS:
            cluster.start_worker(w)
        plan = make_plan(args.tasks, rand, seed)
        # Spread the dispatches over the kill period so that kills land under load.
        pace = args.interval * args.kills / max(1, args.tasks) / 2
        disp = Dispatcher(cluster, plan, pace, random.Random(seed + 1))
        dt = threading.Thread(target=disp.run, daemon=True)
        ct = threading.Thread(target=chaos, args=(cluster, args.kills, args.interval, random.Random(seed + 2),
                                                  kill_log, stop), daemon=True)
        dt.start()
        ct.start()
        timeout = args.timeout or max(90.0, args.tasks * 0.4 + args.kills * 5)
        deadline = time.monotonic() + timeout
        dt.join(timeout)
        ct.join(max(1.0, deadline - time.monotonic()))
        ended = wait_all_ended(cluster, len(disp.acked), deadline)
        drained = wait_outboxes_empty(cluster, time.monotonic() + 30)
        stop.set()
        with cluster.lock:
            cluster.stop_all()
        res = check(cluster, plan, disp)
        if not ended:
            res["problems"].insert(0, f"not every task ended within {timeout:.0f} s")
        if not drained:
            res["problems"].insert(0, "outboxes not empty 30 s after every task ended")
        wall = time.monotonic() - t0
        sup_kills = sum(1 for _, t in kill_log if t == "supervisor")
        bad = res["lost"] + res["duplicated"] + res["violations"] + res["wrong"] + len(disp.refused)
        ok = bad == 0 and len(kill_log) == args.kills and ended
        for p in res["problems"][:30]:
            print(f"chaos: {p}", file=sys.stderr)
        print(f"chaos: tasks {args.tasks} ({res['succeeded']} succeeded, {res['failed']} failed as expected), "
              f"kills {len(kill_log)} (supervisor {sup_kills}, workers {len(kill_log) - sup_kills}), "
              f"lost {res['lost']}, duplicated {res['duplicated']}, violations {res['violations']}, "
              f"wrong {res['wrong']}, attempts {res['attempts']}, requeued {res['requeued']}, "
              f"dispatch retries {disp.retries}, seed {seed}, wall {wall:.1f} s"
              + ("" if ok else f"; FAILED, kept {d}"), flush=True)
        return 0 if ok else 1
    except Exception as e:
        print(f"chaos: setup error: {e}; kept {d}", file=sys.stderr)
        return 2
    finally:
        stop.set()
        try:
            cluster.stop_all()
        except Exception:
            pass
        if ok and not args.keep:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
