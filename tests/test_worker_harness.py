"""Real-process harness for worker tests (no tests here): a Fleet (tests/helpers.py) with test task kinds,
workers started with `python -m meshkit worker`, and bounded waits on tasks and logs."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.helpers import ROOT, Fleet, env

from meshkit.adapters import runner

# One script, several kinds (its first argument); the payload says what to do.
TASK_SCRIPT = r'''
import json, os, sys, time
mode = sys.argv[1]
p = json.load(sys.stdin)
log = p.get("log")
if log:
    with open(log, "a") as f:
        f.write(json.dumps({"task": os.environ["MESHKIT_TASK_ID"], "start": time.time()}) + "\n")
if mode == "ok":
    json.dump({"echo": p}, open("result.json", "w"))
    print("ok")
elif mode == "plain":
    print("plain output")
elif mode == "fail":
    print("failing", file=sys.stderr)
    sys.exit(3)
elif mode == "slow":
    time.sleep(p.get("sleep", 30))
    json.dump({"slept": p.get("sleep", 30)}, open("result.json", "w"))
elif mode == "art":
    if p.get("art") is not None:
        json.dump(p["art"], open("out.json", "w"))
if log:
    with open(log, "a") as f:
        f.write(json.dumps({"task": os.environ["MESHKIT_TASK_ID"], "end": time.time()}) + "\n")
'''

MODES = ("ok", "plain", "fail", "slow", "art")

# poll_wait < stale_after, as in production (25 s < 600 s): a dead worker's open claim has ended
# before its node is declared stale (else the supervisor could lease the requeued task to it).
FAST = dict(worker__heartbeat_interval=0.5, worker__poll_interval=0.5, worker__poll_wait=1.0, worker__grace=0.3,
            worker__retry_base=0.1, worker__retry_cap=0.5, worker__breaker_cooldown=1.0,
            worker__drain_timeout=10, tasks__backoff_base=0.1, tasks__backoff_cap=0.2,
            supervisor__cycle=0.2, supervisor__stale_after=2,
            tasks__quarantine_after=0)   # the tests fail kinds on purpose, many times in a row


def worker_fleet(**overrides) -> Fleet:
    """A Fleet whose config allows the test kinds (and the fast timings above)."""
    fleet = Fleet(**dict(FAST, **overrides))
    script = os.path.join(fleet.dir, "task.py")
    with open(script, "w") as f:
        f.write(TASK_SCRIPT)
    with open(fleet.config, "a") as f:
        for mode in MODES:
            f.write(f'\n[worker.kinds.{mode}]\nargv = {json.dumps([sys.executable, script, mode])}\n')
    fleet.workers = []
    return fleet


class WorkerProc:
    def __init__(self, fleet: Fleet, name: str, *args, slots=1, work_dir=None, url=None):
        self.fleet, self.name = fleet, name
        self.work_dir = work_dir or os.path.join(fleet.dir, f"work-{name}")
        self.log_path = os.path.join(fleet.dir, f"worker-{name}.log")
        self.args = ["--config", fleet.config, "--supervisor", url or fleet.url, "--name", name,
                     "--slots", str(slots), "--work-dir", self.work_dir, *args]
        self.proc = None
        fleet.workers.append(self)

    def start(self, wait_registered=True) -> "WorkerProc":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "meshkit", "worker", *self.args], cwd=ROOT,
                                     env=env(), stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        if wait_registered:
            self.wait_event("registered", count=self.count("registered") + 1)
        return self

    def events(self, name=None) -> list:
        out = []
        try:
            with open(self.log_path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if name is None or rec.get("event") == name:
                        out.append(rec)
        except FileNotFoundError:
            pass
        return out

    def count(self, name) -> int:
        return len(self.events(name))

    def wait_event(self, name, count=1, timeout=10.0) -> list:
        try:
            return wait_for(lambda: self.count(name) >= count and self.events(name), timeout,
                            f"{self.name}: {count} x {name}")
        except AssertionError as e:
            raise AssertionError(f"{e}; worker exit code {self.proc.poll()}; log:\n{self.tail()}") from None

    def tail(self, n=15) -> str:
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except FileNotFoundError:
            return ""

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout=15.0) -> int:
        return self.proc.wait(timeout)

    def outbox(self) -> list:
        d = os.path.join(self.work_dir, "outbox")
        return sorted(n for n in os.listdir(d) if n.endswith(".json")) if os.path.isdir(d) else []

    def kill_leftovers(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        runner.signal_marked(runner.marker_prefix(self.work_dir), signal.SIGKILL)


def close_fleet(fleet: Fleet) -> None:
    for w in getattr(fleet, "workers", []):
        w.kill_leftovers()
    fleet.close()


def wait_for(predicate, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def dispatch(client, kind, payload=None, **fields) -> str:
    body = dict({"kind": kind, "payload": payload if payload is not None else {}}, **fields)
    return client.call("POST", "/v1/tasks", body)["task"]["id"]


def get_task(client, tid) -> dict:
    return client.call("GET", f"/v1/tasks/{tid}")["task"]


def wait_state(client, tid, states, timeout=15.0) -> dict:
    states = (states,) if isinstance(states, str) else states
    return wait_for(lambda: (lambda t: t if t["state"] in states else None)(get_task(client, tid)), timeout,
                    f"{tid} to be {'/'.join(states)}")


def path_of(task) -> list:
    """The `to` states of a task's history, in order."""
    return [h["to"] for h in task["history"]]
