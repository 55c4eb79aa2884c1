"""Human tables show whole values: the real `python -m meshkit` against a real supervisor,
with kind names, node names, quarantine reasons and history reasons longer than any
column used to be. Nothing an operator needs to read is cut."""

import json
import os
import unittest

from tests.helpers import Fleet, register

KIND = "summarize-quarterly-financial-reports-for-the-board-of-directors"      # 66 characters
OTHER = "nightly-backup-of-the-shared-memory-directories"
NODE = "build-box-with-a-rather-long-hostname.example.internal"
ERROR = ("exit code 2: the upstream API refused the request because the report template "
         "for Q3 is missing")                                                  # < 120: kept whole
JOB = "memory-of-the-research-agents-on-the-pi"


class Tables(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet(tasks__quarantine_after=1)
        cls.fleet.start_supervisor()
        cls.admin, cls.worker = cls.fleet.client("admin"), cls.fleet.client("worker")
        register(cls.worker, NODE, kinds=(KIND, OTHER, "echo"), slots=2)
        cls.failed = cls.admin.call("POST", "/v1/tasks", {"kind": KIND, "max_attempts": 1})["task"]["id"]
        task = cls.worker.call("POST", "/v1/claim", {"node": NODE})["tasks"][0]
        cls.worker.call("POST", "/v1/results", {"task": task["id"], "fence": task["fence"], "node": NODE,
                                                "outcome": "failed", "error": ERROR, "exit_code": 2})
        cls.held = cls.admin.call("POST", "/v1/tasks", {"kind": KIND})["task"]["id"]   # waits: quarantined

    @classmethod
    def tearDownClass(cls):
        cls.admin.close()
        cls.worker.close()
        cls.fleet.close()

    def cli(self, *args):
        r = self.fleet.cli(*args)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("Traceback", r.stderr)
        return r.stdout

    def line_with(self, out: str, text: str) -> str:
        lines = [line for line in out.splitlines() if text in line]
        self.assertEqual(len(lines), 1, out)
        return lines[0]

    def test_status_shows_every_kind_and_the_whole_node_name(self):
        out = self.cli("status")
        row = self.line_with(out, NODE)
        self.assertTrue(row.startswith(NODE + " "), out)
        self.assertTrue(row.endswith("  " + ",".join(sorted([KIND, OTHER, "echo"]))), out)
        self.assertIn("KINDS", out.splitlines()[out.splitlines().index(row) - 1], out)

    def test_status_names_a_sync_job_whole(self):
        status_dir = os.path.join(self.fleet.dir, "sync")
        os.makedirs(status_dir, exist_ok=True)
        with open(os.path.join(status_dir, f"{JOB}.json"), "w") as f:
            json.dump({"job": JOB, "last_result": "ok", "last_success": None, "consecutive_failures": 0}, f)
        try:
            self.assertIn(f"sync {JOB}: ok, last success never, 0 failures in a row", self.cli("status"))
        finally:
            os.unlink(os.path.join(status_dir, f"{JOB}.json"))

    def test_kinds_shows_the_whole_quarantine_reason(self):
        reason = next(k["reason"] for k in self.admin.call("GET", "/v1/kinds")["kinds"] if k["kind"] == KIND)
        self.assertIn(ERROR, reason)                       # what the supervisor keeps: the whole error
        row = self.line_with(self.cli("kinds"), KIND)
        self.assertTrue(row.startswith(KIND + " "), row)
        self.assertTrue(row.endswith(f"  quarantined: {reason}"), row)

    def test_explain_shows_whole_history_reasons_and_the_quarantine(self):
        history = self.admin.call("GET", f"/v1/tasks/{self.failed}")["task"]["history"]
        self.assertIn(ERROR, history[-1]["reason"])
        out = self.cli("explain", self.failed)
        self.assertTrue(self.line_with(out, "leased -> failed").endswith(history[-1]["reason"]), out)
        held = self.admin.call("GET", f"/v1/tasks/{self.held}/explain")["reasons"]
        out = self.cli("explain", self.held)
        for reason in held:
            self.assertIn(f"  - {reason}\n", out)
        self.assertTrue(any(f"kind `{KIND}` quarantined since" in r and ERROR in r for r in held), held)

    def test_tasks_shows_whole_kind_and_node(self):
        out = self.cli("tasks")
        row = self.line_with(out, self.failed + " ")
        self.assertIn(f" {KIND} ", row)
        self.assertIn(f" {NODE} ", row)
        header = out.splitlines()[0].split()
        self.assertEqual(header, ["ID", "KIND", "STATE", "TRY", "NODE", "AGE", "TRACE"])

    def test_json_is_unchanged(self):
        st = json.loads(self.cli("status", "--json"))
        self.assertEqual(next(n for n in st["nodes"] if n["name"] == NODE)["kinds"], sorted([KIND, OTHER, "echo"]))
        kinds = json.loads(self.cli("kinds", "--json"))
        self.assertTrue(any(k["kind"] == KIND and k["quarantined"] for k in kinds), kinds)


if __name__ == "__main__":
    unittest.main()
