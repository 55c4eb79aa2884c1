"""Structured logs: one JSON object per line on stderr (journald reads it)."""

import json
import sys
import threading

from meshkit.core.clock import REAL

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Logger:
    def __init__(self, role: str, node: str = "", level: str = "info", stream=None, clock=REAL):
        self.role, self.node = role, node
        self.min = LEVELS[level]
        self.stream = stream or sys.stderr
        self.clock = clock
        self._lock = threading.Lock()

    def log(self, level: str, event: str, **fields) -> None:
        if LEVELS[level] < self.min:
            return
        rec = {"time": round(self.clock.time(), 3), "level": level, "role": self.role,
               "node": self.node, "event": event}
        rec.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(rec, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def debug(self, event, **f): self.log("debug", event, **f)
    def info(self, event, **f): self.log("info", event, **f)
    def warning(self, event, **f): self.log("warning", event, **f)
    def error(self, event, **f): self.log("error", event, **f)
