"""The context a command runs in: the library handle, the streams, the
output mode, and how errors are reported.

Every handler gets a Context; tests inject fakes through its keyword
arguments (a client factory, a program loader, streams, a clock).

Errors, one form each:
- usage:   `kpctl: show: missing ID` + the synopsis on stderr (exit 1);
- refused: `Error: <the kernel's message> (ENOENT)` on stderr (exit 2);
- with -j: {"error": {"errno": N, "errno_name": "ENOENT", "message": ...}}
  on stdout (usage errors: errno 22, EINVAL).
"""

from __future__ import annotations

import errno as errno_mod
import os
import sys
import time
from typing import Any, Callable

from kpctl.shell.args import UsageError

PROC_STAT = "/proc/net/kproxy_stat"
PROC_PROXIES = "/proc/net/kproxy"
# /proc/net follows the reading thread's netns; in a thread that entered
# another one, this is the path that shows it.
PROC_SELF_NET = "/proc/thread-self/net"


def is_kernel_error(exc: BaseException) -> bool:
    """A KproxyError (duck-typed: errno, message, errno_name)."""
    return all(hasattr(exc, a) for a in ("errno", "message", "errno_name"))


def isatty(f: Any) -> bool:
    try:
        return bool(f.isatty())
    except Exception:  # noqa: BLE001 - a stream without isatty is no terminal
        return False


def error_dict(num: int, name: str | None, message: str) -> dict:
    """The one JSON error shape (common to kpctl -j and serve -j)."""
    return {"error": {"errno": num, "errno_name": name, "message": message}}


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def default_client_factory(netns: str | None) -> Any:
    from kpctl import Kproxy
    return Kproxy(netns=netns)


def in_netns(netns: str | None, fn: Callable[[], Any]) -> Any:
    """fn() in the network namespace `netns` (or here when None)."""
    if not netns:
        return fn()
    from kpctl.netns import run_in
    return run_in(netns, fn)


def _proc_path(netns: str | None, name: str) -> str:
    return f"{PROC_SELF_NET}/{name}" if netns else f"/proc/net/{name}"


def default_totals_reader(netns: str | None = None) -> Any:
    """/proc/net/kproxy_stat of the netns."""
    from kpctl.procfs import read_totals
    return in_netns(netns, lambda: read_totals(_proc_path(netns, "kproxy_stat")))


def default_ids_reader(netns: str | None = None) -> dict[int, str]:
    """The live proxies of the netns from /proc/net/kproxy, {id: what}: no
    netlink dump, so completion costs one file read."""
    from kpctl.procfs import read_proxies
    proxies = in_netns(netns, lambda: read_proxies(_proc_path(netns, "kproxy")))
    return {p.id: f"{p.state} {p.a.remote} ⇄ {p.b.remote}" for p in proxies}


def totals_dict(totals: Any) -> dict:
    if hasattr(totals, "to_dict"):
        return dict(totals.to_dict())
    return dict(totals)


class Context:
    """Everything a handler may touch, injectable for tests.

    client_factory(netns) returns an object with the methods of
    kpctl.Kproxy; prog_loader(spec) a loaded BPF program (kpctl.bpf.load).
    jobs: the shell's background services (kpctl.shell.jobs.Jobs), None in
    the one-shot CLI and batch mode.  on_change(added, removed): told the
    ids a command made or ended (the shell's completion knows a new id at
    once).
    """

    def __init__(self, *, client_factory: Callable | None = None, netns: str | None = None,
                 json: bool = False, pretty: bool = False, color: bool | None = None,
                 stdout: Any = None, stderr: Any = None, stdin: Any = None,
                 env: Any = None, totals_reader: Callable | None = None,
                 ids_reader: Callable | None = None, clock: Callable | None = None,
                 sleep: Callable | None = None, width: int | None = None,
                 interactive: bool = False, prog: str = "kpctl",
                 prog_loader: Callable | None = None, server_factory: Callable | None = None,
                 socket_factory: Callable | None = None) -> None:
        self.client_factory = client_factory or default_client_factory
        self.prog_loader = prog_loader
        self.server_factory = server_factory
        self.socket_factory = socket_factory
        self.netns = netns
        self.json = json or pretty
        self.pretty = pretty
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.stdin = stdin if stdin is not None else sys.stdin
        self.env = env if env is not None else os.environ
        self._color_asked = color
        self.color = self._decide_color(color)
        self.totals_reader = totals_reader
        self.ids_reader = ids_reader
        self.clock = clock or time.time
        self.sleep = sleep or time.sleep
        self.width = width
        self.interactive = interactive
        self.prog = prog
        self.jobs: Any = None
        self.on_change: Callable[[list[int], list[int]], None] | None = None
        self._client: Any = None
        self._shares_client = False  # derive(): the client is its parent's
        self._console: Any = None

    def _decide_color(self, color: bool | None) -> bool:
        if color is None:
            color = isatty(self.stdout) and not self.env.get("NO_COLOR")
        return bool(color) and not self.json

    def derive(self, *, json: bool = False, pretty: bool = False, no_color: bool = False,
               netns: str | None = None) -> "Context":
        """This context with the global options given after a command
        (`list -j`, `list -n blue`): for that one command."""
        if not (json or pretty or no_color or netns):
            return self
        sub = Context(client_factory=self.client_factory, netns=netns or self.netns,
                      json=self.json or json or pretty, pretty=self.pretty or pretty,
                      color=False if no_color else self._color_asked,
                      stdout=self.stdout, stderr=self.stderr, stdin=self.stdin,
                      env=self.env, totals_reader=self.totals_reader,
                      ids_reader=self.ids_reader, clock=self.clock, sleep=self.sleep,
                      width=self.width, interactive=self.interactive, prog=self.prog,
                      prog_loader=self.prog_loader, server_factory=self.server_factory,
                      socket_factory=self.socket_factory)
        sub.jobs, sub.on_change = self.jobs, self.on_change
        if sub.netns == self.netns:
            sub._client = self._client  # shared: closed by its owner only
            sub._shares_client = True
        return sub

    # the library, opened on first use and kept (the shell reuses it)
    def client(self) -> Any:
        if self._client is None:
            self._client = self.client_factory(self.netns)
        return self._client

    def close(self) -> None:
        if self._shares_client:
            return
        c, self._client = self._client, None
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def read_totals(self) -> Any:
        if self.totals_reader is not None:
            return self.totals_reader()
        return default_totals_reader(self.netns)

    def read_ids(self) -> dict[int, str]:
        if self.ids_reader is not None:
            return self.ids_reader()
        return default_ids_reader(self.netns)

    def changed(self, added: list[int] = (), removed: list[int] = ()) -> None:
        if self.on_change is not None:
            self.on_change(list(added), list(removed))

    @property
    def console(self) -> Any:
        if self._console is None:
            from kpctl.shell.render import make_console
            self._console = make_console(self.stdout, color=self.color, width=self.width,
                                         env=self.env)
        return self._console

    def for_humans(self) -> bool:
        """Rich's tables and panels: on a terminal (or in the shell)."""
        return self.interactive or isatty(self.stdout)

    # output

    def emit_json(self, obj: Any) -> None:
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

    def note(self, text: str) -> None:
        """A line for the person (not the output): stderr."""
        self.stderr.write(text + "\n")
        self.stderr.flush()

    # errors

    def report_usage(self, exc: UsageError, where: str = "") -> None:
        if self.json:
            self.emit_json(error_dict(errno_mod.EINVAL, "EINVAL", where + exc.message))
            return
        prefix = "" if self.interactive else f"{self.prog}: "
        self.stderr.write(f"{prefix}{where}{exc.message}\n")
        if exc.command is not None:
            self.stderr.write(f"usage: {'' if self.interactive else self.prog + ' '}"
                              f"{exc.command.synopsis()}\n")
        self.stderr.flush()

    def report_kernel(self, exc: BaseException, where: str = "") -> None:
        """A KproxyError or an OSError: the system refused."""
        if is_kernel_error(exc):
            num, name, msg = exc.errno, exc.errno_name, exc.message  # type: ignore[attr-defined]
        else:
            num = getattr(exc, "errno", None) or 0
            name = errno_mod.errorcode.get(num, f"E{num}")
            msg = getattr(exc, "strerror", None) or str(exc)
            if getattr(exc, "filename", None):
                msg += f": {exc.filename}"  # type: ignore[attr-defined]
        if not msg:
            msg = os.strerror(num)
        if self.json:
            self.emit_json(error_dict(num, name, where + msg))
            return
        self.stderr.write(f"{where}Error: {msg} ({name})\n")
        self.stderr.flush()

    def report_internal(self, exc: BaseException, where: str = "") -> None:
        """A bug in kpctl: one line, no traceback (exit 2).  JSON: errno 0
        and errno_name null, since no system call failed."""
        msg = f"internal error: {type(exc).__name__}: {exc}"
        if self.json:
            self.emit_json(error_dict(0, None, where + msg))
            return
        self.stderr.write(f"{where}Error: {msg}\n")
        self.stderr.flush()
