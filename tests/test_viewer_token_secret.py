"""viewer.token is a bearer token of its own, never a key's signing secret: whoever reads it (it
is group-readable and Prometheus sends it in clear) cannot sign as any key, so cannot read tasks'
payloads and results (GET /v1/tasks...); a key's signing secret is no bearer token either. An
install from before, whose viewer.token is viewer-1's secret, still starts (the token still
opens /metrics) and logs a warning naming the file and `meshkit keys viewer-token`, which writes
a new token. Real `python -m meshkit` processes."""

import json
import os
import stat
import time
import unittest

from meshkit.rules import auth
from tests.helpers import Fleet, meshkit
from tests.test_supervisor_api import raw_request

WARNING = "viewer_token_is_a_signing_secret"


def bearer(url, path, token):
    return raw_request(url, "GET", path, headers={"Authorization": f"Bearer {token}"})[0]


def signed(url, path, kid, secret):
    headers = auth.signed_headers(kid, secret, "GET", path, b"", time.time(), os.urandom(12).hex())
    return raw_request(url, "GET", path, b"", headers)


def read(path) -> str:
    with open(path) as f:
        return f.read()


class ViewerTokenIsNoSecret(unittest.TestCase):
    def fleet(self) -> Fleet:
        fleet = Fleet()
        self.addCleanup(fleet.close)
        return fleet

    def warnings(self, fleet, n) -> list:
        lines = read(os.path.join(fleet.dir, f"supervisor-{n}.log")).splitlines()
        return [json.loads(line) for line in lines if f'"{WARNING}"' in line]

    def test_inits_token_signs_nothing_and_no_signing_secret_is_a_bearer_token(self):
        fleet = self.fleet()
        d = os.path.join(fleet.dir, "etc")
        self.assertEqual(meshkit("init", "--dir", d).returncode, 0)
        token = read(os.path.join(d, "viewer.token")).strip()
        keys = auth.parse_keys(read(os.path.join(d, "keys")))
        self.assertGreaterEqual(len(token), 32)
        self.assertNotIn(token, [secret for _, secret, *_ in keys.values()])
        url = fleet.start_supervisor(config=os.path.join(d, "meshkit.toml"))
        kid, _, secret = auth.pick_key(keys, "", "admin")
        headers = auth.signed_headers(kid, secret, "POST", "/v1/tasks", b'{"kind": "echo", "payload": {"p": 1}}',
                                      time.time(), os.urandom(12).hex())
        self.assertEqual(raw_request(url, "POST", "/v1/tasks", b'{"kind": "echo", "payload": {"p": 1}}', headers)[0],
                         201)
        for path in ("/v1/tasks", "/v1/tasks/t1", "/v1/status"):
            with self.subTest(path=path):
                status, body = signed(url, path, "viewer-1", token)          # the token as a signing secret
                self.assertEqual((status, body["error"]["reason"]), (401, "bad_signature"))
                self.assertNotIn('"p"', json.dumps(body))
                self.assertEqual(signed(url, path, "viewer-1", keys["viewer-1"][1])[0], 200)   # the key itself
        for path in ("/metrics", "/v1/overview"):
            with self.subTest(path=path):
                self.assertEqual(bearer(url, path, token), 200)
                for kid, (_, secret, *_) in keys.items():                   # viewer-1's secret included
                    self.assertEqual(bearer(url, path, secret), 401, kid)
        self.assertEqual(fleet.stop(), 0)
        self.assertEqual(self.warnings(fleet, 0), [])

    def test_an_old_install_warns_and_keys_viewer_token_makes_a_new_one(self):
        fleet = self.fleet()
        path = os.path.join(fleet.dir, "viewer.token")
        old = fleet.keys["viewer-1"][1]
        with open(path, "w") as f:
            f.write(old + "\n")                          # what `init` wrote before
        os.chmod(path, 0o640)
        url = fleet.start_supervisor()                  # an upgrade does not stop it
        self.assertEqual(bearer(url, "/metrics", old), 200)                 # nor its monitoring
        self.assertEqual(fleet.stop(), 0)
        [warning] = self.warnings(fleet, 0)
        self.assertEqual(warning["level"], "warning")
        self.assertEqual((warning["file"], warning["keys"]), (path, ["viewer-1"]))
        self.assertIn(f"python3 -m meshkit keys viewer-token --config {fleet.config}", warning["fix"])
        self.assertIn("viewer-1", warning["fix"])
        self.assertNotIn(old, read(os.path.join(fleet.dir, "supervisor-0.log")))     # never the secret

        r = meshkit("keys", "viewer-token", "--config", fleet.config)
        self.assertEqual((r.returncode, r.stderr), (0, ""))
        self.assertIn(f"wrote {path}", r.stdout)
        self.assertIn("signing secret of key viewer-1", r.stdout)
        self.assertIn("restart the supervisor", r.stdout)
        new = read(path).strip()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
        self.assertNotIn(new, [old] + [secret for _, secret, *_ in fleet.keys.values()])
        self.assertNotIn(new, r.stdout)

        url = fleet.start_supervisor()
        self.assertEqual(bearer(url, "/metrics", new), 200)
        self.assertEqual(bearer(url, "/metrics", old), 401)
        self.assertEqual(fleet.stop(), 0)
        self.assertEqual(self.warnings(fleet, 1), [])
        r = meshkit("keys", "viewer-token", "--config", fleet.config)      # again: nothing about keys now
        self.assertEqual(r.returncode, 0)
        self.assertNotIn("signing secret of key", r.stdout)

    def test_keys_viewer_token_without_a_token_file_is_a_usage_error(self):
        fleet = Fleet(auth__viewer_token_file="")
        self.addCleanup(fleet.close)
        r = meshkit("keys", "viewer-token", "--config", fleet.config)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr.strip(), f"meshkit: {fleet.config}: auth.viewer_token_file: expected a token file "
                                           'to write, found "" (no viewer token)')


if __name__ == "__main__":
    unittest.main()
