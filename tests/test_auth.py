"""Request signing (meshkit/rules/auth.py): the signature is HMAC-SHA256 as the hmac module
computes it, for secrets of every length (the precomputed key blocks, and keys longer than
SHA-256's block, which HMAC hashes first)."""

import hashlib
import hmac
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from meshkit.rules import auth  # noqa: E402


class Signature(unittest.TestCase):
    def test_same_as_the_hmac_module(self):
        r = random.Random(5)
        for length in (0, 1, 16, 32, 63, 64, 65, 100, 300):
            for _ in range(10):
                secret = "".join(r.choice("abcXYZ0189_-.é") for _ in range(length))
                body = bytes(r.randrange(256) for _ in range(r.randrange(200)))
                method, path = r.choice(["GET", "post"]), r.choice(["/v1/results", "/v1/tasks?state=queued"])
                ts, nonce = str(r.randrange(10 ** 10)), "n%020d" % r.randrange(10 ** 20)
                want = hmac.new(secret.encode(), auth.string_to_sign(method, path, ts, nonce, body),
                                hashlib.sha256).hexdigest()
                for _ in range(2):              # the second time from the cached key blocks
                    self.assertEqual(auth.sign(secret, method, path, ts, nonce, body), want)


if __name__ == "__main__":
    unittest.main()
