"""Fleet-wide leases: API semantics, and real `locks run --fleet` processes."""

import os
import signal
import subprocess
import sys
import time
import unittest

from tests.helpers import ROOT, Fleet, env, read_line


class FleetLeases(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet()
        cls.fleet.start_supervisor()
        cls.w = cls.fleet.client("worker")

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    def acquire(self, name, holder, ttl=30):
        return self.w.request("POST", f"/v1/leases/{name}/acquire", {"holder": holder, "ttl": ttl, "purpose": "test"})

    def test_grant_refuse_renew_release_and_increasing_tokens(self):
        status, a = self.acquire("gpu", "host-a:1")
        self.assertEqual(status, 200)
        status, b = self.acquire("gpu", "host-b:2")
        self.assertEqual((status, b["error"]["code"]), (409, "lock_held"))
        self.assertIn("held by host-a:1", b["error"]["message"])
        self.assertEqual(b["error"]["lease"]["holder"], "host-a:1")
        self.assertEqual(self.w.request("POST", "/v1/leases/gpu/renew", {"holder": "host-a:1", "token": a["token"],
                                                                          "ttl": 30})[0], 200)
        self.assertTrue(self.w.call("POST", "/v1/leases/gpu/release", {"holder": "host-a:1", "token": a["token"]})["released"])
        status, b = self.acquire("gpu", "host-b:2")
        self.assertEqual(status, 200)
        self.assertGreater(b["token"], a["token"])
        lease = self.w.call("GET", "/v1/leases/gpu")
        self.assertEqual(lease["holder"], "host-b:2")
        self.assertEqual([h["event"] for h in lease["history"]][:3], ["granted", "released", "granted"])
        self.assertTrue(any(l["name"] == "gpu" for l in self.fleet.client().call("GET", "/v1/status")["leases"]))

    def test_expiry_and_fenced_renewal(self):
        _, a = self.acquire("disk", "host-a:1", ttl=1)
        time.sleep(1.2)
        status, b = self.acquire("disk", "host-b:2")
        self.assertEqual(status, 200)
        self.assertGreater(b["token"], a["token"])
        status, err = self.w.request("POST", "/v1/leases/disk/renew", {"holder": "host-a:1", "token": a["token"]})
        self.assertEqual((status, err["error"]["code"]), (409, "stale_fence"))

    def test_bad_names_and_ttls(self):
        for name, body in [("..", {"holder": "h"}), ("x", {"holder": "h", "ttl": 0}), ("x", {"holder": "h", "ttl": "5"}),
                           ("x", {}), ("x", {"holder": "h", "extra": 1})]:
            with self.subTest(name=name, body=body):
                self.assertEqual(self.w.request("POST", f"/v1/leases/{name}/acquire", body)[0], 400)

    def run_fleet(self, *args, **kw):
        return subprocess.Popen([sys.executable, "-m", "meshkit", "locks", "run", "--config", self.fleet.config,
                                 "--supervisor", self.fleet.url, *args], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, **kw)

    def test_holder_killed_lease_expires_and_next_gets_higher_token(self):
        holder = self.run_fleet("--fleet", "train", "--ttl", "2", "--",
                                sys.executable, "-c", "import os,time; print(os.environ['MESHKIT_FENCING_TOKEN'], flush=True); time.sleep(60)")
        try:
            first = int(read_line(holder, 15))
            busy = subprocess.run([sys.executable, "-m", "meshkit", "locks", "run", "--config", self.fleet.config,
                                   "--supervisor", self.fleet.url, "--fleet", "train", "--wait", "0", "--", "true"],
                                  cwd=ROOT, env=env(), capture_output=True, text=True, timeout=30)
            self.assertEqual(busy.returncode, 75, busy.stderr)
            self.assertIn("held by", busy.stderr)
            listed = subprocess.run([sys.executable, "-m", "meshkit", "locks", "list", "--fleet", "--config",
                                     self.fleet.config, "--supervisor", self.fleet.url],
                                    cwd=ROOT, env=env(), capture_output=True, text=True, timeout=30)
            self.assertIn("train: held by", listed.stdout)
            os.killpg(holder.pid, signal.SIGKILL)     # the holder and its command die at once
            holder.wait(10)
            t0 = time.monotonic()
            nxt = subprocess.run([sys.executable, "-m", "meshkit", "locks", "run", "--config", self.fleet.config,
                                  "--supervisor", self.fleet.url, "--fleet", "train", "--wait", "20", "--ttl", "2", "--",
                                  "sh", "-c", "echo $MESHKIT_FENCING_TOKEN"],
                                 cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
            self.assertEqual(nxt.returncode, 0, nxt.stderr)
            self.assertGreater(int(nxt.stdout.strip()), first)
            self.assertLess(time.monotonic() - t0, 10)
        finally:
            if holder.poll() is None:
                os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(10)
            holder.stdout.close()
            holder.stderr.close()


if __name__ == "__main__":
    unittest.main()
