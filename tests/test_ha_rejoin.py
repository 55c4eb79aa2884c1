"""HA start-up and handback edges: a primary that can't ask its peer starts fenced; a
former primary discards what it wrote in the async window before it follows; a write that
passed the active check just before a hold or a demotion is refused, not stored past the
head the successor catches up to."""

import io
import json
import os
import re
import signal
import tempfile
import unittest

from tests.helpers import Fleet, meshkit
from tests.test_ha import free_port
from tests.test_worker_harness import wait_for
from meshkit.adapters.log import Logger
from meshkit.adapters.store import Store
from meshkit.adapters.storerepl import LOCAL_META, REPLICATED
from meshkit.cli.common import load_config
from meshkit.core.errors import ApiError, NotActive
from meshkit.roles.supervisor import intake, rejoin
from meshkit.roles.supervisor.service import Supervisor
from meshkit.rules import failover


def events(path: str, name: str) -> list:
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict) and e.get("event") == name:
                out.append(e)
    return out


class Loopback(unittest.TestCase):
    def setUp(self):
        pp, ps = free_port(), free_port()
        self.p_url, self.s_url = f"http://127.0.0.1:{pp}", f"http://127.0.0.1:{ps}"
        self.fleet = Fleet(supervisor__cycle=0.2, supervisor__peer=self.s_url)
        self.addCleanup(self.fleet.close)
        self.s_config = self.fleet.other_config("standby", supervisor__role="standby", supervisor__peer=self.p_url)

    def start(self, which):
        config = None if which == "primary" else self.s_config
        self.fleet.start_supervisor(config=config, listen=(self.p_url if which == "primary" else self.s_url)[7:])
        return self.fleet.supervisor, os.path.join(self.fleet.dir, f"supervisor-{len(self.fleet.procs) - 1}.log")

    def client(self, url):
        return self.fleet.client(url=url)

    def replication(self, url):
        return self.client(url).call("GET", "/v1/status")["replication"]

    def dispatch(self, url, tag):
        return self.client(url).call("POST", "/v1/tasks", {"kind": "x", "payload": {"tag": tag}})["task"]["id"]

    def tags(self, url) -> dict:
        tasks = self.client(url).call("GET", "/v1/tasks?limit=1000")["tasks"]
        return {t["id"]: (t["payload"]["tag"], t["state"]) for t in tasks}


class FencedStart(Loopback):
    def test_a_primary_that_cannot_ask_its_peer_takes_no_work_until_named_active(self):
        self.start("primary")                     # the standby is not running: its peer can't be asked
        admin = self.client(self.p_url)
        status, body = admin.request("POST", "/v1/tasks", {"kind": "x"})
        self.assertEqual((status, body["error"]["code"]), (409, "not_active"))
        self.assertIn("started fenced", body["error"]["message"])
        self.assertEqual(admin.call("GET", "/health")["role"], "primary")
        self.assertIn("fenced", self.replication(self.p_url)["fenced"])
        admin.call("GET", "/v1/ha/check")                       # a check not naming it active: still fenced
        admin.call("GET", "/v1/ha/check?active=2")              # names it, but the watchdog knows epoch 2
        self.assertEqual(admin.request("POST", "/v1/tasks", {"kind": "x"})[0], 409)
        got = admin.call("GET", "/v1/ha/check?active=1")        # the watchdog's check of the active one
        self.assertIsNone(got["fenced"])
        self.assertEqual(admin.request("POST", "/v1/tasks", {"kind": "x"})[0], 201)

    def test_an_operators_promote_lifts_the_fence_past_every_epoch(self):
        self.start("primary")
        admin = self.client(self.p_url)
        got = admin.call("POST", "/v1/promote", {"epoch": 4})   # e.g. no watchdog: the operator decides
        self.assertEqual((got["role"], got["epoch"], got["fenced"]), ("primary", 5, None))
        self.assertEqual(admin.request("POST", "/v1/tasks", {"kind": "x"})[0], 201)

    def test_cold_start_of_the_pair_elects_the_configured_primary(self):
        self.start("standby")                     # standby first: the primary asks it and serves at once
        self.start("primary")
        self.assertEqual(self.client(self.p_url).request("POST", "/v1/tasks", {"kind": "x"})[0], 201)
        self.assertEqual(self.client(self.s_url).request("POST", "/v1/tasks", {"kind": "x"})[0], 409)

    def test_primary_first_serves_once_its_standby_answers(self):
        self.start("primary")
        self.assertEqual(self.client(self.p_url).request("POST", "/v1/tasks", {"kind": "x"})[0], 409)
        self.start("standby")
        wait_for(lambda: self.replication(self.p_url).get("fenced") is None, 10, "the fence to lift")
        self.assertEqual(self.client(self.p_url).request("POST", "/v1/tasks", {"kind": "x"})[0], 201)

    def test_a_single_supervisor_without_a_peer_serves_at_once(self):
        fleet = Fleet()
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        self.assertEqual(fleet.client().request("POST", "/v1/tasks", {"kind": "x"})[0], 201)


class RejoinAfterAsyncLoss(Loopback):
    def test_tasks_written_in_the_async_window_do_not_come_back_after_failback(self):
        """Dispatch on A while B's replication is paused; kill -9 A; promote B; restart A (it
        follows B); hand back. The tasks only A had must not reappear."""
        a, _ = self.start("primary")
        b, b_log = self.start("standby")
        wait_for(lambda: self.replication(self.p_url).get("fenced") is None, 10, "the primary to serve")
        replicated = [self.dispatch(self.p_url, f"kept{i}") for i in range(3)]
        status, body = self.client(self.s_url).request("POST", "/v1/replicate/rows", {"rows": []})
        self.assertEqual((status, body["error"]["code"]), (409, "not_active"))      # only the primary's rows
        wait_for(lambda: self.replication(self.s_url)["lag_changes"] == 0, 10, "the standby to catch up")
        b.send_signal(signal.SIGSTOP)                            # replication paused
        try:
            lost = [self.dispatch(self.p_url, f"lost{i}") for i in range(6)]     # async: acknowledged
            # A row B already had, changed only on A: A must end with B's version of it, which
            # is in none of the changes B made after its promotion (fetched by key at rejoin).
            self.client(self.p_url).call("POST", f"/v1/tasks/{replicated[0]}/cancel", {})
            a.kill()
            a.wait(5)
        finally:
            b.send_signal(signal.SIGCONT)
        self.assertEqual(self.client(self.s_url).call("POST", "/v1/promote", {})["epoch"], 2)
        # A pull already answered before the stop may still bring B the first of them (one
        # answer can carry several: it reads the rows when it wakes).
        missing = [tid for tid in lost if tid not in self.tags(self.s_url)]
        self.assertGreaterEqual(len(missing), 3, missing)
        on_b = [self.dispatch(self.s_url, f"new{i}") for i in range(2)]
        # ... with ids past every one A may have given out: the lost ones stay unknown (404)
        self.assertTrue(all(int(tid[1:]) > 1_000_000 for tid in on_b), on_b)
        self.assertEqual(self.client(self.s_url).request("GET", f"/v1/tasks/{missing[0]}")[0], 404)

        a, a_log = self.start("primary")                         # follows B, discarding what B never got
        self.assertEqual(self.replication(self.p_url)["role"], "standby")
        wait_for(lambda: self.replication(self.p_url)["lag_changes"] == 0, 15, "the old primary to catch up")
        discarded = events(a_log, "rejoin_discarded")
        self.assertEqual(len(discarded), 1, discarded)
        self.assertEqual(discarded[0]["level"], "warning")
        self.assertTrue(set(missing) <= set(discarded[0]["task_ids"]), discarded)
        self.assertIn(replicated[0], discarded[0]["task_ids"])
        # Only what B wrote since its promotion is pulled; the rows A dropped come by key.
        self.assertGreater(discarded[0]["since"], 0, discarded)
        self.assertGreaterEqual(discarded[0]["fetched"], 1, discarded)
        wait_for(lambda: events(a_log, "rejoin_lost_tasks"), 10, "the loss report")
        report = events(a_log, "rejoin_lost_tasks")[0]
        self.assertEqual((report["level"], report["task_ids"]), ("warning", missing))
        want = self.tags(self.s_url)
        self.assertEqual(self.tags(self.p_url), want)

        wd = self.fleet.other_config("watchdog", watchdog__primary=self.p_url, watchdog__standby=self.s_url,
                                     watchdog__interval=0.3, watchdog__state_file="watchdog.json")
        with open(os.path.join(self.fleet.dir, "watchdog.json"), "w") as f:
            json.dump({"active": "standby", "epoch": 2}, f)
        r = meshkit("watchdog", "failback", "--config", wd, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.client(self.p_url).call("GET", "/health")["role"], "primary")

        self.assertEqual(self.tags(self.p_url), want)            # nothing of A's async window came back
        self.assertEqual(sorted(tag for tag, _ in want.values()),
                         sorted([f"kept{i}" for i in range(3)] + [f"new{i}" for i in range(2)]
                                + [f"lost{i}" for i, tid in enumerate(lost) if tid not in missing]))
        self.assertTrue(all(state == "queued" for _, state in want.values()))
        wait_for(lambda: self.replication(self.s_url).get("lag_changes") == 0, 10, "B to follow A")
        self.assertEqual(self.tags(self.s_url), want)
        # B had all A wrote since B's promotion: it keeps its rows and pulls only what is new.
        self.assertIsNone(events(b_log, "rejoined")[-1].get("discard_after"))     # [0]: its first start
        self.assertEqual(events(b_log, "rejoin_discarded"), [])


class LossReport(unittest.TestCase):
    def test_an_id_that_names_another_task_now_counts_as_lost(self):
        class Ha:           # what report_discarded reads: the store's tasks, the log
            pass
        rows = {1: "trace-a", 2: "other-trace", 4: "trace-d"}     # the primary's tasks, by number
        ha = Ha()
        ha.store = type("S", (), {"read": staticmethod(lambda sql, ns: [{"n": n, "trace_id": rows[n]}
                                                                         for n in ns if n in rows])})()
        out = io.StringIO()
        ha.log = Logger("supervisor", stream=out)
        # ours: t1 (the primary has it: replaced), t2 (the primary's t2 is another task: lost,
        # the id reused), t3 (unknown there: lost), t4 (only its history changed: replaced)
        ha.discarded = [(1, "trace-a"), (2, "trace-b"), (3, "trace-c"), (4, None)]
        rejoin.report_discarded(ha)
        line = json.loads(out.getvalue())
        self.assertEqual((line["level"], line["lost"], line["task_ids"], line["reused_ids"], line["replaced"]),
                         ("warning", 2, ["t2", "t3"], ["t2"], 2))
        self.assertEqual(ha.discarded, [])


class WriteGuard(unittest.TestCase):
    """In-process: the active check runs before a request's transaction; the guard runs inside it."""

    def setUp(self):
        self.fleet = Fleet()
        self.addCleanup(self.fleet.close)

        class Args:
            config = self.fleet.config
        self.sup = Supervisor(load_config(Args), listen="127.0.0.1:0", logger=Logger("supervisor", stream=io.StringIO()))
        self.addCleanup(self.sup.dir_lock.release)
        self.addCleanup(self.sup.store.close)
        self.sup.ha.start(None)

    def admitted_dispatch(self, between):
        class Req:
            headers = {}
        self.sup.ha.require_active(Req())        # passes: active primary
        between()                                # the hold (or a demotion) comes in here
        head = self.sup.store.head_seq()
        with self.assertRaises(NotActive):
            intake.dispatch(self.sup.tasks, {"kind": "x"}, "admin")
        self.assertEqual(self.sup.store.head_seq(), head)
        self.assertEqual(self.sup.store.counts()["queued"], 0)

    def test_a_write_admitted_before_a_hold_is_refused(self):
        self.admitted_dispatch(lambda: self.sup.ha.demote({"peer": "http://127.0.0.1:9", "hold": True}, "test"))

    def test_a_write_admitted_before_a_demotion_is_refused_but_replication_still_writes(self):
        self.admitted_dispatch(lambda: self.sup.ha.demote({"peer": "http://127.0.0.1:9"}, "test"))
        self.sup.ha.stop()
        self.sup.store.apply_changes([{"table": "kinds", "row": {"kind": "k", "failures": 1, "quarantined": 0,
                                                                  "since": None, "reason": None}}], 7)
        self.assertEqual(self.sup.store.meta("replicated_seq"), "7")
        with self.sup.store.tx() as tx:          # a transaction that only reads still commits
            self.assertEqual(tx.one("SELECT COUNT(*) AS c FROM tasks")["c"], 0)


class Plans(unittest.TestCase):
    def test_rejoin_plan(self):
        cases = [  # own_head, promoted_from, promoted_head -> plan
            (10, 10, 40, {"discard_after": None, "since": 40, "refetch": False}),  # it held all we wrote
            (12, 10, 40, {"discard_after": 10, "since": 40, "refetch": True}),    # the async window: drop 11..12,
                                                                                  # fetch its version of them
            (10, None, None, {"discard_after": 0, "since": 0, "refetch": False}),   # never promoted: copy all
            (5, 10, 40, {"discard_after": 0, "since": 0, "refetch": False}),        # it held more than we have
        ]
        for own, frm, head, want in cases:
            with self.subTest(own=own, frm=frm):
                self.assertEqual(failover.rejoin_plan(own, frm, head), want)

    def test_watchdog_initial_state(self):
        P = lambda e, fenced=None: {"role": "primary", "epoch": e, "fenced": fenced}      # noqa: E731
        S = lambda e: {"role": "standby", "epoch": e}                                    # noqa: E731
        cases = [  # primary's answer, standby's answer -> (active, epoch)
            (P(1), S(1), ("primary", 1)),                  # a fresh pair
            (P(1, "peer unsure"), P(2), ("standby", 2)),   # the old primary restarted cut off: not it
            (S(2), P(2), ("standby", 2)),                  # after a failover, the old primary followed
            (P(3), S(3), ("primary", 3)),                  # after a failback
            (P(2), None, ("primary", 2)),                  # a serving primary, standby down: it stays
            (P(1, "peer unsure"), None, ("standby", 1)),   # fenced, the other silent: count failures first
            (None, P(2), ("standby", 2)),
            (None, S(2), ("primary", 2)),                  # the standby must not be named on a guess
            (S(2), S(2), ("primary", 2)),
            (None, None, ("primary", 0)),
            ({"epoch": True, "role": "primary"}, S(1), ("primary", 1)),   # a bad answer counts as none
        ]
        for p, s, (active, epoch) in cases:
            with self.subTest(p=p, s=s):
                got = failover.initial_state({"primary": p, "standby": s})
                self.assertEqual((got["active"], got["epoch"]), (active, epoch))
                self.assertEqual(got["failures"], 0)

    def test_peer_verdict(self):
        cases = [  # our epoch, the peer's /health -> verdict
            (1, None, "unsure"),
            (1, {"role": "standby", "epoch": 1}, "serve"),
            (3, {"role": "standby", "epoch": 2}, "serve"),
            (1, {"role": "standby", "epoch": 2}, "unsure"),
            (1, {"role": "primary", "epoch": 2}, "follow"),
            (2, {"role": "primary", "epoch": 2}, "unsure"),
            (2, {"role": "primary", "epoch": 1}, "unsure"),
            (1, {"ok": True}, "unsure"),
        ]
        for epoch, peer, want in cases:
            with self.subTest(epoch=epoch, peer=peer):
                self.assertEqual(failover.peer_verdict(epoch, peer), want)


if __name__ == "__main__":
    unittest.main()


class RowsByKey(unittest.TestCase):
    """Store level: a former primary that drops its async window and takes the new primary's
    version of those rows by key, then its changes since promotion, ends with the same rows,
    also in tables whose rowids differ between the two (keyed by name, or by two columns)."""

    def setUp(self):
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        self.a, self.b = Store(os.path.join(d.name, "a.db")), Store(os.path.join(d.name, "b.db"))
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)

    @staticmethod
    def write(store, *statements):
        with store.tx() as tx:
            for sql, args in statements:
                tx.execute(sql, args)

    @staticmethod
    def task(n, kind):
        return ("INSERT INTO tasks(n, kind, payload, requires, priority, timeout, max_attempts, state, created_at,"
                " updated_at, trace_id) VALUES(?, ?, '{}', '[]', 0, 60, 3, 'queued', 1, 1, 'tr')", (n, kind))

    @staticmethod
    def pull(frm, to, since):
        changes, last = frm.changes_since(since, 10000)
        to.apply_changes(changes, last)

    def rows(self, store):
        out = {}
        for table in REPLICATED:
            cols = store._key_columns(table)
            got = [dict(r) for r in store.read(f"SELECT * FROM {table} ORDER BY {', '.join(cols)}")]
            out[table] = [r for r in got if table != "meta" or r["key"] not in LOCAL_META]
        return out

    def test_the_dropped_rows_come_back_as_the_new_primary_has_them(self):
        node = "INSERT OR REPLACE INTO nodes(name, info, first_seen, last_seen) VALUES(?, ?, 1, 1)"
        self.write(self.a, self.task(1, "x"), self.task(2, "x"), (node, ("n1", "{}")), (node, ("n2", "{}")),
                   ("INSERT INTO deps(task, dep) VALUES(2, 1)", ()), ("INSERT INTO kinds(kind) VALUES('x')", ()),
                   ("INSERT INTO meta VALUES('note', 'one')", ()))
        self.pull(self.a, self.b, 0)
        promoted_from, promoted_head = self.a.head_seq(), self.b.head_seq()
        # A's async window: changes to rows B has, and rows B never saw.
        self.write(self.a, ("UPDATE tasks SET state='cancelled' WHERE n=1", ()), (node, ("n2", '{"slots": 9}')),
                   ("UPDATE kinds SET failures=2 WHERE kind='x'", ()), self.task(3, "lost"),
                   ("INSERT INTO deps(task, dep) VALUES(3, 2)", ()), ("UPDATE meta SET value='two' WHERE key='note'", ()))
        # B, promoted, writes on: a node A never had, a task that reuses number 3.
        self.write(self.b, (node, ("n3", "{}")), self.task(3, "new"), ("UPDATE kinds SET failures=5 WHERE kind='x'", ()))

        keys = self.a.changed_keys(promoted_from)
        self.assertIn({"table": "nodes", "key": {"name": "n2"}}, keys)
        self.assertIn({"table": "deps", "key": {"task": 3, "dep": 2}}, keys)
        done = self.a.rejoin(promoted_from, promoted_head, self.b.rows_by_key(keys))
        self.assertEqual(done["tasks"], [1, 3])
        self.pull(self.b, self.a, promoted_head)
        self.assertEqual(self.rows(self.a), self.rows(self.b))
        self.assertEqual(self.a.read("SELECT state FROM tasks WHERE n=1")[0]["state"], "queued")
        self.assertEqual(self.a.read("SELECT kind FROM tasks WHERE n=3")[0]["kind"], "new")

    def test_a_request_for_rows_names_a_replicated_table_and_its_key(self):
        self.write(self.b, self.task(1, "x"))
        cases = [  # keys -> rows answered, or the ValueError's words
            ([{"table": "tasks", "key": {"n": 1}}], ["tasks"]),
            ([{"table": "tasks", "key": {"n": 2}}], []),                     # absent: left out
            ([{"table": "meta", "key": {"key": "role"}}], []),               # local to each node: never sent
            ([{"table": "changelog", "key": {"seq": 1}}], "not a replicated table"),
            ([{"table": "tasks", "key": {"rowid": 1}}], "columns ['n']"),
            ([{"table": "deps", "key": {"task": 1}}], "columns ['task', 'dep']"),
        ]
        for keys, want in cases:
            with self.subTest(keys=keys):
                if isinstance(want, str):
                    with self.assertRaisesRegex(ValueError, re.escape(want)):
                        self.b.rows_by_key(keys)
                else:
                    self.assertEqual([r["table"] for r in self.b.rows_by_key(keys)], want)

    def test_a_peer_without_the_call_means_copying_its_whole_changelog(self):
        class Peer:
            def __init__(self, error):
                self.error = error

            def call(self, method, path, body):
                raise self.error
        self.assertIsNone(rejoin.fetch_rows(Peer(ApiError(404, "not_found", "no such endpoint")), [{"table": "x"}]))
        self.assertEqual(rejoin.fetch_rows(Peer(None), []), [])
        with self.assertRaises(ApiError):       # anything else: the pull loop retries
            rejoin.fetch_rows(Peer(ApiError(409, "not_active", "a standby")), [{"table": "x"}])
