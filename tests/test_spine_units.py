"""Unit tests of the spine's pure parts: FSM table, config, signing, wire validation. No I/O, no sleeps."""

import tomllib
import unittest

from meshkit.core import wire
from meshkit.core.clock import FakeClock
from meshkit.core.errors import BadRequest, ConfigError, Forbidden, InvalidTransition, Unauthorized
from meshkit.core.metrics import Counter, Histogram, Registry
from meshkit.rules import auth, backoff, fsm
from meshkit.rules.config import SCHEMA, parse_config, render_default_toml


class FsmTable(unittest.TestCase):
    def test_legal_and_illegal_moves(self):
        legal = [(None, "queued"), (None, "waiting"), ("waiting", "queued"), ("queued", "leased"),
                 ("leased", "running"), ("running", "succeeded"), ("running", "queued"), ("leased", "queued"),
                 ("running", "cancelled"), ("waiting", "failed")]
        illegal = [("succeeded", "queued"), ("failed", "running"), ("cancelled", "queued"), ("queued", "running"),
                   ("queued", "succeeded"), ("waiting", "leased"), (None, "running"), ("running", "leased"),
                   ("succeeded", "succeeded")]
        for frm, to in legal:
            with self.subTest(frm=frm, to=to):
                fsm.check("t1", frm, to)
        for frm, to in illegal:
            with self.subTest(frm=frm, to=to), self.assertRaises(InvalidTransition):
                fsm.check("t1", frm, to)

    def test_every_state_reachable_and_terminal_states_final(self):
        targets = {to for _, to in fsm.TRANSITIONS}
        self.assertEqual(targets, set(fsm.STATES))
        self.assertFalse([p for p in fsm.TRANSITIONS if p[0] in fsm.TERMINAL])

    def test_after_result(self):
        cases = [
            (("succeeded", "exit", 1, 5, False), "succeeded"),
            (("failed", "exit", 1, 5, False), "queued"),
            (("failed", "timeout", 5, 5, False), "failed"),
            (("failed", "cancel", 1, 5, False), "cancelled"),
            (("succeeded", "exit", 1, 5, True), "cancelled"),
        ]
        for args, want in cases:
            with self.subTest(args=args):
                self.assertEqual(fsm.after_result(*args)[0], want)

    def test_after_lost_lease(self):
        self.assertEqual(fsm.after_lost_lease("x", 1, 5, False)[0], "queued")
        self.assertEqual(fsm.after_lost_lease("x", 5, 5, False)[0], "failed")
        self.assertEqual(fsm.after_lost_lease("x", 1, 5, True)[0], "cancelled")


class Backoff(unittest.TestCase):
    def test_full_jitter_bounds(self):
        for attempt, rand, want in [(1, 0.999, 0.999), (2, 1.0, 2), (3, 0.5, 2), (10, 1.0, 60), (0, 1.0, 0),
                                    (100, 0.0, 0)]:
            with self.subTest(attempt=attempt, rand=rand):
                self.assertAlmostEqual(backoff.full_jitter(attempt, 1, 60, rand), want)


class Config(unittest.TestCase):
    def test_init_text_has_every_key_and_parses(self):
        text = render_default_toml()
        cfg = parse_config(text, "/etc/meshkit/meshkit.toml")
        for key in SCHEMA:
            self.assertIn(key.name.rpartition(".")[2] + " = ", text)
            self.assertIn(key.help, text)
            self.assertEqual(cfg.get(key.name), key.default)
        self.assertEqual(cfg.get("supervisor.listen"), "127.0.0.1:8765")
        self.assertEqual(cfg.path("supervisor.data_dir"), "/etc/meshkit/data")
        self.assertIn("echo", cfg.kinds)
        tomllib.loads(text)

    def test_bad_config_names_file_key_expected_found(self):
        cases = [
            ('[supervisor]\nlisten = 8765\n', "supervisor.listen", '"HOST:PORT"', "8765 (a number)"),
            ('[supervisor]\nlisten = "localhost:99999"\n', "supervisor.listen", "HOST:PORT", "localhost:99999"),
            ('[supervisor]\nstale_after = "10m"\n', "supervisor.stale_after", "seconds", '"10m" (a string)'),
            ('[supervisor]\nstale_after = -1\n', "supervisor.stale_after", "seconds >= 0", "-1"),
            ('[supervisor]\nlisen = "x:1"\n', "supervisor.lisen", "a known key", "an unknown key"),
            ('[worker.kinds.x]\nargv = "rm -rf /"\n', "worker.kinds.x.argv", "list of strings", "(a string)"),
            ('[worker.kinds.x]\nargv = ["a"]\ncmd = 1\n', "worker.kinds.x.cmd", "argv, timeout, env", "unknown"),
            ('[worker]\nslots = 0\n', "worker.slots", ">= 1", "0"),
            ('[worker]\nslots = true\n', "worker.slots", ">= 1", "true (a boolean)"),
            ('supervisor = 1\n', "supervisor", "a table", "1"),
            ('[supervisor\n', "(file)", "valid TOML", "syntax error"),
        ]
        for text, key, expected, found in cases:
            with self.subTest(key=key):
                with self.assertRaises(ConfigError) as cm:
                    parse_config(text, "/etc/m.toml")
                msg = cm.exception.message
                for part in ("/etc/m.toml", key, expected, found):
                    self.assertIn(part, msg)


class Signing(unittest.TestCase):
    KEYS = {"a1": ("admin", "s" * 32), "w1": ("worker", "w" * 32), "v1": ("viewer", "v" * 32)}

    def headers(self, kid="w1", secret=None, method="POST", path="/v1/claim", body=b"{}", ts=1000.0, nonce="n" * 16):
        return auth.signed_headers(kid, secret or self.KEYS[kid][1], method, path, body, ts, nonce)

    def verify(self, h, method="POST", path="/v1/claim", body=b"{}", now=1000.0, nonces=None):
        return auth.verify(h, method, path, body, self.KEYS, nonces or auth.NonceCache(300), now, 300)

    def test_good_request(self):
        self.assertEqual(self.verify(self.headers()), ("w1", "worker"))

    def test_refusals(self):
        cases = [
            ("forged", self.headers(secret="x" * 32), {}, "bad signature"),
            ("other body", self.headers(), {"body": b'{"a":1}'}, "bad signature"),
            ("other path", self.headers(), {"path": "/v1/tasks"}, "bad signature"),
            ("other method", self.headers(), {"method": "GET"}, "bad signature"),
            ("too old", self.headers(ts=1000 - 301), {}, "off the server's clock"),
            ("too new", self.headers(ts=1000 + 301), {}, "off the server's clock"),
            ("unknown key", dict(self.headers(), **{auth.H_KEY: "zz"}), {}, "unknown key"),
            ("short nonce", self.headers(nonce="abc"), {}, "nonce"),
            ("missing", {}, {}, "missing signature"),
        ]
        for name, h, kw, msg in cases:
            with self.subTest(name), self.assertRaises(Unauthorized) as cm:
                self.verify(h, **kw)
            self.assertIn(msg, cm.exception.message)

    def test_replay_refused(self):
        cache = auth.NonceCache(300)
        h = self.headers()
        self.verify(h, nonces=cache)
        with self.assertRaises(Unauthorized) as cm:
            self.verify(h, nonces=cache)
        self.assertIn("replay", cm.exception.message)

    def test_nonce_cache_is_bounded_and_forgets_only_expired(self):
        cache = auth.NonceCache(300, capacity=3)
        for i in range(3):
            self.assertTrue(cache.add(f"n{i}", 1000))
        self.assertFalse(cache.add("n9", 1000))          # full of fresh nonces: refuse
        self.assertTrue(cache.add("n10", 1000 + 601))     # old ones expired and forgotten
        self.assertEqual(len(cache._seen), 1)

    def test_roles(self):
        auth.require_role("admin", "worker")
        auth.require_role("worker", "worker")
        with self.assertRaises(Forbidden):
            auth.require_role("worker", "admin")
        with self.assertRaises(Forbidden):
            auth.require_role("viewer", "worker")

    def test_keys_file_and_rotation(self):
        keys = auth.parse_keys("# c\nold admin " + "a" * 20 + "\nnew admin " + "b" * 20 + "\nw worker " + "c" * 20)
        self.assertEqual(set(keys), {"old", "new", "w"})
        self.assertEqual(auth.pick_key(keys, "", "worker")[0], "w")
        for bad, where in [("a admin short", "line 1"), ("a root " + "x" * 20, "line 1"), ("", "(file)"),
                           ("a admin", "line 1")]:
            with self.subTest(bad=bad), self.assertRaises(ConfigError) as cm:
                auth.parse_keys(bad, "keys")
            self.assertIn(where, cm.exception.message)


class Wire(unittest.TestCase):
    def test_dispatch_validation(self):
        good = {"kind": "echo", "payload": {"a": [1]}, "requires": ["gpu"], "priority": 3, "after": ["t1"]}
        wire.validate(good, wire.DISPATCH, "dispatch")
        bad = [
            ([], "JSON object"), ({}, "missing field 'kind'"), ({"kind": 3}, "'kind' must be"),
            ({"kind": "../x"}, "'kind' must be"), ({"kind": "a", "extra": 1}, "unknown field 'extra'"),
            ({"kind": "a", "priority": "1"}, "'priority'"), ({"kind": "a", "priority": True}, "'priority'"),
            ({"kind": "a", "priority": 2 ** 80}, "'priority'"), ({"kind": "a", "timeout": float("nan")}, "'timeout'"),
            ({"kind": "a", "after": ["../../etc"]}, "'after'"), ({"kind": "a", "requires": "gpu"}, "'requires'"),
            ({"kind": "a", "expects": {"path": ""}}, "'expects'"),
        ]
        for body, msg in bad:
            with self.subTest(body=body), self.assertRaises(BadRequest) as cm:
                wire.validate(body, wire.DISPATCH, "dispatch")
            self.assertIn(msg, cm.exception.message)


class Metrics(unittest.TestCase):
    def test_text_format(self):
        reg = Registry()
        c = reg.add(Counter("x_total", "help", ("route",)))
        h = reg.add(Histogram("d_seconds", "help", buckets=(0.1, 1)))
        c.inc('a"b')
        h.observe(0.5)
        text = reg.render()
        self.assertIn('x_total{route="a\\"b"} 1', text)
        self.assertIn('d_seconds_bucket{le="0.1"} 0', text)
        self.assertIn('d_seconds_bucket{le="+Inf"} 1', text)
        self.assertIn("# TYPE d_seconds histogram", text)


class Clock(unittest.TestCase):
    def test_fake_clock_sleeps_instantly(self):
        c = FakeClock(100)
        c.sleep(5)
        self.assertEqual((c.time(), c.slept), (105, [5]))


if __name__ == "__main__":
    unittest.main()
