"""The README stays true: its curl signing recipe works against a live supervisor."""

import os
import re
import shutil
import subprocess
import unittest

from tests.helpers import ROOT, Fleet
from meshkit.rules.config import SCHEMA


class ReadmeCurl(unittest.TestCase):
    @unittest.skipUnless(all(shutil.which(t) for t in ("curl", "openssl", "sha256sum", "bash")),
                         "needs curl, openssl, sha256sum, bash")
    def test_curl_recipe_as_written(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        block = next(b for b in re.findall(r"```sh\n(.*?)```", readme, re.S) if "mk() {" in b)
        fleet = Fleet()
        try:
            url = fleet.start_supervisor()
            home = os.path.join(fleet.dir, "home")
            os.makedirs(os.path.join(home, ".meshkit"))
            shutil.copy(os.path.join(fleet.dir, "keys"), os.path.join(home, ".meshkit", "keys"))
            script = block.replace("SUP=http://127.0.0.1:8765", f"SUP={url}")
            self.assertNotEqual(script, block, "the README's SUP= line changed; update this test")
            # a body past the command line's limit for one argument (128 KiB): curl reads it on stdin
            script += ('\nmk POST /v1/tasks "{\\"kind\\": \\"echo\\", \\"payload\\": '
                       '\\"$(head -c 300000 /dev/zero | tr \'\\0\' a)\\"}"\n')
            r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                               env=dict(os.environ, HOME=home))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn('"created":true', r.stdout)
            self.assertIn('"id":"t1"', r.stdout)
            self.assertIn('"history":[', r.stdout)
            task = fleet.client().call("GET", "/v1/tasks/t1")["task"]
            self.assertEqual((task["payload"], task["state"]), ({"hello": 1}, "cancelled"))     # a POST without a body
            self.assertEqual(fleet.client().call("GET", "/v1/tasks/t2")["task"]["payload"], "a" * 300000)
        finally:
            fleet.close()


class ReadmeKeys(unittest.TestCase):
    def test_every_config_key_is_documented(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        missing = [k.name for k in SCHEMA if f"`{k.name}`" not in readme]
        self.assertEqual(missing, [], "config keys the README does not name")


if __name__ == "__main__":
    unittest.main()
