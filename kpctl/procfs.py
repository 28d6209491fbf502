"""Parsers of /proc/net/kproxy, /proc/net/kproxy_stat and
/proc/net/kproxy_listeners (docs/CONTRACT.md).

Columns are found by the names in the header line, never by position, so a
module that appends columns does not break an older kpctl.
"""

from __future__ import annotations

import socket

from .model import LISTENER_COUNTERS, DirStats, Endpoint, Listener, Proxy, SockInfo, TlsInfo, Totals

PROXIES_PATH = "/proc/net/kproxy"
TOTALS_PATH = "/proc/net/kproxy_stat"
LISTENERS_PATH = "/proc/net/kproxy_listeners"

# Columns a line must have; anything else in the header is ignored, except
# the optional program ids ab_parser ab_verdict ba_parser ba_verdict (0: none)
# and kTLS sides a_tls b_tls ("-": plain TCP), appended later.
_REQUIRED = (
    "id", "state", "a_local", "a_remote", "b_local", "b_remote",
    "ab_bytes", "ab_skbs", "ab_msgs", "ab_drops", "ab_queued",
    "ba_bytes", "ba_skbs", "ba_msgs", "ba_drops", "ba_queued", "created",
)  # fmt: skip


class ProcFormatError(ValueError):
    """The file does not look like the documented format."""


def _sock(row: dict[str, str], side: str) -> SockInfo:
    local, remote = row[side + "_local"], row[side + "_remote"]
    lo, re_ = Endpoint.parse(local), Endpoint.parse(remote)
    # /proc has no family column: the address form tells it ([v6] or v4).
    family = socket.AF_INET6 if local.startswith("[") else socket.AF_INET
    return SockInfo(family=family, local=lo, remote=re_, tcp_state=None,
                    tls=TlsInfo.parse(row.get(side + "_tls", "-")))


def _prog_id(row: dict[str, str], col: str) -> int | None:
    # Program ids (ab_parser ...) were appended later: optional, 0 = none.
    v = row.get(col)
    if v is None:
        return None
    return int(v) or None


def _dir(row: dict[str, str], prefix: str) -> DirStats:
    # /proc carries no shut flag; it is visible only over netlink.
    return DirStats(
        bytes=int(row[prefix + "_bytes"]),
        skbs=int(row[prefix + "_skbs"]),
        msgs=int(row[prefix + "_msgs"]),
        drops=int(row[prefix + "_drops"]),
        queued=int(row[prefix + "_queued"]),
        shut=False,
        parser_id=_prog_id(row, prefix + "_parser"),
        verdict_id=_prog_id(row, prefix + "_verdict"),
    )


def parse_proxies(text: str) -> list[Proxy]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    header = lines[0].split()
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise ProcFormatError(f"header lacks column(s): {', '.join(missing)}")
    out: list[Proxy] = []
    for n, line in enumerate(lines[1:], start=2):
        cols = line.split()
        if len(cols) < len(header):
            raise ProcFormatError(f"line {n}: {len(cols)} columns, header has {len(header)}")
        row = dict(zip(header, cols))
        try:
            out.append(
                Proxy(
                    id=int(row["id"]),
                    state=row["state"],
                    created_ns=int(row["created"]),
                    a=_sock(row, "a"),
                    b=_sock(row, "b"),
                    a_to_b=_dir(row, "ab"),
                    b_to_a=_dir(row, "ba"),
                    listener_id=_listener_id(row),
                )
            )
        except ValueError as e:
            raise ProcFormatError(f"line {n}: {e}") from None
    return out


def _listener_id(row: dict[str, str]) -> int | None:
    # The listener column was appended later: optional, "-" = none.
    v = row.get("listener", "-")
    return None if v == "-" else int(v)


# The ended columns were appended later: optional, 0 when absent.
_LISTENER_LATER = ("ended", "ended_bytes_a_to_b", "ended_bytes_b_to_a")
_LISTENER_REQUIRED = ("id", "listen", "target", "source", "max_proxies", "connect_timeout_ms",
                      "parser", "verdict", "created_ns") + tuple(
                          c for c in LISTENER_COUNTERS if c not in _LISTENER_LATER)


def parse_listeners(text: str) -> list[Listener]:
    """/proc/net/kproxy_listeners: a header naming the columns, one line
    per listener (source "-": none; parser/verdict 0: none)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    header = lines[0].split()
    missing = [c for c in _LISTENER_REQUIRED if c not in header]
    if missing:
        raise ProcFormatError(f"header lacks column(s): {', '.join(missing)}")
    out: list[Listener] = []
    for n, line in enumerate(lines[1:], start=2):
        cols = line.split()
        if len(cols) < len(header):
            raise ProcFormatError(f"line {n}: {len(cols)} columns, header has {len(header)}")
        row = dict(zip(header, cols))
        try:
            out.append(Listener(
                id=int(row["id"]),
                listen=Endpoint.parse(row["listen"]),
                target=Endpoint.parse(row["target"]),
                source=None if row["source"] == "-" else Endpoint.parse(row["source"]),
                max_proxies=int(row["max_proxies"]),
                connect_timeout_ms=int(row["connect_timeout_ms"]),
                parser_id=int(row["parser"]) or None,
                verdict_id=int(row["verdict"]) or None,
                created_ns=int(row["created_ns"]),
                **{c: int(row.get(c, 0)) for c in LISTENER_COUNTERS},
            ))
        except ValueError as e:
            raise ProcFormatError(f"line {n}: {e}") from None
    return out


def read_listeners(path: str = LISTENERS_PATH) -> list[Listener]:
    with open(path) as f:
        return parse_listeners(f.read())


def parse_totals(text: str) -> Totals:
    known = set(Totals.field_names())
    values: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise ProcFormatError(f"line {n}: expected 'name value'")
        if parts[0] in known:  # unknown names: a newer module; ignore them
            try:
                values[parts[0]] = int(parts[1])
            except ValueError:
                raise ProcFormatError(f"line {n}: {parts[1]!r} is not a number") from None
    return Totals(**values)


def read_proxies(path: str = PROXIES_PATH) -> list[Proxy]:
    with open(path) as f:
        return parse_proxies(f.read())


def read_totals(path: str = TOTALS_PATH) -> Totals:
    with open(path) as f:
        return parse_totals(f.read())


def live_ids(path: str = PROXIES_PATH) -> list[int]:
    """The ids of the proxies in `path` (of the caller's netns), without
    building any Proxy: what id completion reads on every TAB.  [] when the
    module is not loaded."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    if not lines:
        return []
    header = lines[0].split()
    if not header or header[0] != "id":
        raise ProcFormatError("header does not start with the id column")
    return [int(line.split(None, 1)[0]) for line in lines[1:] if line.strip()]
