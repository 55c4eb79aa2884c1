"""Status files: HEARTBEAT.md and LOAD_STATUS.json, pure rendering and a real supervisor
rewriting them atomically every cycle."""

import json
import os
import time
import unittest

from tests.helpers import Fleet, register

from meshkit.roles.supervisor import statusfiles

NOW = 1_763_942_400.0 + 3661          # 2025-11-24 01:01:01 UTC
STATUS = {
    "role": "primary", "epoch": 2, "mode": "degraded", "mode_reason": "no node alive for gpu", "url": "http://h:1",
    "uptime": 4000, "oldest_queued_age": 75.5, "last_cycle_error": None,
    "tasks": {"queued": 3, "running": 2, "leased": 1, "succeeded": 10, "failed": 1},
    "nodes": [
        {"name": "pi-1", "state": "alive", "last_seen_age": 3.2, "slots": 2, "running": 2, "load": [0.5, 0.4, 0.3],
         "mem_available": 512 * 1024 * 1024, "disk_free": 20 * 1024 ** 3, "version": "0.1.0"},
        {"name": "mac|x", "state": "alive", "last_seen_age": 1, "slots": 4, "running": 1, "load": None},
        {"name": "old", "state": "stale", "last_seen_age": 9000, "slots": 8, "running": 0},
    ],
    "quarantined": [{"kind": "flaky", "quarantined": True, "reason": "3 failures in a row, last: exit 1"}],
}
MEMORY = {"rss_bytes": 40 * 1024 * 1024, "soft_bytes": None, "hard_bytes": None, "state": "ok"}


class Render(unittest.TestCase):
    def test_load_status(self):
        load = statusfiles.load_status(STATUS, NOW, MEMORY)
        self.assertEqual(load["updated"], "2025-11-24 01:01:01 UTC")
        self.assertEqual((load["role"], load["epoch"], load["mode"]), ("primary", 2, "degraded"))
        self.assertEqual(load["nodes"], {"total": 3, "alive": 2, "by_state": {"alive": 2, "stale": 1}})
        self.assertEqual(load["slots"], {"total": 6, "busy": 3, "free": 3})     # stale nodes don't count
        self.assertEqual(load["utilization"], 0.5)
        self.assertEqual(load["tasks"]["waiting"], 0)
        self.assertEqual(load["backlog"], 3)
        self.assertEqual(load["memory"]["rss_bytes"], 40 * 1024 * 1024)
        json.dumps(load)

    def test_heartbeat_markdown(self):
        text = statusfiles.render_heartbeat(STATUS, NOW, MEMORY)
        self.assertTrue(text.startswith("# meshkit fleet: 2025-11-24 01:01:01 UTC\n"))
        self.assertIn("mode **degraded** (no node alive for gpu)", text)
        self.assertIn("memory 40.0 MB (ok)", text)
        self.assertIn("## Nodes: 2 alive of 3", text)
        self.assertIn("| pi-1 | alive | 3s ago | 2/2 | 0.50 | 512.0 MB | 20.0 GB | 0.1.0 |", text)
        self.assertIn("| mac/x | alive |", text)                   # a | in a name can't break the table
        self.assertLess(text.index("| mac/x"), text.index("| old"))  # alive nodes first
        self.assertIn("| old | stale | 2h30m ago |", text)
        self.assertIn("waiting 0 · queued 3 · leased 1 · running 2 · succeeded 10 · failed 1 · cancelled 0", text)
        self.assertIn("Oldest queued task: 75s.", text)
        self.assertIn("- flaky: 3 failures in a row, last: exit 1 (release: `python3 -m meshkit kinds resume flaky`)",
                      text)

    def test_empty_fleet(self):
        text = statusfiles.render_heartbeat({"role": "primary", "epoch": 1, "mode": "normal", "tasks": {}, "nodes": []},
                                            NOW, {})
        self.assertIn("No node has sent a heartbeat yet.", text)
        self.assertIsNone(statusfiles.load_status({"nodes": []}, NOW, {})["utilization"])


class RealSupervisor(unittest.TestCase):
    def test_files_follow_the_fleet_every_cycle(self):
        fleet = Fleet(supervisor__cycle=0.1)
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        worker, admin = fleet.client("worker"), fleet.client("admin")
        register(worker, "node-a", slots=3)
        for i in range(4):
            admin.call("POST", "/v1/tasks", {"kind": "echo", "payload": {"i": i}})
        worker.close()
        admin.close()
        data = os.path.join(fleet.dir, "data")
        load_path = os.path.join(data, statusfiles.LOAD_STATUS)
        deadline, load = time.monotonic() + 10, None
        while time.monotonic() < deadline:
            try:
                with open(load_path) as f:
                    load = json.load(f)                 # always whole: replaced atomically
            except FileNotFoundError:
                load = None
            if load and load["tasks"]["queued"] == 4:
                break
            time.sleep(0.05)
        self.assertEqual(load["tasks"]["queued"], 4, load)
        self.assertEqual((load["role"], load["mode"], load["nodes"]["alive"], load["slots"]["total"]),
                         ("primary", "normal", 1, 3))
        first = load["updated_at"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and load["updated_at"] == first:
            time.sleep(0.05)
            with open(load_path) as f:
                load = json.load(f)
        self.assertGreater(load["updated_at"], first, "not rewritten every cycle")
        with open(os.path.join(data, statusfiles.HEARTBEAT)) as f:
            heartbeat = f.read()
        self.assertIn("| node-a | alive |", heartbeat)
        self.assertIn("queued 4", heartbeat)
        self.assertEqual(fleet.stop(), 0)
        self.assertEqual([n for n in os.listdir(data) if n.startswith(".tmp-")], [])


if __name__ == "__main__":
    unittest.main()
