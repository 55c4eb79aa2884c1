"""Real-process test harness: a temp meshkit home, a supervisor started with
`python -m meshkit supervisor`, signed clients, and `python -m meshkit` CLI runs."""

import os
import select
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from meshkit.adapters import keyfile  # noqa: E402
from meshkit.adapters.client import SignedClient  # noqa: E402
from meshkit.rules.auth import pick_key  # noqa: E402
from meshkit.rules.config import render_default_toml  # noqa: E402


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.pop("MESHKIT_CONFIG", None)
    e.pop("MESHKIT_SUPERVISOR", None)
    e.update(extra)
    return e


def meshkit(*args, home=None, timeout=60, input=None, **extra_env) -> subprocess.CompletedProcess:
    """Run `python -m meshkit ARGS` and capture its output."""
    e = env(**extra_env)
    if home:
        e["MESHKIT_HOME"] = home
    return subprocess.run([sys.executable, "-m", "meshkit", *args], cwd=ROOT, env=e, capture_output=True,
                          text=True, timeout=timeout, input=input)


def read_line(proc, timeout: float) -> str:
    """The next stdout line of a process, or '' at the deadline."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        ch = os.read(fd, 1)
        if not ch:
            break
        if ch == b"\n":
            return buf.decode()
        buf += ch
    return buf.decode()


class Fleet:
    """A temp dir with meshkit.toml + keys; start/stop supervisors in it."""

    def __init__(self, **overrides):
        self.tmp = tempfile.TemporaryDirectory(prefix="meshkit-test-")
        self.dir = self.tmp.name
        self.config = os.path.join(self.dir, "meshkit.toml")
        self.write_config(**overrides)
        keyfile.create(os.path.join(self.dir, "keys"))
        self.keys = keyfile.load(os.path.join(self.dir, "keys"))
        self.procs = []
        self.url = None

    def make_viewer_token(self) -> str:
        """Write viewer.token as `init` does (a random token, mode 0640), before the supervisor
        starts; returns it: the bearer token of /metrics and /v1/overview."""
        self.viewer_token = keyfile.write_token(os.path.join(self.dir, "viewer.token"))
        return self.viewer_token

    def write_config(self, **overrides):
        """Overrides use __ for dots: supervisor__stale_after=5."""
        self.overrides = overrides
        with open(self.config, "w") as f:
            f.write(render_default_toml({k.replace("__", "."): v for k, v in overrides.items()}))

    def other_config(self, name: str, **overrides) -> str:
        """A second config in the same dir (same keys file) with its own data dir."""
        path = os.path.join(self.dir, f"{name}.toml")
        values = {k.replace("__", "."): v for k, v in dict(self.overrides, **overrides).items()}
        values.setdefault("supervisor.data_dir", f"{name}-data")
        with open(path, "w") as f:
            f.write(render_default_toml(values))
        return path

    def start_supervisor(self, *extra, listen="127.0.0.1:0", timeout=15, config=None):
        log = open(os.path.join(self.dir, f"supervisor-{len(self.procs)}.log"), "wb")
        proc = subprocess.Popen([sys.executable, "-m", "meshkit", "supervisor", "--config", config or self.config,
                                 "--listen", listen, *extra], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                                stderr=log)
        self.procs.append(proc)
        url = read_line(proc, timeout)
        if not url.startswith("http://"):
            raise RuntimeError(f"supervisor did not start: {url!r}; log {log.name}")
        self.url = url
        self.supervisor = proc
        return url

    def client(self, role="admin", url=None) -> SignedClient:
        kid, _, secret = pick_key(self.keys, "", role)
        return SignedClient(url or self.url, kid, secret, timeout=30)

    def cli(self, *args, timeout=60, **kw):
        return meshkit(*args, "--config", self.config, "--supervisor", self.url, timeout=timeout, **kw)

    def stop(self, proc=None, sig=signal.SIGTERM, timeout=15) -> int:
        proc = proc or self.supervisor
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
            if p.stdout:
                p.stdout.close()
        self.tmp.cleanup()


def register(client, node="w1", kinds=("echo",), slots=1, caps=()):
    return client.call("POST", "/v1/heartbeat", {"node": node, "kinds": list(kinds), "slots": slots,
                                                 "capabilities": list(caps)})
