"""Human units (bytes, rates, counts, durations, times): the standard
library only, so that plain output never imports rich."""

from __future__ import annotations

import time

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_bytes(n) -> str:
    n = int(n)
    if abs(n) < 1024:
        return f"{n} B"
    v = float(n)
    for u in _UNITS:
        v /= 1024.0
        if abs(v) < 1024 or u == _UNITS[-1]:
            return f"{v:.1f} {u}" if abs(v) < 100 else f"{v:.0f} {u}"
    return f"{n} B"  # pragma: no cover


def human_rate(bps) -> str:
    return human_bytes(int(round(bps))) + "/s"


def human_count(n) -> str:
    n = float(n)
    if abs(n) < 1000:
        return f"{n:.0f}" if n == int(n) else f"{n:.1f}"
    for u in ("k", "M", "G", "T"):
        n /= 1000.0
        if abs(n) < 1000 or u == "T":
            return f"{n:.1f}{u}"
    return str(n)  # pragma: no cover


def human_duration(secs) -> str:
    s = int(max(0, secs))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def age_of(p, now=None) -> float:
    if now is not None and getattr(p, "created_ns", None):
        return max(0.0, now - p.created_ns / 1e9)
    a = getattr(p, "age", None)
    if a is not None:
        return a
    return max(0.0, time.time() - p.created_ns / 1e9)


def fmt_time(ts: float, date: bool = True) -> str:
    lt = time.localtime(ts)
    ms = int((ts - int(ts)) * 1000)
    fmt = "%Y-%m-%dT%H:%M:%S" if date else "%H:%M:%S"
    return time.strftime(fmt, lt) + f".{ms:03d}"
