"""Another process holds the database's write lock (BEGIN IMMEDIATE) while a real supervisor
serves: a write that can't get the lock within store.WRITE_WAIT (0.2 s) is refused at once
(503 store_error "busy", Retry-After 1) instead of holding up the supervisor's loop for SQLite's
5 s busy timeout, so /health and reads (no write lock needed in WAL mode) keep answering in
well under a second; the refusals are in the log (round_refused, at most one line per 10 s
with the sums; the rest at shutdown); once the lock is released, the retried dispatch (same
key) is stored once.
"""

import json
import sys
import threading
import time
import unittest

from tests.test_diskfault import locked_supervisor, release, stored_once
from tests.test_round_refused import metric, scrape, signed_conn
from tests.test_supervisor_logs import events, log_lines

HELD_FOR = 3.0           # about how long the other process holds the lock (s)
PROMPT = 1.0             # every answer while it does: well under this


def timed(fleet, role, method, path, body=None) -> tuple:
    """(seconds, status, JSON answer, Retry-After) of one signed request."""
    t0 = time.monotonic()
    conn = signed_conn(fleet, role, method, path, body)
    try:
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        return time.monotonic() - t0, resp.status, answer, resp.getheader("Retry-After")
    finally:
        conn.close()


class ExternalWriteLock(unittest.TestCase):
    def test_writes_refused_fast_reads_and_health_prompt_then_works(self):
        fleet, admin, first, _, holder = locked_supervisor(self)
        locked_at = time.monotonic()
        dispatches, health, reads = [], [], []
        while time.monotonic() - locked_at < HELD_FOR - 0.5:
            # a dispatch in flight (it waits for the lock in the loop), and meanwhile /health and a read
            writer = threading.Thread(target=lambda: dispatches.append(
                timed(fleet, "admin", "POST", "/v1/tasks", {"kind": "l", "key": "during"})))
            writer.start()
            time.sleep(0.02)
            health.append(timed(fleet, "viewer", "GET", "/health"))
            reads.append(timed(fleet, "viewer", "GET", f"/v1/tasks/{first}"))
            writer.join(30)
        release(holder)

        for seconds, status, answer, retry_after in dispatches:
            self.assertEqual((status, answer["error"]["code"], retry_after), (503, "store_error", "1"), answer)
            self.assertIn("busy", answer["error"]["message"])
            self.assertLess(seconds, PROMPT, "a write waited for the other process's lock")
        for seconds, status, answer, _ in health + reads:
            self.assertEqual(status, 200, answer)
            self.assertLess(seconds, PROMPT, f"an answer waited behind the lock: {answer}")
        self.assertEqual(reads[0][2]["task"]["id"], first)

        stored_once(self, admin, "during")
        self.assertEqual(metric(scrape(fleet), "dispatch", 503), len(dispatches))

        refused = [r for r in events(log_lines(fleet), "round_refused") if "busy" in r["error"]]
        self.assertGreaterEqual(len(refused), 1, "no log line for the refused writes")
        self.assertEqual((refused[0]["code"], refused[0]["status"]), ("store_error", 503))
        self.assertIn("dispatch", refused[0]["routes"])
        fleet.stop()                                # what the window left out is logged at shutdown
        refused = [r for r in events(log_lines(fleet), "round_refused") if "busy" in r["error"]]
        self.assertEqual(sum(r["routes"].get("dispatch", 0) for r in refused), len(dispatches), refused)
        self.assertLessEqual(len(refused), 2 + HELD_FOR // 10, "one line per 10 s window at most")

        def worst(rows):
            return max(r[0] for r in rows)
        print(f"\n  write lock held {HELD_FOR:.0f} s by another process: {len(dispatches)} dispatches refused "
              f"(503 busy) in at most {worst(dispatches) * 1000:.0f} ms; /health at most {worst(health) * 1000:.0f} ms, "
              f"a read at most {worst(reads) * 1000:.0f} ms; {len(refused)} round_refused lines; "
              f"after release stored once", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
