"""A task that failed without running says why in its error, not only in its history: the page
and /v1/overview show the error column (`-` when it is empty).

- dependents of a task that failed for good: "upstream failed: tN", at each level of a chain
  (GET /v1/tasks/ID "error", /v1/overview "failures");
- the dependent of a task cancelled before it ran: "upstream failed: tN" too (the history's reason);
- a task whose last lease was lost (its node went stale, no attempts left): the reaper's
  reason, not the error of an earlier attempt.

Through a real supervisor, with a worker's calls made by hand."""

import json
import unittest
import urllib.request

from tests.helpers import Fleet, register
from tests.test_worker_harness import dispatch, get_task, wait_for


def overview_errors(fleet) -> dict:
    req = urllib.request.Request(fleet.url + "/v1/overview", headers={"Authorization": f"Bearer {fleet.viewer_token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return {t["id"]: t["error"] for t in json.loads(resp.read())["failures"]}


class DependentReason(unittest.TestCase):
    def setUp(self):
        self.fleet = Fleet(supervisor__cycle=0.2, supervisor__stale_after=2, tasks__backoff_base=0.1,
                           tasks__backoff_cap=0.2)
        self.addCleanup(self.fleet.close)
        self.fleet.make_viewer_token()
        self.fleet.start_supervisor()
        self.admin, self.worker = self.fleet.client("admin"), self.fleet.client("worker")
        self.addCleanup(self.admin.close)
        self.addCleanup(self.worker.close)

    def claim(self, node):
        [task] = self.worker.call("POST", "/v1/claim", {"node": node, "max": 1, "wait": 0})["tasks"]
        return task

    def test_dependents_of_a_failed_or_cancelled_task_say_why_in_their_error(self):
        register(self.worker, "w1", kinds=("echo",))
        a = dispatch(self.admin, "echo", max_attempts=1)
        b = dispatch(self.admin, "echo", after=[a])
        c = dispatch(self.admin, "echo", after=[b])
        e = dispatch(self.admin, "other")                  # no node runs it: still queued when cancelled
        d = dispatch(self.admin, "echo", after=[e])
        t = self.claim("w1")
        self.assertEqual(t["id"], a)
        self.worker.call("POST", "/v1/results", {"task": a, "fence": t["fence"], "node": "w1", "outcome": "failed",
                                                 "ended_by": "exit", "exit_code": 3, "error": "exit code 3"})
        self.admin.call("POST", f"/v1/tasks/{e}/cancel", {"reason": "not needed"})
        late = dispatch(self.admin, "echo", after=[a])     # dispatched after its dependency already failed
        want = {a: "exit code 3", b: f"upstream failed: {a}", c: f"upstream failed: {b}", d: f"upstream failed: {e}",
                late: f"upstream failed: {a}"}
        for tid, error in want.items():
            with self.subTest(task=tid):
                task = get_task(self.admin, tid)
                self.assertEqual((task["state"], task["error"]), ("failed", error), task["history"])
                if tid != a:                               # the same words as its history's last reason
                    self.assertEqual(task["history"][-1]["reason"], error)
        self.assertEqual({tid: err for tid, err in overview_errors(self.fleet).items() if tid in want}, want)

    def test_a_task_whose_last_lease_was_lost_says_so_in_its_error(self):
        register(self.worker, "w2", kinds=("echo",))
        f = dispatch(self.admin, "echo", max_attempts=2)
        t = self.claim("w2")
        self.worker.call("POST", "/v1/results", {"task": f, "fence": t["fence"], "node": "w2", "outcome": "failed",
                                                 "ended_by": "exit", "exit_code": 3, "error": "exit code 3"})
        register(self.worker, "w2", kinds=("echo",))
        t = wait_for(lambda: self.worker.call("POST", "/v1/claim", {"node": "w2", "max": 1, "wait": 0})["tasks"], 5,
                     "the retry to be claimable")[0]
        self.assertEqual((t["id"], t["attempt"]), (f, 2))
        # w2 falls silent: stale after 2 s, its lease lost with no attempts left
        task = wait_for(lambda: (lambda t: t if t["state"] == "failed" else None)(get_task(self.admin, f)), 10,
                        f"{f} to fail")
        self.assertRegex(task["error"], r"^node w2 stale \(no heartbeat for \d+ s\); no attempts left \(2\)$")
        self.assertEqual(task["error"], task["history"][-1]["reason"])
        self.assertEqual(overview_errors(self.fleet)[f], task["error"])


if __name__ == "__main__":
    unittest.main()
