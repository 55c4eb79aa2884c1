"""Pieces of the supervisor's request handling (meshkit/adapters/httpapp.py) that keep a
stdlib function's answer with less work per request: each compared with that function."""

import json
import os
import sys
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from meshkit.adapters import httpapp  # noqa: E402
from meshkit.core.errors import BadRequest  # noqa: E402


def loads(text):
    try:
        return "ok", json.loads(text, parse_constant=httpapp._no_constant)
    except ValueError as e:
        return "refused", str(e)


def decode(text):
    try:
        return "ok", httpapp._decode(text)
    except ValueError as e:
        return "refused", str(e)


class Json(unittest.TestCase):
    def test_decode_answers_as_json_loads(self):
        texts = ['{"a": 1}', " {} ", "\ufeff{}", "\ufeff", "", "[1, 2.5, -0, 1e400]", '{"a": NaN}', "Infinity",
                 "-Infinity", '{"a": 1} x', '"\\ud800"', "[" * 50 + "]" * 50, "nul", "\t\n[]\r\n"]
        for text in texts:
            self.assertEqual(decode(text), loads(text), text[:40])
        with self.assertRaises(BadRequest):     # but for a key given twice (json.loads: last wins)
            httpapp._decode('{"a":1,"a":2}')

    def test_encode_answers_as_json_dumps(self):
        for obj in ({"a": [1, 2.5, None, True], "é": "\u2028"}, {"x": {1, 2}}, [float("nan")], "s", {1: 2}):
            raw = httpapp.encode_json(200, obj)
            self.assertEqual(raw.body, (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode())


class Target(unittest.TestCase):
    def test_split_as_urlsplit(self):
        for target in ["/", "/health", "/v1/tasks?state=queued&limit=5", "/a?", "/a#", "/a#b?c", "/a?b#c", "/a?b?c",
                       "/a#b#c", "/a:b?c:d", "/%2F?%23=1", "/a;p?q", "/@x", "/a/b/../c?x=/y"]:
            url = urllib.parse.urlsplit(target)
            self.assertEqual(httpapp.split_target(target), (url.path, url.query), target)


if __name__ == "__main__":
    unittest.main()
