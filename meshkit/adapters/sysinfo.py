"""System metrics: load, memory, disk, a process's RSS and CPU time.

Linux reads /proc and os.statvfs; elsewhere (macOS) os.getloadavg, `sysctl`/`vm_stat`
and os.statvfs, or None when a figure cannot be had. Nothing here raises on a
missing facility: a heartbeat with a None figure is better than no heartbeat.
"""

import os
import re
import subprocess

PROC = "/proc"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def load_average(proc: str = PROC) -> list | None:
    """[1 min, 5 min, 15 min]."""
    text = _read(os.path.join(proc, "loadavg"))
    if text:
        try:
            return [float(x) for x in text.split()[:3]]
        except ValueError:
            pass
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def parse_meminfo(text: str) -> int | None:
    """MemAvailable in bytes from /proc/meminfo text (MemFree + Cached on old kernels)."""
    fields = {}
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if m:
            fields[m.group(1)] = int(m.group(2)) * 1024
    if "MemAvailable" in fields:
        return fields["MemAvailable"]
    if "MemFree" in fields:
        return fields["MemFree"] + fields.get("Cached", 0)
    return None


def parse_vm_stat(text: str) -> int | None:
    """Free + inactive + speculative pages from macOS `vm_stat`, in bytes."""
    m = re.search(r"page size of (\d+) bytes", text)
    if not m:
        return None
    page = int(m.group(1))
    pages = 0
    for name in ("Pages free", "Pages inactive", "Pages speculative"):
        f = re.search(rf"{name}:\s+(\d+)", text)
        if f:
            pages += int(f.group(1))
    return pages * page


def _command(argv: list) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, timeout=5, text=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def memory_available(proc: str = PROC) -> int | None:
    text = _read(os.path.join(proc, "meminfo"))
    if text is not None:
        return parse_meminfo(text)
    text = _command(["vm_stat"])
    return parse_vm_stat(text) if text else None


def disk_free(path: str) -> int | None:
    """Bytes available to an unprivileged user on the file system holding path."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def process_rss(pid="self", proc: str = PROC) -> int | None:
    """Resident set size in bytes (VmRSS), or None when /proc is not there."""
    text = _read(os.path.join(proc, str(pid), "status"))
    m = re.search(r"VmRSS:\s+(\d+)\s*kB", text or "")
    return int(m.group(1)) * 1024 if m else None


def process_cpu_seconds(pid="self", proc: str = PROC) -> float | None:
    """User + system CPU seconds a process has used (from /proc/PID/stat)."""
    text = _read(os.path.join(proc, str(pid), "stat"))
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    try:
        ticks = int(fields[11]) + int(fields[12])   # utime, stime (fields 14, 15)
    except (IndexError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")
