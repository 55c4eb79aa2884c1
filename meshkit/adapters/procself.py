"""This process's resident memory: VmRSS from /proc/self/status (Linux); elsewhere (macOS)
the peak RSS from getrusage, the closest the standard library offers."""

import resource
import sys

STATUS = "/proc/self/status"


def parse_vmrss(text: str) -> int | None:
    """Bytes from the 'VmRSS:  1234 kB' line of a /proc/PID/status text, or None."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def rss_bytes(path: str = STATUS) -> int | None:
    """Current resident set size in bytes; None if it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            found = parse_vmrss(f.read())
        if found is not None:
            return found
    except OSError:
        pass
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    return peak if sys.platform == "darwin" else peak * 1024    # macOS: bytes; Linux/BSD: KiB
