"""A standby of this version pulling from a primary of the version before `&epoch=` (whose
replicate route refuses unknown query parameters with 400): after one such refusal it pulls
without the parameter, as that version's standby did, instead of failing every other pull
(which cost a second per write with sync replication). The old primary is a small fake that
answers the way it did."""

import http.server
import json
import threading
import time
import unittest
import urllib.parse

from tests.helpers import Fleet
from tests.test_worker_harness import wait_for


class OldPrimary(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/v1/replicate" and "epoch" in query:
            self.server.refused += 1
            status, body = 400, {"error": {"code": "bad_request", "message": "unknown query parameter 'epoch'"}}
        elif url.path == "/v1/replicate":
            self.server.pulls += 1
            time.sleep(0.02)            # (a long poll with nothing new would wait longer)
            status, body = 200, {"changes": [], "last": 0, "head": 0, "epoch": 1, "role": "primary"}
        else:
            status, body = 200, {"ok": True, "role": "primary", "epoch": 1, "writable": True}
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:                 # the standby stopped at the end of the test
            pass

    def log_message(self, *args):
        pass


class PullFromAnOldPrimary(unittest.TestCase):
    def test_one_refusal_then_pulls_without_the_parameter(self):
        old = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OldPrimary)
        old.refused = old.pulls = 0
        threading.Thread(target=old.serve_forever, daemon=True).start()
        self.addCleanup(old.server_close)
        self.addCleanup(old.shutdown)
        fleet = Fleet(supervisor__role="standby", supervisor__peer=f"http://127.0.0.1:{old.server_address[1]}")
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        wait_for(lambda: old.pulls >= 20, 15, "20 pulls")
        self.assertLessEqual(old.refused, 1, "refused pulls: one at most, then no more &epoch=")
        view = fleet.client("admin").call("GET", "/v1/status")["replication"]
        self.assertEqual((view["role"], view["replication_error"]), ("standby", None))


if __name__ == "__main__":
    unittest.main()
