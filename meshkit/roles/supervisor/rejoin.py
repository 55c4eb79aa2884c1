"""A former primary's first contact with the supervisor promoted past it (run by Ha's pull
loop before its first pull): drop what it wrote that the new primary never received, take
the new primary's version of those rows, then follow it; once caught up, say which of the
dropped tasks the new primary does not have (the async window's loss)."""

from meshkit.core.errors import ApiError
from meshkit.rules import failover

FETCH_CHUNK = 200      # keys per POST /v1/replicate/rows (a task row carries its payload)


def rejoin(ha, client, wait: float) -> None:
    got = client.call("GET", "/v1/replicate?since=0&wait=0&limit=1", timeout=wait + 10)
    if ha.sup.role != "standby":
        return
    head = ha.store.head_seq()
    plan = failover.rejoin_plan(head, got.get("promoted_from"), got.get("promoted_head"))
    rows, since = None, plan["since"]
    if plan["refetch"]:
        rows = fetch_rows(client, ha.store.changed_keys(plan["discard_after"]))
        if rows is None:     # a peer that can't answer by key: its whole changelog again
            since = 0
        if ha.sup.role != "standby":
            return
    done = ha.store.rejoin(plan["discard_after"], since, rows)
    ha.discarded = [(n, done["traces"].get(n)) for n in done["tasks"]]
    fields = dict(peer=ha.peer, own_head=head, promoted_from=got.get("promoted_from"),
                  discard_after=plan["discard_after"], since=since, rows=done["rows"],
                  fetched=None if rows is None else len(rows),
                  tasks=len(done["tasks"]), task_ids=[f"t{n}" for n in done["tasks"][:200]])
    if done["tasks"]:
        ha.log.warning("rejoin_discarded", reason="changes made here that the new primary never received "
                       "(async window, or everything when it can't say) were dropped; its copy replaces them",
                       **fields)
    else:
        ha.log.info("rejoined", **fields)


def fetch_rows(client, keys: list):
    """The peer's version of the rows named by `keys` ([{"table", "row"}]); None when it has
    no such call (404: an older meshkit)."""
    rows = []
    for i in range(0, len(keys), FETCH_CHUNK):
        try:
            rows += client.call("POST", "/v1/replicate/rows", {"rows": keys[i:i + FETCH_CHUNK]})["rows"]
        except ApiError as e:
            if e.status == 404:
                return None
            raise
    return rows


def report_discarded(ha) -> None:
    """Caught up after a rejoin: which dropped tasks the primary does not have (lost in the
    async window) and how many it has in its own version."""
    dropped, ha.discarded = dict(ha.discarded), []
    ns = list(dropped)
    have = {}
    for i in range(0, len(ns), 500):
        chunk = ns[i:i + 500]
        have.update((r["n"], r["trace_id"]) for r in ha.store.read(
            f"SELECT n, trace_id FROM tasks WHERE n IN ({','.join('?' * len(chunk))})", chunk))
    # Lost: the primary has no task by that number, or another task (another trace id) has it.
    lost = [n for n in ns if n not in have or (dropped[n] is not None and dropped[n] != have[n])]
    reused = [f"t{n}" for n in lost if n in have]
    log = ha.log.warning if lost else ha.log.info
    log("rejoin_lost_tasks", lost=len(lost), task_ids=[f"t{n}" for n in lost][:200], reused_ids=reused[:200] or None,
        replaced=len(ns) - len(lost),
        reason="tasks this node had acknowledged or changed that the active supervisor never received")
