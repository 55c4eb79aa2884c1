"""When the supervisor refuses this worker's key (401, 403): for good, or for now. Pure.

  403 `forbidden`            the key's role may not do a worker's calls (e.g. a viewer key)  for good
    node_not_bound           the key is bound to other nodes than this worker's name        for good
  401 `unauthorized`:
    unknown_key              the supervisor's keys file has no such key id                   for good
    bad_signature            the key id is known, its secret differs                         for good
    stale_timestamp          further off the supervisor's clock than auth.max_skew: this
                             machine's clock (or the supervisor's)                           for now
    replayed_nonce           a nonce already used                                            for now
    outside_replay_window    older than the replay window the supervisor keeps (its clock
                             went back, overload)                                            for now
    unknown                  any other 401, or a 403 that is not `forbidden` (a proxy)       for now

The supervisor answers every 401 with the one code `unauthorized` and says which of the
reasons above it is in the answer's `reason` (rules/auth.refused); from a supervisor before
that, the start of its message tells, which auth.verify words as fixed text (TEXTS below;
tests/test_worker_refusals.py checks them against auth.verify itself).
Anything not recognised is "for now": retried and logged, never a reason to stop.
"""

from meshkit.core.errors import ApiError

FOR_GOOD = {
    "role": "give this worker a key with role worker (or admin)",
    "node_not_bound": "the key speaks only for the nodes its line in the keys file names: set worker.name to one "
                      "of them, or give this worker its own key (`meshkit keys add-worker NODE` on the supervisor)",
    "unknown_key": "add this key to the supervisor's keys file (and restart it), "
                   "or give this worker a key the supervisor knows",
    "bad_signature": "this key's secret differs from the supervisor's: copy the key's line "
                     "from the supervisor's keys file",
}
FOR_NOW = {
    "stale_timestamp": "check the clocks of this machine and the supervisor (NTP); retrying",
    "replayed_nonce": "retrying with a new nonce",
    "outside_replay_window": "check the supervisor's clock (did it go back?); retrying",
    "unknown": "retrying",
}
TEXTS = (("unknown key id", "unknown_key"), ("bad signature", "bad_signature"),
         ("timestamp is more than", "stale_timestamp"), ("nonce already used", "replayed_nonce"),
         ("timestamp older than the replay window", "outside_replay_window"))


def reason_of(err) -> str | None:
    """What a supervisor's refusal of the key is about (a key of FOR_GOOD or FOR_NOW);
    None for anything that is not a 401 or 403."""
    if not isinstance(err, ApiError) or err.status not in (401, 403):
        return None
    if err.status == 403:
        if err.code != "forbidden":
            return "unknown"
        return "node_not_bound" if err.details.get("reason") == "node_not_bound" else "role"
    if err.code != "unauthorized":
        return "unknown"
    said = err.details.get("reason")
    if said in FOR_GOOD or said in FOR_NOW:
        return said
    return next((reason for text, reason in TEXTS if err.message.startswith(text)), "unknown")


def for_good(reason) -> bool:
    return reason in FOR_GOOD


def hint(reason: str) -> str:
    return FOR_GOOD.get(reason) or FOR_NOW.get(reason) or FOR_NOW["unknown"]


def refused_line(key_id: str, url: str, message: str, reason: str, where: str = "") -> str:
    """The one line a worker whose key is refused for good ends with (where: which config
    key and file to change)."""
    return (f"the supervisor at {url} refuses worker key {key_id!r} for good: {message}; "
            f"{hint(reason)}{f' ({where})' if where else ''}; the worker stopped, its undelivered "
            "results stay in its outbox for the next start")
