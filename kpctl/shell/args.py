"""Declaring and parsing a command's arguments (no argparse: one parser for
the CLI, batch lines and the shell, whose errors never exit the process).

A command declares its options (Opt) and positional arguments (Arg);
parse_args() turns the words after the command name into a Namespace and
raises UsageError with a message naming what is wrong.  The converters
below turn a word into a value; their ValueError text is shown to the user.

Global options after the command (`kpctl list -j`): the words in
TRAILING_GLOBALS are taken as global options when the command has no option
of that name itself: a command's own option wins a clash (serve's -j/--json
means the same JSON as the global one anyway).  They are parsed like the
command's own options, so the value of an option (`--prefix -j`) is never
taken for one.  -h/--help after a command asks for its help.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_KERNEL = 2


class UsageError(Exception):
    """A bad command line: exit 1, a clear message, no traceback."""

    def __init__(self, message: str, command: "Command | None" = None) -> None:
        super().__init__(message)
        self.message = message
        self.command = command
        self.globals_: dict = {}  # global options given after the command


class HelpRequested(Exception):
    """`COMMAND --help`: print the command's help instead of running it."""

    def __init__(self, command: "Command") -> None:
        super().__init__(command.name)
        self.command = command


class Opt:
    """An option.  metavar None: a flag (bool); else it takes a value."""

    __slots__ = ("flags", "dest", "help", "metavar", "type", "multi", "choices",
                 "complete", "default")

    def __init__(self, flags: Sequence[str], dest: str, help: str, metavar: str | None = None,
                 type: Callable[[str], Any] = str, multi: bool = False,
                 choices: Sequence[str] = (), complete: str | None = None,
                 default: Any = None) -> None:
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

    def __init__(self, dest: str, metavar: str, help: str, nargs: str = "1",
                 type: Callable[[str], Any] = str, choices: Sequence[str] = (),
                 complete: str | None = None) -> None:
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
    """One command: its words, its handler run(ctx, ns) -> exit code.

    changes: it creates or ends proxies (the shell refreshes its live ids
    after it, in the background).
    """

    __slots__ = ("name", "summary", "description", "args", "opts", "run",
                 "check", "changes", "examples", "usage")

    def __init__(self, name: str, summary: str, run: Callable[..., int], *,
                 args: Iterable[Arg] = (), opts: Iterable[Opt] = (), description: str = "",
                 check: Callable[["Command", "Namespace"], None] | None = None,
                 changes: bool = False, examples: Iterable[str] = (),
                 usage: str | None = None) -> None:
        self.name = name
        self.summary = summary
        self.description = description
        self.args = tuple(args)
        self.opts = tuple(opts)
        self.run = run
        self.check = check
        self.changes = changes
        self.examples = tuple(examples)
        self.usage = usage  # a synopsis written by hand, when it reads better

    def synopsis(self) -> str:
        if self.usage:
            return f"{self.name} {self.usage}".strip()
        parts = [self.name]
        parts += [o.synopsis() for o in self.opts]
        parts += [a.synopsis() for a in self.args]
        return " ".join(parts)

    def own_opt(self, name: str) -> Opt | None:
        """The option spelled exactly `name`, or a unique --prefix of one."""
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
                raise UsageError(f"{self.name}: ambiguous option '{name}': could be {names}",
                                 self)
        return None

    def find_opt(self, name: str) -> Opt:
        o = self.own_opt(name)
        if o is None:
            raise UsageError(f"{self.name}: unknown option '{name}'", self)
        return o


# Global options that may follow the command: (flags, key, takes a value).
TRAILING_GLOBALS = (
    (("-j", "--json"), "json", False),
    (("-p", "--pretty"), "pretty", False),
    (("--no-color", "--no-colour"), "no_color", False),
    (("-n", "--netns"), "netns", True),
)
HELP_FLAGS = ("-h", "--help")


def _trailing_global(name: str) -> tuple[str, bool] | None:
    for flags, key, valued in TRAILING_GLOBALS:
        if name in flags:
            return key, valued
    return None


class Namespace(dict):
    """Parsed arguments: ns.dest or ns['dest']; ns.globals_ holds the
    global options given after the command."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# --------------------------------------------------------------------------
# Converters (their ValueError text is shown to the user)


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


def tls_list(text: str) -> tuple[str, ...]:
    """serve's --tls-versions and --tls-ciphers: a comma list (the names are
    checked by ServeOptions.check())."""
    from kpctl.serve_tls import split_list
    return split_list(text)


def job_number(text: str) -> int:
    t = text[1:] if text.startswith("%") else text  # `stop %1`, as in sh
    try:
        v = int(t, 10)
    except ValueError:
        raise ValueError(f"'{text}' is not a job number ('jobs' lists them)") from None
    if v < 1:
        raise ValueError(f"'{text}' is not a job number ('jobs' lists them)")
    return v


def offset_value(text: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise ValueError(f"'{text}' is not a byte offset (0 or more)") from None
    if not 0 <= v <= 1 << 20:
        raise ValueError(f"'{text}' is not a byte offset (0 to 1048576)")
    return v


def _hostport(text: str, listen: bool) -> str:
    """The syntax of an address (resolved later, once, by the command)."""
    from kpctl.address import split_hostport
    from kpctl.serve import ServeError
    try:
        split_hostport(text, listen=listen)
    except ServeError as e:
        raise ValueError(e.message) from None
    return text


def hostport(text: str) -> str:
    """An address to connect to: HOST:PORT or [IPV6]:PORT."""
    return _hostport(text, listen=False)


def listen_hostport(text: str) -> str:
    """An address to listen on: also :PORT, *:PORT."""
    return _hostport(text, listen=True)


# --------------------------------------------------------------------------
# Parsing


def _convert(cmd: Command, what: str, typ: Callable[[str], Any], choices: Sequence[str],
             text: str) -> Any:
    if choices and text not in choices:
        raise UsageError(f"{cmd.name}: {what} must be one of {', '.join(choices)}, not '{text}'",
                         cmd)
    try:
        return typ(text)
    except ValueError as e:
        where = f"{what}: " if what.startswith("-") else ""
        raise UsageError(f"{cmd.name}: {where}{e}", cmd) from None


def _looks_negative_number(t: str) -> bool:
    return len(t) > 1 and t[0] == "-" and t[1:].replace(".", "", 1).isdigit()


def _take_value(cmd: Command, name: str, metavar: str, value: str | None,
                tokens: list[str], i: int) -> tuple[str, int]:
    if value is not None:
        return value, i
    if i >= len(tokens):
        raise UsageError(f"{cmd.name}: option {name} needs a value ({metavar})", cmd)
    return tokens[i], i + 1


def parse_args(cmd: Command, tokens: Iterable[str]) -> Namespace:
    """The namespace of `tokens`; a UsageError carries the global options
    seen (`show -j` reports its missing ID in JSON)."""
    ns = Namespace(globals_={})
    try:
        return _parse(cmd, list(tokens), ns)
    except UsageError as e:
        e.globals_ = dict(ns.globals_)
        raise


def _parse(cmd: Command, tokens: list[str], ns: Namespace) -> Namespace:
    for o in cmd.opts:
        ns[o.dest] = [] if o.multi else (o.default if o.takes_value else False)
    pos: list[str] = []
    i = 0
    only_pos = False
    while i < len(tokens):
        t = tokens[i]
        i += 1
        if not only_pos and t == "--":
            only_pos = True
            continue
        if only_pos or not t.startswith("-") or t == "-" or _looks_negative_number(t):
            pos.append(t)
            continue
        value = None
        if t.startswith("--"):
            name, eq, val = t.partition("=")
            if eq:
                value = val
        else:
            name = t[:2]
            if len(t) > 2:
                value = t[2:]
        opt = cmd.own_opt(name)
        if opt is None:
            if name in HELP_FLAGS and value is None:
                raise HelpRequested(cmd)
            glob = _trailing_global(name)
            if glob is None:
                raise UsageError(f"{cmd.name}: unknown option '{name}'", cmd)
            key, valued = glob
            if valued:
                ns.globals_[key], i = _take_value(cmd, name, "NAME", value, tokens, i)
            elif value is not None:
                raise UsageError(f"{cmd.name}: option {name} takes no value", cmd)
            else:
                ns.globals_[key] = True
            continue
        if not opt.takes_value:
            if value is not None:
                if not t.startswith("--") and all(cmd.own_opt("-" + c) for c in value):
                    # bundled short flags: -ab
                    ns[opt.dest] = True
                    for c in value:
                        o2 = cmd.find_opt("-" + c)
                        if o2.takes_value:
                            raise UsageError(f"{cmd.name}: option -{c} needs a value "
                                             f"({o2.metavar})", cmd)
                        ns[o2.dest] = True
                    continue
                raise UsageError(f"{cmd.name}: option {name} takes no value", cmd)
            ns[opt.dest] = True
            continue
        value, i = _take_value(cmd, name, opt.metavar, value, tokens, i)
        v = _convert(cmd, f"{name} {opt.metavar}", opt.type, opt.choices, value)
        if opt.multi:
            ns[opt.dest].append(v)
        else:
            ns[opt.dest] = v
    _positionals(cmd, ns, pos)
    if cmd.check:
        cmd.check(cmd, ns)
    return ns


def _positionals(cmd: Command, ns: Namespace, pos: list[str]) -> None:
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
            ns[a.dest] = [_convert(cmd, a.metavar, a.type, a.choices, p)
                          for p in pos[j:j + take]]
            j += take
    if j < len(pos):
        extra = " ".join(pos[j:])
        raise UsageError(f"{cmd.name}: unexpected argument '{extra}'", cmd)
