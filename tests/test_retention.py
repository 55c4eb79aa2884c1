"""Retention of ended tasks on a real supervisor (supervisor.retain_ended = 1 s, a cycle of
0.2 s), with a worker's calls made by hand: ended tasks leave the database file with their
history, results and dependency rows; a task not ended, a dependency of a waiting task and
the holder of the newest history row stay; /metrics and the log count what went; an
idempotency key of a deleted task makes a new task."""

import json
import os
import sqlite3
import unittest
import urllib.request

from tests.helpers import Fleet, register
from tests.test_worker_harness import dispatch, wait_for


def scrape(fleet) -> str:
    req = urllib.request.Request(fleet.url + "/metrics", headers={"Authorization": f"Bearer {fleet.viewer_token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def sample(text: str, name: str) -> float:
    return float(next(line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(name + " ")))


class Retention(unittest.TestCase):
    def setUp(self):
        self.fleet = Fleet(supervisor__cycle=0.2, supervisor__retain_ended=1)
        self.addCleanup(self.fleet.close)
        self.fleet.make_viewer_token()
        self.fleet.start_supervisor()
        self.admin, self.worker = self.fleet.client("admin"), self.fleet.client("worker")
        self.addCleanup(self.admin.close)
        self.addCleanup(self.worker.close)
        self.db = os.path.join(self.fleet.dir, "data", "meshkit.db")
        register(self.worker, "w1", kinds=("echo",), slots=10)

    def rows(self, sql, args=()) -> list:
        with sqlite3.connect(self.db) as db:
            return db.execute(sql, args).fetchall()

    def present(self, tid) -> dict:
        n = int(tid[1:])
        return {t: self.rows(f"SELECT COUNT(*) FROM {t} WHERE {c}=?", (n,))[0][0]
                for t, c in (("tasks", "n"), ("history", "task"), ("results", "task"))}

    def lease(self, tid, start=True) -> dict:
        [t] = self.worker.call("POST", "/v1/claim", {"node": "w1", "max": 1, "wait": 0})["tasks"]
        self.assertEqual(t["id"], tid)
        if start:
            self.worker.call("POST", f"/v1/tasks/{tid}/start", {"node": "w1", "fence": t["fence"]})
        return t

    def finish(self, t, outcome="succeeded"):
        self.worker.call("POST", "/v1/results", {"task": t["id"], "fence": t["fence"], "node": "w1",
                                                 "outcome": outcome, "ended_by": "exit",
                                                 "error": None if outcome == "succeeded" else "exit code 1"})

    def run_task(self, outcome="succeeded", **fields) -> str:
        tid = dispatch(self.admin, "echo", **fields)
        self.finish(self.lease(tid), outcome)
        return tid

    def events(self, name) -> list:
        with open(os.path.join(self.fleet.dir, "supervisor-0.log")) as f:
            return [e for e in map(json.loads, (line for line in f if line.startswith("{"))) if e["event"] == name]

    def test_ended_tasks_go_with_their_rows_and_the_rest_stays(self):
        done = [self.run_task()]
        self.assertEqual(self.present(done[0]), {"tasks": 1, "history": 4, "results": 1})
        done += [self.run_task(), self.run_task("failed", max_attempts=1), self.run_task(key="nightly-1")]
        cancelled = dispatch(self.admin, "other")
        self.admin.call("POST", f"/v1/tasks/{cancelled}/cancel", {})
        done.append(cancelled)
        dep = self.run_task()                                   # a waiting task depends on it
        marker = self.run_task()            # ended after dep: once it has gone, dep's retention has run out too
        done.append(marker)
        running = dispatch(self.admin, "echo")
        running_lease = self.lease(running)
        waiting = dispatch(self.admin, "echo", after=[dep, running])
        queued = dispatch(self.admin, "other")                 # no node runs it

        wait_for(lambda: all(self.present(t) == {"tasks": 0, "history": 0, "results": 0} for t in done), 15,
                 "the ended tasks to go")
        for tid in (dep, running, waiting, queued):
            self.assertEqual(self.present(tid)["tasks"], 1, tid)
            self.assertGreater(self.present(tid)["history"], 0, tid)
        self.assertEqual(self.present(dep)["results"], 1)
        self.assertEqual(sorted(self.rows("SELECT task, dep FROM deps")),
                         sorted([(int(waiting[1:]), int(dep[1:])), (int(waiting[1:]), int(running[1:]))]))
        self.assertEqual(self.admin.request("GET", f"/v1/tasks/{done[0]}")[0], 404)
        self.assertEqual(self.admin.call("GET", f"/v1/tasks/{waiting}")["task"]["state"], "waiting")

        text = scrape(self.fleet)
        self.assertIn("# TYPE meshkit_tasks_pruned_total counter", text)
        self.assertEqual(sample(text, "meshkit_tasks_pruned_total"), len(done))
        self.assertEqual(sample(text, 'meshkit_tasks{state="succeeded"}'), 1)       # dep only
        self.assertEqual(sample(text, 'meshkit_tasks{state="failed"}'), 0)
        lines = self.events("tasks_pruned")
        self.assertEqual(sum(e["count"] for e in lines), len(done), lines)
        self.assertTrue(all(e["oldest_ended_at"] > 0 and e["rows"]["history"] > 0 for e in lines), lines)

        # The key of a deleted task is free again: a dispatch with it makes a new task.
        got = self.admin.call("POST", "/v1/tasks", {"kind": "other", "key": "nightly-1"})
        self.assertTrue(got["created"])
        self.assertNotIn(got["task"]["id"], done)

        # Once the waiting task has run, its dependencies go too; the task holding the newest
        # history row stays until another row is written.
        self.finish(running_lease)
        self.assertEqual(self.admin.call("GET", f"/v1/tasks/{waiting}")["task"]["state"], "queued")
        self.finish(self.lease(waiting))
        wait_for(lambda: self.present(dep)["tasks"] == 0 and self.present(running)["tasks"] == 0, 15,
                 "the dependencies to go")
        self.assertEqual(self.rows("SELECT COUNT(*) FROM deps")[0][0], 0)
        self.assertEqual(self.present(waiting)["tasks"], 1)          # newest history row
        dispatch(self.admin, "other")
        wait_for(lambda: self.present(waiting)["tasks"] == 0, 15, "the last ended task to go")
        self.assertEqual(self.present(queued)["tasks"], 1)
        self.assertEqual(sample(scrape(self.fleet), "meshkit_tasks_pruned_total"), len(done) + 3)
        self.assertEqual(self.events("invariant_violation"), [])


class KeepForever(unittest.TestCase):
    def test_retain_ended_0_keeps_every_task(self):
        fleet = Fleet(supervisor__cycle=0.1, supervisor__retain_ended=0)
        self.addCleanup(fleet.close)
        fleet.make_viewer_token()
        fleet.start_supervisor()
        admin, worker = fleet.client("admin"), fleet.client("worker")
        register(worker, "w1", kinds=("echo",))
        tid = dispatch(admin, "echo")
        admin.call("POST", f"/v1/tasks/{tid}/cancel", {})
        dispatch(admin, "other")
        wait_for(lambda: "meshkit_tasks_pruned_total 0" in scrape(fleet), 10, "the metric")
        wait_for(lambda: fleet.client().call("GET", "/v1/status")["uptime"] > 1.5, 10, "cycles to pass")
        self.assertEqual(admin.call("GET", f"/v1/tasks/{tid}")["task"]["state"], "cancelled")


if __name__ == "__main__":
    unittest.main()
