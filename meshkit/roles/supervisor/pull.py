"""The standby's side of replication: long-poll the primary's changelog and apply it (one
thread, started by Ha while the role is standby). A former primary rejoins first (rejoin.py).
Each pull also records whether it may have reached the primary (it renews that primary's
lease: promotion.py counts from it), and names the epoch that primary answered with last,
so that a pull replayed to another supervisor renews nothing there (rules.failover.feed_refusal).

The primary drops the entries of deleted rows after supervisor.retain_ended; its answer's
`floor` is the highest one dropped. A standby whose position is below a floor it has not
seen before may have missed a deletion: it copies everything again (resync). A copy from 0
misses none: it only notes the floor."""

from meshkit.core.errors import ApiError, MeshkitError
from meshkit.roles.supervisor import rejoin

PULL_WAIT = 5.0


def pull_loop(ha) -> None:
    client = seen = None        # seen: the epoch the primary answered with last
    named = True                # the primary takes &epoch= (one from before it answers 400 naming it)
    while not ha._stop.is_set() and ha.sup.role == "standby":
        try:
            if not ha.peer:     # e.g. demoted by an older meshkit with no peer to follow: nothing to pull
                raise MeshkitError("this standby has no peer to replicate from: restart it with --standby-of URL, "
                                   "or promote it")
            if not (client and client.url == ha.peer):
                client, seen, named = ha.client(), None, True
            if ha.store.meta("rejoin") is not None:
                rejoin.rejoin(ha, client, PULL_WAIT)
                continue
            since = int(ha.store.meta("replicated_seq", "0"))
            ha.pull_in_flight = True
            try:
                got = client.call("GET", f"/v1/replicate?since={since}&wait={PULL_WAIT}&limit=2000"
                                  + (f"&epoch={seen}" if seen is not None and named else ""), timeout=PULL_WAIT + 10)
                ha.pull_answered = ha.clock.monotonic()
            except ApiError as e:
                ha.pull_answered = ha.clock.monotonic()     # it reached the primary
                if e.status == 400 and "epoch" in e.message and seen is not None:
                    named = False   # a primary from before the parameter: pull as that version did
                    continue
                seen = None     # refused (its epoch changed, e.g. promoted out of a fence): ask again without
                raise
            finally:
                ha.pull_in_flight = False
            if ha.sup.role != "standby":
                return
            seen = got["epoch"] if isinstance(got.get("epoch"), int) and not isinstance(got["epoch"], bool) else None
            floor, known = int(got.get("floor") or 0), int(ha.store.meta("peer_floor", "0"))
            if 0 < since < floor and floor > known:
                resync(ha, since, floor)
                continue
            ha.store.apply_changes(got["changes"], got["last"], floor if floor != known else None)
            ha.primary_head = got["head"]
            ha.pulled_at = ha.clock.monotonic()
            if got["last"] >= got["head"]:
                ha.caught_up_at = ha.clock.time()
                if ha.discarded:
                    rejoin.report_discarded(ha)
            if got["epoch"] > ha.sup.epoch and got["role"] == "primary":
                with ha.store.tx(replication=True) as tx:
                    tx.set_meta("peer_epoch", got["epoch"])
            ha.pull_error = None
        except (MeshkitError, KeyError, TypeError, ValueError) as e:
            message = getattr(e, "message", repr(e))
            if message != ha.pull_error:
                ha.log.warning("replication_failed", peer=ha.peer, error=message)
            ha.pull_error = message
            ha._stop.wait(1.0)


def resync(ha, since: int, floor: int) -> None:
    ha.log.warning("replication_resync", peer=ha.peer, since=since, floor=floor,
                   reason="the primary dropped the records of deletions this standby had not pulled yet (it was "
                          "behind by more than supervisor.retain_ended): every row is copied again")
    ha.store.rejoin(0, 0)       # drops every row it holds (all are in its changelog), then pulls from 0
