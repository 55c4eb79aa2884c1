"""A round of requests whose group commit fails (the supervisor's loop, httploop.py): its
requests' log lines are not written (they told of changes the rollback undid), one
round_refused line says what was refused and why, and /metrics counts the 503 that was sent.

  - Held.discard (adapters/log.py): drops the holder's own lines below error, keeps lines
    other threads logged meanwhile and a bug's traceback (table, threads, no server);
  - Throttle: one line per key per window, the next carrying the sums (table, times passed in);
  - a real supervisor whose data dir is a full 2 MiB tmpfs (root): a dispatch, a claim and a
    result answered in one round (the supervisor stopped with SIGSTOP while they arrive) all
    get 503 store_error "disk is full" with Retry-After; the log has no task_dispatched,
    task_leased or task_result line for them and one round_refused line naming the three
    routes; /metrics counts 503 for each, not 201/200; once space is freed the same requests
    work and each task id is named by one task_dispatched line;
  - a real supervisor whose database another process holds locked (BEGIN IMMEDIATE): graph
    requests, answered on a thread, not in a round, get 503 store_error "busy" and are logged
    in the same round_refused lines (rounds 0): the first at once, the rest, with a refused
    round's dispatch, in one line carrying the sums (at shutdown here); /metrics counts 503.
"""

import http.client
import io
import json
import os
import secrets
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import unittest

from tests.helpers import register
from tests.test_diskfault import WHY_NOT, locked_supervisor, release, supervisor_on_tmpfs
from tests.test_supervisor_logs import events, log_lines

from meshkit.adapters.log import Logger, Throttle
from meshkit.rules.auth import pick_key, signed_headers


def logged(stream) -> list:
    return [json.loads(line)["event"] for line in stream.getvalue().splitlines()]


class HeldDiscard(unittest.TestCase):
    def round(self, discard: bool):
        """The holder logs, another thread logs meanwhile, the holder logs a bug; then maybe discards."""
        stream = io.StringIO()
        log = Logger("supervisor", stream=stream)
        log.info("before")                                   # not held: written at once
        with log.hold() as held:
            log.info("task_dispatched")
            log.warning("kind_quarantined")
            other = threading.Thread(target=log.info, args=("cycle_line",))
            other.start()
            other.join()
            log.error("internal_error")
            self.assertEqual(logged(stream), ["before"], "held lines were written before the hold ended")
            dropped = held.discard() if discard else 0
            log.info("after_discard")                        # the holder's lines after it: kept
        return logged(stream), dropped

    def test_cases(self):
        cases = [
            # (discard?, lines written, lines dropped)
            (False, ["before", "task_dispatched", "kind_quarantined", "cycle_line", "internal_error",
                     "after_discard"], 0),
            (True, ["before", "cycle_line", "internal_error", "after_discard"], 2),
        ]
        for discard, want, dropped in cases:
            with self.subTest(discard=discard):
                self.assertEqual(self.round(discard), (want, dropped))

    def test_to_the_day_file_too(self):
        d = self.enterContext(tempfile.TemporaryDirectory())
        log = Logger("supervisor", stream=io.StringIO(), log_dir=d)
        with log.hold() as held:
            log.info("task_leased")
            held.discard()
            log.info("kept")
        (name,) = os.listdir(d)
        with open(os.path.join(d, name)) as f:
            self.assertEqual([json.loads(line)["event"] for line in f], ["kept"])


class ThrottleSteps(unittest.TestCase):
    def test_one_line_per_key_and_window_with_the_sums(self):
        stream = io.StringIO()
        t = Throttle(Logger("supervisor", stream=stream), "error", "round_refused", every=10.0)
        full, busy = ("full",), ("busy",)

        def counts(requests, routes):
            return {"requests": requests, "rounds": 1, "routes": routes}

        steps = [
            # (time, key or None for flush(), counts) -> lines written by this step as (error, requests, rounds, routes, window)
            (0.0, full, counts(2, {"dispatch": 2}), [("full", 2, 1, {"dispatch": 2}, None)]),
            (1.0, full, counts(1, {"claim": 1}), []),
            (5.0, full, counts(3, {"claim": 2, "results": 1}), []),
            (5.0, busy, counts(1, {"heartbeat": 1}), [("busy", 1, 1, {"heartbeat": 1}, None)]),
            (9.9, None, None, []),
            (10.0, None, None, [("full", 4, 2, {"claim": 3, "results": 1}, 10.0)]),   # busy: nothing left out
            (12.0, full, counts(1, {"dispatch": 1}), []),        # the window flush() opened at 10
            (15.0, busy, counts(1, {"claim": 1}), [("busy", 1, 1, {"claim": 1}, None)]),   # its window ended
            (20.0, None, None, [("full", 1, 1, {"dispatch": 1}, 10.0)]),
            (30.0, None, None, []),                              # ended with nothing: forgotten
            (31.0, full, counts(1, {"claim": 1}), [("full", 1, 1, {"claim": 1}, None)]),
            (32.0, full, counts(5, {"claim": 5}), []),
            (32.0, "final", None, [("full", 5, 1, {"claim": 5}, 10.0)]),
            (33.0, "final", None, []),
        ]
        for i, (now, key, c, want) in enumerate(steps):
            start = len(stream.getvalue().splitlines())
            if key is None or key == "final":
                t.flush(now, final=key == "final")
            else:
                t.note(key, now, {"error": key[0]}, c)
            got = [json.loads(line) for line in stream.getvalue().splitlines()[start:]]
            self.assertEqual([(r["error"], r["requests"], r["rounds"], r["routes"], r.get("window")) for r in got],
                             want, f"step {i}")
            self.assertTrue(all(r["event"] == "round_refused" and r["level"] == "error" for r in got))


def fill_up(path: str) -> None:
    """Write to path until the file system is full, to the last byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            chunk = b"\0" * size
            try:
                while os.write(fd, chunk):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


def pin_wal(db_path: str) -> sqlite3.Connection:
    """A reader whose snapshot includes frames of the WAL: SQLite can't start the WAL over while
    it reads, so every commit from now on appends frames, i.e. needs new disk space. (Its own
    write first, so that the snapshot surely has frames not yet checkpointed; 'role' is a
    local meta key: not replicated, the value unchanged.)"""
    pin = sqlite3.connect(db_path, isolation_level=None, timeout=10)
    pin.execute("BEGIN IMMEDIATE")
    pin.execute("UPDATE meta SET value=value WHERE key='role'")
    pin.execute("COMMIT")
    pin.execute("BEGIN")
    pin.execute("SELECT COUNT(*) FROM tasks").fetchone()
    return pin


def signed_conn(fleet, role, method, path, body=None) -> http.client.HTTPConnection:
    """A signed request sent on a connection of its own (its answer read later: getresponse())."""
    kid, _, secret = pick_key(fleet.keys, "", role)
    data = b"" if body is None else json.dumps(body).encode()
    headers = signed_headers(kid, secret, method, path, data, time.time(), secrets.token_hex(16))
    host, port = fleet.url[len("http://"):].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request(method, path, body=data if body is not None else None, headers=headers)
    return conn


def scrape(fleet) -> str:
    conn = signed_conn(fleet, "viewer", "GET", "/metrics")
    try:
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def metric(text: str, route: str, status: int) -> float:
    want = f'meshkit_http_requests_total{{route="{route}",status="{status}"}} '
    return sum(float(line[len(want):]) for line in text.splitlines() if line.startswith(want))


class DiskFullRound(unittest.TestCase):
    @unittest.skipIf(WHY_NOT, WHY_NOT or "")
    def test_a_refused_round_logs_one_line_and_counts_its_503s(self):
        fleet, data = supervisor_on_tmpfs(self, 0.5)
        self.addCleanup(lambda: fleet.supervisor.poll() is None and os.kill(fleet.supervisor.pid, signal.SIGCONT))
        admin, worker = fleet.client("admin"), fleet.client("worker")
        register(worker, "w1", kinds=("d",), slots=2)
        a = admin.call("POST", "/v1/tasks", {"kind": "d", "priority": 30, "key": "a"})["task"]["id"]
        (lease,) = worker.call("POST", "/v1/claim", {"node": "w1", "max": 1, "wait": 0})["tasks"]
        worker.call("POST", f"/v1/tasks/{a}/start", {"node": "w1", "fence": lease["fence"]})
        b = admin.call("POST", "/v1/tasks", {"kind": "d", "priority": 30, "key": "b"})["task"]["id"]
        pin = pin_wal(os.path.join(data, "meshkit.db"))
        big = os.path.join(data, "big.fill")
        fill_up(big)
        bodies = [
            ("admin", "/v1/tasks", {"kind": "d", "priority": 30, "key": "c", "trace_id": "refused-dispatch"}),
            ("worker", "/v1/claim", {"node": "w1", "max": 1, "wait": 0}),
            ("worker", "/v1/results", {"task": a, "fence": lease["fence"], "node": "w1", "outcome": "succeeded",
                                       "ended_by": "exit", "exit_code": 0}),
        ]
        # Stopped while the three arrive: the loop finds them all readable at once, one round.
        os.kill(fleet.supervisor.pid, signal.SIGSTOP)
        conns = [signed_conn(fleet, role, "POST", path, body) for role, path, body in bodies]
        time.sleep(0.2)
        os.kill(fleet.supervisor.pid, signal.SIGCONT)
        answers = []
        for conn in conns:
            resp = conn.getresponse()
            answers.append((resp.status, json.loads(resp.read())["error"], resp.getheader("Retry-After")))
            conn.close()
        for status, error, retry_after in answers:
            self.assertEqual((status, error["code"]), (503, "store_error"), answers)
            self.assertIn("disk is full", error["message"])
            self.assertEqual(retry_after, "5")

        lines = log_lines(fleet)
        refused = events(lines, "round_refused")
        self.assertEqual(len(refused), 1, refused)
        line = refused[0]
        self.assertEqual((line["level"], line["status"], line["code"], line["requests"], line["rounds"]),
                         ("error", 503, "store_error", 3, 1))
        self.assertIn("disk is full", line["error"])
        self.assertEqual(line["routes"], {"dispatch": 1, "claim": 1, "results": 1})
        self.assertEqual(line["dropped_lines"], 3)       # task_dispatched, task_leased, task_result
        self.assertEqual([r for r in events(lines, "task_dispatched") if r.get("trace_id") == "refused-dispatch"], [])
        self.assertEqual([r for r in events(lines, "task_leased") if r["task"] == b], [])
        self.assertEqual(events(lines, "task_result"), [])
        text = scrape(fleet)
        self.assertEqual([metric(text, r, s) for r, s in (("dispatch", 201), ("dispatch", 503), ("claim", 200),
                                                           ("claim", 503), ("results", 200), ("results", 503))],
                         [2, 1, 1, 1, 0, 1], text)

        os.remove(big)                                   # space again: the same requests work
        pin.close()
        again = admin.call("POST", "/v1/tasks", bodies[0][2])
        self.assertTrue(again["created"])
        self.assertEqual([t["id"] for t in worker.call("POST", "/v1/claim", bodies[1][2])["tasks"]], [b])
        self.assertEqual(worker.call("POST", "/v1/results", bodies[2][2])["state"], "succeeded")
        lines = log_lines(fleet)
        for tid in (a, b, again["task"]["id"]):         # one line per task id: none named a rolled-back one
            self.assertEqual(len([r for r in events(lines, "task_dispatched") if r["task"] == tid]), 1, tid)
        self.assertEqual(metric(scrape(fleet), "dispatch", 201), 3)
        self.assertEqual(len(events(lines, "round_refused")), 1)
        print(f"\n  disk full: one round of dispatch + claim + result refused (503, Retry-After 5); "
              f"log: one round_refused line (routes {line['routes']}, {line['dropped_lines']} lines dropped), "
              f"no phantom task lines; /metrics 503 x3; space freed: all three work", file=sys.stderr)


class ThreadedRouteRefused(unittest.TestCase):
    def answer(self, fleet, role, path, body) -> tuple:
        conn = signed_conn(fleet, role, "POST", path, body)
        try:
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())["error"], resp.getheader("Retry-After")
        finally:
            conn.close()

    def test_a_store_error_on_a_thread_is_logged_rate_limited_with_the_rounds(self):
        fleet, _, _, _, holder = locked_supervisor(self)
        graph = {"tasks": [{"name": "a", "kind": "l"}, {"name": "b", "kind": "l", "after": ["a"]}]}
        answers = [self.answer(fleet, "admin", "/v1/graph", graph) for _ in range(3)]
        answers.append(self.answer(fleet, "admin", "/v1/tasks", {"kind": "l", "key": "round"}))   # in a round
        for status, error, retry_after in answers:
            self.assertEqual((status, error["code"], retry_after), (503, "store_error", "1"), answers)
            self.assertIn("busy", error["message"])

        def refused():
            return [r for r in events(log_lines(fleet), "round_refused") if "busy" in r["error"]]
        (first,) = refused()                         # the window's first, at once; the rest wait for its end
        self.assertEqual((first["level"], first["status"], first["code"], first["requests"], first["rounds"],
                          first["routes"], first["dropped_lines"]),
                         ("error", 503, "store_error", 1, 0, {"graph": 1}, 0))
        release(holder)
        text = scrape(fleet)
        self.assertEqual([metric(text, "graph", 503), metric(text, "graph", 201), metric(text, "dispatch", 503)],
                         [3, 0, 1], text)
        self.assertEqual(fleet.stop(), 0)
        lines = refused()
        self.assertEqual(len(lines), 2, lines)
        rest = lines[1]
        self.assertEqual((rest["requests"], rest["rounds"], rest["routes"], rest["window"]),
                         (3, 1, {"graph": 2, "dispatch": 1}, 10.0))
        print(f"\n  database locked by another process: 3 graph requests (on a thread) and a dispatch refused "
              f"(503 busy); log: {len(lines)} round_refused lines ({first['routes']}, then {rest['routes']})",
              file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
