"""Memory guard: what a long-running role does about its own resident memory.

decide(rss, soft, hard) -> "ok" | "shed" | "exit" (bytes; a limit of 0 is off).
- shed: above the soft limit: collect garbage, log, hold back what can wait
- exit: above the hard limit: shut down cleanly with EXIT_CODE so systemd (Restart=always)
  starts a fresh process from the durable state
hold(decision, rss, soft): what a worker whose guard is not "ok" (it claims no new work) says
in its heartbeat (wire field "hold"), or None.
"""

OK, SHED, EXIT = "ok", "shed", "exit"
EXIT_CODE = 70          # EX_SOFTWARE; documented: "memory guard: hard limit exceeded"
MB = 1024 * 1024
HOLD_REASON = "memory_guard"     # the heartbeat's hold.reason while the worker's memory guard holds back claims


def decide(rss: int | None, soft: int, hard: int) -> str:
    if rss is None:
        return OK
    if hard and rss >= hard:
        return EXIT
    if soft and rss >= soft:
        return SHED
    return OK


def limits(soft_mb: int, hard_mb: int) -> tuple:
    """(soft, hard) in bytes from the config's megabytes."""
    return soft_mb * MB, hard_mb * MB


def hold(decision: str, rss: int | None, soft: int) -> dict | None:
    """The heartbeat's "hold" while a worker's guard holds back claims (any decision but ok):
    {"reason": HOLD_REASON, "rss_bytes", "soft_bytes"} (a figure it lacks is left out); else None."""
    if decision == OK:
        return None
    out = {"reason": HOLD_REASON, "rss_bytes": rss, "soft_bytes": soft or None}
    return {k: v for k, v in out.items() if v is not None}
