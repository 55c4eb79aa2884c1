"""Structured logs: one JSON object per line on stderr (journald reads it) and, optionally,
in daily files DIR/YYYY-MM-DD.jsonl (UTC dates; config key logging.dir, empty = off).

Every line has time, level, role, node, event, and the ids the caller passes (task,
trace_id, ...), so `grep TRACE_ID` across machines shows one task's journey.
"""

import datetime
import json
import os
import sys
import threading

from meshkit.core.clock import REAL

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))    # json.dumps(..., options) builds one per call


def day_file(log_dir: str, when: float) -> str:
    day = datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%d")
    return os.path.join(log_dir, f"{day}.jsonl")


class Logger:
    def __init__(self, role: str, node: str = "", level: str = "info", stream=None, clock=REAL, log_dir: str = ""):
        self.role, self.node = role, node
        self.min = LEVELS[level]
        self.stream = stream or sys.stderr
        self.clock = clock
        self.log_dir = log_dir
        self.file_errors = 0
        self._file = None
        self._file_path = None
        self._lock = threading.Lock()
        self._held = 0               # hold(): lines wait in _pending, written at once
        self._pending = []

    def hold(self) -> "Held":
        """`with logger.hold():` lines logged inside (by any thread) are written together when
        the outermost hold ends: one write instead of one per line (the supervisor's event
        loop holds its log for a round of requests, a few milliseconds)."""
        return Held(self)

    def log(self, level: str, event: str, **fields) -> None:
        self._write(level, event, fields)

    def _write(self, level: str, event: str, fields: dict) -> None:
        if LEVELS[level] < self.min:
            return
        now = self.clock.time()
        rec = {"time": round(now, 3), "level": level, "role": self.role,
               "node": self.node, "event": event}
        for k, v in fields.items():
            if v is not None:
                rec[k] = v
        line = _ENCODER.encode(rec) + "\n"
        with self._lock:
            if self._held:
                self._pending.append((line, now))
            else:
                self._emit(line, ((line, now),))

    def _emit(self, text: str, lines) -> None:
        """Write `text` (one or more lines) to the stream, and each of `lines` ((line, time))
        to its day's file. Called holding _lock."""
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass
        if self.log_dir:
            for line, now in lines:
                self._to_file(line, now)

    def _to_file(self, line: str, now: float) -> None:
        """Append to today's file (opened once a day; a new day opens the next)."""
        path = day_file(self.log_dir, now)
        try:
            if path != self._file_path:
                self._close_file()
                os.makedirs(self.log_dir, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                self._file, self._file_path = os.fdopen(fd, "a", encoding="utf-8"), path
            self._file.write(line)
            self._file.flush()
        except (OSError, ValueError):
            self.file_errors += 1      # a full disk must not stop the role; stderr still has it
            self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
        self._file, self._file_path = None, None

    def close(self) -> None:
        with self._lock:
            self._close_file()

    # (the fields go on as one dict: `self.log(..., **f)` would build it again)
    def debug(self, event, **f): self._write("debug", event, f)
    def info(self, event, **f): self._write("info", event, f)
    def warning(self, event, **f): self._write("warning", event, f)
    def error(self, event, **f): self._write("error", event, f)


class Held:
    __slots__ = ("logger",)

    def __init__(self, logger: Logger):
        self.logger = logger

    def __enter__(self) -> None:
        with self.logger._lock:
            self.logger._held += 1

    def __exit__(self, *exc) -> bool:
        log = self.logger
        with log._lock:
            log._held -= 1
            if not log._held and log._pending:
                lines, log._pending = log._pending, []
                log._emit("".join(line for line, _ in lines), lines)
        return False
