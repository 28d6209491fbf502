"""Handlers of BPF programs on a proxy: attach, detach, http-rules."""

from __future__ import annotations

import errno
import os

from kpctl.errors import KproxyError
from kpctl.shell import httpopts
from kpctl.shell.args import Command, Namespace, UsageError
from kpctl.shell.context import Context

HTTP_PARSER = "http"
HTTP_FILTER = "http-filter"


def dirs_text(direction: str) -> str:
    return "both directions" if direction == "both" else direction


def check_attach(cmd: Command, ns: Namespace) -> None:
    """--prefix/--offset configure a drop-prefix verdict, the rule options
    an http-filter one."""
    if httpopts.given(ns) and (ns.kind, ns.prog) != ("verdict", HTTP_FILTER):
        raise UsageError("attach: the rule options (--rules, --deny-path ...) configure the "
                         "http-filter verdict", cmd)
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


def _load(ctx: Context, kp, ns: Namespace):
    """The program to attach: the shipped HTTP programs share the state of
    the proxy's http parser; anything else through load_configured()."""
    from kpctl import bpf, http
    if ns.kind == "parser" and ns.prog == HTTP_PARSER and ns.dir != "both":
        # The other direction's http parser, if any: the same program, so
        # that both directions share one state (a response to HEAD).
        other = kp.get(ns.id).b_to_a if ns.dir == "a-to-b" else kp.get(ns.id).a_to_b
        if other.parser_id is not None and _is_http_parser(other.parser_id):
            fd = bpf.libbpf().bpf_prog_get_fd_by_id(other.parser_id)
            if fd >= 0:
                try:
                    return bpf.from_fd(fd, source=HTTP_PARSER)
                finally:
                    os.close(fd)
    if ns.kind == "verdict" and ns.prog == HTTP_FILTER:
        p = kp.get(ns.id)
        dirs = [p.b_to_a] if ns.dir == "b-to-a" else [p.a_to_b, p.b_to_a]
        parser_id = next((d.parser_id for d in dirs if d.parser_id is not None), None)
        if parser_id is None:
            raise KproxyError(errno.EINVAL, f"proxy {ns.id} has no parser: attach the http "
                                            f"parser first (attach {ns.id} parser http)")
        rules = httpopts.rules_from(ns, "attach")
        state = http.parser_state_map(parser_id)
        try:
            return http.load_filter(state, rules)
        finally:
            os.close(state)
    from kpctl.bpf import load_configured
    prefix = None if ns.prefix is None else ns.prefix.encode()
    return load_configured(ns.prog, prefix=prefix, offset=ns.offset, loader=ctx.prog_loader)


def _is_http_parser(prog_id: int) -> bool:
    from kpctl import bpf, http
    try:
        os.close(http.parser_state_map(prog_id))
        return True
    except bpf.BpfError:
        return False


def cmd_attach(ctx: Context, ns: Namespace) -> int:
    from kpctl import http
    from kpctl.bpf import PREFIX_DEFAULT_OFFSET
    kp = ctx.client()  # no module: "kproxy module not loaded", before any loading
    prog = _load(ctx, kp, ns)
    is_filter = ns.kind == "verdict" and ns.prog == HTTP_FILTER
    try:
        kp.attach(ns.id, ns.kind, prog, ns.dir,
                  **({"replies": http.CANNED_REPLIES} if is_filter else {}))
        info = {"id": ns.id, "kind": ns.kind, "direction": ns.dir,
                "prog": {"id": prog.id, "name": prog.name, "source": str(prog.source)}}
        if ns.prefix is not None:
            info["prefix"] = ns.prefix
            info["offset"] = PREFIX_DEFAULT_OFFSET if ns.offset is None else ns.offset
        if is_filter:
            info["rules"] = http.to_dict(httpopts.rules_from(ns, "attach"))
    finally:
        prog.close()  # the kernel holds its own reference now
    if ctx.json:
        ctx.emit_json(info)
    else:
        ctx.write(f"proxy {ns.id}: {ns.kind} {prog.name} (id {prog.id}) attached on "
                  f"{dirs_text(ns.dir)}")
    return 0


def _filter_id(ctx: Context, ns: Namespace) -> tuple[str, int]:
    """What http-rules works on: ("proxy N" or "listener N", its verdict's id)."""
    kp = ctx.client()
    if ns.listener:
        what, vid = f"listener {ns.id}", kp.get_listener(ns.id).verdict_id
    else:
        p = kp.get(ns.id)
        what, vid = f"proxy {ns.id}", p.a_to_b.verdict_id or p.b_to_a.verdict_id
    if vid is None:
        raise KproxyError(errno.ENOENT, f"{what} has no verdict (attach {HTTP_FILTER} first)")
    return what, vid


def cmd_http_rules(ctx: Context, ns: Namespace) -> int:
    from kpctl import http
    what, vid = _filter_id(ctx, ns)
    if httpopts.given(ns):
        rules = httpopts.rules_from(ns, "http-rules")
        http.apply_attached(vid, rules)
        verb = "set"
    else:
        rules = http.rules_attached(vid)
        verb = "in force"
    if ctx.json:
        ctx.emit_json({"target": what.split()[0], "id": ns.id, "verdict_id": vid,
                       "rules": http.to_dict(rules)})
        return 0
    lines = http.to_lines(rules)
    ctx.write(f"{what}: http-filter (id {vid}) rules {verb}"
              + (":" if lines else ": none, every well-formed request passes"))
    for line in lines:
        ctx.write("  " + line)
    return 0


def cmd_detach(ctx: Context, ns: Namespace) -> int:
    ctx.client().detach(ns.id, ns.kind, ns.dir)
    if ctx.json:
        ctx.emit_json({"id": ns.id, "kind": ns.kind, "direction": ns.dir, "detached": True})
    else:
        ctx.write(f"proxy {ns.id}: {ns.kind} detached from {dirs_text(ns.dir)}")
    return 0
