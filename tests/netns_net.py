"""Network namespaces for the HA tests: one namespace per node on two bridges (Net), the
`ip` helpers, the agent and alert scripts run inside them, and readers for their JSON-lines
logs and databases. Used by tests/netns_ha.py and scripts/bench_failover.py."""

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

PORT = 8765
PREFIX = "mkha-"
NODES = {"primary": (1, ("ctl", "cli")), "standby": (2, ("ctl", "cli")), "watchdog": (3, ("ctl",)),
         "worker": (4, ("cli",))}

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
