"""sd_notify without libsystemd: the Notifier on real AF_UNIX datagram sockets, and a real
`python -m meshkit supervisor` reporting READY, WATCHDOG, STATUS and STOPPING to one."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from tests.helpers import ROOT, Fleet, env, read_line

from meshkit.adapters.sdnotify import Notifier, one_line
from meshkit.cli.common import load_config
from meshkit.core.clock import FakeClock
from meshkit.roles.supervisor.ops import status_line
from meshkit.roles.supervisor.service import Supervisor


class Listener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"meshkit-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
            self.dir = None
        else:
            self.dir = tempfile.TemporaryDirectory(prefix="mk-notify-")
            self.address = os.path.join(self.dir.name, "notify")
            self.sock.bind(self.address)
        self.messages = []          # (monotonic time, {key: value})

    def recv(self, timeout: float):
        """The next message as a dict, or None at the deadline."""
        self.sock.settimeout(max(0.001, timeout))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        msg = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
        self.messages.append((time.monotonic(), msg))
        return msg

    def wait_for(self, key: str, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(deadline - time.monotonic())
            if msg and key in msg:
                return msg
        return None

    def pings(self, count: int, timeout: float) -> list:
        """Arrival times of the next `count` WATCHDOG=1 messages (fewer at the deadline)."""
        times, deadline = [], time.monotonic() + timeout
        while len(times) < count and time.monotonic() < deadline:
            msg = self.recv(deadline - time.monotonic())
            if msg and "WATCHDOG" in msg:
                times.append(time.monotonic())
        return times

    def close(self):
        self.sock.close()
        if self.dir:
            self.dir.cleanup()


def stop_expecting_stopping(test, proc, listener):
    proc.send_signal(signal.SIGTERM)
    test.assertIsNotNone(listener.wait_for("STOPPING", 10), "no STOPPING=1 on SIGTERM")
    test.assertEqual(proc.wait(15), 0)


class NotifierUnits(unittest.TestCase):
    def setUp(self):
        self.listener = Listener()
        self.addCleanup(self.listener.close)

    def test_noop_without_socket(self):
        n = Notifier.from_env({}, FakeClock())
        self.assertFalse(n.enabled)
        self.assertFalse(n.ready("x"))
        self.assertFalse(n.watchdog())
        self.assertEqual(n.max_delay(7.0), 7.0)

    def test_from_env_reads_and_removes_systemd_variables(self):
        environ = {"NOTIFY_SOCKET": self.listener.address, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
        n = Notifier.from_env(environ, FakeClock())
        self.assertEqual(environ, {})            # task subprocesses must not inherit them
        self.assertEqual(n.interval, 2.0)
        other = Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, FakeClock())
        self.assertEqual(other.interval, 0.0)    # the watchdog is someone else's

    def test_ready_status_stopping_datagrams(self):
        n = Notifier(self.listener.address, 0, FakeClock())
        self.assertTrue(n.ready("serving\nnow"))
        self.assertEqual(self.listener.recv(2), {"READY": "1", "STATUS": "serving now"})
        n.status("serving now")                  # unchanged: nothing sent
        n.status("busy")
        n.stopping()
        self.assertEqual(self.listener.recv(2), {"STATUS": "busy"})
        self.assertEqual(self.listener.recv(2), {"STOPPING": "1"})

    def test_watchdog_pings_at_most_every_half_timeout(self):
        clock = FakeClock()
        n = Notifier(self.listener.address, 2_000_000, clock)    # WatchdogSec=2 -> every 1 s
        n.ready()
        self.listener.recv(2)
        self.assertEqual(n.max_delay(5.0), 1.0)
        self.assertFalse(n.watchdog())           # too early
        clock.advance(1.0)
        self.assertTrue(n.watchdog("s1"))
        self.assertFalse(n.watchdog("s1"))
        clock.advance(0.5)
        self.assertFalse(n.watchdog("s1"))
        clock.advance(0.5)
        self.assertTrue(n.watchdog("s1"))
        self.assertEqual(self.listener.recv(2), {"WATCHDOG": "1", "STATUS": "s1"})
        self.assertEqual(self.listener.recv(2), {"WATCHDOG": "1"})
        self.assertIsNone(self.listener.recv(0.01))

    def test_abstract_socket(self):
        abstract = Listener(abstract=True)
        self.addCleanup(abstract.close)
        self.assertTrue(Notifier(abstract.address).ready())
        self.assertEqual(abstract.recv(2), {"READY": "1"})

    def test_a_gone_socket_is_not_an_error(self):
        n = Notifier(os.path.join(self.listener.dir.name, "nothing-here"))
        self.assertFalse(n.ready())
        self.assertEqual(n.errors, 1)

    def test_status_line_and_one_line(self):
        st = {"role": "primary", "epoch": 3, "mode": "normal", "nodes": [{"state": "alive"}, {"state": "stale"}],
              "tasks": {"queued": 4, "running": 1, "leased": 1, "failed": 2}}
        self.assertEqual(status_line(st), "primary epoch 3, mode normal: 1/2 nodes alive, 4 queued, 2 running, 2 failed")
        self.assertEqual(len(one_line("x" * 500)), 200)


class SupervisorUnderSystemd(unittest.TestCase):
    """A real supervisor process with NOTIFY_SOCKET and a small WATCHDOG_USEC."""

    def test_ready_watchdog_status_stopping(self):
        fleet = Fleet(supervisor__cycle=5)
        self.addCleanup(fleet.close)
        listener = Listener()
        self.addCleanup(listener.close)
        log = open(os.path.join(fleet.dir, "sup.log"), "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen([sys.executable, "-m", "meshkit", "supervisor", "--config", fleet.config,
                                 "--listen", "127.0.0.1:0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                                env=env(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="1000000"))
        fleet.procs.append(proc)
        self.assertTrue(read_line(proc, 15).startswith("http://"))
        ready = listener.wait_for("READY", 10)
        self.assertIsNotNone(ready, "no READY=1")
        self.assertIn("serving http://127.0.0.1:", ready.get("STATUS", ""))
        pings = listener.pings(4, 10)
        self.assertEqual(len(pings), 4, "WATCHDOG=1 does not repeat (cycle 5 s, watchdog 1 s)")
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        self.assertLess(max(gaps), 1.0, f"pings must come every ~0.5 s: {gaps}")
        statuses = [m["STATUS"] for _, m in listener.messages if "STATUS" in m]
        self.assertTrue(any("primary epoch 1" in s and "nodes alive" in s for s in statuses), statuses)
        stop_expecting_stopping(self, proc, listener)


class WorkerUnderSystemd(unittest.TestCase):
    """A real `python -m meshkit worker` (it re-execs itself, same pid) under a notify socket."""

    def test_ready_watchdog_stopping(self):
        fleet = Fleet()
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        listener = Listener()
        self.addCleanup(listener.close)
        log = open(os.path.join(fleet.dir, "worker.log"), "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen([sys.executable, "-m", "meshkit", "worker", "--config", fleet.config, "--supervisor",
                                 fleet.url, "--name", "w-sd", "--work-dir", os.path.join(fleet.dir, "work")],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                env=env(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="1000000"))
        fleet.procs.append(proc)
        ready = listener.wait_for("READY", 15)
        self.assertIsNotNone(ready, "no READY=1 from the worker")
        self.assertIn("slots busy", ready.get("STATUS", ""))
        self.assertEqual(len(listener.pings(3, 10)), 3, "WATCHDOG=1 does not repeat")
        stop_expecting_stopping(self, proc, listener)


class StuckLoopStopsPinging(unittest.TestCase):
    """In-process: the pings come from the step loop, so a step that hangs stops them."""

    def test_pings_stop_while_a_step_hangs_and_resume_after(self):
        fleet = Fleet()
        self.addCleanup(fleet.close)
        listener = Listener()
        self.addCleanup(listener.close)
        class Args:
            config = fleet.config
        sup = Supervisor(load_config(Args), listen="127.0.0.1:0")
        sup.ops.notify = Notifier(listener.address, 100_000)      # ping every 0.05 s
        unstuck = threading.Event()
        unstuck.set()
        real_status = sup.status

        def status():
            unstuck.wait(10)
            return real_status()
        sup.status = status
        stop = threading.Event()
        loop = threading.Thread(target=sup.run, args=(stop,), daemon=True)
        loop.start()
        try:
            self.assertIsNotNone(listener.wait_for("WATCHDOG", 5))
            unstuck.clear()                       # the next step hangs
            while listener.recv(0.2):             # a ping already past status() may still come
                pass
            hung_at = time.monotonic()
            msg = listener.recv(0.6)
            self.assertIsNone(msg, "a ping came while the step loop was stuck")
            unstuck.set()
            self.assertIsNotNone(listener.wait_for("WATCHDOG", 5), "pings did not resume")
            self.assertGreater(time.monotonic() - hung_at, 0.6)
        finally:
            unstuck.set()
            stop.set()
            loop.join(10)
            sup.store.close()


if __name__ == "__main__":
    unittest.main()
