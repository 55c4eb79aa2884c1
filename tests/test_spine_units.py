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
            ('[supervisor]\nstale_after = -1\n', "supervisor.stale_after", "seconds > 0", "-1"),
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

    def test_same_nonce_with_another_timestamp_is_another_request(self):
        # The signature covers the timestamp: a replay cannot move the request to another
        # second, so a nonce needs to be unique only within its own timestamp.
        cache = auth.NonceCache(300)
        first, second = self.headers(ts=1000), self.headers(ts=1001)
        self.assertNotEqual(first[auth.H_SIG], second[auth.H_SIG])
        moved = dict(first, **{auth.H_TS: "1001"})            # an attacker moving a captured request
        with self.assertRaises(Unauthorized) as cm:
            self.verify(moved, nonces=cache, now=1001)
        self.assertIn("bad signature", cm.exception.message)
        self.assertEqual(self.verify(first, nonces=cache, now=1001), ("w1", "worker"))
        self.assertEqual(self.verify(second, nonces=cache, now=1001), ("w1", "worker"))
        for h in (first, second):
            with self.subTest(ts=h[auth.H_TS]), self.assertRaises(Unauthorized) as cm:
                self.verify(h, nonces=cache, now=1001)
            self.assertIn("nonce already used (replay)", cm.exception.message)

    def test_nonce_cache_steps(self):
        """(step, nonce, request timestamp, server clock, expected refusal or ""), one cache a table."""
        load = "older than the replay window the server can keep at this load"
        clock_back = "older than the replay window the server keeps (its clock went back)"
        tables = {
            "replay and expiry": (300, 100, [
                ("new", "a", 1000, 1000, ""),
                ("replay", "a", 1000, 1000, "nonce already used (replay)"),
                ("same nonce, next second", "a", 1001, 1001, ""),
                ("replay at the edge of the window", "a", 1000, 1300, "nonce already used (replay)"),
                ("future timestamp within the skew", "f", 1600, 1300, ""),
                ("its replay just before it expires", "f", 1600, 1900, "nonce already used (replay)"),
            ]),
            "overload": (300, 3, [
                ("1", "a", 1000, 1000, ""), ("2", "b", 1001, 1001, ""), ("3", "c", 1002, 1002, ""),
                ("4: second 1000 forgotten early", "d", 1003, 1003, ""),
                ("a fresh nonce below the floor", "e", 1000, 1003, load + " (2 s)"),
                ("a replay below the floor", "a", 1000, 1003, load),
                ("a replay above it", "c", 1002, 1003, "nonce already used (replay)"),
                ("a fresh request", "e", 1003, 1003, ""),
            ]),
            "one second over capacity": (300, 2, [
                ("1", "a", 1000, 1000, ""), ("2", "b", 1000, 1000, ""),
                ("3: its own second forgotten", "c", 1000, 1000, ""),
                ("replay of it", "c", 1000, 1000, load + " (0 s)"),
                ("the next second works", "d", 1001, 1001, ""),
            ]),
            "clock ran an hour ahead, then put back": (300, 100, [
                ("before", "a", 1000, 1000, ""),
                ("ahead (a local client)", "b", 4600, 4600, ""),
                ("still ahead", "c", 5000, 5000, ""),
                ("put back: a request from before", "a", 1000, 1010, clock_back),
                ("a fresh request", "d", 1010, 1010, ""),
                ("its replay", "d", 1010, 1020, "nonce already used (replay)"),
                ("a request signed ahead, once the clock reaches it", "b", 4600, 4600, clock_back),
            ]),
            "clock went back an hour with the cache full": (300, 3, [
                ("1", "a", 5000, 5000, ""), ("2", "b", 5000, 5000, ""), ("3", "c", 5000, 5000, ""),
                ("put back: the hour-ahead bucket goes first", "d", 1400, 1400, ""),
                ("the same second keeps working", "e", 1400, 1400, ""),
                ("and the next", "f", 1401, 1401, ""),
                ("replays refused", "d", 1400, 1401, "nonce already used (replay)"),
                ("the forgotten hour, once the clock gets there", "a", 5000, 5000, clock_back),
                ("a fresh nonce in that second too", "g", 5000, 5000, clock_back),
                ("the second after", "g", 5001, 5001, ""),
            ]),
            "clock stepped back 5 s": (300, 100, [
                ("1", "a", 1000, 1000, ""), ("back", "b", 995, 995, ""),
                ("replays still refused", "a", 1000, 995, "nonce already used (replay)"),
            ]),
        }
        for name, (window, capacity, steps) in tables.items():
            cache = auth.NonceCache(window, capacity=capacity)
            for step, nonce, ts, now, want in steps:
                with self.subTest(table=name, step=step):
                    got = cache.add(nonce, ts, now)
                    if want:
                        self.assertIn(want, got)
                    else:
                        self.assertEqual(got, "")
                    self.assertLessEqual(cache.count, capacity)

    def test_below_the_floor_through_verify(self):
        cache = auth.NonceCache(300, capacity=2)
        for i, ts in enumerate((1000, 1001, 1002)):
            self.verify(self.headers(ts=ts, nonce=f"n{i:015d}"), nonces=cache, now=1002)
        with self.assertRaises(Unauthorized) as cm:
            self.verify(self.headers(ts=1000, nonce="x" * 16), nonces=cache, now=1002)
        self.assertEqual(cm.exception.message, "timestamp older than the replay window the server can keep "
                                               "at this load (1 s); sign with the current time")

    def test_sustained_rate_never_locks_out_and_never_replays(self):
        """4,000 signed requests/s for 15 simulated minutes into a cache of 40,000 (a 10 s
        window at that rate; the old cache refused everyone after 10 s): every fresh request
        is accepted, every replay refused, memory stays within the capacity."""
        rate, seconds, capacity = 4000, 900, 40_000
        cache = auth.NonceCache(300, capacity=capacity)
        clock = FakeClock(1_000_000.0)
        sent = []                                   # (nonce, ts) of one accepted request per second
        for sec in range(seconds):
            base = int(clock.time())
            for i in range(rate):
                # most clients sign just now; some 2 s ago (slow link); 1 in 100 runs 250 s ahead
                ts = base + 250 if i % 100 == 0 else base - 2 if i % 10 == 0 else base
                got = cache.add(f"{sec:06d}-{i:05d}-nonce", ts, clock.time())
                if got:
                    self.fail(f"second {sec}: fresh request {i} refused: {got}")
            sent.append((f"{sec:06d}-{5:05d}-nonce", base))
            for back in (0, 1, 5, 30, 299):         # replays of requests from `back` s ago
                if back <= sec:
                    nonce, ts = sent[sec - back]
                    self.assertNotEqual(cache.add(nonce, ts, clock.time()), "", (sec, back))
            self.assertLessEqual(cache.count, capacity)
            clock.advance(1)
        self.assertEqual(cache.count, sum(len(b) for b in cache._buckets.values()))
        self.assertLessEqual(len(cache._gone), auth.NonceCache.MAX_RANGES)
        self.assertLessEqual(len(cache._order), capacity)

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
