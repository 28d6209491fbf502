"""The benchmarks' pure logic: parsing tool output, statistics, records, table.

No I/O beyond what a caller hands in, so tests/host/test_bench.py covers
all of it on the host.

Raw samples (what bench/guest.py writes to raw.json) are dicts:
    {"scenario": str, "peer": str, "metric": str, "unit": str,
     "value": float | None, "error": str (optional)}
one per repetition. `records()` folds them into the results records:
    {"scenario", "peer", "metric", "unit", "median", "min", "max", "n",
     "ratio_to_direct"}
"""

from __future__ import annotations

import json
import re
import statistics
from typing import Any, Iterable

# The record fields results.json promises (the schema the host test checks).
RECORD_FIELDS = ("scenario", "peer", "metric", "unit", "median", "min", "max", "ratio_to_direct")

# Peers in the order they are reported; "direct" is the ceiling every
# throughput and latency figure is divided by.
PEERS = ("direct", "socat", "haproxy", "haproxy-splice", "sockmap", "kproxy", "kproxy-bpf",
         "kproxy-listener")
DIRECT = "direct"
# The TLS-termination rows' peers (bench/tls.py); "direct" there is the
# target speaking TLS itself.
TLS_PEERS = ("direct", "kproxy", "nginx", "nginx-ktls", "haproxy", "socat")

# The connection scenario: one sequential client, then several at once
# (each sequential; the rate is their sum), so that a peer's own limit shows
# rather than one client's.
CONNECT_CLIENTS = (1, 4)


def connect_scenario(clients: int) -> str:
    """The connection scenario's name for `clients` clients at once."""
    return "connect+1K echo+close" + (f" x{clients}" if clients > 1 else "")


# Metrics that get a ratio to direct (higher is better for throughput and
# connection rate, lower for latency: the ratio is always peer / direct).
RATIO_METRICS = ("throughput", "p50", "p99", "rate")

# Order of a scenario's metrics in the table.
METRIC_ORDER = ("throughput", "p50", "p99", "cpu", "ctxsw", "rate", "time", "slab", "percpu")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PERCENTILE = re.compile(r"--->\s+percentile\s+([0-9.]+)\s*=\s*([0-9.]+)")
_AVG = re.compile(r"avg-latency\s*=\s*([0-9.]+)")


class ParseError(ValueError):
    """Tool output we cannot read a figure from."""


# --- tool output --------------------------------------------------------


def parse_iperf3(text: str) -> dict[str, float]:
    """iperf3 -J output -> receiver-side rate and bytes.

    Returns {"bps": receiver bits/s, "bytes": bytes received, "seconds",
    "sender_bps"}. The receiver's figure is the one that counts: a relay
    that buffers without backpressure shows a sender rate far above what
    is delivered.
    """
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ParseError(f"iperf3: not JSON ({e})") from None
    if not isinstance(d, dict):
        raise ParseError("iperf3: not a JSON object")
    if d.get("error"):
        raise ParseError(f"iperf3: {d['error']}")
    end = d.get("end") or {}
    recv = end.get("sum_received")
    if not recv or "bits_per_second" not in recv:
        raise ParseError("iperf3: no end.sum_received in the output")
    sent = end.get("sum_sent") or {}
    return {
        "bps": float(recv["bits_per_second"]),
        "bytes": float(recv.get("bytes", 0)),
        "seconds": float(recv.get("seconds", 0)),
        "sender_bps": float(sent.get("bits_per_second", 0)),
    }


def parse_sockperf(text: str) -> dict[str, float]:
    """sockperf ping-pong output -> {"p50", "p99", "avg"} in microseconds
    (sockperf reports half the round trip)."""
    text = _ANSI.sub("", text)
    pct = {float(p): float(v) for p, v in _PERCENTILE.findall(text)}
    if 50.0 not in pct or 99.0 not in pct:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise ParseError(f"sockperf: no percentiles in the output ({tail})")
    out = {"p50": pct[50.0], "p99": pct[99.0]}
    m = _AVG.search(text)
    if m:
        out["avg"] = float(m.group(1))
    return out


# /proc/stat: the "cpu" line's fields, in jiffies (USER_HZ).
_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_BUSY = ("user", "nice", "system", "irq", "softirq")


def parse_proc_stat(text: str) -> dict[str, int]:
    """/proc/stat -> {"busy": jiffies of user+nice+system+irq+softirq over
    all CPUs (every process and the kernel's workers), "ctxt": context
    switches since boot}."""
    busy = ctxt = None
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "cpu":
            vals = dict(zip(_CPU_FIELDS, (int(x) for x in parts[1:])))
            busy = sum(vals.get(k, 0) for k in _BUSY)
        elif parts[0] == "ctxt":
            ctxt = int(parts[1])
    if busy is None or ctxt is None:
        raise ParseError("/proc/stat: no cpu or ctxt line")
    return {"busy": busy, "ctxt": ctxt}


def per_gb(before: dict[str, int], after: dict[str, int], nbytes: float,
           hz: int = 100) -> dict[str, float]:
    """CPU seconds and context switches per GB (10^9 bytes) moved."""
    if nbytes <= 0:
        raise ValueError("no bytes moved")
    gb = nbytes / 1e9
    return {"cpu_s_per_gb": (after["busy"] - before["busy"]) / hz / gb,
            "ctxsw_per_gb": (after["ctxt"] - before["ctxt"]) / gb}


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {field: bytes}."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        mult = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
        out[name.strip()] = int(parts[0]) * mult
    return out


def parse_slabinfo(text: str) -> dict[str, int]:
    """/proc/slabinfo -> {cache: bytes in use (active objects x size)}."""
    out = {}
    for line in text.splitlines():
        if line.startswith(("slabinfo", "#")):
            continue
        parts = line.split()
        if len(parts) >= 4:
            out[parts[0]] = int(parts[1]) * int(parts[3])
    return out


def slab_growth(before: dict[str, int], after: dict[str, int], top: int = 8) -> list[tuple[str, int]]:
    """The caches that grew most, largest first: [(cache, bytes)]."""
    grew = [(k, after[k] - before.get(k, 0)) for k in after]
    grew = [g for g in grew if g[1] > 0]
    return sorted(grew, key=lambda g: -g[1])[:top]


# --- statistics and records ---------------------------------------------


def summarize(values: Iterable[float]) -> dict[str, float] | None:
    """{"median", "min", "max", "n"} of the values (None when empty)."""
    vals = sorted(float(v) for v in values)
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "n": len(vals)}


def ratio(value: float | None, direct: float | None) -> float | None:
    """value / direct, None when either is missing or direct is 0."""
    if value is None or direct is None or direct == 0:
        return None
    return value / direct


def _key(s: dict[str, Any]) -> tuple[str, str, str]:
    return (s["scenario"], s["peer"], s["metric"])


def records(samples: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold raw samples into one record per (scenario, peer, metric).

    Samples with value None (a failed run) are left out of the figures; a
    record whose every sample failed keeps median/min/max None and its
    errors. Throughput and latency records get ratio_to_direct: the median
    over the direct peer's median for the same scenario and metric.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault(_key(s), []).append(s)
    out = []
    for (scenario, peer, metric), ss in groups.items():
        st = summarize(s["value"] for s in ss if s.get("value") is not None)
        rec: dict[str, Any] = {
            "scenario": scenario, "peer": peer, "metric": metric, "unit": ss[0]["unit"],
            "median": st["median"] if st else None,
            "min": st["min"] if st else None,
            "max": st["max"] if st else None,
            "n": st["n"] if st else 0,
            "ratio_to_direct": None,
        }
        errors = sorted({s["error"] for s in ss if s.get("error")})
        if errors:
            rec["errors"] = errors
        out.append(rec)
    direct = {(r["scenario"], r["metric"]): r["median"] for r in out if r["peer"] == DIRECT}
    for r in out:
        if r["metric"] in RATIO_METRICS:
            r["ratio_to_direct"] = ratio(r["median"], direct.get((r["scenario"], r["metric"])))
    order = {p: i for i, p in enumerate(dict.fromkeys(PEERS + TLS_PEERS))}
    scen_order: dict[str, int] = {}
    for s in (x for x in out):
        scen_order.setdefault(s["scenario"], len(scen_order))
    morder = {m: i for i, m in enumerate(METRIC_ORDER)}
    out.sort(key=lambda r: (scen_order[r["scenario"]], morder.get(r["metric"], 99), r["metric"],
                            order.get(r["peer"], 99), r["peer"]))
    return out


def check_record(r: Any) -> list[str]:
    """What is wrong with one results.json record ([] when nothing)."""
    if not isinstance(r, dict):
        return ["not an object"]
    bad = [f"missing {f}" for f in RECORD_FIELDS if f not in r]
    for f in ("scenario", "peer", "metric", "unit"):
        if f in r and not (isinstance(r[f], str) and r[f]):
            bad.append(f"{f} is not a non-empty string")
    for f in ("median", "min", "max", "ratio_to_direct"):
        if f in r and r[f] is not None and not isinstance(r[f], (int, float)):
            bad.append(f"{f} is not a number or null")
    if all(isinstance(r.get(f), (int, float)) for f in ("median", "min", "max")):
        if not r["min"] <= r["median"] <= r["max"]:
            bad.append("not min <= median <= max")
    return bad


# --- rendering ----------------------------------------------------------


def fmt(v: float | None) -> str:
    """A figure with 3 significant digits (thousands grouped), '-' for None."""
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def table(recs: list[dict[str, Any]]) -> str:
    """A plain-text table: one line per record, ratio column when present."""
    head = ("scenario", "metric", "peer", "median", "min", "max", "unit", "x direct")
    rows = [head]
    for r in recs:
        rows.append((r["scenario"], r["metric"], r["peer"], fmt(r["median"]), fmt(r["min"]),
                     fmt(r["max"]), r["unit"],
                     "-" if r.get("ratio_to_direct") is None else f"{r['ratio_to_direct']:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    right = {3, 4, 5, 7}
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(recs: list[dict[str, Any]]) -> str:
    """The same table in Markdown, for the README."""
    out = ["| scenario | metric | peer | median | min | max | unit | × direct |",
           "| --- | --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for r in recs:
        rt = "" if r.get("ratio_to_direct") is None else f"{r['ratio_to_direct']:.2f}"
        out.append(f"| {r['scenario']} | {r['metric']} | {r['peer']} | {fmt(r['median'])} | "
                   f"{fmt(r['min'])} | {fmt(r['max'])} | {r['unit']} | {rt} |")
    return "\n".join(out)
