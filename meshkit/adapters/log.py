"""Structured logs: one JSON object per line on stderr (journald reads it) and, optionally,
in daily files DIR/YYYY-MM-DD.jsonl (UTC dates; config key logging.dir, empty = off).

Every line has time, level, role, node, event, and the ids the caller passes (task,
trace_id, ...), so `grep TRACE_ID` across machines shows one task's journey.

Held: a round of requests holds its lines and writes them at once, or drops its own if the
round's commit failed. Throttle: lines that could flood the log, at most one per key and window.
"""

import datetime
import json
import os
import sys
import threading

from meshkit.core.clock import REAL

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))    # json.dumps(..., options) builds one per call
_thread_id = threading.get_ident


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
        self._file_failing = False   # the day file could not be written: said once, until it works again
        self._file = None
        self._file_path = None
        self._lock = threading.Lock()
        self._held = 0               # hold(): lines wait in _pending, written at once
        self._pending = []           # (line, time, thread that logged it, level number)

    def hold(self) -> "Held":
        """`with logger.hold() as held:` lines logged inside (by any thread) are written together
        when the outermost hold ends: one write instead of one per line (the supervisor's event
        loop holds its log for a round of requests, a few milliseconds). held.discard() drops
        the holder's own lines instead (the round's commit failed)."""
        return Held(self)

    def log(self, level: str, event: str, **fields) -> None:
        self._write(level, event, fields)

    def _write(self, level: str, event: str, fields: dict) -> None:
        number = LEVELS[level]
        if number < self.min:
            return
        now = self.clock.time()
        line = self._line(level, event, fields, now)
        with self._lock:
            if self._held:
                self._pending.append((line, now, _thread_id(), number))
            else:
                self._emit(line, ((line, now),))

    def _line(self, level: str, event: str, fields: dict, now: float) -> str:
        rec = {"time": round(now, 3), "level": level, "role": self.role,
               "node": self.node, "event": event}
        for k, v in fields.items():
            if v is not None:
                rec[k] = v
        return _ENCODER.encode(rec) + "\n"

    def _emit(self, text: str, lines) -> None:
        """Write `text` (one or more lines) to the stream, and each of `lines` (a tuple that
        starts with (line, time)) to its day's file. Called holding _lock."""
        self._to_stream(text)
        if self.log_dir:
            for held in lines:
                self._to_file(held[0], held[1])

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
        except (OSError, ValueError) as e:
            self.file_errors += 1      # a full disk must not stop the role; stderr still has it
            self._close_file()
            if not self._file_failing:     # said once per outage, on stderr (the file is what fails)
                self._file_failing = True
                self._to_stream(self._line("error", "log_file_unwritable", {
                    "path": path, "error": getattr(e, "strerror", None) or str(e),
                    "hint": "logging.dir must be a directory this role may write (systemd: ReadWritePaths)"}, now))
            return
        if self._file_failing:
            self._file_failing = False
            self._to_stream(self._line("info", "log_file_ok", {"path": path, "failed_lines": self.file_errors}, now))

    def _to_stream(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

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
    __slots__ = ("logger", "start")

    def __init__(self, logger: Logger):
        self.logger = logger
        self.start = 0

    def __enter__(self) -> "Held":
        with self.logger._lock:
            self.logger._held += 1
            self.start = len(self.logger._pending)      # discard() looks from here on (one holder at a time)
        return self

    def discard(self, keep: str = "error") -> int:
        """Inside the hold: drop the lines this thread logged since it began, but those at level
        `keep` or above (a bug's traceback reports trouble, not a change); the number dropped.
        The supervisor's loop calls it when a round's commit failed: its requests' lines told
        of changes the rollback undid. Lines other threads logged meanwhile (the maintenance
        cycle, HA, requests answered on threads: none of them part of the round) are kept."""
        log, me, floor = self.logger, _thread_id(), LEVELS[keep]
        with log._lock:
            mine = log._pending[self.start:]
            kept = [p for p in mine if p[2] != me or p[3] >= floor]
            log._pending[self.start:] = kept
        return len(mine) - len(kept)

    def __exit__(self, *exc) -> bool:
        log = self.logger
        with log._lock:
            log._held -= 1
            if not log._held and log._pending:
                lines, log._pending = log._pending, []
                log._emit("".join([held[0] for held in lines]), lines)
        return False


class Throttle:
    """Lines that could flood the log (one per refused round of requests while the disk is
    full or the database locked) at most once per key per `every` seconds: the first of a
    window is written at once; the next ones are added up (their counts: numbers, or
    {name: number}) and written as one line, with `window`, when the window ends (flush(),
    called often; final=True at shutdown), which opens the next window. So a long outage
    shows as a line every `every` seconds with its size, a short one as one line.
    Used by one thread (the supervisor's loop): no lock."""

    def __init__(self, logger, level: str, event: str, every: float):
        self.logger, self.level, self.event, self.every = logger, level, event, every
        self._open = {}          # key -> [window start, fields, counts left out (None: none)]

    def note(self, key, now: float, fields: dict, counts: dict) -> None:
        rec = self._open.get(key)
        if rec is not None and 0 <= now - rec[0] < self.every:
            rec[2] = counts if rec[2] is None else add_counts(rec[2], counts)
            return
        if rec is not None and rec[2] is not None:
            self._write(rec)                # a window ended, its sums not flushed yet
        self._open[key] = [now, fields, None]
        self.logger.log(self.level, self.event, **fields, **counts)

    def flush(self, now: float, final: bool = False) -> None:
        if not self._open:
            return
        for key, rec in list(self._open.items()):
            if final or not 0 <= now - rec[0] < self.every:
                if rec[2] is None or final:
                    del self._open[key]
                else:
                    self._open[key] = [now, rec[1], None]
                if rec[2] is not None:
                    self._write(rec)

    def _write(self, rec) -> None:
        self.logger.log(self.level, self.event, **rec[1], **rec[2], window=self.every)


def add_counts(a: dict, b: dict) -> dict:
    """a + b, field by field: numbers added, {name: number} merged by adding."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict):
            merged = dict(out.get(k) or {})
            for name, n in v.items():
                merged[name] = merged.get(name, 0) + n
            out[k] = merged
        else:
            out[k] = out.get(k, 0) + v
    return out
