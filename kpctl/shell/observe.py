"""Handlers that watch: stats (module totals), monitor (events), top."""

from __future__ import annotations

from typing import Any

from kpctl.shell.args import Namespace
from kpctl.shell.context import Context, isatty, totals_dict

GAUGES = ("active",)  # totals that are a level, not a count: shown as is


def cmd_stats(ctx: Context, ns: Namespace) -> int:
    interval = ns.interval
    if interval is None and ns.count is not None:
        interval = 1.0
    first = totals_dict(ctx.read_totals())
    if interval is None:
        if ctx.json:
            ctx.emit_json(first)
        else:
            from kpctl.shell.columns import totals_text
            ctx.write(totals_text(first))
        return 0
    n = 0
    prev, prev_t = first, ctx.clock()
    try:
        while ns.count is None or n < ns.count:
            ctx.sleep(interval)
            cur, t = totals_dict(ctx.read_totals()), ctx.clock()
            dt = max(t - prev_t, 1e-9)
            deltas = {k: (v if k in GAUGES else v - prev.get(k, 0)) for k, v in cur.items()}
            rates = {k: (deltas[k] / dt) for k in cur if k not in GAUGES}
            if ctx.json:
                ctx.emit_json({"timestamp": t, "interval": round(dt, 6),
                               "deltas": deltas, "rates": rates, "totals": cur})
            else:
                from kpctl.shell.columns import stats_interval_text
                ctx.write(stats_interval_text(t, dt, deltas, rates))
            prev, prev_t = cur, t
            n += 1
    except KeyboardInterrupt:
        pass
    return 0


def cmd_monitor(ctx: Context, ns: Namespace) -> int:
    from kpctl.shell.render import event_text
    n = 0
    kp = ctx.client()
    try:
        it = kp.monitor(listeners=True)  # listeners' events too
    except TypeError:  # a client of the proxies alone
        it = kp.monitor()
    try:
        for ev in it:
            if ctx.json:
                ctx.emit_json(ev.to_dict())
            else:
                ctx.console.print(event_text(ev), soft_wrap=True, highlight=False)
                ctx.stdout.flush()
            n += 1
            if ns.count is not None and n >= ns.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        close = getattr(it, "close", None)
        if close:
            close()
    return 0


def _listeners(kp: Any) -> list[Any]:
    """The listeners, or none from a client (or module) without them."""
    from kpctl.errors import KproxyError
    listeners = getattr(kp, "listeners", None)
    if listeners is None:
        return []
    try:
        return list(listeners())
    except KproxyError:  # a module without listener-get
        return []


def cmd_top(ctx: Context, ns: Namespace) -> int:
    from kpctl.shell.render import listener_top_rows, top_rows, top_view
    kp = ctx.client()
    prev, prev_t = None, None
    prev_listeners: dict[int, Any] | None = None
    n = 0
    live = None
    use_live = (not ctx.json) and isatty(ctx.stdout) and ctx.console.is_terminal
    try:
        while True:
            listeners = _listeners(kp)
            proxies, t = list(kp.list()), ctx.clock()
            dt = (t - prev_t) if prev_t else None
            rows = top_rows(proxies, prev, dt, now=t)
            lrows = listener_top_rows(listeners, prev_listeners, dt, now=t)
            if ctx.json:
                ctx.emit_json({"timestamp": t, "listeners": [
                    dict(r["listener"].to_dict(), accepted_per_s=r["accepted_per_s"])
                    for r in lrows], "proxies": [
                    dict(r["proxy"].to_dict(), rate_a_to_b=r["rate_ab"], rate_b_to_a=r["rate_ba"])
                    for r in rows]})
            else:
                table = top_view(lrows, rows, t)
                if use_live:
                    if live is None:
                        from rich.live import Live
                        live = Live(table, console=ctx.console, auto_refresh=False,
                                    transient=False)
                        live.start()
                    else:
                        live.update(table, refresh=True)
                else:
                    ctx.console.print(table)
                    ctx.stdout.flush()
            prev, prev_t = {p.id: p for p in proxies}, t
            prev_listeners = {li.id: li for li in listeners}
            n += 1
            if ns.count is not None and n >= ns.count:
                break
            ctx.sleep(ns.delay)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    return 0
