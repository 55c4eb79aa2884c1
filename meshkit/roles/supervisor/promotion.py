"""A standby promoted while its former primary may still be up (the watchdog lost sight of
it, or an operator promoted by hand) must not take work while that one still does.

At promotion (Ha.promote) it holds work back until rules.failover.settle_until (the former
primary's lease, renewed by our own pulls, has run out) and, at once, tells the former
primary to follow it (POST /v1/demote with the new epoch, on a thread: the watchdog's
promote call is not kept waiting). When that one answers as a standby, or its lease ran
out (Ha.cycle), or its signed check shows it follows (Ha.cycle), work is taken.
"""

import threading

from meshkit.core.errors import ApiError, ClientError

DEMOTE_TIMEOUT = 3.0


def start(ha, epoch: int) -> None:
    threading.Thread(target=_demote_former, args=(ha, epoch), name="demote-former", daemon=True).start()


def _demote_former(ha, epoch: int) -> None:
    try:
        got = ha.client().call("POST", "/v1/demote", {"epoch": epoch}, timeout=DEMOTE_TIMEOUT)
    except (ApiError, ClientError) as e:
        ha.log.warning("former_primary_not_demoted", peer=ha.peer, epoch=epoch, error=e.message,
                       waiting=ha.settling)
        return
    if isinstance(got, dict) and got.get("role") == "standby":
        ha.settled(epoch, f"the former primary {ha.peer} follows us (epoch {got.get('epoch')})")
