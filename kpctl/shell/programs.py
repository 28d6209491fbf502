"""Handlers of BPF programs on a proxy: attach, detach."""

from __future__ import annotations

from kpctl.shell.args import Command, Namespace, UsageError
from kpctl.shell.context import Context


def dirs_text(direction: str) -> str:
    return "both directions" if direction == "both" else direction


def check_attach(cmd: Command, ns: Namespace) -> None:
    """--prefix/--offset configure a drop-prefix verdict."""
    if ns.offset is not None and ns.prefix is None:
        raise UsageError("attach: --offset goes with --prefix", cmd)
    if ns.prefix is None:
        return
    if ns.kind != "verdict":
        raise UsageError("attach: --prefix configures a verdict (drop-prefix), not a parser",
                         cmd)
    if not ns.prefix:
        raise UsageError("attach: --prefix must not be empty", cmd)
    from kpctl.bpf import PREFIX_MAX
    if len(ns.prefix.encode()) > PREFIX_MAX:
        raise UsageError(f"attach: --prefix is at most {PREFIX_MAX} bytes", cmd)


def cmd_attach(ctx: Context, ns: Namespace) -> int:
    from kpctl.bpf import PREFIX_DEFAULT_OFFSET, load_configured
    kp = ctx.client()  # no module: "kproxy module not loaded", before any loading
    prefix = None if ns.prefix is None else ns.prefix.encode()
    prog = load_configured(ns.prog, prefix=prefix, offset=ns.offset, loader=ctx.prog_loader)
    try:
        kp.attach(ns.id, ns.kind, prog, ns.dir)
        info = {"id": ns.id, "kind": ns.kind, "direction": ns.dir,
                "prog": {"id": prog.id, "name": prog.name, "source": str(prog.source)}}
        if ns.prefix is not None:
            info["prefix"] = ns.prefix
            info["offset"] = PREFIX_DEFAULT_OFFSET if ns.offset is None else ns.offset
    finally:
        prog.close()  # the kernel holds its own reference now
    if ctx.json:
        ctx.emit_json(info)
    else:
        ctx.write(f"proxy {ns.id}: {ns.kind} {prog.name} (id {prog.id}) attached on "
                  f"{dirs_text(ns.dir)}")
    return 0


def cmd_detach(ctx: Context, ns: Namespace) -> int:
    ctx.client().detach(ns.id, ns.kind, ns.dir)
    if ctx.json:
        ctx.emit_json({"id": ns.id, "kind": ns.kind, "direction": ns.dir, "detached": True})
    else:
        ctx.write(f"proxy {ns.id}: {ns.kind} detached from {dirs_text(ns.dir)}")
    return 0
