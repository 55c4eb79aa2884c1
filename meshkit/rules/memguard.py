"""Memory guard: what a long-running role does about its own resident memory.

decide(rss, soft, hard) -> "ok" | "shed" | "exit" (bytes; a limit of 0 is off).
- shed: above the soft limit: collect garbage, log, hold back what can wait
- exit: above the hard limit: shut down cleanly with EXIT_CODE so systemd (Restart=always)
  starts a fresh process from the durable state
"""

OK, SHED, EXIT = "ok", "shed", "exit"
EXIT_CODE = 70          # EX_SOFTWARE; documented: "memory guard: hard limit exceeded"
MB = 1024 * 1024


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
