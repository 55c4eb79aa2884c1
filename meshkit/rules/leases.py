"""Fleet-wide named leases: who may hold one, decided from the current row and the clock."""


def on_acquire(row, holder: str, now: float) -> tuple:
    """("grant" | "extend" | "held", why). row: the lease row or None."""
    if row is None or row["holder"] is None:
        return "grant", "free"
    if row["expires"] <= now:
        return "grant", f"expired: {row['holder']} did not renew (token {row['token']})"
    if row["holder"] == holder:
        return "extend", "already held by this holder"
    return "held", f"held by {row['holder']}"


def on_renew(row, holder: str, token: int, now: float) -> tuple:
    """("renew" | "lost", why)."""
    if row is None or row["holder"] != holder or row["token"] != token:
        return "lost", "the lease was granted to someone else (or released)"
    if row["expires"] <= now:
        return "lost", "the lease expired before it was renewed"
    return "renew", "renewed"


def describe(row, now: float) -> dict:
    """The explain-style view of a lease."""
    held = row["holder"] is not None and row["expires"] > now
    out = {"name": row["name"], "state": "held" if held else "free", "token": row["token"]}
    if held:
        out.update(holder=row["holder"], purpose=row["purpose"], since=row["acquired_at"],
                   expires_in=round(row["expires"] - now, 1),
                   explain=f"held by {row['holder']} (token {row['token']}) for {now - row['acquired_at']:.0f} s, "
                           f"expires in {row['expires'] - now:.0f} s unless renewed"
                           + (f"; purpose: {row['purpose']}" if row["purpose"] else ""))
    elif row["holder"] is not None:
        out["explain"] = f"free: {row['holder']} let it expire (token {row['token']})"
    else:
        out["explain"] = "free"
    return out
