"""Network partitions between real processes in network namespaces (root only).

A namespace holds the supervisor (and a second worker), another holds worker w1; a veth pair
with private 10.x addresses joins them. `ip link set ... down` cuts w1 off, `tc netem` delays it.
  - cut off longer than supervisor.stale_after while running a task: the task is requeued and
    completed by the second worker; w1's late result is refused as fenced (409 stale_fence) and
    leaves its outbox; the task succeeded once;
  - cut off shorter than that (on a link with 200 ms netem delay): the task completes normally.
Namespaces and links carry a random suffix and are removed in tearDown, even on failure.
"""

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
import unittest

from tests.helpers import ROOT, env, read_line
from tests.test_worker_harness import close_fleet, wait_for, worker_fleet


def ip(*args, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def netns_usable() -> str | None:
    """None if network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not shutil.which("ip"):
        return "needs iproute2 (ip)"
    name = f"mkprobe{random.randrange(10 ** 6)}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns add` fails here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


WHY_NOT = netns_usable()


@unittest.skipIf(WHY_NOT, WHY_NOT or "")
class Partition(unittest.TestCase):
    STALE_AFTER = 3

    def setUp(self):
        tag = f"{random.randrange(16 ** 5):05x}"
        self.ns_sup, self.ns_w = f"mks{tag}", f"mkw{tag}"
        self.dev_sup, self.dev_w = f"vs{tag}", f"vw{tag}"
        net = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
        self.addr_sup, self.addr_w = f"{net}.1", f"{net}.2"
        self.addCleanup(self.cleanup_net)
        ip("netns", "add", self.ns_sup)
        ip("netns", "add", self.ns_w)
        ip("link", "add", self.dev_sup, "type", "veth", "peer", "name", self.dev_w)
        ip("link", "set", self.dev_sup, "netns", self.ns_sup)
        ip("link", "set", self.dev_w, "netns", self.ns_w)
        for ns, dev, addr in ((self.ns_sup, self.dev_sup, self.addr_sup), (self.ns_w, self.dev_w, self.addr_w)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        self.fleet = worker_fleet(supervisor__stale_after=self.STALE_AFTER, supervisor__lease_ttl=60,
                                  worker__poll_wait=1.0)
        self.addCleanup(close_fleet, self.fleet)
        self.db = os.path.join(self.fleet.dir, "data", "meshkit.db")
        self.start_supervisor()

    def cleanup_net(self):      # after close_fleet (cleanups run last-in first-out) has killed the processes
        for ns in (self.ns_sup, self.ns_w):
            ip("netns", "del", ns, check=False)
        ip("link", "del", self.dev_sup, check=False)      # gone with its namespace; in case it never moved

    # -- processes in namespaces ------------------------------------------------------

    def spawn(self, ns, args, log, stdout=subprocess.DEVNULL):
        with open(os.path.join(self.fleet.dir, log), "ab") as f:
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "meshkit", *args], cwd=ROOT,
                                 env=env(), stdout=stdout, stderr=f, stdin=subprocess.DEVNULL)
        self.fleet.procs.append(p)
        return p

    def start_supervisor(self):
        p = self.spawn(self.ns_sup, ["supervisor", "--config", self.fleet.config, "--listen", f"{self.addr_sup}:0"],
                       "supervisor.log", stdout=subprocess.PIPE)
        self.url = read_line(p, 20)
        self.assertTrue(self.url.startswith("http://"), self.url)

    def start_worker(self, ns, name):
        work = os.path.join(self.fleet.dir, f"work-{name}")
        self.spawn(ns, ["worker", "--config", self.fleet.config, "--supervisor", self.url, "--name", name,
                        "--slots", "1", "--work-dir", work], f"worker-{name}.log")
        wait_for(lambda: self.events(name, "registered"), 15, f"{name} registered")
        return work

    def events(self, name, event):
        out = []
        try:
            with open(os.path.join(self.fleet.dir, f"worker-{name}.log")) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if rec.get("event") == event:
                        out.append(rec)
        except FileNotFoundError:
            pass
        return out

    def dispatch(self, kind, payload) -> str:
        out = subprocess.run(["ip", "netns", "exec", self.ns_sup, sys.executable, "-m", "meshkit", "dispatch", kind,
                              "--payload", json.dumps(payload), "--max-attempts", "3", "--config", self.fleet.config,
                              "--supervisor", self.url], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout.strip().split()[-1]

    def rows(self, sql, args=()):
        db = sqlite3.connect(self.db, timeout=10)
        try:
            db.row_factory = sqlite3.Row
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def task(self, tid):
        return self.rows("SELECT * FROM tasks WHERE n=?", (int(tid[1:]),))[0]

    def history(self, tid):
        return self.rows("SELECT * FROM history WHERE task=? ORDER BY seq", (int(tid[1:]),))

    def link(self, up: bool):
        ip("-n", self.ns_w, "link", "set", self.dev_w, "up" if up else "down")

    # -- the tests ----------------------------------------------------------------------

    def test_cut_off_longer_than_stale_after_requeued_elsewhere_late_result_fenced(self):
        work_w1 = self.start_worker(self.ns_w, "w1")
        tid = self.dispatch("slow", {"sleep": 5})
        wait_for(lambda: self.task(tid)["state"] == "running" and self.task(tid)["node"] == "w1", 15, "running on w1")
        fence_w1 = self.task(tid)["fence"]
        self.start_worker(self.ns_sup, "w2")       # the second worker, on the supervisor's side
        t_cut = time.monotonic()
        self.link(False)
        wait_for(lambda: self.task(tid)["node"] == "w2" and self.task(tid)["state"] == "running", 20,
                 "the task requeued and running on w2")
        requeued_after = time.monotonic() - t_cut
        self.assertGreaterEqual(requeued_after, self.STALE_AFTER - 0.5)
        wait_for(lambda: self.events("w1", "task_finished"), 15, "w1's own run to end (cut off)")
        cut_for = time.monotonic() - t_cut
        self.link(True)
        wait_for(lambda: self.task(tid)["state"] == "succeeded", 20, "the task to succeed on w2")
        # w1's result: refused as fenced, dropped from its outbox
        dropped = wait_for(lambda: self.events("w1", "result_dropped"), 20, "w1's late result dropped")
        self.assertEqual(dropped[0]["task"], tid)
        self.assertEqual(dropped[0].get("code"), "stale_fence", dropped[0])
        self.assertEqual(dropped[0]["fence"], fence_w1)
        wait_for(lambda: not [n for n in os.listdir(os.path.join(work_w1, "outbox")) if n.endswith(".json")], 10,
                 "w1's outbox empty")
        hist = self.history(tid)
        succeeded = [h for h in hist if h["to_state"] == "succeeded"]
        self.assertEqual(len(succeeded), 1)
        self.assertEqual(succeeded[0]["actor"], "w2")
        self.assertTrue(any("stale" in h["reason"] for h in hist if h["to_state"] == "queued"), [dict(h) for h in hist])
        t = self.task(tid)
        self.assertEqual((t["attempts"], json.loads(t["result"])["node"]), (2, "w2"))
        print(f"\n  partition: w1 cut off {cut_for:.1f} s (stale_after {self.STALE_AFTER} s): {tid} requeued after "
              f"{requeued_after:.1f} s, succeeded on w2; w1's late result refused (stale_fence) and dropped; "
              f"1 success", file=sys.stderr)

    def netem(self, delay="200ms"):
        """Delay w1's side of the link (both directions pass it: w1 sends through it, and its answers
        come back through the peer, which is undelayed: 200 ms per round trip)."""
        if not shutil.which("tc"):
            self.skipTest("tc netem unavailable: no tc")
        out = subprocess.run(["tc", "-n", self.ns_w, "qdisc", "add", "dev", self.dev_w, "root", "netem", "delay",
                              delay], capture_output=True, text=True)
        if out.returncode != 0:
            self.skipTest(f"tc netem unavailable in this kernel: {out.stderr.strip()}")

    def short_cut(self, label):
        self.start_worker(self.ns_w, "w1")
        t0 = time.monotonic()
        tid = self.dispatch("slow", {"sleep": 3})
        wait_for(lambda: self.task(tid)["state"] == "running", 15, "running on w1")
        self.link(False)
        time.sleep(self.STALE_AFTER / 2)
        self.link(True)
        wait_for(lambda: self.task(tid)["state"] in ("succeeded", "failed"), 20, "the task to end")
        wall = time.monotonic() - t0
        t = self.task(tid)
        self.assertEqual((t["state"], t["attempts"], t["node"]), ("succeeded", 1, "w1"))
        self.assertEqual([h["to_state"] for h in self.history(tid)], ["queued", "leased", "running", "succeeded"])
        self.assertEqual(self.rows("SELECT state FROM nodes WHERE name='w1'")[0]["state"], "alive")
        print(f"\n  partition: w1{label} cut off {self.STALE_AFTER / 2:.1f} s (< stale_after {self.STALE_AFTER} s): "
              f"{tid} completed normally on w1, 1 attempt, {wall:.1f} s", file=sys.stderr)

    def test_cut_off_shorter_than_stale_after_task_completes_normally(self):
        self.short_cut("")

    def test_delayed_link_200ms_and_a_short_cut_task_completes_normally(self):
        self.netem("200ms")
        t0 = time.monotonic()
        out = subprocess.run(["ip", "netns", "exec", self.ns_w, "ping", "-c", "1", "-W", "3", self.addr_sup],
                             capture_output=True, text=True) if shutil.which("ping") else None
        if out is not None and out.returncode == 0:
            self.assertGreaterEqual(time.monotonic() - t0, 0.2)
        self.short_cut(" on a 200 ms netem link")

if __name__ == "__main__":
    unittest.main()
