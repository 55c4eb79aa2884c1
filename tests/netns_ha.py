"""The cluster the HA netns tests run (tests/test_ha_netns.py): a primary, a standby, a
watchdog and a worker, each in its own network namespace; the agent's steady dispatch
load; and the checks every test ends with (one acceptor at a time, nothing acknowledged
lost, nothing succeeded twice)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest

from tests.helpers import ROOT, Fleet, env, read_line
from tests.netns_net import (AGENT, ALERT, PORT, Net, netns_unavailable, query, read_events, read_jsonl,
                             remove_leftovers)
from tests.test_worker_harness import FAST, wait_for

ACCEPTS = ("task_leased", "task_dispatched", "task_result", "task_retry")
WD = dict(watchdog__interval=0.4, watchdog__failures=2, watchdog__recoveries=2)
LEASE = 0.7           # below watchdog interval x failures (0.8), as documented

# The task: record the run (task id, time, payload) and echo the payload as its result.
TASK_SH = ('p=$(cat task.json); sleep 0.2; printf "%s %s %s\\n" "$MESHKIT_TASK_ID" "$(date +%s.%N)" "$p" >> "$0";'
           ' printf "%s" "$p" > result.json')


class NetnsCluster(unittest.TestCase):
    """A primary, a standby, a watchdog and a worker, each in its own namespace."""

    @classmethod
    def setUpClass(cls):
        why = netns_unavailable()
        if why:
            raise unittest.SkipTest(why)
        remove_leftovers()

    def setUp(self):
        self.t_start = time.monotonic()
        self.net = Net()
        self.procs = []         # every Popen, each in its own session (killed by group in cleanup)
        self.fleet = None
        self.agent = None
        self.addCleanup(self.cleanup)
        self.net.up()
        self.fleet = Fleet(**dict(FAST, supervisor__stale_after=4, supervisor__start_timeout=3,
                                  supervisor__lease_ttl=30, worker__breaker_cooldown=0.5))
        self.dir = self.fleet.dir
        self.run_log = os.path.join(self.dir, "runs.log")
        self.acks_path = os.path.join(self.dir, "acks.jsonl")
        self.logs = {"primary": [], "standby": []}       # one log file per supervisor process
        self.wd_logs = []
        self.worker_log = os.path.join(self.dir, "worker.log")
        self.proc = {}

    def cleanup(self):
        if self.agent is not None and self.agent.poll() is None:
            try:
                self.agent.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (p.stdin, p.stdout):
                if stream:
                    stream.close()
        self.net.down()
        if self.fleet is not None:
            if os.environ.get("MESHKIT_KEEP_NETNS"):          # keep logs and databases to look at
                kept = f"{self.dir}-kept"
                shutil.copytree(self.dir, kept, ignore=shutil.ignore_patterns("work"), dirs_exist_ok=True)
                sys.stderr.write(f"\nkept {kept}\n")
            self.fleet.close()

    # -- processes ---------------------------------------------------------------------

    def spawn(self, node: str, args: list, log: str, stdout=subprocess.DEVNULL, stdin=None) -> subprocess.Popen:
        with open(log, "ab") as err:
            p = subprocess.Popen(["ip", "netns", "exec", self.net.ns[node], sys.executable, *args], cwd=ROOT,
                                 env=env(), stdout=stdout, stdin=stdin, stderr=err, start_new_session=True)
        self.procs.append(p)
        return p

    def configs(self, mode="sync", lease=0, failback="auto", alert="record"):
        n = self.net
        common = dict(supervisor__replication=mode, supervisor__primary_lease=lease, supervisor__sync_timeout=2)
        self.cfg = {
            "primary": self.fleet.other_config("primary", supervisor__data_dir="primary-data",
                                               supervisor__peer=n.url("standby", "ctl"), **common),
            "standby": self.fleet.other_config("standby", supervisor__data_dir="standby-data", supervisor__role="standby",
                                               supervisor__peer=n.url("primary", "ctl"), **common),
            "watchdog": self.fleet.other_config(
                "watchdog", watchdog__primary=n.url("primary", "ctl"), watchdog__standby=n.url("standby", "ctl"),
                watchdog__failback=failback, watchdog__state_file="watchdog.json",
                watchdog__alert=[sys.executable, os.path.join(self.dir, "alert.py"), self.dir, alert], **WD),
            "worker": self.fleet.other_config("worker"),
        }
        with open(os.path.join(self.dir, "alert.py"), "w") as f:
            f.write(ALERT)
        with open(self.cfg["worker"], "a") as f:
            f.write(f'\n[worker.kinds.mk]\nargv = {json.dumps(["sh", "-c", TASK_SH, self.run_log])}\n')
        self.db = {s: os.path.join(self.dir, f"{s}-data", "meshkit.db") for s in ("primary", "standby")}
        self.state_file = os.path.join(self.dir, "watchdog.json")

    def start_supervisor(self, node: str) -> subprocess.Popen:
        log = os.path.join(self.dir, f"{node}-{len(self.logs[node])}.log")
        self.logs[node].append(log)
        p = self.spawn(node, ["-m", "meshkit", "supervisor", "--config", self.cfg[node], "--listen", f"0.0.0.0:{PORT}"],
                       log, stdout=subprocess.PIPE)
        url = read_line(p, 20)
        if not url.startswith("http://"):
            raise AssertionError(f"{node} supervisor did not start: {url!r}\n{self.tail(log)}")
        self.proc[node] = p
        return p

    def start_watchdog(self) -> subprocess.Popen:
        log = os.path.join(self.dir, f"watchdog-{len(self.wd_logs)}.log")
        self.wd_logs.append(log)
        self.proc["watchdog"] = self.spawn("watchdog", ["-m", "meshkit", "watchdog", "--config", self.cfg["watchdog"]],
                                           log)
        return self.proc["watchdog"]

    def start_cluster(self, **config):
        self.configs(**config)
        self.start_supervisor("primary")
        self.start_supervisor("standby")
        agent_py = os.path.join(self.dir, "agent.py")
        with open(agent_py, "w") as f:
            f.write(AGENT)
        self.agent = self.spawn("worker", [agent_py, ROOT, os.path.join(self.dir, "keys")],
                                os.path.join(self.dir, "agent.log"), stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        wait_for(lambda: (self.status("primary") or {}).get("replication", {}).get("lag_changes") == 0, 15,
                 "the standby to attach")
        self.start_watchdog()
        self.proc["worker"] = self.spawn("worker", [
            "-m", "meshkit", "worker", "--config", self.cfg["worker"], "--name", "w1", "--slots", "3",
            "--work-dir", os.path.join(self.dir, "work"), "--supervisor", self.net.url("primary", "cli"),
            "--supervisor", self.net.url("standby", "cli")], self.worker_log)
        wait_for(lambda: any(e["event"] == "registered" for e in read_events(self.worker_log)), 15,
                 "the worker to register")

    # -- the agent: HTTP from the worker's namespace ------------------------------------

    def rpc(self, req: dict, timeout=40) -> dict:
        self.agent.stdin.write((json.dumps(req) + "\n").encode())
        self.agent.stdin.flush()
        line = read_line(self.agent, timeout)
        if not line:
            raise AssertionError(f"the agent did not answer {req}; {self.tail(os.path.join(self.dir, 'agent.log'))}")
        return json.loads(line)

    def call(self, node: str, method: str, path: str, body=None):
        """(status, body) from the node's client-side address, or (None, error)."""
        got = self.rpc({"op": "call", "url": self.net.url(node, "cli"), "method": method, "path": path,
                        "body": body, "timeout": 3})
        return (got["status"], got["body"]) if "status" in got else (None, got.get("error"))

    def health(self, node: str) -> dict:
        status, body = self.call(node, "GET", "/health")
        return body if status == 200 else {}

    def status(self, node: str):
        status, body = self.call(node, "GET", "/v1/status")
        return body if status == 200 else None

    def wait_role(self, node: str, role: str, timeout=15.0, epoch=None) -> dict:
        return wait_for(lambda: (lambda h: h if h.get("role") == role and (epoch is None or h.get("epoch") == epoch)
                                 else None)(self.health(node)), timeout, f"{node} to be {role}", every=0.1)

    def load_start(self, rate=8):
        self.assertTrue(self.rpc({"op": "load_start", "rate": rate, "path": self.acks_path, "prefix": "k",
                                  "urls": [self.net.url("primary", "cli"), self.net.url("standby", "cli")]})["ok"])

    def load_stop(self):
        self.assertTrue(self.rpc({"op": "load_stop"})["ok"])

    def acks(self) -> list:
        return read_jsonl(self.acks_path)

    def succeeded_since(self, node: str, t: float) -> int:
        return query(self.db[node], "SELECT COUNT(*) FROM history WHERE to_state='succeeded' AND at>?", (t,))[0][0]

    def wait_progress(self, node: str, since: float, n: int, timeout=20.0):
        wait_for(lambda: self.succeeded_since(node, since) >= n, timeout, f"{n} tasks to succeed on {node}",
                 every=0.1)

    def wd_state(self) -> dict:
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def tail(self, path: str, n=25) -> str:
        try:
            with open(path, errors="replace") as f:
                return f"--- {os.path.basename(path)}\n" + "".join(f.readlines()[-n:])
        except OSError:
            return f"--- {path}: none"

    def diagnostics(self) -> str:
        paths = self.logs["primary"] + self.logs["standby"] + self.wd_logs + [self.worker_log]
        return "\n".join(self.tail(p, 15) for p in paths)

    # -- the checks ------------------------------------------------------------------------

    def drain(self, active: str, timeout=25.0) -> None:
        """Every acknowledged dispatch the active supervisor has reaches an end state."""
        keys = [a["key"] for a in self.acks() if "id" in a]

        def settled():
            rows = dict(query(self.db[active], f"SELECT key, state FROM tasks WHERE key IN ({','.join('?' * len(keys))})",
                              keys))
            return all(s in ("succeeded", "failed", "cancelled") for s in rows.values())
        wait_for(settled, timeout, f"the acknowledged tasks to finish on {active}", every=0.2)

    def check(self, active: str, lost_window=None, divergent_ok=False, fenced=None) -> dict:
        """The three properties; returns figures for the test's message. lost_window: (node, t0, t1):
        acknowledgements by that node in that period may be missing (async). fenced: (node, t):
        that node must have accepted nothing after t."""
        problems = []
        # 1. At most one supervisor accepted work at any time (logs), and the databases agree.
        accepts, periods = [], {"primary": [], "standby": []}
        for node in ("primary", "standby"):
            for path in self.logs[node]:
                got, spans = self.accepted(node, path, problems)
                accepts += got
                periods[node] += spans
        if fenced:
            late = [a for a in accepts if a["node"] == fenced[0] and a["time"] > fenced[1]]
            problems += [f"{a['node']} accepted {a['event']} {a['task']} at {a['time']:.3f}, after its lease "
                         f"ran out ({fenced[1]:.3f})" for a in late[:5]]
        accepts.sort(key=lambda a: (a["time"], a["epoch"]))
        top, owner = 0, {}
        for a in accepts:
            if a["epoch"] < top:
                problems.append(f"{a['node']} accepted {a['event']} {a['task']} at {a['time']:.3f} with epoch "
                                f"{a['epoch']} after epoch {top} had accepted work")
            top = max(top, a["epoch"])
            if owner.setdefault(a["epoch"], a["node"]) != a["node"]:
                problems.append(f"epoch {a['epoch']}: both {owner[a['epoch']]} and {a['node']} accepted work "
                                f"({a['event']} {a['task']} at {a['time']:.3f})")
        leases = {}
        for a in accepts:
            if a["event"] == "task_leased":
                leases.setdefault((a["task"], a["fence"]), []).append(a)
        for node, db in self.db.items():
            for task, at, fence, actor in query(db, "SELECT task, at, fence, actor FROM history WHERE to_state='leased'"):
                match = [a for a in leases.get((f"t{task}", fence), []) if abs(a["time"] - at) < 1.0]
                if not match:
                    problems.append(f"{node} database: t{task} leased to {actor} (fence {fence}) at {at:.3f} by no "
                                    f"logged primary")
                # Log times are rounded to the millisecond (the database keeps full precision),
                # and a period's end is its last log line: allow that rounding at both ends.
                elif not any(t0 - 0.2 <= at <= t1 + 0.002 for m in match for t0, t1, _ in periods[m["node"]]):
                    problems.append(f"{node} database: t{task} leased at {at:.3f} by {match[0]['node']} outside its "
                                    f"primary periods {periods[match[0]['node']]}")
        # 2. Acknowledged dispatches: present in the active database and succeeded.
        acks = self.acks()
        got = [a for a in acks if "id" in a]
        rows = {k: (n, s) for k, n, s in query(self.db[active], "SELECT key, n, state FROM tasks WHERE key IS NOT NULL")}
        lost, allowed = [], []
        for a in got:
            n, state = rows.get(a["key"], (None, None))
            if state == "succeeded":
                continue
            node = "primary" if a["url"] == self.net.url("primary", "cli") else "standby"
            if lost_window and node == lost_window[0] and lost_window[1] <= a["ack"] <= lost_window[2]:
                allowed.append(a["key"])
            else:
                lost.append(f"{a['key']} ({a['id']} acknowledged by {node} at {a['ack']:.3f}, epoch {a['epoch']}): "
                            f"{state or 'missing'} on {active}")
        problems += [f"acknowledged but lost: {x}" for x in lost]
        # 3. No task succeeded twice.
        for node, db in self.db.items():
            twice = query(db, "SELECT task, COUNT(*) FROM history WHERE to_state='succeeded' GROUP BY task"
                              " HAVING COUNT(*) > 1")
            if twice and (node == active or not divergent_ok):
                problems.append(f"{node} database: succeeded twice: {twice[:10]}")
        runs = {}
        try:
            with open(self.run_log) as f:
                for line in f:
                    m = re.search(r'"i": *(\d+)', line)
                    if m:
                        runs[int(m.group(1))] = runs.get(int(m.group(1)), 0) + 1
        except FileNotFoundError:
            pass
        figures = {"acknowledged": len(got), "refused": len(acks) - len(got), "lost_in_window": len(allowed),
                   "accepts": len(accepts), "ran_twice": sorted(i for i, c in runs.items() if c > 1),
                   "seconds": round(time.monotonic() - self.t_start, 1)}
        if problems:
            self.fail("\n".join(problems[:30]) + f"\n{figures}\n" + self.diagnostics())
        self.assertGreater(len(got), 20, figures)
        return figures

    def accepted(self, node: str, path: str, problems: list) -> tuple:
        """The work one supervisor process accepted, each with the epoch it held (problems if it was
        not primary then), and its primary periods [(start, end, epoch)] (end: its last log line)."""
        events = read_events(path)
        role, epoch, out, spans, opened = None, None, [], [], None
        for k, e in enumerate(events):
            if e["event"] == "role_changed" or (e["event"] == "supervisor_started" and role is None):
                role, epoch = e.get("supervisor_role"), e.get("epoch")
                if role == "primary" and opened is None:
                    opened = (e["time"], epoch)
                elif role != "primary" and opened is not None:
                    spans.append((opened[0], e["time"], opened[1]))
                    opened = None
            elif e["event"] in ACCEPTS:
                r, ep = role, epoch
                if r != "primary":      # promoted just before, logged just after?
                    nxt = next((x for x in events[k + 1:] if x["event"] == "role_changed"), None)
                    if nxt and nxt.get("supervisor_role") == "primary" and nxt["time"] - e["time"] < 0.2:
                        r, ep = "primary", nxt.get("epoch")
                if r != "primary":
                    problems.append(f"{node} ({os.path.basename(path)}) accepted {e['event']} {e.get('task')} at "
                                    f"{e['time']:.3f} while {r}")
                out.append({"node": node, "event": e["event"], "task": e.get("task"), "fence": e.get("fence"),
                            "time": e["time"], "epoch": ep or 0})
        if opened is not None and events:
            spans.append((opened[0], events[-1]["time"], opened[1]))
        return out, spans

    def kill(self, name: str) -> None:
        p = self.proc[name]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)

    def failed_over_under_load(self) -> None:
        """sync, primary_lease, manual failback: the primary killed -9 under load, the standby
        promoted (epoch 2) and running tasks."""
        self.start_cluster(mode="sync", lease=LEASE, failback="manual")
        t0 = time.time()
        self.load_start()
        self.wait_progress("primary", t0, 8)
        t_kill = time.time()
        self.kill("primary")
        self.wait_role("standby", "primary", 10, epoch=2)
        self.wait_progress("standby", t_kill, 8)
