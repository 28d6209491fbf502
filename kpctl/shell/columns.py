"""Plain columns for output that is not a terminal, as `ss` prints them: a
header line, then one line per row, columns aligned with spaces, no colour,
no rich (whose table costs twenty times the decoding at 10,000 rows).

Numbers are exact (bytes, not KiB) and no cell holds a space, so that
`awk '{print $1}'` and `sort -k` work on every column.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from kpctl.shell.units import age_of, fmt_time, human_bytes, human_duration, human_rate

PROXY_HEADER = ("ID", "STATE", "A-LOCAL", "A-REMOTE", "B-LOCAL", "B-REMOTE",
                "A→B", "B→A", "AGE", "TLS")
# Right-aligned columns: the numbers.
_RIGHT = frozenset({0, 6, 7, 8})


def tls_sides(p: Any) -> str:
    """The kTLS sides of a proxy in one spaceless cell: "-" when none, else
    e.g. "A=1.3/aes-128-gcm" or "A=1.3/aes-128-gcm,B=1.2/aes-256-gcm"."""
    sides = [f"{name}={s.tls.version}/{s.tls.cipher}"
             for name, s in (("A", p.a), ("B", p.b)) if s.tls is not None]
    return ",".join(sides) or "-"


def proxy_row(p: Any, now: float | None) -> tuple[str, ...]:
    return (str(p.id), str(p.state), str(p.a.local), str(p.a.remote), str(p.b.local),
            str(p.b.remote), str(p.a_to_b.bytes), str(p.b_to_a.bytes),
            human_duration(age_of(p, now)), tls_sides(p))


def format_columns(header: Sequence[str], rows: Iterable[Sequence[str]],
                   right: frozenset[int] = frozenset()) -> list[str]:
    rows = list(rows)
    widths = [len(h) for h in header]
    for r in rows:
        for k, cell in enumerate(r):
            if len(cell) > widths[k]:
                widths[k] = len(cell)
    last = len(header) - 1

    def line(cells: Sequence[str]) -> str:
        out = []
        for k, cell in enumerate(cells):
            if k in right:
                out.append(cell.rjust(widths[k]))
            elif k == last:
                out.append(cell)  # no trailing blanks
            else:
                out.append(cell.ljust(widths[k]))
        return "  ".join(out).rstrip()

    return [line(header)] + [line(r) for r in rows]


def proxy_lines(proxies: Iterable[Any], now: float | None = None) -> list[str]:
    return format_columns(PROXY_HEADER, (proxy_row(p, now) for p in proxies), _RIGHT)


# -- stats: name value lines (as nstat prints) ---------------------------------


def totals_text(d: dict) -> str:
    w = max(len(k) for k in d) if d else 0
    out = []
    for k, v in d.items():
        line = f"{k.ljust(w)}  {v:>14}"
        if k == "bytes":
            line += f"  ({human_bytes(v)})"
        out.append(line)
    return "\n".join(out)


def stats_interval_text(ts: float, dt: float, deltas: dict, rates: dict) -> str:
    w = max(len(k) for k in deltas) if deltas else 0
    out = [f"# {fmt_time(ts)}  interval {dt:.2f}s"]
    for k, v in deltas.items():
        if k in rates:
            r = rates[k]
            rs = human_rate(r) if k == "bytes" else f"{r:.1f}/s"
            out.append(f"{k.ljust(w)}  {('+' + str(v)):>14}  {rs:>12}")
        else:
            out.append(f"{k.ljust(w)}  {v:>14}")
    return "\n".join(out)
