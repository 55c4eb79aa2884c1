"""Request signing: HMAC-SHA256 over method, path+query, timestamp, nonce and body hash.

    string_to_sign = METHOD "\n" PATH_WITH_QUERY "\n" TIMESTAMP "\n" NONCE "\n" SHA256_HEX(BODY)
    signature      = HEX(HMAC_SHA256(key = secret as ASCII text, string_to_sign))

Headers: X-Meshkit-Key (key id), X-Meshkit-Timestamp (unix seconds),
X-Meshkit-Nonce (16-128 chars of [A-Za-z0-9_-]), X-Meshkit-Signature.
Keys file: one key a line, `ID ROLE SECRET`; roles viewer < worker < admin.
"""

import bisect
import functools
import hashlib
import heapq
import hmac
import math
import re

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
    """{key id: (role, secret)}; raises ConfigError naming the line."""
    keys = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"line {n}"
        if len(parts) != 3:
            raise ConfigError(source, where, "`ID ROLE SECRET`", f"{len(parts)} fields")
        kid, role, secret = parts
        if not KEY_ID_RE.match(kid):
            raise ConfigError(source, where, "a key id of letters, digits, . _ -", repr(kid))
        if role not in ROLE_RANK:
            raise ConfigError(source, where, "a role of viewer, worker or admin", repr(role))
        if len(secret) < 16:
            raise ConfigError(source, where, "a secret of at least 16 characters", f"{len(secret)} characters")
        keys[kid] = (role, secret)
    if not keys:
        raise ConfigError(source, "(file)", "at least one key", "none")
    return keys


def pick_key(keys: dict, key_id: str = "", at_most: str = "admin") -> tuple:
    """(id, role, secret): the named key, else the most capable one up to `at_most`."""
    if key_id:
        if key_id not in keys:
            raise ConfigError(None, "auth.key_id", f"one of {', '.join(sorted(keys))}", repr(key_id))
        return (key_id,) + keys[key_id]
    usable = [(ROLE_RANK[r], kid) for kid, (r, _) in keys.items() if ROLE_RANK[r] <= ROLE_RANK[at_most]]
    if not usable:
        raise ConfigError(None, "auth.keys_file", f"a key with role {at_most} or below", "none")
    _, kid = max(usable)
    return (kid,) + keys[kid]


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


def verify(headers, method: str, path: str, body: bytes, keys: dict, nonces: NonceCache,
           now: float, max_skew: float) -> tuple:
    """(key id, role) of a correctly signed, fresh, unreplayed request; else Unauthorized."""
    kid, ts, nonce, sig = headers.get(H_KEY), headers.get(H_TS), headers.get(H_NONCE), headers.get(H_SIG)
    if not (kid and ts and nonce and sig):
        raise Unauthorized("missing signature headers (X-Meshkit-Key, -Timestamp, -Nonce, -Signature)")
    if kid not in keys:
        raise Unauthorized("unknown key id")
    if not TIMESTAMP_RE.fullmatch(ts):
        raise Unauthorized("timestamp must be unix seconds")
    if abs(int(ts) - now) > max_skew:
        raise Unauthorized(f"timestamp is more than {int(max_skew)} s off the server's clock")
    if not NONCE_RE.match(nonce):
        raise Unauthorized("nonce must be 16-128 characters of A-Z a-z 0-9 _ -")
    role, secret = keys[kid]
    if not hmac.compare_digest(sign(secret, method, path, ts, nonce, body), sig.lower()):
        raise Unauthorized("bad signature")
    refused = nonces.add(nonce, int(ts), now)
    if refused:
        raise Unauthorized(refused)
    return kid, role


def require_role(role: str, needed: str) -> None:
    if ROLE_RANK[role] < ROLE_RANK[needed]:
        raise Forbidden(f"this needs {needed} credentials; the key used is {role}")
