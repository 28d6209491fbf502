"""Handlers about kpctl itself: help, version."""

from __future__ import annotations

from kpctl.shell.args import Namespace
from kpctl.shell.context import Context


def cmd_help(ctx: Context, ns: Namespace) -> int:
    from kpctl.shell.table import command_help, overview_help, resolve
    if ns.command:
        text = command_help(resolve(ns.command), prog=None if ctx.interactive else ctx.prog)
    else:
        text = overview_help(prog=ctx.prog, interactive=ctx.interactive)
    if ctx.json:
        ctx.emit_json({"help": text})
    else:
        ctx.write(text)
    return 0


def version_string() -> str:
    import kpctl
    v = getattr(kpctl, "__version__", None)
    if v:
        return str(v)
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("kpctl")
    except PackageNotFoundError:
        return "0+unknown"


def cmd_version(ctx: Context, ns: Namespace) -> int:
    v = version_string()
    if ctx.json:
        ctx.emit_json({"version": v})
    else:
        ctx.write(f"kpctl {v}")
    return 0
