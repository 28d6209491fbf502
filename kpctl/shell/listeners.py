"""Handlers of kernel listeners: listen, unlisten, list listeners, show --listener."""

from __future__ import annotations

import time
from typing import Any, Iterable

from kpctl.shell.args import Command, Namespace, UsageError
from kpctl.shell.context import Context

# The backlog of the socket kpctl listens on for a kernel listener: the
# kernel accepts in batches, so a burst of clients waits here, not refused.
LISTEN_BACKLOG = 4096

LISTENER_HEADER = ("ID", "LISTEN", "TARGET", "ACTIVE", "PENDING", "ACCEPTED", "CREATED",
                   "FAILED", "LIMITED", "MAX", "AGE")
_RIGHT = frozenset({0, 3, 4, 5, 6, 7, 8, 9, 10})


def _resolve(cmd: Command, text: str, listen: bool) -> Any:
    from kpctl.address import resolve
    from kpctl.serve import ServeError
    try:
        return resolve(text, listen=listen)
    except ServeError as e:
        raise UsageError(f"{cmd.name}: {e.message}", cmd) from None


def _program(ctx: Context, spec: str | None) -> Any:
    """A --parser/--verdict: a shipped name, an ELF object or a pinned path
    (as attach takes it)."""
    if spec is None:
        return None
    from kpctl.bpf import load_configured
    return load_configured(spec, loader=ctx.prog_loader)


def cmd_listen(ctx: Context, ns: Namespace) -> int:
    from kpctl.shell import joining
    from kpctl.shell.table import find_command
    cmd = find_command("listen")
    kp = ctx.client()  # no module: said before anything is opened
    listen = _resolve(cmd, ns.listen, listen=True)
    target = _resolve(cmd, ns.target, listen=False)
    source = _resolve(cmd, ns.source, listen=False) if ns.source else None
    make = ctx.socket_factory or joining.socket_factory_for(ctx.netns)
    ls = joining.open_listener(listen, make)
    progs: list[Any] = []
    try:
        ls.listen(LISTEN_BACKLOG)
        for spec in (ns.parser, ns.verdict):
            progs.append(_program(ctx, spec))
        li = kp.listen(ls, str(target), max_proxies=ns.max_proxies,
                       connect_timeout=ns.connect_timeout, parser=progs[0], verdict=progs[1],
                       source=None if source is None else (source.host, source.port))
    finally:
        ls.close()  # the listener holds its own reference
        for p in progs:
            if p is not None and hasattr(p, "close"):
                p.close()
    if ctx.json:
        ctx.emit_json(li.to_dict())
    else:
        ctx.write(str(li.id))
    return 0


def check_listen(cmd: Command, ns: Namespace) -> None:
    if ns.verdict is not None and ns.parser is None:
        raise UsageError("listen: --verdict needs --parser (a verdict judges the parser's "
                         "messages)", cmd)


def cmd_unlisten(ctx: Context, ns: Namespace) -> int:
    ctx.client().close_listener(ns.id, end_proxies=ns.kill)
    if ctx.json:
        ctx.emit_json({"unlistened": ns.id, "proxies_ended": bool(ns.kill)})
    else:
        ctx.write(f"listener {ns.id} deleted" + ("; its proxies ended" if ns.kill else ""))
    return 0


def listener_row(li: Any, now: float | None) -> tuple[str, ...]:
    from kpctl.shell.units import human_duration
    age = max(0.0, (time.time() if now is None else now) - li.created_ns / 1e9)
    return (str(li.id), str(li.listen), str(li.target), str(li.active), str(li.pending),
            str(li.accepted), str(li.created), str(li.failed), str(li.refused_limit),
            str(li.max_proxies or "-"), human_duration(age))


def listener_lines(listeners: Iterable[Any], now: float | None = None) -> list[str]:
    from kpctl.shell.columns import format_columns
    return format_columns(LISTENER_HEADER, (listener_row(li, now) for li in listeners), _RIGHT)


def cmd_list_listeners(ctx: Context) -> int:
    listeners = sorted(ctx.client().listeners(), key=lambda li: li.id)
    if ctx.json:
        ctx.emit_json([li.to_dict() for li in listeners])
        return 0
    if ctx.for_humans() and not listeners:
        ctx.console.print("no listeners", style="dim")
        return 0
    ctx.stdout.write("\n".join(listener_lines(listeners, now=ctx.clock())) + "\n")
    ctx.stdout.flush()
    return 0


def cmd_show_listener(ctx: Context, listener_id: int) -> int:
    li = ctx.client().get_listener(listener_id)
    if ctx.json:
        ctx.emit_json(li.to_dict())
        return 0
    d = li.to_dict()
    counters = d.pop("counters")
    width = max(len(k) for k in (*d, *counters))
    for key, value in (*d.items(), *counters.items()):
        ctx.write(f"{key.ljust(width)}  {'-' if value is None else value}")
    return 0


def listener_ids(netns: str | None = None) -> dict[int, str]:
    """For completion and the toolbar: the listeners of the netns's
    /proc/net/kproxy_listeners, each with its "LISTEN > TARGET"; {} when it
    cannot be read (no module, a module without listeners)."""
    from kpctl.procfs import read_listeners
    from kpctl.shell.context import _proc_path, in_netns
    try:
        listeners = in_netns(netns, lambda: read_listeners(_proc_path(netns, "kproxy_listeners")))
    except Exception:  # noqa: BLE001 - nothing to offer
        return {}
    return {li.id: f"{li.listen} > {li.target}" for li in listeners}

