"""Fleet-wide named leases (a GPU, a shared checkout): TTL with renewal, a fencing token
that increases at every grant, release, expiry when the holder goes silent."""

from meshkit.core import wire
from meshkit.core.errors import BadRequest, LockHeld, NotFound, StaleFence
from meshkit.rules import leases as rules

MAX_TTL = 86400.0


class Leases:
    def __init__(self, store, clock, logger):
        self.store, self.clock, self.log = store, clock, logger

    @staticmethod
    def _name(name: str) -> str:
        if not wire.is_name(name):
            raise BadRequest("a lease name is letters, digits, _ . : @ - (at most 128)")
        return name

    @staticmethod
    def _ttl(body: dict) -> float:
        ttl = float(body.get("ttl", 60))
        if not 1 <= ttl <= MAX_TTL:
            raise BadRequest(f"ttl must be from 1 to {MAX_TTL:.0f} seconds", field="ttl")
        return ttl

    def _event(self, tx, name, event, holder, token, reason, now):
        tx.execute("INSERT INTO lease_history(name, event, holder, token, at, reason) VALUES(?,?,?,?,?,?)",
                   (name, event, holder, token, now, reason))
        self.log.info(f"lease_{event}", lease=name, holder=holder, token=token, reason=reason)

    def acquire(self, name: str, body: dict) -> dict:
        wire.validate(body, wire.LEASE_ACQUIRE, "lease acquire")
        name, ttl, holder = self._name(name), self._ttl(body), body["holder"]
        now = self.clock.time()
        with self.store.tx() as tx:
            row = tx.one("SELECT * FROM leases WHERE name=?", (name,))
            verdict, why = rules.on_acquire(row, holder, now)
            if verdict == "held":
                view = rules.describe(row, now)
                raise LockHeld(f"lease {name} is {view['explain']}", lease=view)
            token = row["token"] if verdict == "extend" else tx.next_fence()
            acquired = row["acquired_at"] if verdict == "extend" else now
            tx.execute("INSERT INTO leases(name, holder, token, expires, acquired_at, purpose) VALUES(?,?,?,?,?,?)"
                       " ON CONFLICT(name) DO UPDATE SET holder=excluded.holder, token=excluded.token,"
                       " expires=excluded.expires, acquired_at=excluded.acquired_at, purpose=excluded.purpose",
                       (name, holder, token, now + ttl, acquired, body.get("purpose", "")))
            if verdict == "grant":
                self._event(tx, name, "granted", holder, token, why, now)
        return {"name": name, "holder": holder, "token": token, "expires": now + ttl, "ttl": ttl}

    def renew(self, name: str, body: dict) -> dict:
        wire.validate(body, wire.LEASE_RENEW, "lease renew")
        name, ttl = self._name(name), self._ttl(body)
        now = self.clock.time()
        with self.store.tx() as tx:
            row = tx.one("SELECT * FROM leases WHERE name=?", (name,))
            verdict, why = rules.on_renew(row, body["holder"], body["token"], now)
            if verdict == "lost":
                raise StaleFence(f"lease {name}: token {body['token']} is no longer valid: {why}",
                                 current_token=row["token"] if row else None)
            tx.execute("UPDATE leases SET expires=? WHERE name=?", (now + ttl, name))
        return {"name": name, "token": body["token"], "expires": now + ttl}

    def release(self, name: str, body: dict) -> dict:
        wire.validate(body, wire.LEASE_RELEASE, "lease release")
        name = self._name(name)
        now = self.clock.time()
        with self.store.tx() as tx:
            row = tx.one("SELECT * FROM leases WHERE name=?", (name,))
            if row is None or row["holder"] != body["holder"] or row["token"] != body["token"]:
                return {"name": name, "released": False, "reason": "not held by this holder and token"}
            tx.execute("UPDATE leases SET holder=NULL, expires=0 WHERE name=?", (name,))
            self._event(tx, name, "released", body["holder"], body["token"], "released by its holder", now)
        return {"name": name, "released": True}

    def list(self) -> list:
        now = self.clock.time()
        return [rules.describe(r, now) for r in self.store.read("SELECT * FROM leases ORDER BY name")]

    def get(self, name: str) -> dict:
        rows = self.store.read("SELECT * FROM leases WHERE name=?", (self._name(name),))
        if not rows:
            raise NotFound(f"no lease {name!r} was ever granted")
        view = rules.describe(rows[0], self.clock.time())
        view["history"] = [dict(r) for r in self.store.read(
            "SELECT event, holder, token, at, reason FROM lease_history WHERE name=? ORDER BY seq DESC LIMIT 20", (name,))]
        return view
