"""Request signing: HMAC-SHA256 over method, path+query, timestamp, nonce and body hash.

    string_to_sign = METHOD "\n" PATH_WITH_QUERY "\n" TIMESTAMP "\n" NONCE "\n" SHA256_HEX(BODY)
    signature      = HEX(HMAC_SHA256(key = secret as ASCII text, string_to_sign))

Headers: X-Meshkit-Key (key id), X-Meshkit-Timestamp (unix seconds),
X-Meshkit-Nonce (16-128 chars of [A-Za-z0-9_-]), X-Meshkit-Signature.
Keys file: one key a line, `ID ROLE SECRET`; roles viewer < worker < admin.
"""

import functools
import hashlib
import hmac
import re
from collections import OrderedDict

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
    """Nonces seen within the skew window; bounded, oldest forgotten first.

    A forgotten nonce is still safe when it is older than the skew window, since
    its timestamp is refused anyway. When the cache is full of fresh nonces it
    refuses new requests rather than forget a fresh one (no replay window opens).
    """

    def __init__(self, window: float, capacity: int = 200_000):
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict = OrderedDict()

    def add(self, nonce: str, now: float) -> bool:
        """False if the nonce was seen (a replay) or the cache is full of fresh ones."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at >= now - 2 * self.window:
                break
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        if len(self._seen) >= self.capacity:
            return False
        self._seen[nonce] = now
        return True


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
    if not nonces.add(nonce, now):
        raise Unauthorized("nonce already used (replay)")
    return kid, role


def require_role(role: str, needed: str) -> None:
    if ROLE_RANK[role] < ROLE_RANK[needed]:
        raise Forbidden(f"this needs {needed} credentials; the key used is {role}")
