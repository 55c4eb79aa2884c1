"""Signed HTTP client for the supervisor API (one keep-alive connection per thread)."""

import http.client
import json
import secrets
import socket
import threading

from meshkit.core.clock import REAL
from meshkit.core.errors import ApiError, ClientError
from meshkit.rules.auth import signed_headers
from meshkit.rules.config import URL_EXPECTED, split_http_url


class BadUrl(ClientError):
    """A supervisor URL that is not one (a bad argument: exit 2, not 3)."""
    code = "bad_url"


def split_url(url: str) -> tuple:
    """(host, port) of "http://HOST:PORT". The port is required, as in every other place a
    supervisor URL is given (config keys, worker --supervisor, --standby-of): "http://host" is far
    more often a forgotten :8765 than a proxy on port 80, which "http://host:80" reaches."""
    hp = split_http_url(url)
    if hp is None or hp[1] is None:
        found = " (no port)" if hp is not None else ""
        raise BadUrl(f"bad supervisor URL {url!r}{found}: expected {URL_EXPECTED}")
    return hp


class SignedClient:
    def __init__(self, url: str, key_id: str, secret: str, clock=REAL, timeout: float = 10.0, source: str | None = None):
        self.url = url.rstrip("/")
        self.source = source       # where the URL came from (said when it can't be reached), e.g. "--supervisor"
        self.host, self.port = split_url(self.url)
        self.key_id, self.secret = key_id, secret
        self.clock = clock
        self.timeout = timeout
        self.headers = {}          # sent with every request (e.g. X-Meshkit-Epoch: the highest seen)
        self._local = threading.local()

    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body=None, timeout: float | None = None) -> tuple:
        """(status, parsed JSON or None). Network failures raise ClientError."""
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = signed_headers(self.key_id, self.secret, method, path, data,
                                 self.clock.time(), secrets.token_hex(16))
        headers["Content-Type"] = "application/json"
        headers.update(self.headers)
        timeout = timeout or self.timeout
        for attempt in (1, 2):
            conn = self._conn(timeout)
            try:
                conn.request(method, path, body=data if method != "GET" else None, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self.close()
                # A kept-alive connection the server closed meanwhile: retry once on a new one.
                # Safe: the nonce is unused if the server never read the request, and a
                # repeated signed request is refused as a replay, never run twice.
                if attempt == 2:
                    raise ClientError(self._unreachable(f"connection lost ({e.__class__.__name__})")) from None
            except (OSError, socket.timeout, http.client.HTTPException) as e:
                self.close()
                raise ClientError(self._unreachable(getattr(e, 'strerror', None) or str(e),
                                                    isinstance(e, ConnectionRefusedError))) from None
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return resp.status, parsed

    def _unreachable(self, reason: str, refused: bool = False) -> str:
        """The one line for a network failure: the URL, why, and where the URL came from."""
        if self.source is None:
            return f"{self.url}: {reason}"
        hint = "; is the supervisor running?" if refused else ""
        return f"{self.url}: {reason} (the URL is from {self.source}{hint})"

    def call(self, method: str, path: str, body=None, timeout: float | None = None):
        """The JSON answer of a 2xx; otherwise ApiError with the server's code and message."""
        status, parsed = self.request(method, path, body, timeout)
        if 200 <= status < 300:
            return parsed
        err = (parsed or {}).get("error") if isinstance(parsed, dict) else None
        if isinstance(err, dict):
            extra = {k: v for k, v in err.items() if k not in ("code", "message")}
            raise ApiError(status, err.get("code", "error"), f"{err.get('message', 'error')} (HTTP {status})", **extra)
        raise ApiError(status, "http_error", f"HTTP {status} from {self.url}{path}")
