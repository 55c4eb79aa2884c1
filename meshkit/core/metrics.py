"""Prometheus text-format counters, gauges and histograms (plain data, thread-safe)."""

import bisect
import itertools
import math
import threading

DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def number(v) -> str:
    """A sample value as the text format wants it, exactly: a whole number as digits
    (1795600000, 1234567), any other float by repr() (the shortest text that reads back
    as the same float: 1795600000.25, 0.0123), and +Inf, -Inf, NaN. Never "%g", which
    keeps 6 significant digits (1.7956e+09: a timestamp hours off, a counter past 1e6
    that stops moving)."""
    if isinstance(v, int):
        return str(v)
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _labels(names, values) -> str:
    if not names:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, esc)) + "}"


class Family:
    def __init__(self, name: str, kind: str, help: str, labels=()):
        self.name, self.kind, self.help, self.labels = name, kind, help, tuple(labels)
        self._values: dict = {}
        self._lock = threading.Lock()

    def header(self) -> list:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(Family):
    def __init__(self, name, help, labels=()):
        super().__init__(name, "counter", help, labels)

    def inc(self, *labels, by: float = 1) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0) + by      # whole numbers stay ints

    def render(self) -> list:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labels, k)} {number(v)}" for k, v in items]


class Gauge(Family):
    def __init__(self, name, help, labels=()):
        super().__init__(name, "gauge", help, labels)

    def set(self, value: float, *labels) -> None:
        with self._lock:
            self._values[labels] = float(value)

    def replace(self, values: dict) -> None:
        """Set all label sets at once ({label tuple: value}); others disappear."""
        with self._lock:
            self._values = {tuple(k): float(v) for k, v in values.items()}

    def render(self) -> list:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labels, k)} {number(v)}" for k, v in items]


class Histogram(Family):
    def __init__(self, name, help, labels=(), buckets=DEFAULT_BUCKETS):
        super().__init__(name, "histogram", help, labels)
        self.buckets = tuple(buckets)
        self._le = tuple(number(float(b)) for b in self.buckets) + ("+Inf",)

    def observe(self, value: float, *labels) -> None:
        i = bisect.bisect_left(self.buckets, value)      # the first bucket with value <= le
        with self._lock:
            entry = self._values.get(labels)
            if entry is None:
                entry = self._values[labels] = ([0] * (len(self.buckets) + 1), [0, 0.0])
            entry[0][i] += 1                               # per bucket; render() adds them up
            entry[1][0] += 1
            entry[1][1] += value

    def render(self) -> list:
        out = self.header()
        with self._lock:
            items = sorted((k, (list(itertools.accumulate(c)), list(t))) for k, (c, t) in self._values.items())
        for key, (counts, (n, s)) in items:
            for le, c in zip(self._le, counts):          # the last one, +Inf, is n
                out.append(f"{self.name}_bucket{_labels(self.labels + ('le',), key + (le,))} {c}")
            out.append(f"{self.name}_sum{_labels(self.labels, key)} {number(s)}")
            out.append(f"{self.name}_count{_labels(self.labels, key)} {n}")
        return out


class Registry:
    def __init__(self):
        self.families: list = []

    def add(self, family):
        self.families.append(family)
        return family

    def render(self) -> str:
        lines = []
        for f in self.families:
            lines += f.render()
        return "\n".join(lines) + "\n"
