"""The supervisor: store + HTTP API + a maintenance cycle (step) that reaps lost leases."""

import errno
import os
import threading

from meshkit import __version__
from meshkit.adapters import httploop, keyfile, syncstatus
from meshkit.adapters.atomic import make_dir
from meshkit.adapters.locks import FileLock
from meshkit.adapters.log import Logger
from meshkit.adapters.store import Store
from meshkit.core.clock import REAL
from meshkit.core.errors import ConfigError, LockHeld, StoreError
from meshkit.roles.supervisor import statusfiles
from meshkit.roles.supervisor.api import Api, url_of
from meshkit.roles.supervisor.brain import Brain
from meshkit.roles.supervisor.leases import Leases
from meshkit.roles.supervisor.ha import Ha
from meshkit.roles.supervisor.ops import Ops
from meshkit.roles.supervisor.tasks import Tasks

BUSY_ADDRESS = (errno.EADDRINUSE,)     # a bind error that exits 75 (EX_TEMPFAIL: the other may go), not 2


def parse_listen(value: str, source=None) -> tuple:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(source, "supervisor.listen", '"HOST:PORT" with a port from 0 to 65535', repr(value))
    return host.strip("[]"), int(port)


class Supervisor:
    def __init__(self, cfg, clock=REAL, logger=None, listen: str | None = None, standby_of: str | None = None):
        self.cfg, self.clock = cfg, clock
        self.log = logger or Logger("supervisor", level=cfg.get("logging.level"), clock=clock,
                                    log_dir=cfg.path("logging.dir"))
        self.listen = parse_listen(listen or cfg.get("supervisor.listen"), cfg.source)
        self.listen_from = ("--listen", listen) if listen else ("supervisor.listen", cfg.get("supervisor.listen"))
        self.data_dir = cfg.path("supervisor.data_dir")
        # 0700 when made here: the database holds every task's payload and result.
        make_dir(self.data_dir, cfg.source, "supervisor.data_dir", "a directory the supervisor can create", 0o700)
        # One supervisor per data dir: a second one on the same state refuses to start.
        self.dir_lock = FileLock(os.path.join(self.data_dir, "supervisor.lock"), ttl=10 * 365 * 86400,
                                 purpose="supervisor", clock=clock)
        self.dir_lock.acquire(0)
        keys_path = cfg.path("auth.keys_file")
        self.created_keys = cfg.source is None and keyfile.ensure(keys_path)
        self.keys_path = keys_path
        self.keys = keyfile.load(keys_path)
        self.viewer_tokens, self.viewer_token_file = viewer_tokens(cfg)
        try:
            self.store = open_store(os.path.join(self.data_dir, "meshkit.db"), cfg.get("supervisor.durability"))
        except BaseException:
            self.dir_lock.release()
            raise
        self._load_identity()
        self.tasks = Tasks(self.store, cfg, clock, self.log)
        self.brain = Brain(self.tasks, self.data_dir)
        self.leases = Leases(self.store, clock, self.log)
        self.standby_of = standby_of
        self.ha = Ha(self, standby_of)
        self.brain.reload_policy()
        self.api = Api(self)
        self.brain.retention.pruned = self.api.pruned     # the tasks retention deleted, on /metrics
        self.ops = Ops(self)          # systemd notify, memory guard, status files (ops.py)
        self.brain.memory_view = self.ops.memory_view     # memory shed -> degraded mode; explain's figures
        self.exit_code = 0            # set by the memory guard (70) to end run()
        self.server = None
        self.url = None
        self.started = clock.time()
        self.last_cycle_error = None

    def _load_identity(self) -> None:
        """Epoch and role live in the store; answers read this in-memory copy."""
        self.epoch = int(self.store.meta("epoch", "1"))
        self.role = self.store.meta("role", "primary")

    def start(self) -> str:
        self.ha.start(self.standby_of)
        host, port = self.listen
        try:
            self.server = httploop.start(host, port, self.api.app(),
                                           self.cfg.get("supervisor.max_connections"),
                                           self.cfg.get("supervisor.request_timeout"))
        except OSError as e:      # in use, not this machine's, not an IPv4 address or name
            key, value = self.listen_from
            if e.errno in BUSY_ADDRESS:     # another process has it: may clear by itself
                where = f"{key} in {self.cfg.source}" if key == "supervisor.listen" and self.cfg.source else key
                raise LockHeld(f"cannot listen on {value} ({where}): {e.strerror}; another process holds that "
                               "address (a second supervisor?)") from None
            raise ConfigError(self.cfg.source if key == "supervisor.listen" else None, key,
                              "an address this machine can bind", f'"{value}" ({e.strerror or e})') from None
        self.url = url_of(host, self.server.server_address[1])
        statusfiles.write_url(self.data_dir, self.url)
        self.log.info("supervisor_started", url=self.url, data_dir=self.data_dir, epoch=self.epoch, supervisor_role=self.role,
                      viewer_token_file=self.viewer_token_file)
        self._warn_token_is_a_secret()
        return self.url

    def _warn_token_is_a_secret(self) -> None:
        """An install from before viewer.token was a token of its own holds a key's signing
        secret there (group-readable, sent in clear by every scrape): whoever reads it can sign
        as that key. It is still accepted as a bearer token (an upgrade must not stop the
        fleet's monitoring); the warning says how to replace it."""
        for token in self.viewer_tokens:
            ids = keyfile.secret_ids(self.keys, token)
            if ids:
                config = f" --config {self.cfg.source}" if self.cfg.source else ""
                self.log.warning("viewer_token_is_a_signing_secret", file=self.viewer_token_file, keys=ids,
                                 fix=f"python3 -m meshkit keys viewer-token{config}; then give key(s) "
                                     f"{', '.join(ids)} a new secret in {self.keys_path} (or remove them), "
                                     "restart the supervisor and give Prometheus the new token")

    def step(self) -> float:
        """One maintenance cycle; returns the delay until the next."""
        if self.role == "primary" and not self.ha.handing_over:
            self.brain.cycle()        # a standby's state is the primary's: it repairs nothing
        elif self.role == "standby":
            self.brain.standby_cycle()
        self.ha.cycle()
        self.last_cycle_error = f"{self.brain.db_errors} cycles in a row failed" if self.brain.db_errors else None
        self.ops.cycle()
        self.api.flush_refusals()
        return self.ops.next_delay(float(self.cfg.get("supervisor.cycle")))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self.exit_code:
            delay = self.step()
            self.clock.wait(stop, delay)

    def shutdown(self, grace: float = 10.0) -> None:
        """Refuse new work (503), let requests in flight finish, checkpoint the WAL."""
        self.ops.stopping()
        if self.server is not None:
            self.server.draining = True
            self.tasks.draining = True
            self.tasks.wake_all()
            deadline = self.clock.monotonic() + grace
            while self.server.in_flight > 0 and self.clock.monotonic() < deadline:
                self.clock.sleep(0.05)
            self.server.shutdown()
            self.server.server_close()
        self.ha.stop()
        self.store.close()
        if self.url is not None:
            statusfiles.remove_url(self.data_dir, self.url)     # clients then don't try a stopped supervisor
        self.dir_lock.release()
        self.api.flush_refusals(final=True)
        self.log.info("supervisor_stopped")

    def status(self) -> dict:
        now = self.clock.time()
        counts = self.store.counts()
        running = {}
        for r in self.store.read("SELECT node, COUNT(*) AS c FROM tasks WHERE state IN ('leased','running')"
                                 " GROUP BY node"):
            running[r["node"]] = r["c"]
        nodes = []
        for n in self.store.nodes():
            nodes.append({"name": n["name"], "state": n["state"], "last_seen_age": round(now - n["last_seen"], 1),
                          "capabilities": n.get("capabilities", []), "kinds": n.get("kinds", []),
                          "slots": n.get("slots", 1), "running": running.get(n["name"], 0),
                          "load": n.get("load"), "mem_available": n.get("mem_available"),
                          "disk_free": n.get("disk_free"), "version": n.get("version"), "hold": n.get("hold")})
        oldest = self.store.read("SELECT MIN(updated_at) AS t FROM tasks WHERE state='queued'")[0]["t"]
        return {"role": self.role, "epoch": self.epoch, "version": __version__, "url": self.url,
                "mode": self.brain.mode_state.mode, "mode_reason": self.brain.mode_state.reason,
                "quarantined": [k for k in self.brain.kinds() if k["quarantined"]],
                "replication": self.ha.view(), "sync": sync_jobs(self.cfg.path("sync.status_dir")), "priorities_error": self.brain.policy_error, "leases": self.leases.list(), "uptime": round(now - self.started, 1), "nodes": nodes, "tasks": counts,
                "oldest_queued_age": round(now - oldest, 1) if oldest else None,
                "last_cycle_error": self.last_cycle_error}


def viewer_tokens(cfg) -> tuple:
    """(bearer tokens that grant the viewer role: the token in auth.viewer_token_file, never a
    key's signing secret; that file's path, "" if there is none: the start log says which).
    The key set in the config file: its file must exist; left at its default ("viewer.token",
    which `init` writes): used if it exists. An empty key: no file. A file that exists is
    checked either way (keyfile.load_token): a bad one stops the start, never silently ignored."""
    path = cfg.path("auth.viewer_token_file")
    token = keyfile.load_token(path, cfg.source, cfg.is_set("auth.viewer_token_file")) if path else None
    if token is None:
        return [], ""
    return [token], path


def open_store(path: str, durability: str) -> Store:
    """The store, or LockHeld (exit 75, EX_TEMPFAIL) if another process holds a write lock on the
    database for longer than the store waits: nothing to fix here, a later start may succeed."""
    try:
        return Store(path, durability)
    except StoreError as e:
        cause = e.__context__          # the sqlite3 error the store turned into StoreError
        if not str(getattr(cause, "sqlite_errorname", "")).startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            raise
        raise LockHeld(f"{path}: another process holds a write lock on this database; the supervisor did not "
                       "start (systemd restarts it)") from None


def sync_jobs(status_dir: str) -> list:
    """This machine's sync jobs (written by `meshkit sync`), as status shows them."""
    keys = ("job", "last_result", "last_success", "last_failure", "consecutive_failures", "last_error", "last_run")
    return [{k: rec.get(k) for k in keys} for rec in syncstatus.read_all(status_dir)]
