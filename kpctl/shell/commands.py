"""The command table: one definition of every kpctl command for both modes.

The one-shot CLI (`kpctl list`), the batch mode (`kpctl -b FILE`) and the
shell (`kpctl> list`) all go through `execute()`.  The completer, the man
page and the bash completion are generated from `COMMANDS`.

Exit codes: 0 ok, 1 usage error, 2 the kernel (or the system) refused.

Only the standard library is imported at module level: rich, the library
(and so pyroute2) are imported by the handlers that need them.
"""

from __future__ import annotations

import os
import sys
import time

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_KERNEL = 2

PROC_STAT = "/proc/net/kproxy_stat"
GAUGES = ("active",)


class UsageError(Exception):
    """A bad command line: exit 1, a clear message, no traceback."""

    def __init__(self, message: str, command: "Command | None" = None) -> None:
        super().__init__(message)
        self.message = message
        self.command = command


def is_kernel_error(exc: BaseException) -> bool:
    """A KproxyError (duck-typed: errno, message, errno_name)."""
    return all(hasattr(exc, a) for a in ("errno", "message", "errno_name"))


# --------------------------------------------------------------------------
# Declarations


class Opt:
    """An option.  metavar None: a flag (bool); else it takes a value."""

    __slots__ = ("flags", "dest", "help", "metavar", "type", "multi", "choices",
                 "complete", "default")

    def __init__(self, flags, dest, help, metavar=None, type=str, multi=False,
                 choices=(), complete=None, default=None):
        self.flags = tuple(flags)
        self.dest = dest
        self.help = help
        self.metavar = metavar
        self.type = type
        self.multi = multi
        self.choices = tuple(choices)
        self.complete = complete
        self.default = default

    @property
    def takes_value(self) -> bool:
        return self.metavar is not None

    def synopsis(self) -> str:
        s = self.flags[0]
        if self.takes_value:
            s += " " + self.metavar
        s = "[" + s + "]"
        return s + "..." if self.multi else s


class Arg:
    """A positional argument.  nargs: '1', '?', '*', '+'."""

    __slots__ = ("dest", "metavar", "help", "nargs", "type", "choices", "complete")

    def __init__(self, dest, metavar, help, nargs="1", type=str, choices=(),
                 complete=None):
        self.dest = dest
        self.metavar = metavar
        self.help = help
        self.nargs = nargs
        self.type = type
        self.choices = tuple(choices)
        self.complete = complete

    def synopsis(self) -> str:
        m = "|".join(self.choices) if self.choices else self.metavar
        return {"1": m, "?": f"[{m}]", "*": f"[{m}...]", "+": f"{m}..."}[self.nargs]


class Command:
    __slots__ = ("name", "summary", "description", "args", "opts", "run",
                 "check", "changes", "examples", "usage")

    def __init__(self, name, summary, run, *, args=(), opts=(), description="",
                 check=None, changes=False, examples=(), usage=None):
        self.name = name
        self.summary = summary
        self.description = description
        self.args = tuple(args)
        self.opts = tuple(opts)
        self.run = run
        self.check = check
        self.changes = changes  # refresh the shell's live ids after it
        self.examples = tuple(examples)
        self.usage = usage  # a synopsis written by hand, when it reads better

    def synopsis(self) -> str:
        if self.usage:
            return f"{self.name} {self.usage}".strip()
        parts = [self.name]
        parts += [o.synopsis() for o in self.opts]
        parts += [a.synopsis() for a in self.args]
        return " ".join(parts)

    def find_opt(self, name: str) -> "Opt":
        for o in self.opts:
            if name in o.flags:
                return o
        if name.startswith("--"):
            cands = [o for o in self.opts for f in o.flags
                     if f.startswith("--") and f.startswith(name)]
            if len(cands) == 1:
                return cands[0]
            if len(cands) > 1:
                names = ", ".join(sorted({o.flags[-1] for o in cands}))
                raise UsageError(f"{self.name}: ambiguous option '{name}': could be {names}", self)
        raise UsageError(f"{self.name}: unknown option '{name}'", self)


# --------------------------------------------------------------------------
# Value types (their error text is shown to the user)


def proxy_id(text: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise ValueError(f"'{text}' is not a proxy id (a number, 1 or more)") from None
    if not 1 <= v <= 0xFFFFFFFF:
        raise ValueError(f"'{text}' is not a proxy id (a number, 1 or more)")
    return v


def fd_number(text: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise ValueError(f"'{text}' is not a file descriptor number") from None
    if v < 0:
        raise ValueError(f"'{text}' is not a file descriptor number")
    return v


def seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a number of seconds") from None
    if not v > 0 or v != v or v == float("inf"):
        raise ValueError(f"'{text}' is not a positive number of seconds")
    return v


def count(text: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise ValueError(f"'{text}' is not a count (a number, 1 or more)") from None
    if v < 1:
        raise ValueError(f"'{text}' is not a count (a number, 1 or more)")
    return v


# --------------------------------------------------------------------------
# Parsing


class Namespace(dict):
    """Parsed arguments: ns.dest or ns['dest']."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _convert(cmd, what, typ, choices, text):
    if choices and text not in choices:
        raise UsageError(f"{cmd.name}: {what} must be one of {', '.join(choices)}, not '{text}'", cmd)
    try:
        return typ(text)
    except ValueError as e:
        where = f"{what}: " if what.startswith("-") else ""
        raise UsageError(f"{cmd.name}: {where}{e}", cmd) from None


def _looks_negative_number(t: str) -> bool:
    return len(t) > 1 and t[0] == "-" and t[1:].replace(".", "", 1).isdigit()


def parse_args(cmd: Command, tokens) -> Namespace:
    ns = Namespace()
    for o in cmd.opts:
        ns[o.dest] = [] if o.multi else (o.default if o.takes_value else False)
    pos: list[str] = []
    tokens = list(tokens)
    i = 0
    only_pos = False
    while i < len(tokens):
        t = tokens[i]
        i += 1
        if not only_pos and t == "--":
            only_pos = True
            continue
        if not only_pos and t.startswith("-") and t != "-" and not _looks_negative_number(t):
            value = None
            if t.startswith("--"):
                name, eq, val = t.partition("=")
                if eq:
                    value = val
            else:
                name = t[:2]
                if len(t) > 2:
                    value = t[2:]
            opt = cmd.find_opt(name)
            if not opt.takes_value:
                if value is not None:
                    if not t.startswith("--") and all(
                            any(f == "-" + c for o2 in cmd.opts for f in o2.flags) for c in value):
                        # bundled short flags: -ab
                        ns[opt.dest] = True
                        for c in value:
                            o2 = cmd.find_opt("-" + c)
                            if o2.takes_value:
                                raise UsageError(f"{cmd.name}: option -{c} needs a value ({o2.metavar})", cmd)
                            ns[o2.dest] = True
                        continue
                    raise UsageError(f"{cmd.name}: option {name} takes no value", cmd)
                ns[opt.dest] = True
                continue
            if value is None:
                if i >= len(tokens):
                    raise UsageError(f"{cmd.name}: option {name} needs a value ({opt.metavar})", cmd)
                value = tokens[i]
                i += 1
            v = _convert(cmd, f"{name} {opt.metavar}", opt.type, opt.choices, value)
            if opt.multi:
                ns[opt.dest].append(v)
            else:
                ns[opt.dest] = v
            continue
        pos.append(t)
    # positionals
    j = 0
    for k, a in enumerate(cmd.args):
        need_later = sum(1 for b in cmd.args[k + 1:] if b.nargs in ("1", "+"))
        if a.nargs == "1":
            if j >= len(pos):
                raise UsageError(f"{cmd.name}: missing {a.metavar}", cmd)
            ns[a.dest] = _convert(cmd, a.metavar, a.type, a.choices, pos[j])
            j += 1
        elif a.nargs == "?":
            if j < len(pos) - need_later:
                ns[a.dest] = _convert(cmd, a.metavar, a.type, a.choices, pos[j])
                j += 1
            else:
                ns[a.dest] = None
        else:
            take = max(0, len(pos) - j - need_later)
            if a.nargs == "+" and take == 0:
                raise UsageError(f"{cmd.name}: missing {a.metavar}", cmd)
            ns[a.dest] = [_convert(cmd, a.metavar, a.type, a.choices, p) for p in pos[j:j + take]]
            j += take
    if j < len(pos):
        extra = " ".join(pos[j:])
        raise UsageError(f"{cmd.name}: unexpected argument '{extra}'", cmd)
    if cmd.check:
        cmd.check(cmd, ns)
    return ns


def resolve(word: str) -> Command:
    """A command by its name or a unique prefix of it."""
    for c in COMMANDS:
        if c.name == word:
            return c
    cands = [c for c in COMMANDS if c.name.startswith(word)]
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise UsageError(f"unknown command '{word}'; 'help' lists the commands")
    raise UsageError(f"ambiguous command '{word}': could be {', '.join(c.name for c in cands)}")


# --------------------------------------------------------------------------
# The context a command runs in


class Context:
    """Everything a handler may touch, injectable for tests.

    client_factory(netns) returns an object with the methods of
    kpctl.Kproxy (create, get, list, destroy, attach, detach, monitor,
    close); prog_loader(spec) returns a loaded BPF program (kpctl.bpf.load).
    """

    def __init__(self, *, client_factory=None, netns=None, json=False, pretty=False,
                 color=None, stdout=None, stderr=None, stdin=None, env=None,
                 totals_reader=None, clock=None, sleep=None, width=None,
                 interactive=False, prog="kpctl", prog_loader=None):
        self.client_factory = client_factory or default_client_factory
        self.prog_loader = prog_loader or default_prog_loader
        self.netns = netns
        self.json = json or pretty
        self.pretty = pretty
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.stdin = stdin if stdin is not None else sys.stdin
        self.env = env if env is not None else os.environ
        if color is None:
            color = _isatty(self.stdout) and not self.env.get("NO_COLOR")
        self.color = bool(color) and not self.json
        self.totals_reader = totals_reader
        self.clock = clock or time.time
        self.sleep = sleep or time.sleep
        self.width = width
        self.interactive = interactive
        self.prog = prog
        self._client = None
        self._console = None
        self._err_console = None

    # the library, opened on first use and kept (the shell reuses it)
    def client(self):
        if self._client is None:
            self._client = self.client_factory(self.netns)
        return self._client

    def close(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    def read_totals(self):
        if self.totals_reader is not None:
            return self.totals_reader()
        return default_totals_reader(self.netns)

    @property
    def console(self):
        if self._console is None:
            from kpctl.shell.render import make_console
            self._console = make_console(self.stdout, color=self.color, width=self.width,
                                         env=self.env)
        return self._console

    def emit_json(self, obj) -> None:
        import json
        if self.pretty:
            text = json.dumps(obj, indent=2, default=_json_default)
        else:
            text = json.dumps(obj, separators=(",", ":"), default=_json_default)
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def write(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    # errors
    def report_usage(self, exc: UsageError, where: str = "") -> None:
        if self.json:
            self.emit_json({"error": {"errno": 22, "name": "EINVAL",
                                      "message": where + exc.message}})
            return
        prefix = "" if self.interactive else f"{self.prog}: "
        self.stderr.write(f"{prefix}{where}{exc.message}\n")
        if exc.command is not None:
            self.stderr.write(f"usage: {'' if self.interactive else self.prog + ' '}"
                              f"{exc.command.synopsis()}\n")
        self.stderr.flush()

    def report_kernel(self, exc, where: str = "") -> None:
        if is_kernel_error(exc):
            num, name, msg = exc.errno, exc.errno_name, exc.message
        else:  # an OSError from the system (no netns, no module, ...)
            import errno as errno_mod
            num = exc.errno or 0
            name = errno_mod.errorcode.get(num, f"E{num}")
            msg = exc.strerror or str(exc)
            if getattr(exc, "filename", None):
                msg += f": {exc.filename}"
        if not msg:
            msg = os.strerror(num)
        if self.json:
            self.emit_json({"error": {"errno": num, "name": name, "message": where + msg}})
            return
        self.stderr.write(f"{where}Error: {msg} ({name})\n")
        self.stderr.flush()


def _isatty(f) -> bool:
    try:
        return f.isatty()
    except Exception:
        return False


def _json_default(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def default_client_factory(netns):
    from kpctl import Kproxy
    return Kproxy(netns=netns)


def default_prog_loader(spec):
    from kpctl.bpf import load
    return load(spec)


def _netns_path(netns: str) -> str:
    if "/" in netns:
        return netns
    for d in ("/run/netns", "/var/run/netns"):
        p = os.path.join(d, netns)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(2, "no such network namespace", os.path.join("/run/netns", netns))


def default_totals_reader(netns=None):
    """Read /proc/net/kproxy_stat, in NETNS when given.

    /proc/net follows the reading thread's netns: a short-lived thread
    enters NETNS with setns(2) and reads /proc/thread-self/net/.
    """
    from kpctl.procfs import read_totals
    if not netns:
        return read_totals(PROC_STAT)
    import threading
    path = _netns_path(netns)
    box = {}

    def work():
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e), path)
            finally:
                os.close(fd)
            box["v"] = read_totals("/proc/thread-self/net/kproxy_stat")
        except BaseException as e:  # re-raised in the caller
            box["e"] = e

    t = threading.Thread(target=work, name="kpctl-netns")
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]


def totals_dict(totals) -> dict:
    if hasattr(totals, "to_dict"):
        return dict(totals.to_dict())
    return dict(totals)


# --------------------------------------------------------------------------
# Handlers


def cmd_list(ctx, ns):
    proxies = sorted(ctx.client().list(), key=lambda p: p.id)
    if ctx.json:
        ctx.emit_json([p.to_dict() for p in proxies])
        return 0
    from kpctl.shell.render import proxy_table
    if not proxies:
        if ctx.interactive or _isatty(ctx.stdout):
            ctx.console.print("no proxies", style="dim")
        return 0
    ctx.console.print(proxy_table(proxies, now=ctx.clock()))
    return 0


def cmd_show(ctx, ns):
    p = ctx.client().get(ns.id)
    if ctx.json:
        ctx.emit_json(p.to_dict())
        return 0
    from kpctl.shell.render import proxy_panel
    ctx.console.print(proxy_panel(p, now=ctx.clock()))
    return 0


def _check_create(cmd, ns):
    if len(ns.fds) != 2:
        raise UsageError(f"create: needs exactly two --fd options (got {len(ns.fds)})", cmd)
    if ns.fds[0] == ns.fds[1]:
        raise UsageError("create: the two --fd must be different sockets", cmd)
    for fd in ns.fds:
        try:
            os.fstat(fd)
        except OSError:
            raise UsageError(f"create: fd {fd} is not open in kpctl (pass it to kpctl as an "
                             f"inherited file descriptor)", cmd) from None


def cmd_create(ctx, ns):
    p = ctx.client().create(ns.fds[0], ns.fds[1])
    if ctx.json:
        ctx.emit_json(p.to_dict())
    else:
        ctx.write(f"proxy {p.id} created")
    return 0


def _check_destroy(cmd, ns):
    if ns.all and ns.ids:
        raise UsageError("destroy: give proxy ids or --all, not both", cmd)
    if not ns.all and not ns.ids:
        raise UsageError("destroy: missing ID (or --all)", cmd)


def cmd_destroy(ctx, ns):
    kp = ctx.client()
    ids = sorted(p.id for p in kp.list()) if ns.all else list(ns.ids)
    done, failed = [], None
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
    if ctx.json:
        if failed is not None:
            ctx.emit_json({"destroyed": done, "error": {
                "errno": failed.errno, "name": failed.errno_name, "message": failed.message}})
        else:
            ctx.emit_json({"destroyed": done})
    else:
        for pid in done:
            ctx.write(f"proxy {pid} destroyed")
    return EXIT_KERNEL if failed is not None else 0


def _dirs_text(direction: str) -> str:
    return "both directions" if direction == "both" else direction


def _check_prefix(cmd, ns, has_verdict: bool, not_verdict: str):
    """--prefix/--offset of a drop-prefix verdict (attach and serve)."""
    where = cmd.name
    if ns.offset is not None and ns.prefix is None:
        raise UsageError(f"{where}: --offset goes with --prefix", cmd)
    if ns.prefix is not None:
        if not has_verdict:
            raise UsageError(f"{where}: --prefix configures a verdict (drop-prefix), "
                             f"{not_verdict}", cmd)
        if not ns.prefix:
            raise UsageError(f"{where}: --prefix must not be empty", cmd)
        from kpctl.bpf import PREFIX_MAX
        if len(ns.prefix.encode()) > PREFIX_MAX:
            raise UsageError(f"{where}: --prefix is at most {PREFIX_MAX} bytes", cmd)


def _check_attach(cmd, ns):
    _check_prefix(cmd, ns, ns.kind == "verdict", "not a parser")


def _load_prog(ctx, spec, prefix=None, offset=None):
    """ctx.prog_loader(spec), a drop-prefix verdict configured with `prefix`
    at `offset` (default 4): (program, offset).  Closed again on failure."""
    prog = ctx.prog_loader(spec)
    try:
        if prefix is not None:
            from kpctl.bpf import PREFIX_DEFAULT_OFFSET
            offset = PREFIX_DEFAULT_OFFSET if offset is None else offset
            prog.set_prefix(prefix.encode(), offset)
    except BaseException:
        prog.close()
        raise
    return prog, offset


# Loading errors that mean "PROG names nothing usable here": a usage error
# (exit 1) for serve, which checks everything before it starts.  Anything
# else (the verifier's refusal, EPERM...) is the system's: exit 2.
_NOT_FOUND_ERRNOS = (2, 20, 21)  # ENOENT, ENOTDIR, EISDIR


def _is_bad_name(exc) -> bool:
    return (is_kernel_error(exc) and exc.errno in _NOT_FOUND_ERRNOS
            and not getattr(exc, "log", ""))


def cmd_attach(ctx, ns):
    kp = ctx.client()  # no module: "kproxy module not loaded", before any loading
    prog, offset = _load_prog(ctx, ns.prog, ns.prefix, ns.offset)
    try:
        kp.attach(ns.id, ns.kind, prog, ns.dir)
        info = {"id": ns.id, "kind": ns.kind, "direction": ns.dir,
                "prog": {"id": prog.id, "name": prog.name, "source": str(prog.source)}}
        if ns.prefix is not None:
            info["prefix"] = ns.prefix
            info["offset"] = offset
    finally:
        prog.close()  # the kernel holds its own reference now
    if ctx.json:
        ctx.emit_json(info)
    else:
        ctx.write(f"proxy {ns.id}: {ns.kind} {prog.name} (id {prog.id}) attached on "
                  f"{_dirs_text(ns.dir)}")
    return 0


def cmd_detach(ctx, ns):
    ctx.client().detach(ns.id, ns.kind, ns.dir)
    if ctx.json:
        ctx.emit_json({"id": ns.id, "kind": ns.kind, "direction": ns.dir, "detached": True})
    else:
        ctx.write(f"proxy {ns.id}: {ns.kind} detached from {_dirs_text(ns.dir)}")
    return 0


def offset_value(text: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise ValueError(f"'{text}' is not a byte offset (0 or more)") from None
    if not 0 <= v <= 1 << 20:
        raise ValueError(f"'{text}' is not a byte offset (0 to 1048576)")
    return v


def cmd_stats(ctx, ns):
    interval = ns.interval
    if interval is None and ns.count is not None:
        interval = 1.0
    first = totals_dict(ctx.read_totals())
    if interval is None:
        if ctx.json:
            ctx.emit_json(first)
        else:
            from kpctl.shell.render import totals_text
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
                from kpctl.shell.render import stats_interval_text
                ctx.write(stats_interval_text(t, dt, deltas, rates))
            prev, prev_t = cur, t
            n += 1
    except KeyboardInterrupt:
        pass
    return 0


def cmd_monitor(ctx, ns):
    from kpctl.shell.render import event_text
    n = 0
    it = ctx.client().monitor()
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


def cmd_top(ctx, ns):
    from kpctl.shell.render import top_rows, top_table
    kp = ctx.client()
    prev, prev_t = None, None
    n = 0
    live = None
    use_live = (not ctx.json) and _isatty(ctx.stdout) and ctx.console.is_terminal
    try:
        while True:
            proxies, t = list(kp.list()), ctx.clock()
            rows = top_rows(proxies, prev, (t - prev_t) if prev_t else None, now=t)
            if ctx.json:
                ctx.emit_json({"timestamp": t, "proxies": [
                    dict(r["proxy"].to_dict(), rate_a_to_b=r["rate_ab"], rate_b_to_a=r["rate_ba"])
                    for r in rows]})
            else:
                table = top_table(rows, t)
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


def hostport(text: str) -> str:
    """LISTEN/TARGET syntax (resolved later, once, by the serve command)."""
    from kpctl.serve import ServeError, split_hostport
    try:
        split_hostport(text, listen=False)
    except ServeError as e:
        raise ValueError(e.message) from None
    return text


def listen_hostport(text: str) -> str:
    from kpctl.serve import ServeError, split_hostport
    try:
        split_hostport(text, listen=True)
    except ServeError as e:
        raise ValueError(e.message) from None
    return text


def _check_serve(cmd, ns):
    for kind in ("parser", "verdict"):
        if getattr(ns, kind) == "":
            raise UsageError(f"serve: --{kind} must name a program", cmd)
    if ns.verdict is not None and ns.parser is None:
        raise UsageError("serve: --verdict: a verdict needs a parser (give --parser too)", cmd)
    _check_prefix(cmd, ns, ns.verdict is not None, "give --verdict")
    if ns.drain and ns.kill:
        raise UsageError("serve: --drain and --kill are exclusive (what happens to running "
                         "proxies on stop)", cmd)


def cmd_serve(ctx, ns):
    from kpctl.serve import (Server, ServeError, ServeOptions, check_distinct, close_programs,
                             resolve)
    from kpctl.shell.serve_view import ServeView
    cmd = find_command("serve")
    if ns.json:
        ctx.json = True
        ctx.color = False
    opts = ServeOptions(max_conns=ns.max_conns, connect_timeout=ns.connect_timeout,
                        backlog=ns.backlog, reuseport=ns.reuseport,
                        on_stop="drain" if ns.drain else "kill" if ns.kill else "leave",
                        parser=ns.parser, verdict=ns.verdict, prefix=ns.prefix,
                        offset=ns.offset)
    try:
        opts.check()
        listen = resolve(ns.listen, listen=True)   # names are resolved once, here
        target = resolve(ns.target)
        check_distinct(listen, target)
    except ServeError as e:
        raise UsageError(f"serve: {e.message}", cmd) from None
    client = ctx.client()   # no module: "kproxy module not loaded", exit 2
    # The programs are loaded once, here, and stay open while serving: every
    # proxy gets the same ones.  A PROG that names nothing: exit 1; the
    # verifier's (or the system's) refusal: exit 2, as for attach.
    programs = {}
    try:
        for kind, spec, prefix in (("parser", ns.parser, None),
                                   ("verdict", ns.verdict, ns.prefix)):
            if spec is None:
                continue
            try:
                programs[kind], _ = _load_prog(ctx, spec, prefix, ns.offset)
            except Exception as e:
                if _is_bad_name(e):
                    raise UsageError(f"serve: --{kind}: {e.message}", cmd) from None
                raise
        view = ServeView(ctx, quiet=ns.quiet)
        server = Server(client, listen, target, opts, on_event=view, netns=ctx.netns,
                        programs=programs)
        server.open()           # EADDRINUSE, EACCES...: exit 2
        server.run(install_signals=True)
    finally:
        close_programs(programs)  # the kernel holds its own reference per proxy
    return 0


def cmd_help(ctx, ns):
    if ns.command:
        cmd = resolve(ns.command)
        text = command_help(cmd, prog=None if ctx.interactive else ctx.prog)
    else:
        text = overview_help(prog=ctx.prog, interactive=ctx.interactive)
    if ctx.json:
        ctx.emit_json({"help": text})
    else:
        ctx.write(text)
    return 0


def version_string() -> str:
    try:
        import kpctl
        v = getattr(kpctl, "__version__", None)
        if v:
            return str(v)
    except Exception:
        pass
    try:
        from importlib.metadata import version
        return version("kpctl")
    except Exception:
        return "0+unknown"


def cmd_version(ctx, ns):
    v = version_string()
    if ctx.json:
        ctx.emit_json({"version": v})
    else:
        ctx.write(f"kpctl {v}")
    return 0


# --------------------------------------------------------------------------
# The table

_DIR = Opt(("--dir",), "dir", "direction the program applies to", metavar="DIR",
           choices=("a-to-b", "b-to-a", "both"), default="both")

COMMANDS: list[Command] = [
    Command("list", "list the proxies of the network namespace", cmd_list,
            description="One line per proxy: id, state, both sockets' local and remote "
                        "addresses, bytes forwarded each way and age. With -j, an array "
                        "of proxy objects.",
            examples=("kpctl list", "kpctl -j list")),
    Command("show", "show one proxy in detail", cmd_show,
            args=(Arg("id", "ID", "proxy id", type=proxy_id, complete="id"),),
            description="Every attribute of one proxy: sockets, TCP states and the "
                        "counters of each direction.",
            examples=("kpctl show 3",)),
    Command("create", "join two connected TCP sockets passed as inherited fds", cmd_create,
            opts=(Opt(("--fd",), "fds", "an inherited socket fd (give it twice: A then B)",
                      metavar="FD", type=fd_number, multi=True, complete="fd"),),
            check=_check_create, changes=True, usage="--fd A --fd B",
            description="Both fds must be connected TCP sockets open in kpctl's own fd "
                        "table (inherited from the caller). Prints the new proxy's id "
                        "(with -j, the proxy).",
            examples=("kpctl create --fd 3 --fd 4    # fds 3 and 4 inherited from the caller",)),
    Command("destroy", "end proxies and give their sockets back", cmd_destroy,
            args=(Arg("ids", "ID", "proxy id", nargs="*", type=proxy_id, complete="id"),),
            opts=(Opt(("-a", "--all"), "all", "destroy every proxy of the netns"),),
            check=_check_destroy, changes=True, usage="ID... | --all",
            examples=("kpctl destroy 3 4", "kpctl destroy --all")),
    Command("attach", "attach (or replace) a BPF parser or verdict program", cmd_attach,
            args=(Arg("id", "ID", "proxy id", type=proxy_id, complete="id"),
                  Arg("kind", "KIND", "program kind", choices=("parser", "verdict")),
                  Arg("prog", "PROG", "a shipped program (lenprefix, lines, drop-prefix, "
                      "pass), an ELF object FILE.o[:NAME] or a program pinned in bpffs",
                      complete="prog")),
            opts=(_DIR,
                  Opt(("--prefix",), "prefix", "drop-prefix: drop messages whose payload "
                      "starts with TEXT", metavar="TEXT"),
                  Opt(("--offset",), "offset", "drop-prefix: where the payload starts in a "
                      "message (default 4, after lenprefix's header)", metavar="N",
                      type=offset_value)),
            check=_check_attach,
            description="Loads PROG as a socket filter (through libbpf for an ELF object) "
                        "and attaches it to one direction or both (default), replacing the "
                        "program of that kind there, while traffic flows. A parser cuts the "
                        "stream into messages (its return: the message length, 0 for more "
                        "bytes, negative for a protocol error that ends the proxy); a "
                        "verdict needs a parser and drops a message when it returns 0. A "
                        "program the verifier refuses is reported with the end of its log.",
            examples=("kpctl attach 3 parser lenprefix",
                      "kpctl attach 3 verdict drop-prefix --prefix DROP --dir a-to-b",
                      "kpctl attach 3 parser ./my.o:parse_http",
                      "kpctl attach 3 verdict /sys/fs/bpf/my_verdict")),
    Command("detach", "detach a BPF parser or verdict program", cmd_detach,
            args=(Arg("id", "ID", "proxy id", type=proxy_id, complete="id"),
                  Arg("kind", "KIND", "program kind", choices=("parser", "verdict"))),
            opts=(_DIR,),
            description="Detaches the program of that kind from one direction or both "
                        "(default). A parser cannot go while a verdict needs it (EBUSY): "
                        "detach the verdict first. Without a parser the direction is a "
                        "plain byte stream again.",
            examples=("kpctl detach 3 verdict", "kpctl detach 3 parser --dir b-to-a")),
    Command("stats", "module totals from /proc/net/kproxy_stat", cmd_stats,
            opts=(Opt(("-w", "--interval"), "interval",
                      "print per-interval deltas and rates every SECS seconds",
                      metavar="SECS", type=seconds),
                  Opt(("-c", "--count"), "count", "stop after COUNT intervals",
                      metavar="COUNT", type=count)),
            description="Without -w, the totals since the module was loaded. With -w, "
                        "like nstat/lnstat: every SECS the change of each counter and "
                        "its rate per second (active is a gauge: its value). With -j, "
                        "one JSON object per interval and line.",
            examples=("kpctl stats", "kpctl stats -w 1 -c 5")),
    Command("monitor", "print proxy events (new, del) until interrupted", cmd_monitor,
            opts=(Opt(("-c", "--count"), "count", "stop after COUNT events",
                      metavar="COUNT", type=count),),
            description="One line per event with its timestamp; with -j one JSON object "
                        "per line. Ctrl-C ends it.",
            examples=("kpctl monitor", "kpctl -j monitor -c 2")),
    Command("top", "live table of proxies by throughput", cmd_top,
            opts=(Opt(("-d", "--delay"), "delay", "seconds between refreshes (default 1)",
                      metavar="SECS", type=seconds, default=1.0),
                  Opt(("-c", "--count"), "count", "stop after COUNT refreshes",
                      metavar="COUNT", type=count)),
            description="Proxies sorted by bytes per second over the last interval (the "
                        "first screen shows the average since creation). Ctrl-C ends it.",
            examples=("kpctl top", "kpctl -j top -c 3")),
    Command("serve", "listen and hand every connection to the kernel (an L4 proxy)",
            cmd_serve,
            args=(Arg("listen", "LISTEN", "address to listen on: HOST:PORT, [IPV6]:PORT, :PORT",
                      type=listen_hostport),
                  Arg("target", "TARGET", "address to forward to: HOST:PORT or [IPV6]:PORT",
                      type=hostport)),
            opts=(Opt(("--max-conns",), "max_conns",
                      "refuse (reset) connections beyond N live ones, counted",
                      metavar="N", type=count),
                  Opt(("--connect-timeout",), "connect_timeout",
                      "give up connecting to TARGET after SECS (default 5)",
                      metavar="SECS", type=seconds, default=5.0),
                  Opt(("--backlog",), "backlog", "listen backlog (default 1024)",
                      metavar="N", type=count, default=1024),
                  Opt(("--reuseport",), "reuseport",
                      "SO_REUSEPORT: several serve processes share LISTEN"),
                  Opt(("--drain",), "drain", "on SIGINT/SIGTERM wait for running proxies to end"),
                  Opt(("--kill",), "kill", "on SIGINT/SIGTERM end running proxies"),
                  Opt(("-q", "--quiet"), "quiet",
                      "no status line, summary or per-connection lines"),
                  Opt(("-j", "--json"), "json", "JSON log lines (as kpctl -j)"),
                  Opt(("--parser",), "parser", "BPF parser attached to both directions of "
                      "every proxy (as attach: a shipped name, FILE.o[:NAME] or a bpffs pin)",
                      metavar="PROG", complete="prog"),
                  Opt(("--verdict",), "verdict", "BPF verdict attached to both directions of "
                      "every proxy, after the parser (needs --parser)",
                      metavar="PROG", complete="prog"),
                  Opt(("--prefix",), "prefix", "drop-prefix verdict: drop messages whose "
                      "payload starts with TEXT", metavar="TEXT"),
                  Opt(("--offset",), "offset", "drop-prefix verdict: where the payload starts "
                      "in a message (default 4, after lenprefix's header)", metavar="N",
                      type=offset_value)),
            check=_check_serve, changes=True, usage="LISTEN TARGET [OPTIONS]",
            description="Accepts on LISTEN, connects to TARGET without blocking, joins the two "
                        "sockets in the kernel and closes its own fds: the process carries no "
                        "bytes. A target that refuses or times out resets that client, counted; "
                        "accept errors (EMFILE...) pause accepting. Names are resolved once at "
                        "start. On a terminal a status line shows accepted, active, failed, "
                        "refused and bytes each way (kernel counters); a summary on exit. "
                        "SIGINT/SIGTERM stop accepting; running proxies go on in the kernel "
                        "unless --drain (wait) or --kill (end them). SIGHUP is ignored, "
                        "with a message (no reload). --parser and --verdict are loaded once "
                        "at start and attached to every proxy right after it is made; a "
                        "proxy the kernel refuses them on is ended and counted as failed. "
                        "The parser applies from the first byte the kernel has not read "
                        "yet: bytes a client sent before the attach pass as a plain stream.",
            examples=("kpctl serve 0.0.0.0:8080 127.0.0.1:80",
                      "kpctl serve [::]:443 backend.internal:443 --max-conns 1000",
                      "kpctl serve -j --drain :5432 10.0.0.7:5432",
                      "kpctl serve :9000 127.0.0.1:9001 --parser lenprefix "
                      "--verdict drop-prefix --prefix DROP")),
    Command("help", "list the commands, or explain one", cmd_help,
            args=(Arg("command", "COMMAND", "a command", nargs="?", complete="command"),)),
    Command("version", "print kpctl's version", cmd_version),
]

SHELL_ONLY = ("exit", "quit")


def find_command(name: str) -> Command:
    for c in COMMANDS:
        if c.name == name:
            return c
    raise KeyError(name)


# --------------------------------------------------------------------------
# Help text

GLOBAL_OPTIONS = (
    ("-j, --json", "JSON output (errors too: {\"error\": {...}})"),
    ("-p, --pretty", "pretty-printed JSON (implies -j)"),
    ("-b, --batch FILE", "run the commands of FILE (- for stdin), one a line"),
    ("    --force", "in batch mode, go on after a failing command"),
    ("-n, --netns NAME", "work in the named network namespace"),
    ("    --no-color", "no colour (also NO_COLOR=1); colour only on a terminal"),
    ("-V, --version", "print the version"),
    ("-h, --help", "this help"),
)


def overview_help(prog="kpctl", interactive=False) -> str:
    lines = []
    if not interactive:
        lines.append(f"usage: {prog} [OPTIONS] COMMAND [ARGS...]")
        lines.append(f"       {prog} [OPTIONS] -b FILE|- [--force]")
        lines.append(f"       {prog} [OPTIONS]            (a shell, on a terminal)")
        lines.append("")
        lines.append("Join two TCP sockets in the kernel (kproxy) and manage the proxies.")
        lines.append("")
    lines.append("Commands (a unique prefix is enough: 'sh 3'):")
    w = max(len(c.name) for c in COMMANDS)
    for c in COMMANDS:
        lines.append(f"  {c.name.ljust(w)}  {c.summary}")
    if interactive:
        lines.append(f"  {'exit'.ljust(w)}  leave the shell (also Ctrl-D)")
        lines.append("")
        lines.append("'help COMMAND' explains one. Tab completes commands, options and ids.")
    else:
        lines.append("")
        lines.append("Options:")
        for f, h in GLOBAL_OPTIONS:
            lines.append(f"  {f.ljust(18)}  {h}")
        lines.append("")
        lines.append(f"'{prog} help COMMAND' explains one. Exit status: 0 ok, 1 usage error, "
                     "2 refused by the kernel.")
    return "\n".join(lines)


def command_help(cmd: Command, prog=None) -> str:
    lines = [f"usage: {(prog + ' ') if prog else ''}{cmd.synopsis()}", "", cmd.summary + "."]
    if cmd.description:
        lines += ["", cmd.description]
    if cmd.args:
        lines += ["", "Arguments:"]
        for a in cmd.args:
            lines.append(f"  {a.synopsis().ljust(18)}  {a.help}")
    if cmd.opts:
        lines += ["", "Options:"]
        for o in cmd.opts:
            f = ", ".join(o.flags) + (f" {o.metavar}" if o.takes_value else "")
            h = o.help + (f" ({'|'.join(o.choices)})" if o.choices else "")
            lines.append(f"  {f.ljust(18)}  {h}")
    if cmd.examples:
        lines += ["", "Examples:"] + [f"  {e}" for e in cmd.examples]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Running one command


def execute(ctx: Context, tokens, where: str = "") -> int:
    """Run one command line (already split): the exit code; errors reported."""
    try:
        if not tokens:
            raise UsageError("missing command; 'help' lists the commands")
        cmd = resolve(tokens[0])
        ns = parse_args(cmd, tokens[1:])
        rc = cmd.run(ctx, ns)
        return rc or 0
    except UsageError as e:
        ctx.report_usage(e, where)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if ctx.interactive:
            ctx.stderr.write("interrupted\n")
            return 130
        raise
    except BrokenPipeError:
        raise
    except Exception as e:
        if is_kernel_error(e) or isinstance(e, OSError):
            ctx.report_kernel(e, where)
            return EXIT_KERNEL
        raise
