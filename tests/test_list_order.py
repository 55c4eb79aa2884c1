"""GET /v1/tasks: order=asc (the default: oldest first) or desc (newest first), paged with
`after` and `before`; bad values are refused with 400; the OpenAPI document lists both."""

import unittest
import urllib.parse

from meshkit.roles.supervisor import openapi
from tests.helpers import Fleet, register


class ListOrder(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet()
        cls.fleet.start_supervisor()
        cls.admin, cls.viewer, cls.worker = (cls.fleet.client(r) for r in ("admin", "viewer", "worker"))
        register(cls.worker, "w1", kinds=("echo",), slots=2)
        cls.ids = [cls.admin.call("POST", "/v1/tasks", {"kind": "echo"})["task"]["id"] for _ in range(6)]
        assert cls.ids == [f"t{i}" for i in range(1, 7)], cls.ids
        leased = cls.worker.call("POST", "/v1/claim", {"node": "w1", "max": 2})["tasks"]     # t1, t2: leased
        assert sorted(t["id"] for t in leased) == ["t1", "t2"], leased

    @classmethod
    def tearDownClass(cls):
        for c in (cls.admin, cls.viewer, cls.worker):
            c.close()
        cls.fleet.close()

    def ids_of(self, query: str) -> list:
        status, body = self.viewer.request("GET", "/v1/tasks" + (f"?{query}" if query else ""))
        self.assertEqual(status, 200, f"{query}: {body}")
        return [t["id"] for t in body["tasks"]]

    def test_order_after_and_before(self):
        cases = [
            ("", ["t1", "t2", "t3", "t4", "t5", "t6"]),
            ("order=asc", ["t1", "t2", "t3", "t4", "t5", "t6"]),
            ("order=desc", ["t6", "t5", "t4", "t3", "t2", "t1"]),
            ("order=desc&limit=3", ["t6", "t5", "t4"]),                 # the CLI: the newest N (+1: is there more?)
            ("order=desc&limit=2&before=t5", ["t4", "t3"]),             # paging backwards
            ("order=desc&limit=2&before=t3", ["t2", "t1"]),
            ("order=desc&limit=2&before=t1", []),
            ("before=t4", ["t1", "t2", "t3"]),
            ("limit=2&before=t4", ["t1", "t2"]),
            ("after=t2&before=t6", ["t3", "t4", "t5"]),
            ("after=t2&before=t6&order=desc", ["t5", "t4", "t3"]),
            ("after=t4", ["t5", "t6"]),                                 # as before: the next page, oldest first
            ("after=t4&order=desc", ["t6", "t5"]),
            ("order=desc&state=queued", ["t6", "t5", "t4", "t3"]),
            ("order=desc&state=leased&limit=1", ["t2"]),
            ("order=desc&state=queued&before=t5&limit=1", ["t4"]),
            ("order=desc&before=t999999999999999999", ["t6", "t5", "t4", "t3", "t2", "t1"]),
        ]
        for query, want in cases:
            with self.subTest(query=query):
                self.assertEqual(self.ids_of(query), want)

    def test_paging_backwards_walks_every_task_once(self):
        seen, before = [], None
        for _ in range(5):          # (bounded: a `before` ignored would page forever)
            page = self.ids_of("order=desc&limit=4" + (f"&before={before}" if before else ""))
            seen += page[:3]
            if len(page) <= 3:      # the CLI's contract: ask N+1, show N, "more" when N+1 came
                break
            before = page[2]
        self.assertEqual(seen, ["t6", "t5", "t4", "t3", "t2", "t1"])

    def test_bad_values_are_refused(self):
        bad = ["order=DESC", "order=", "order=newest", "order=asc&order=desc", "order=%FF",
               "before=", "before=t", "before=5", "before=t-1", "before=tx", "before=T3", "before=t1&before=t2",
               "before=t" + "9" * 30, "before=t%C2%B2", "before=t3%0A", "after=t", "after=x1", "limit=0",
               "limit=1001", "state=bogus"]
        for query in bad:
            with self.subTest(query=query):
                status, body = self.viewer.request("GET", "/v1/tasks?" + query)
                self.assertEqual(status, 400, body)
                self.assertEqual(body["error"]["code"], "bad_request")
        status, body = self.viewer.request("GET", "/v1/tasks?order=desc&" + urllib.parse.urlencode({"before": "t2"}))
        self.assertEqual((status, [t["id"] for t in body["tasks"]]), (200, ["t1"]))

    def test_the_openapi_document_lists_order_and_before(self):
        doc = self.viewer.call("GET", "/v1/openapi.json")
        params = {p["name"]: p for p in doc["paths"]["/v1/tasks"]["get"]["parameters"]}
        self.assertEqual(set(params), {"state", "limit", "after", "before", "order"})
        self.assertEqual(params["order"]["schema"]["enum"], ["asc", "desc"])
        self.assertEqual(params["before"]["schema"]["pattern"], openapi.LIST_QUERY["after"]["pattern"])
        self.assertNotIn("x-meshkit-internal-query", doc["paths"]["/v1/tasks"]["get"])


if __name__ == "__main__":
    unittest.main()
