"""HA across real (virtual) hosts: one network namespace per node.

    primary  ctl 10.A.B.1   cli 10.A.B+1.1        ctl: supervisors <-> watchdog, replication
    standby  ctl 10.A.B.2   cli 10.A.B+1.2        cli: the worker and the dispatcher
    watchdog ctl 10.A.B.3
    worker   cli 10.A.B+1.4  (+ the agent: steady dispatch load, and the test's HTTP calls)

Each node's veths end on two bridges in a namespace of their own; no address, route or
link is added to the root namespace. Supervisors, watchdog, worker and agent run as
`ip netns exec NS python -m meshkit ...`. Cutting the primary's `ctl` link partitions it
from the watchdog and the standby while the worker still reaches it.

Cases (watchdog interval 0.4 s, failures 2; tasks dispatched at 8/s throughout):
- kill -9 of the primary (sync); it restarts while the standby is active and comes back as
  standby; auto failback while tasks keep coming;
- the primary's ctl link cut (async, then sync) with primary_lease 0.7 s: it stops accepting
  within its lease, before the standby is promoted; healed, it follows the new primary;
- the primary restarts with its peer unreachable (blackhole route) while the watchdog reaches
  both: it starts fenced (refuses work from its first answer) and the watchdog demotes it;
- after a failover, both supervisors restart while they cannot reach each other and the
  watchdog is down: neither takes work; the watchdog, back, names the active one (the
  promoted standby) and demotes the stale one;
- the watchdog killed with -9 between promoting the standby and saving its state: restarted,
  it goes on from its state file (one more failed check, promote is a no-op, no flap).

Every test then checks, from the supervisors' JSON logs and both databases:
- at most one supervisor accepted work at any time: every task_leased, task_dispatched and
  task_result happened while its supervisor was primary; in time order the epochs of the
  accepting supervisors never go down and no two supervisors share one; every `leased`
  history row of either database is one of those logged leases, inside its granter's
  primary period (role_changed events);
- no acknowledged dispatch is lost (sync), or only inside the documented window (async:
  acknowledged by the old primary from one replication round before the cut until its
  lease ran out); every other one succeeded;
- no task has two `succeeded` history rows.

Skipped unless root with a working `ip netns`. About 45 s for the file. Set
MESHKIT_KEEP_NETNS=1 to keep each test's logs and databases (copied to DIR-kept).
"""

import json
import os
import random
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import unittest

from tests.helpers import ROOT, Fleet, env, read_line
from tests.test_worker_harness import FAST, wait_for

PORT = 8765
PREFIX = "mkha-"
NODES = {"primary": (1, ("ctl", "cli")), "standby": (2, ("ctl", "cli")), "watchdog": (3, ("ctl",)),
         "worker": (4, ("cli",))}
ACCEPTS = ("task_leased", "task_dispatched", "task_result")
WD = dict(watchdog__interval=0.4, watchdog__failures=2, watchdog__recoveries=2)
LEASE = 0.7           # below watchdog interval x failures (0.8), as documented

# The task: record the run (task id, time, payload) and echo the payload as its result.
TASK_SH = ('p=$(cat task.json); sleep 0.2; printf "%s %s %s\\n" "$MESHKIT_TASK_ID" "$(date +%s.%N)" "$p" >> "$0";'
           ' printf "%s" "$p" > result.json')

# Runs in the worker's namespace: answers the test's HTTP calls (one JSON line in, one
# out) and, in a thread, dispatches tasks at a steady rate, recording every acknowledgement.
AGENT = r'''
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
from meshkit.adapters import keyfile
from meshkit.adapters.client import SignedClient
from meshkit.core.errors import ApiError, ClientError
from meshkit.rules.auth import pick_key

kid, _, secret = pick_key(keyfile.load(sys.argv[2]), "", "admin")
out_lock = threading.Lock()


class Load(threading.Thread):
    def __init__(self, urls, rate, path, prefix):
        super().__init__(daemon=True)
        self.clients = [SignedClient(u, kid, secret, timeout=6) for u in urls]
        self.rate, self.path, self.prefix = rate, path, prefix
        self.stop, self.sent, self.current = threading.Event(), 0, 0

    def one(self, i):
        key = f"{self.prefix}{i}"
        body = {"kind": "mk", "payload": {"i": i}, "key": key}
        error = None
        for attempt in range(40):                 # bounded: about 12 s per dispatch
            n = len(self.clients)
            for j in [self.current] + [k for k in range(n) if k != self.current]:
                t_sent = time.time()
                try:
                    got = self.clients[j].call("POST", "/v1/tasks", body)
                except ApiError as e:
                    error = f"{e.status} {e.code}: {e.message}"
                    if e.code == "not_active" or e.status >= 500:
                        continue
                    return {"i": i, "key": key, "failed": error}
                except ClientError as e:
                    error = e.message
                    continue
                self.current = j
                return {"i": i, "key": key, "id": got["task"]["id"], "url": self.clients[j].url,
                        "epoch": got.get("epoch"), "sent": t_sent, "ack": time.time(), "created": got["created"]}
            if self.stop.is_set() and attempt > 3:
                break
            time.sleep(0.3)
        return {"i": i, "key": key, "failed": error}

    def run(self):
        i = 0
        with open(self.path, "a") as f:
            while not self.stop.is_set():
                t0 = time.monotonic()
                f.write(json.dumps(self.one(i)) + "\n")
                f.flush()
                i += 1
                self.sent = i
                self.stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - t0)))


load = None
for line in sys.stdin:
    req = json.loads(line)
    try:
        if req["op"] == "call":
            c = SignedClient(req["url"], kid, secret, timeout=req.get("timeout", 5))
            status, body = c.request(req["method"], req["path"], req.get("body"))
            out = {"status": status, "body": body}
        elif req["op"] == "load_start":
            load = Load(req["urls"], req["rate"], req["path"], req["prefix"])
            load.start()
            out = {"ok": True}
        elif req["op"] == "load_stop":
            load.stop.set()
            load.join(30)
            out = {"ok": not load.is_alive(), "sent": load.sent}
        else:
            out = {"error": "unknown op"}
    except (ClientError, ApiError) as e:
        out = {"error": e.message}
    except Exception as e:
        out = {"error": repr(e)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
'''

# The watchdog's alert command: blocks on the first failover (so the test can kill the
# watchdog between promoting the standby and saving its state), then just records events.
ALERT = r'''
import json, os, sys, time
event = json.load(sys.stdin)
with open(os.path.join(sys.argv[1], "alerts.jsonl"), "a") as f:
    f.write(json.dumps(event) + "\n")
block = os.path.join(sys.argv[1], "alert-blocked")
if event.get("event") == "failover" and sys.argv[2] == "block" and not os.path.exists(block):
    with open(block, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(20)
'''


def ip(*args, check=True, timeout=10) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def netns_unavailable():
    """Why these tests can't run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, bridges)"
    if not shutil.which("ip"):
        return "needs iproute2's `ip`"
    probe = f"{PREFIX}probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        r = ip("netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"`ip netns add` does not work here: {r.stderr.strip()}"
        for args in (("-n", probe, "link", "add", "b0", "type", "bridge"),
                     ("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")):
            r = ip(*args, check=False)
            if r.returncode != 0:
                return f"`ip {' '.join(args)}` does not work here: {r.stderr.strip()}"
        r = subprocess.run(["ip", "netns", "exec", probe, sys.executable, "-c", "pass"], capture_output=True,
                           text=True, timeout=20)
        if r.returncode != 0:
            return f"`ip netns exec` does not work here: {r.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as e:
        return f"network namespaces unavailable: {e}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def remove_leftovers() -> None:
    """Namespaces of an earlier run of this file that was killed (its pid is in the name)."""
    r = ip("netns", "list", check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{PREFIX}(\d+)-[0-9a-f]+-\w+$", name)
        if m and not pid_alive(int(m.group(1))):
            remove_ns(name)


def remove_ns(name: str) -> None:
    """Kill what still runs in a namespace of ours, then delete it (with its links)."""
    for pid in ip("netns", "pids", name, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    ip("netns", "del", name, check=False)


class Net:
    """The namespaces, bridges, veths and addresses of one test."""

    def __init__(self):
        self.tag = f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
        a, b = random.randint(100, 250), random.randrange(0, 254, 2)
        self.prefix = {"ctl": f"10.{a}.{b}", "cli": f"10.{a}.{b + 1}"}
        self.ns = {}

    def up(self) -> None:
        br = self._add("br")
        ip("-n", br, "link", "set", "lo", "up")
        for net in ("ctl", "cli"):
            ip("-n", br, "link", "add", net, "type", "bridge")
            ip("-n", br, "link", "set", net, "up")
        for node, (host, nets) in NODES.items():
            ns = self._add(node)
            ip("-n", ns, "link", "set", "lo", "up")
            for net in nets:
                outer = f"{node[:2]}-{net}"
                ip("-n", br, "link", "add", outer, "type", "veth", "peer", "name", net, "netns", ns)
                ip("-n", br, "link", "set", outer, "master", net, "up")
                ip("-n", ns, "addr", "add", f"{self.addr(node, net)}/24", "dev", net)
                ip("-n", ns, "link", "set", net, "up")

    def _add(self, name: str) -> str:
        ns = f"{self.tag}-{name}"
        ip("netns", "add", ns)
        self.ns[name] = ns
        return ns

    def addr(self, node: str, net: str) -> str:
        return f"{self.prefix[net]}.{NODES[node][0]}"

    def url(self, node: str, net: str) -> str:
        return f"http://{self.addr(node, net)}:{PORT}"

    def link(self, node: str, net: str, state: str) -> None:
        ip("-n", self.ns[node], "link", "set", net, state)

    def down(self) -> None:
        for ns in reversed(list(self.ns.values())):
            remove_ns(ns)
        self.ns = {}


def read_jsonl(path: str) -> list:
    out = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return out


def read_events(path: str) -> list:
    """The JSON log lines of a meshkit process (those with an "event")."""
    return [r for r in read_jsonl(path) if isinstance(r, dict) and "event" in r]


def query(db: str, sql: str, args=()) -> list:
    if not os.path.exists(db):
        return []
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return c.execute(sql, args).fetchall()
    finally:
        c.close()


class NetnsHa(unittest.TestCase):
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

    # -- the tests -------------------------------------------------------------------------------

    def test_kill9_then_restart_as_standby_then_failback_under_load(self):
        """sync: primary killed with -9 under load; the standby takes over; the old primary returns
        as a standby while the standby is active; auto failback while tasks keep coming."""
        self.start_cluster(mode="sync", failback="auto")
        t0 = time.time()
        self.load_start()
        self.wait_progress("primary", t0, 12)
        t_kill = time.time()
        self.kill("primary")
        h = self.wait_role("standby", "primary", 10)
        self.assertEqual(h["epoch"], 2)
        took = time.time() - t_kill
        self.wait_progress("standby", t_kill, 12)

        self.start_supervisor("primary")                              # comes back while the standby is active
        self.assertEqual(self.health("primary").get("role"), "standby", self.diagnostics())
        status, body = self.call("primary", "POST", "/v1/tasks", {"kind": "mk", "payload": {}})
        self.assertEqual((status, body["error"]["code"]), (409, "not_active"))
        t_back = time.time()
        self.wait_role("primary", "primary", 25, epoch=3)             # auto failback, under load
        self.wait_role("standby", "standby", 10)
        self.wait_progress("primary", t_back, 12)
        self.load_stop()
        self.drain("primary")
        figures = self.check("primary")
        handover = [e["time"] for p in self.logs["primary"] for e in read_events(p)
                    if e["event"] == "role_changed" and e.get("epoch") == 3][0]
        near = {a["url"] for a in self.acks() if "id" in a and abs(a["ack"] - handover) < 1.5}
        self.assertEqual(len(near), 2, "dispatches were acknowledged by both just before and after the failback")
        self.assertEqual(self.wd_state().get("active"), "primary")
        sys.stderr.write(f"\n  kill -9 + return + failback: promoted in {took:.1f} s; {figures} ")

    def test_partition_primary_fences_itself_async(self):
        """async + primary_lease: the primary's ctl link is cut (the worker still reaches it); it stops
        accepting within its lease, before the standby is promoted; after the link heals it follows."""
        self.partition("async")

    def test_partition_primary_fences_itself_sync(self):
        """The same in sync mode: nothing acknowledged may be lost."""
        self.partition("sync")

    def partition(self, mode):
        self.start_cluster(mode=mode, lease=LEASE, failback="manual")
        t0 = time.time()
        self.load_start()
        self.wait_progress("primary", t0, 12)
        t_cut = time.time()
        self.net.link("primary", "ctl", "down")
        t_down = time.time()                 # the lease runs from the last contact, before this
        self.wait_role("standby", "primary", 20)
        t_promoted = time.time()
        status, body = self.call("primary", "POST", "/v1/tasks", {"kind": "mk", "payload": {}})
        self.assertEqual((status, (body or {}).get("error", {}).get("code")), (409, "not_active"), body)
        self.wait_progress("standby", t_promoted, 12)
        self.net.link("primary", "ctl", "up")
        self.wait_role("primary", "standby", 15)
        wait_for(lambda: (self.status("primary") or {}).get("replication", {}).get("lag_changes") == 0, 20,
                 "the old primary to catch up", every=0.2)
        self.load_stop()
        self.drain("standby")
        # Documented window (async): what the primary acknowledged from one replication round
        # before the cut until its lease ran out may be missing on the promoted standby.
        window = ("primary", t_cut - 1.0, t_down + LEASE + 0.5) if mode == "async" else None
        figures = self.check("standby", lost_window=window, divergent_ok=True, fenced=("primary", t_down + LEASE + 0.25))
        sys.stderr.write(f"\n  partition ({mode}): promoted {t_promoted - t_cut:.1f} s after the cut; {figures} ")

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

    def test_restarted_primary_cut_off_from_the_active_standby(self):
        """sync: after a failover the old primary restarts but cannot reach its peer (a blackhole
        route to the standby's ctl address); the watchdog reaches both. It must not accept work."""
        self.failed_over_under_load()
        ip("-n", self.net.ns["primary"], "route", "add", "blackhole", f"{self.net.addr('standby', 'ctl')}/32")
        self.start_supervisor("primary")
        t_back = time.time()
        first = self.health("primary")
        # It could not ask its peer: it started fenced, so it refuses work from its first answer
        # (as a fenced primary, or already as the standby the watchdog made it).
        status, body = self.call("primary", "POST", "/v1/tasks", {"kind": "mk", "payload": {"probe": 0}})
        self.assertEqual((status, (body or {}).get("error", {}).get("code")), (409, "not_active"), body)
        self.wait_role("primary", "standby", WD["watchdog__interval"] * 2 + 1.0, epoch=2)
        window = time.time() - t_back
        status, body = self.call("primary", "POST", "/v1/tasks", {"kind": "mk", "payload": {"probe": 1}})
        self.assertEqual((status, (body or {}).get("error", {}).get("code")), (409, "not_active"), body)
        self.wait_progress("standby", t_back, 8)
        self.load_stop()
        self.drain("standby")
        figures = self.check("standby")
        sys.stderr.write(f"\n  restart cut off: came up {first.get('role')} epoch {first.get('epoch')}, standby "
                         f"after {window:.1f} s; {figures} ")

    def test_both_restart_cut_off_from_each_other(self):
        """sync: after a failover the watchdog is down and both supervisors restart with blackhole
        routes between them: neither may take work until the watchdog decides; then only the
        promoted standby does, and the old primary follows it."""
        self.failed_over_under_load()
        self.kill("watchdog")
        for node, other in (("primary", "standby"), ("standby", "primary")):
            ip("-n", self.net.ns[node], "route", "add", "blackhole", f"{self.net.addr(other, 'ctl')}/32")
        self.kill("standby")
        self.start_supervisor("primary")
        self.start_supervisor("standby")
        t_both = time.time()
        for _ in range(3):                               # nobody decides: nobody takes work
            for node in ("primary", "standby"):
                status, body = self.call(node, "POST", "/v1/tasks", {"kind": "mk", "payload": {"probe": node}})
                self.assertEqual((status, (body or {}).get("error", {}).get("code")), (409, "not_active"), body)
                # fenced at start; the old primary may already be a standby (a worker told it epoch 2)
                self.assertRegex(body["error"]["message"], "started fenced|is a standby")
            time.sleep(0.5)
        t_wd = time.time()
        self.start_watchdog()
        wait_for(lambda: ((self.status("standby") or {}).get("replication") or {"fenced": 1}).get("fenced") is None,
                 10, "the watchdog to name the standby active", every=0.1)
        self.wait_role("primary", "standby", 10)        # told by the watchdog, or already by a worker
        self.wait_progress("standby", t_wd, 8)
        self.load_stop()
        self.drain("standby")
        figures = self.check("standby", fenced=("primary", t_both - 0.5))
        sys.stderr.write(f"\n  both restart cut off: {figures} ")

    def test_watchdog_killed_during_failover_does_not_flap(self):
        """sync: the watchdog is killed with -9 after it promoted the standby but before it saved its
        state; restarted, it goes on from its state file: no second promotion, no failback."""
        self.start_cluster(mode="sync", failback="auto", alert="block")
        t0 = time.time()
        self.load_start()
        self.wait_progress("primary", t0, 12)
        t_kill = time.time()
        self.kill("primary")
        blocked = os.path.join(self.dir, "alert-blocked")
        wait_for(lambda: os.path.exists(blocked), 15, "the watchdog to promote and alert")
        before = self.wd_state()
        self.kill("watchdog")                                  # its blocked alert command too (same group)
        self.assertEqual((before.get("active"), before.get("failures")), ("primary", 1), before)
        self.wait_role("standby", "primary", 5, epoch=2)
        self.start_watchdog()
        wait_for(lambda: self.wd_state().get("active") == "standby", 10, "the restarted watchdog to agree",
                 every=0.1)
        self.wait_progress("standby", t_kill, 12)
        time.sleep(1.5)                                        # a few more checks: nothing moves
        self.assertEqual(self.wd_state().get("active"), "standby")
        self.assertEqual(self.health("standby"), {"ok": True, "role": "primary", "epoch": 2})
        promotions = [e for p in self.logs["standby"] for e in read_events(p)
                      if e["event"] == "role_changed" and e.get("supervisor_role") == "primary"]
        self.assertEqual(len(promotions), 1, promotions)
        restarted = read_events(self.wd_logs[-1])
        promoted = [e for e in restarted if e["event"] == "step_done" and e.get("step") == "promote"]
        self.assertEqual(len(promoted), 1, restarted[:20])
        failed_first = [e for e in restarted if e["event"] == "check_failed" and e.get("node") == "primary"
                        and e["time"] <= promoted[0]["time"]]
        self.assertEqual(len(failed_first), 1, "the restarted watchdog kept its count of failed checks")
        self.load_stop()
        self.drain("standby")
        figures = self.check("standby")
        sys.stderr.write(f"\n  watchdog restart: {figures} ")


if __name__ == "__main__":
    unittest.main()
