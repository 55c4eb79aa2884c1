"""A worker's heartbeat: register the node (or bring it back), keep what it says it is and
how it is now (rules/nodeinfo.py), renew the leases of the tasks it lists as running, count
the running ones it leaves out (heal rule missing_from_heartbeats), and answer with the
cancels it must carry out and the tasks no longer its own (fenced).
"""

import json

from meshkit.adapters.storetx import task_id, task_n
from meshkit.core import wire
from meshkit.rules import nodeinfo


def heartbeat(tasks, body: dict) -> dict:
    wire.validate(body, wire.HEARTBEAT, "heartbeat")
    now = tasks.clock.time()
    node = body["node"]
    nodeinfo.check(body)
    running = body.get("running")      # None: not reported (no lease renewed, none counted missing)
    with tasks.store.tx() as tx:
        prev = tx.one("SELECT state, info FROM nodes WHERE name=?", (node,))
        before = json.loads(prev["info"]) if prev else None
        info = nodeinfo.merge(before, body)      # left out: kept
        tx.cache.pop(tx.cache.node_key(node), None)
        tx.execute("INSERT INTO nodes(name, info, first_seen, last_seen, state) VALUES(?,?,?,?, 'alive')"
                   " ON CONFLICT(name) DO UPDATE SET info=excluded.info, last_seen=excluded.last_seen,"
                   " state='alive'", (node, json.dumps(info), now, now))
        fenced = []
        for item in running or ():
            renewed = tx.execute("UPDATE tasks SET lease_deadline=? WHERE n=? AND fence=? AND node=?"
                                 " AND state IN ('leased','running')",
                                 (now + tasks.cfg.get("supervisor.lease_ttl"), task_n(item["task"]),
                                  item["fence"], node)).rowcount
            if not renewed:
                fenced.append(item["task"])
        # Count heartbeats that don't list a running task (heal rule missing_from_heartbeats).
        if running is not None:
            listed = [task_n(item["task"]) for item in running] or [0]
            marks = ",".join("?" * len(listed))
            tx.execute(f"UPDATE tasks SET hb_missing=CASE WHEN n IN ({marks}) THEN 0 ELSE hb_missing+1 END"
                       f" WHERE node=? AND state IN ('leased','running') AND state='running'", (*listed, node))
        cancel = [task_id(r["n"]) for r in tx.all(
            "SELECT n FROM tasks WHERE node=? AND cancel_requested=1 AND state IN ('leased','running')", (node,))]
    if prev is None or prev["state"] != "alive":
        tasks.log.info("node_registered" if prev is None else "node_back", node=node)
        tasks.wake_all()
    elif info.get("hold") and not before.get("hold"):
        tasks.wake_all()             # its waiting claim ends now, empty (_claim_once)
    return {"ok": True, "cancel": cancel, "fenced": fenced, "server_time": now}
