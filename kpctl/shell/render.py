"""Human output: rich tables and panels, human units.

Imported only by handlers that print for humans (never in JSON mode's hot
path of `--help`), since rich costs tens of milliseconds to import.
"""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kpctl.shell.columns import tls_sides
from kpctl.shell.units import (age_of, fmt_time, human_bytes, human_count,  # noqa: F401
                              human_duration, human_rate)

STATE_STYLE = {"active": "green", "half-closed": "yellow", "closing": "red"}


def make_console(file, *, color: bool, width=None, env=None) -> Console:
    """A console on FILE: colour only when asked (the caller decides: a
    terminal, no NO_COLOR, no --no-color).  Off a terminal, lines are not
    folded to 80 columns."""
    is_tty = False
    try:
        is_tty = file.isatty()
    except Exception:
        pass
    if width is None and not is_tty:
        width = 200
    return Console(
        file=file,
        width=width,
        color_system="auto" if color else None,
        no_color=not color,
        force_terminal=True if (color and not is_tty) else None,
        highlight=False,
        emoji=False,
        markup=False,
        legacy_windows=False,
        soft_wrap=False,
    )


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


# -- list / show -----------------------------------------------------------


def proxy_table(proxies, now=None) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  collapse_padding=True)
    t.add_column("ID", justify="right", style="bold")
    t.add_column("STATE")
    for name in ("A LOCAL", "A REMOTE", "B LOCAL", "B REMOTE"):
        t.add_column(name, overflow="fold")  # never "…" in an address
    t.add_column("A→B", justify="right", no_wrap=True)
    t.add_column("B→A", justify="right", no_wrap=True)
    t.add_column("AGE", justify="right", no_wrap=True)
    # On a terminal the TLS column appears only when a proxy has a kTLS side.
    tls = any(p.a.tls is not None or p.b.tls is not None for p in proxies)
    if tls:
        t.add_column("TLS", overflow="fold")
    for p in proxies:
        cells = [str(p.id), _state(p.state), str(p.a.local), str(p.a.remote),
                 str(p.b.local), str(p.b.remote), human_bytes(p.a_to_b.bytes),
                 human_bytes(p.b_to_a.bytes), human_duration(age_of(p, now))]
        t.add_row(*cells, *([tls_sides(p)] if tls else []))
    return t


_TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
               6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
               11: "CLOSING", 12: "NEW_SYN_RECV"}


def tcp_state_name(v) -> str:
    if v is None:
        return "-"
    return _TCP_STATES.get(v, str(v))


def _count_or_dash(n) -> str:
    return "-" if n is None else str(n)


def prog_id_text(prog_id) -> str:
    """A BPF program id as bpftool names it ('id 42'), '-' when none."""
    return f"id {prog_id}" if prog_id else "-"


def proxy_panel(p, now=None, http=None) -> Panel:
    """One proxy in detail; `http`: its HTTP counts (proxies.http_counts())
    or None."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("state", _state(p.state))
    created = p.created_ns / 1e9
    head.add_row("created", f"{fmt_time(created)} ({human_duration(age_of(p, now))} ago)")
    if http is not None:
        head.add_row("http", f"{http['requests']} requests, {http['responses']} responses, "
                             f"{http['denied']} denied")

    socks = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  collapse_padding=True)
    socks.add_column("SOCKET", style="bold")
    socks.add_column("LOCAL")
    socks.add_column("REMOTE")
    socks.add_column("TCP STATE")
    socks.add_column("TLS")
    for name, s in (("A", p.a), ("B", p.b)):
        socks.add_row(name, str(s.local), str(s.remote), tcp_state_name(s.tcp_state),
                      "-" if s.tls is None else f"{s.tls.version} {s.tls.cipher}")

    dirs = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  collapse_padding=True)
    dirs.add_column("DIRECTION", style="bold")
    for c in ("BYTES", "SKBS", "MSGS", "DROPS", "DENIED", "QUEUED"):
        dirs.add_column(c, justify="right")
    dirs.add_column("SHUT")
    dirs.add_column("PARSER", justify="right")
    dirs.add_column("VERDICT", justify="right")
    tls = p.a.tls is not None or p.b.tls is not None
    if tls:
        # Records under the current keys: read from a kTLS source, sent on
        # a kTLS destination.
        dirs.add_column("TLS IN", justify="right")
        dirs.add_column("TLS OUT", justify="right")
    for name, d in (("A→B", p.a_to_b), ("B→A", p.b_to_a)):
        cells = [name, f"{human_bytes(d.bytes)} ({d.bytes})", str(d.skbs), str(d.msgs),
                 str(d.drops), str(d.denied), human_bytes(d.queued), "yes" if d.shut else "no",
                 prog_id_text(getattr(d, "parser_id", None)),
                 prog_id_text(getattr(d, "verdict_id", None))]
        if tls:
            cells += [_count_or_dash(d.tls_records_in), _count_or_dash(d.tls_records_out)]
        dirs.add_row(*cells)
    return Panel(Group(head, Text(""), socks, Text(""), dirs), title=f"proxy {p.id}",
                 title_align="left", box=box.ROUNDED, expand=False)


# -- monitor ---------------------------------------------------------------


def listener_event_text(ev) -> Text:
    li = ev.listener
    t = Text()
    t.append(fmt_time(ev.timestamp), style="dim")
    t.append(" ")
    new = ev.kind == "listener-new"
    t.append("[LISTEN]" if new else "[UNLISTEN]", style="bold green" if new else "bold red")
    t.append(f" listener {li.id} {li.listen} > {li.target}")
    if not new:
        t.append(f" accepted {li.accepted} created {li.created} failed {li.failed} "
                 f"refused {li.refused_limit}", style="yellow")
    return t


def event_text(ev) -> Text:
    if getattr(ev, "listener", None) is not None:
        return listener_event_text(ev)
    p = ev.proxy
    t = Text()
    t.append(fmt_time(ev.timestamp), style="dim")
    t.append(" ")
    if ev.kind == "new":
        t.append("[NEW]", style="bold green")
    elif ev.kind == "del":
        t.append("[DEL]", style="bold red")
    else:
        t.append(f"[{ev.kind.upper()}]", style="bold")
    t.append(f" proxy {p.id} ")
    t.append(f"a {p.a.remote}>{p.a.local} b {p.b.local}>{p.b.remote}")
    if ev.kind == "del":
        t.append(f" reason {ev.reason or '-'}", style="yellow")
        if ev.tls_alert is not None:
            t.append(f" alert {ev.tls_alert}", style="yellow")
        t.append(f" a>b {human_bytes(p.a_to_b.bytes)} b>a {human_bytes(p.b_to_a.bytes)}")
    else:
        t.append(f" state {p.state}")
    return t


# -- top -------------------------------------------------------------------


def top_rows(proxies, prev: dict | None, dt: float | None, now: float):
    """Rows sorted by throughput: the rate over the last interval, or (first
    time) the average since the proxy was created."""
    rows = []
    for p in proxies:
        old = prev.get(p.id) if prev else None
        if old is not None and dt and dt > 0:
            rab = (p.a_to_b.bytes - old.a_to_b.bytes) / dt
            rba = (p.b_to_a.bytes - old.b_to_a.bytes) / dt
        else:
            age = age_of(p, now) or 1.0
            rab, rba = p.a_to_b.bytes / max(age, 1.0), p.b_to_a.bytes / max(age, 1.0)
        rows.append({"proxy": p, "rate_ab": max(0.0, rab), "rate_ba": max(0.0, rba)})
    rows.sort(key=lambda r: (-(r["rate_ab"] + r["rate_ba"]), r["proxy"].id))
    return rows


def top_table(rows, now: float) -> Table:
    total = sum(r["rate_ab"] + r["rate_ba"] for r in rows)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True,
              title=f"kpctl top - {fmt_time(now, date=False)} - {len(rows)} "
                    f"prox{'y' if len(rows) == 1 else 'ies'}, "
                    f"{human_rate(total)}", title_justify="left")
    t.add_column("ID", justify="right", style="bold")
    t.add_column("STATE")
    t.add_column("A REMOTE", overflow="fold")
    t.add_column("B REMOTE", overflow="fold")
    t.add_column("A→B/s", justify="right")
    t.add_column("B→A/s", justify="right")
    t.add_column("A→B", justify="right")
    t.add_column("B→A", justify="right")
    t.add_column("AGE", justify="right")
    # With parsers: the messages they framed (an HTTP parser's requests
    # and responses, body pieces included) and what verdicts denied.
    parsed = any(r["proxy"].a_to_b.parser_id or r["proxy"].b_to_a.parser_id for r in rows)
    if parsed:
        for c in ("MSGS A→B", "MSGS B→A", "DENIED"):
            t.add_column(c, justify="right")
    for r in rows:
        p = r["proxy"]
        cells = [str(p.id), _state(p.state), str(p.a.remote), str(p.b.remote),
                 human_rate(r["rate_ab"]), human_rate(r["rate_ba"]),
                 human_bytes(p.a_to_b.bytes), human_bytes(p.b_to_a.bytes),
                 human_duration(age_of(p, now))]
        if parsed:
            cells += [str(p.a_to_b.msgs), str(p.b_to_a.msgs),
                      str(p.a_to_b.denied + p.b_to_a.denied)]
        t.add_row(*cells)
    return t


def listener_top_rows(listeners, prev: dict | None, dt: float | None, now: float):
    """Listeners by id with their accept rate over the last interval (the
    first time: the average since the listener was made)."""
    rows = []
    for li in sorted(listeners, key=lambda x: x.id):
        old = prev.get(li.id) if prev else None
        if old is not None and dt and dt > 0:
            rate = (li.accepted - old.accepted) / dt
        else:
            rate = li.accepted / max(now - li.created_ns / 1e9, 1.0)
        rows.append({"listener": li, "accepted_per_s": max(0.0, rate)})
    return rows


def listener_top_table(rows) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True,
              title=f"{len(rows)} listener{'' if len(rows) == 1 else 's'}",
              title_justify="left")
    t.add_column("ID", justify="right", style="bold")
    t.add_column("LISTEN", overflow="fold")
    t.add_column("TARGET", overflow="fold")
    t.add_column("ACCEPTED/s", justify="right")
    t.add_column("ACTIVE", justify="right")
    t.add_column("FAILED", justify="right")
    t.add_column("REFUSED", justify="right")
    for r in rows:
        li = r["listener"]
        t.add_row(str(li.id), str(li.listen), str(li.target), f"{r['accepted_per_s']:.1f}",
                  str(li.active), str(li.failed), str(li.refused_limit))
    return t


def top_view(listener_rows, proxy_rows, now: float):
    """top's screen: the listeners (when there are any) above the proxies."""
    proxies = top_table(proxy_rows, now)
    if not listener_rows:
        return proxies
    return Group(listener_top_table(listener_rows), proxies)
