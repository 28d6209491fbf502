"""Handlers of the proxies themselves: list, show, create, destroy."""

from __future__ import annotations

import os
from typing import Any

from kpctl.shell.args import EXIT_KERNEL, Command, Namespace, UsageError
from kpctl.shell.context import Context, is_kernel_error


def cmd_list(ctx: Context, ns: Namespace) -> int:
    if getattr(ns, "what", None) == "listeners":
        from kpctl.shell.listeners import cmd_list_listeners
        return cmd_list_listeners(ctx)
    proxies = sorted(ctx.client().list(), key=lambda p: p.id)
    if ctx.json:
        ctx.emit_json([p.to_dict() for p in proxies])
        return 0
    if not ctx.for_humans():
        from kpctl.shell.columns import proxy_lines
        ctx.stdout.write("\n".join(proxy_lines(proxies, now=ctx.clock())) + "\n")
        ctx.stdout.flush()
        return 0
    if not proxies:
        ctx.console.print("no proxies", style="dim")
        return 0
    from kpctl.shell.render import proxy_table
    ctx.console.print(proxy_table(proxies, now=ctx.clock()))
    return 0


def cmd_show(ctx: Context, ns: Namespace) -> int:
    if getattr(ns, "listener", False):
        from kpctl.shell.listeners import cmd_show_listener
        return cmd_show_listener(ctx, ns.id)
    p = ctx.client().get(ns.id)
    http = http_counts(p)
    if ctx.json:
        d = p.to_dict()
        if http is not None:
            d["http"] = http
        ctx.emit_json(d)
        return 0
    from kpctl.shell.render import proxy_panel
    ctx.console.print(proxy_panel(p, now=ctx.clock(), http=http))
    return 0


def http_counts(p) -> dict | None:
    """Requests and responses the proxy's http parser framed (header
    blocks, counted in its state map) and the requests denied; None when
    its a-to-b parser is not the http parser (or its map cannot be read)."""
    if p.a_to_b.parser_id is None:
        return None
    from kpctl import http
    from kpctl.errors import KproxyError
    try:
        c = http.counts(p.a_to_b.parser_id, p.id, p.created_ns)
    except (KproxyError, OSError):
        return None
    return {"requests": c.requests if c else 0, "responses": c.responses if c else 0,
            "denied": p.a_to_b.denied + p.b_to_a.denied}


# -- create ------------------------------------------------------------------


def check_create(cmd: Command, ns: Namespace) -> None:
    """Exactly one of: --fd A --fd B; --listen L --connect T; --connect A --connect B."""
    fds, listen, connect = ns.fds, ns.listen, ns.connect
    if fds and (listen or connect):
        raise UsageError("create: --fd joins inherited sockets; --listen/--connect make "
                         "their own: not both", cmd)
    if fds or not (listen or connect):
        _check_fds(cmd, fds)
    elif listen is not None:
        if len(connect) != 1:
            raise UsageError(f"create: --listen needs exactly one --connect (the target; "
                             f"got {len(connect)})", cmd)
    elif len(connect) != 2:
        raise UsageError(f"create: without --listen, give --connect twice (A then B; got "
                         f"{len(connect)})", cmd)
    if ns.timeout is not None and fds:
        raise UsageError("create: --timeout goes with --listen/--connect", cmd)


def _check_fds(cmd: Command, fds: list[int]) -> None:
    if len(fds) != 2:
        raise UsageError(f"create: needs exactly two --fd options (got {len(fds)}), or "
                         f"--listen/--connect", cmd)
    if fds[0] == fds[1]:
        raise UsageError("create: the two --fd must be different sockets", cmd)
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:
            raise UsageError(f"create: fd {fd} is not open in kpctl (pass it to kpctl as an "
                             f"inherited file descriptor)", cmd) from None


def _resolve(cmd: Command, text: str, listen: bool) -> Any:
    from kpctl.address import resolve
    from kpctl.serve import ServeError
    try:
        return resolve(text, listen=listen)
    except ServeError as e:
        raise UsageError(f"create: {e.message}", cmd) from None


def _made_sockets(ctx: Context, ns: Namespace) -> tuple[Any, Any]:
    """(A, B) for --listen/--connect: the accepted client and the target,
    or the two targets.  Closed again when a step fails."""
    from kpctl.shell import joining
    from kpctl.shell.table import find_command
    cmd = find_command("create")
    make = ctx.socket_factory or joining.socket_factory_for(ctx.netns)
    if ns.listen is None:
        first, second = (_resolve(cmd, t, listen=False) for t in ns.connect)
        a = joining.connect_one(first, ns.timeout, make)
        try:
            return a, joining.connect_one(second, ns.timeout, make)
        except BaseException:
            a.close()
            raise
    listen = _resolve(cmd, ns.listen, listen=True)
    target = _resolve(cmd, ns.connect[0], listen=False)
    from kpctl.address import check_distinct
    from kpctl.serve import ServeError
    try:
        check_distinct(listen, target)
    except ServeError as e:
        raise UsageError(f"create: {e.message}", cmd) from None
    ls = joining.open_listener(listen, make)
    try:
        host, port = ls.getsockname()[:2]
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        ctx.note(f"waiting for a client on {where}...")  # stderr: port 0 picks one
        a = joining.accept_one(ls, where, ns.timeout)
    finally:
        ls.close()  # one client only: nobody else may queue
    try:
        return a, joining.connect_one(target, ns.timeout, make)
    except BaseException:
        a.close()
        raise


def cmd_create(ctx: Context, ns: Namespace) -> int:
    kp = ctx.client()  # no module: said before waiting for a client
    if ns.fds:
        p = kp.create(ns.fds[0], ns.fds[1])
    else:
        a, b = _made_sockets(ctx, ns)
        try:
            p = kp.create(a, b)
        finally:  # the proxy holds its own references
            a.close()
            b.close()
    ctx.changed(added=[p.id])
    if ctx.json:
        ctx.emit_json(p.to_dict())
    else:
        ctx.write(f"proxy {p.id} created")
    return 0


# -- destroy -----------------------------------------------------------------


def check_destroy(cmd: Command, ns: Namespace) -> None:
    if ns.all and ns.ids:
        raise UsageError("destroy: give proxy ids or --all, not both", cmd)
    if not ns.all and not ns.ids:
        raise UsageError("destroy: missing ID (or --all)", cmd)


def cmd_destroy(ctx: Context, ns: Namespace) -> int:
    kp = ctx.client()
    ids = sorted(p.id for p in kp.list()) if ns.all else list(ns.ids)
    done: list[int] = []
    failed = None
    for pid in ids:
        try:
            kp.destroy(pid)
        except Exception as e:
            if not is_kernel_error(e):
                raise
            if ns.all and e.errno == 2:  # ended on its own meanwhile
                continue
            if failed is None:
                failed = e
            if not ctx.json:
                ctx.report_kernel(e, where=f"proxy {pid}: ")
            continue
        done.append(pid)
    ctx.changed(removed=done)
    if ctx.json:
        out: dict[str, Any] = {"destroyed": done}
        if failed is not None:
            out["error"] = {"errno": failed.errno, "errno_name": failed.errno_name,
                            "message": failed.message}
        ctx.emit_json(out)
    else:
        for pid in done:
            ctx.write(f"proxy {pid} destroyed")
    return EXIT_KERNEL if failed is not None else 0
