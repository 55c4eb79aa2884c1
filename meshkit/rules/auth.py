"""Request signing: HMAC-SHA256 over method, path+query, timestamp, nonce and body hash.

    string_to_sign = METHOD "\n" PATH_WITH_QUERY "\n" TIMESTAMP "\n" NONCE "\n" SHA256_HEX(BODY)
    signature      = HEX(HMAC_SHA256(key = secret as ASCII text, string_to_sign))

Headers: X-Meshkit-Key (key id), X-Meshkit-Timestamp (unix seconds),
X-Meshkit-Nonce (16-128 chars of [A-Za-z0-9_-]), X-Meshkit-Signature.
Keys file: one key a line, `ID ROLE SECRET`; roles viewer < worker < admin. A worker key may
name the nodes it speaks for, `ID worker SECRET NODE[,NODE...]`: the supervisor then refuses
(403) its requests that carry another node (a body's `node`, a fleet lease holder's node part).
A worker key without that field speaks for any node.
"""

import bisect
import functools
import hashlib
import heapq
import hmac
import math
import re

from meshkit.core import wire
from meshkit.core.errors import ConfigError, Forbidden, Unauthorized

ROLE_RANK = {"viewer": 0, "worker": 1, "admin": 2}
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
TIMESTAMP_RE = re.compile(r"\d{1,12}")
KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
H_KEY, H_TS, H_NONCE, H_SIG = "X-Meshkit-Key", "X-Meshkit-Timestamp", "X-Meshkit-Nonce", "X-Meshkit-Signature"


def string_to_sign(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body or b"").hexdigest()
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()


def sign(secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    inner, outer = _pads(secret)
    inner = inner.copy()
    inner.update(string_to_sign(method, path, timestamp, nonce, body))
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.hexdigest()


@functools.lru_cache(maxsize=64)
def _pads(secret: str) -> tuple:
    """HMAC-SHA256 (RFC 2104) with the key's two padded blocks hashed once per secret: a
    signature is then two copies and updates (what hmac.new(...).hexdigest() computes, in
    half its time; the server checks one per request)."""
    key = secret.encode()
    if len(key) > 64:                           # SHA-256's block size
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key)))


def signed_headers(key_id: str, secret: str, method: str, path: str, body: bytes, now: float, nonce: str) -> dict:
    ts = str(int(now))
    return {H_KEY: key_id, H_TS: ts, H_NONCE: nonce, H_SIG: sign(secret, method, path, ts, nonce, body)}


def parse_keys(text: str, source: str = "keys") -> dict:
    """{key id: (role, secret, nodes)}: nodes, the frozenset of node names a worker key speaks
    for (its 4th field), empty for any node; raises ConfigError naming the line."""
    keys = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"line {n}"
        if len(parts) not in (3, 4):
            raise ConfigError(source, where, "`ID ROLE SECRET` (a worker key may add NODE[,NODE...])",
                              f"{len(parts)} fields")
        kid, role, secret = parts[:3]
        if not KEY_ID_RE.match(kid):
            raise ConfigError(source, where, "a key id of letters, digits, . _ -", repr(kid))
        if role not in ROLE_RANK:
            raise ConfigError(source, where, "a role of viewer, worker or admin", repr(role))
        if len(secret) < 16:
            raise ConfigError(source, where, "a secret of at least 16 characters", f"{len(secret)} characters")
        keys[kid] = (role, secret, parse_nodes(parts[3], role, source, where) if len(parts) == 4 else frozenset())
    if not keys:
        raise ConfigError(source, "(file)", "at least one key", "none")
    return keys


def parse_nodes(field: str, role: str, source, where: str) -> frozenset:
    """The nodes of a key line's 4th field, NODE[,NODE...] (a worker key's only)."""
    if role != "worker":
        raise ConfigError(source, where, f"`ID ROLE SECRET` for role {role} (only a worker key names nodes)",
                          f"a 4th field {field[:64]!r}")
    nodes = field.split(",")
    bad = next((node for node in nodes if not wire.is_name(node)), None)
    if bad is not None:
        raise ConfigError(source, where, "nodes NODE[,NODE...], each of letters, digits, _ . : @ - (at most 128)",
                          repr(bad[:64]) if bad else f"an empty node in {field[:64]!r}")
    return frozenset(nodes)


def holder_node(holder: str) -> str:
    """The node part of a fleet lease holder `NODE:PID` (roles/locks/fleet.py); a holder
    without ':' is all node."""
    return holder.rpartition(":")[0] or holder


def _fits(key: tuple, node) -> int:
    """2: a key bound to `node`; 1: bound to no node; 0: bound to others."""
    nodes = key[2] if len(key) > 2 else ()
    return 1 if not nodes else 2 if node in nodes else 0


def pick_key(keys: dict, key_id: str = "", at_most: str = "admin", node: str | None = None) -> tuple:
    """(id, role, secret): the named key, else the most capable one up to `at_most`; of keys
    with the same role, one bound to `node` first, then one bound to no node, then the others:
    a machine whose keys file also holds keys bound to other nodes keeps using its own."""
    if key_id:
        if key_id not in keys:
            raise ConfigError(None, "auth.key_id", f"one of {', '.join(sorted(keys))}", repr(key_id))
        return (key_id,) + tuple(keys[key_id][:2])
    usable = [(ROLE_RANK[key[0]], _fits(key, node), kid) for kid, key in keys.items()
              if ROLE_RANK[key[0]] <= ROLE_RANK[at_most]]
    if not usable:
        raise ConfigError(None, "auth.keys_file", f"a key with role {at_most} or below", "none")
    kid = max(usable)[2]
    return (kid,) + tuple(keys[kid][:2])


class NonceCache:
    """The nonces of accepted requests, one set per request timestamp; bounded, never locks out.

    The signature covers the timestamp, so a replay carries the very same timestamp: a nonce
    is looked up only in its own timestamp's bucket, and the same nonce with another
    timestamp is another signed request. A bucket is forgotten once its timestamp is older
    than now - window (verify refuses such a timestamp anyway), or early, oldest first, when
    more than `capacity` nonces are kept (a high sustained request rate). The timestamps of
    forgotten buckets are remembered as a few ranges, and a request whose timestamp falls in
    one is refused as too old rather than risk a replay: at overload the server keeps a
    shorter window of recent timestamps, and requests signed with the current time keep
    working. Ranges matter beyond the skew check only when the server's clock goes back;
    timestamps that never had a bucket stay usable, so a clock that ran ahead and was put
    back locks nobody out, and at overload the buckets it left too far ahead to be usable
    now are forgotten before current ones. Memory: at most `capacity` nonces (a 32-character nonce ~ 120
    bytes with its set slot; 200,000 ~ 25 MB) plus one small bucket per timestamp held and
    at most MAX_RANGES ranges. add() is O(1) amortized: each bucket is created once and
    dropped once, from a heap of timestamps.
    """

    MAX_RANGES = 32

    def __init__(self, window: float, capacity: int = 200_000):
        self.window = window
        self.capacity = max(1, capacity)
        self.count = 0                  # nonces held, over all buckets
        self._buckets: dict = {}        # timestamp -> set of nonces
        self._order: list = []          # heap of the buckets' timestamps
        self._gone: list = []           # sorted, disjoint [lo, hi] timestamps of forgotten buckets
        self._shed_hi = None            # highest timestamp forgotten early (the overload floor - 1)
        self._top = -math.inf           # highest timestamp with a bucket (or had one, until a sweep)

    def add(self, nonce: str, ts: int, now: float) -> str:
        """"" when the request (nonce, its integer timestamp) is new and now remembered; else
        why it is refused."""
        order, buckets = self._order, self._buckets
        while order and order[0] < now - self.window:
            self._forget(heapq.heappop(order), early=False)
        gone = self._gone
        if gone and ts <= gone[-1][1] and self._is_gone(ts):
            if self._shed_hi is not None and ts <= self._shed_hi:
                return ("timestamp older than the replay window the server can keep at this load "
                        f"({max(0, int(now) - self._shed_hi - 1)} s); sign with the current time")
            return ("timestamp older than the replay window the server keeps (its clock went back); "
                    "sign with the current time")
        bucket = buckets.get(ts)
        if bucket is None:
            bucket = buckets[ts] = set()
            heapq.heappush(order, ts)
            if ts > self._top:
                self._top = ts
        elif nonce in bucket:
            return "nonce already used (replay)"
        bucket.add(nonce)
        self.count += 1
        while self.count > self.capacity:
            if self._top > now + self.window:
                self._forget_unreachable(now)
            else:
                self._forget(heapq.heappop(self._order), early=True)
        return ""

    def _forget_unreachable(self, now: float) -> None:
        """After the server's clock went back: forget, first, the buckets of timestamps too far
        ahead for any request to use now (their ranges refuse them if the clock gets there
        again), rather than the current ones. One pass over the buckets, once per such jump."""
        for ts in [t for t in self._buckets if t > now + self.window]:
            self._forget(ts, early=False)
        self._order = list(self._buckets)
        heapq.heapify(self._order)
        self._top = max(self._order, default=-math.inf)

    def _forget(self, ts: int, early: bool) -> None:
        self.count -= len(self._buckets.pop(ts))
        if early and (self._shed_hi is None or ts > self._shed_hi):
            self._shed_hi = ts
        gone = self._gone
        i = bisect.bisect_right(gone, [ts, math.inf])      # gone[i - 1] starts at or before ts
        if i and gone[i - 1][1] + self.window >= ts:     # within a window of the range below: join it
            gone[i - 1][1] = max(gone[i - 1][1], ts)
            i -= 1
        else:
            gone.insert(i, [ts, ts])
        if i + 1 < len(gone) and gone[i][1] + self.window >= gone[i + 1][0]:
            gone[i][1] = max(gone[i][1], gone.pop(i + 1)[1])
        if len(gone) > self.MAX_RANGES:                  # join the two oldest ranges (refuses more, never less)
            gone[0][1] = gone.pop(1)[1]

    def _is_gone(self, ts: int) -> bool:
        gone = self._gone
        i = bisect.bisect_right(gone, [ts, math.inf])
        return bool(i) and gone[i - 1][1] >= ts


def refused(reason: str, message: str) -> Unauthorized:
    """An Unauthorized answer (`message`) carrying a short code of why (`reason`: in the answer,
    {"error": {"code": "unauthorized", "message", "reason"}}, and in the refusal log): a client
    tells a wrong key from a clock that is off without reading the message."""
    return Unauthorized(message, reason=reason)


def verify(headers, method: str, path: str, body: bytes, keys: dict, nonces: NonceCache,
           now: float, max_skew: float) -> tuple:
    """(key id, role) of a correctly signed, fresh, unreplayed request; else Unauthorized
    (its `reason`: missing_headers, unknown_key, bad_timestamp, stale_timestamp, bad_nonce,
    bad_signature, replayed_nonce, outside_replay_window)."""
    kid, ts, nonce, sig = headers.get(H_KEY), headers.get(H_TS), headers.get(H_NONCE), headers.get(H_SIG)
    if not (kid and ts and nonce and sig):
        raise refused("missing_headers", "missing signature headers (X-Meshkit-Key, -Timestamp, -Nonce, -Signature)")
    if kid not in keys:
        raise refused("unknown_key", "unknown key id")
    if not TIMESTAMP_RE.fullmatch(ts):
        raise refused("bad_timestamp", "timestamp must be unix seconds")
    if abs(int(ts) - now) > max_skew:
        raise refused("stale_timestamp", f"timestamp is more than {int(max_skew)} s off the server's clock")
    if not NONCE_RE.match(nonce):
        raise refused("bad_nonce", "nonce must be 16-128 characters of A-Z a-z 0-9 _ -")
    role, secret = keys[kid][:2]
    if not hmac.compare_digest(sign(secret, method, path, ts, nonce, body), sig.lower()):
        raise refused("bad_signature", "bad signature")
    why = nonces.add(nonce, int(ts), now)
    if why:
        raise refused("replayed_nonce" if why.startswith("nonce already used") else "outside_replay_window", why)
    return kid, role


def require_role(role: str, needed: str) -> None:
    if ROLE_RANK[role] < ROLE_RANK[needed]:
        raise Forbidden(f"this needs {needed} credentials; the key used is {role}")


class RefusalLog:
    """Which refused requests (401, 403) get a line in the log, so that a flood of them cannot
    flood it: per key (a tuple whose first item is the client's address, e.g. (client, reason)),
    the first refusal gets a line, those within `every` seconds of that line are only counted,
    and the next line carries their count. Pure: the time is passed in (a monotonic clock).

    note(key, now) says whether this refusal gets a line and with how many left out before it.
    due(now) hands back the counts of windows that ended with refusals left out and no line
    since (the caller logs them; `final` hands back every count, at shutdown) and forgets
    ended windows. At most `max_keys` keys are held: past that (after forgetting ended
    windows), a new client's refusals are counted under (OTHERS, *rest of its key*), one line
    per window for all such clients."""

    OTHERS = "*"

    def __init__(self, every: float = 60.0, max_keys: int = 1024):
        self.every = every
        self.max_keys = max(1, max_keys)
        self._held: dict = {}        # key -> (time of its last line, refusals left out since)
        self._ended: list = []       # (key, left out) of windows forgotten to make room

    def note(self, key: tuple, now: float) -> tuple | None:
        """None: leave this refusal out (it is counted). Else (left out before it, the key it
        was counted under): log it now."""
        held = self._held
        if key not in held and len(held) >= self.max_keys:
            self._ended += self._forget(now, final=False)
            if len(held) >= self.max_keys:
                key = (self.OTHERS,) + tuple(key[1:])
        line, carried, record = refusal_verdict(held.get(key), now, self.every)
        held[key] = record
        return (carried, key) if line else None

    def due(self, now: float, final: bool = False) -> list:
        """[(key, left out)] of the windows that ended with refusals left out; those windows forgotten."""
        out, self._ended = self._ended + self._forget(now, final), []
        return out

    def _forget(self, now: float, final: bool) -> list:
        out = []
        for key, (at, left_out) in list(self._held.items()):
            if final or not 0 <= now - at < self.every:
                del self._held[key]
                if left_out:
                    out.append((key, left_out))
        return out


def refusal_verdict(last: tuple | None, now: float, every: float) -> tuple:
    """One refusal of a key whose record is `last` ((time of its last line, refusals left out
    since), or None): (log a line?, the count that line carries, the key's new record). A clock
    that went back (now before the last line) starts a new window."""
    if last is None or not 0 <= now - last[0] < every:
        return True, last[1] if last else 0, (now, 0)
    return False, 0, (last[0], last[1] + 1)
