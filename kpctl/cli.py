"""kpctl's entry point: global options, one-shot commands, batch, the shell.

    kpctl [OPTIONS] COMMAND [ARGS...]     one command
    kpctl [OPTIONS] -b FILE|- [--force]   one command a line
    kpctl [OPTIONS]                       the shell (on a terminal)

Exit status: 0 ok, 1 usage error, 2 the kernel refused (or a bug: one
`Error: internal error: ...` line, never a traceback).  Startup imports
only the standard library; see kpctl/shell/__init__.py.

Global options come before the command; -j, -p, -n and --no-color may also
follow it (kpctl/shell/args.py says how a clash with a command's own option
is resolved).
"""

from __future__ import annotations

import os
import sys

from kpctl.shell import table as T
from kpctl.shell.args import EXIT_KERNEL, EXIT_USAGE, UsageError
from kpctl.shell.context import Context, isatty

_FLAGS = {
    "-j": "json", "--json": "json",
    "-p": "pretty", "--pretty": "pretty",
    "--force": "force",
    "--no-color": "no_color", "--no-colour": "no_color",
    "-V": "version", "--version": "version",
    "-h": "help", "--help": "help",
}
_VALUED = {"-b": "batch", "--batch": "batch", "-n": "netns", "--netns": "netns"}


class Options:
    def __init__(self):
        self.json = self.pretty = self.force = self.no_color = False
        self.version = self.help = False
        self.batch = None
        self.netns = None


def parse_global(argv):
    """Global options up to the command word; the rest is the command."""
    o = Options()
    i = 0
    while i < len(argv):
        t = argv[i]
        if t == "--":
            i += 1
            break
        if not t.startswith("-") or t == "-":
            break
        if t in _FLAGS:
            setattr(o, _FLAGS[t], True)
            i += 1
            continue
        name, eq, val = t.partition("=") if t.startswith("--") else (t[:2], "", t[2:])
        if name in _VALUED:
            if not (eq or val):
                if i + 1 >= len(argv):
                    raise UsageError(f"option {name} needs a value")
                val = argv[i + 1]
                i += 1
            setattr(o, _VALUED[name], val)
            i += 1
            continue
        if not t.startswith("--") and len(t) > 2 and all(("-" + c) in _FLAGS for c in t[1:]):
            for c in t[1:]:  # -jp
                setattr(o, _FLAGS["-" + c], True)
            i += 1
            continue
        raise UsageError(f"unknown option '{t}'; '--help' lists the options")
    if o.pretty:
        o.json = True
    return o, argv[i:]


def run_batch(ctx, path, force) -> int:
    """ip -batch: one command a line, '#' comments; stop at the first
    failure (its line number on stderr) unless --force; the exit code is
    that of the first failure."""
    import shlex
    if path == "-":
        f, name = ctx.stdin, "<stdin>"
    else:
        try:
            f, name = open(path, encoding="utf-8"), path
        except OSError as e:
            raise UsageError(f"cannot read batch file: {e.strerror}: {path}") from None
    first_rc = 0
    try:
        for lineno, line in enumerate(f, 1):
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as e:
                ctx.report_usage(UsageError(f"{e}"), where=f"{name}:{lineno}: ")
                rc = EXIT_USAGE
            else:
                if not tokens:
                    continue
                rc = T.execute(ctx, tokens, where=f"{name}:{lineno}: ")
            if rc:
                first_rc = first_rc or rc
                if not ctx.json:
                    ctx.stderr.write(f"Command failed {name}:{lineno}\n")
                    ctx.stderr.flush()
                if not force:
                    break
    finally:
        if f is not ctx.stdin:
            f.close()
    return first_rc


def main(argv=None, *, client_factory=None, stdout=None, stderr=None, stdin=None,
         env=None, totals_reader=None, ids_reader=None, clock=None, sleep=None, width=None,
         shell_input=None, shell_output=None, history_path=None, prog_loader=None,
         server_factory=None, socket_factory=None) -> int:
    """Run kpctl; returns the exit status.  The keyword arguments are for
    tests (a fake client factory, streams, clock)."""
    if argv is None:
        argv = sys.argv[1:]
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    stdin = stdin if stdin is not None else sys.stdin
    env = env if env is not None else os.environ
    try:
        opts, rest = parse_global(list(argv))
    except UsageError as e:
        json_mode = any(a in ("-j", "--json", "-p", "--pretty") for a in argv)
        ctx = Context(json=json_mode, stdout=stdout, stderr=stderr, env=env)
        ctx.report_usage(e)
        return EXIT_USAGE

    ctx = Context(client_factory=client_factory, netns=opts.netns, json=opts.json,
                    pretty=opts.pretty, color=False if opts.no_color else None,
                    stdout=stdout, stderr=stderr, stdin=stdin, env=env,
                    totals_reader=totals_reader, ids_reader=ids_reader, clock=clock,
                    sleep=sleep, width=width, prog_loader=prog_loader,
                    server_factory=server_factory, socket_factory=socket_factory)
    try:
        if opts.help:
            if rest:
                return T.execute(ctx, ["help", rest[0]])
            ctx.write(T.overview_help())
            return 0
        if opts.version:
            return T.execute(ctx, ["version"])
        if opts.batch is not None:
            if rest:
                raise UsageError(f"-b runs the commands of a file; unexpected '{rest[0]}'")
            return run_batch(ctx, opts.batch, opts.force)
        if opts.force:
            raise UsageError("--force only applies to batch mode (-b)")
        if rest:
            return T.execute(ctx, rest)
        if shell_input is not None or (isatty(stdin) and isatty(stdout)):
            from kpctl.shell.repl import run_shell
            ctx.interactive = True
            return run_shell(ctx, input=shell_input, output=shell_output,
                             history_path=history_path)
        raise UsageError("missing command (the shell needs a terminal); "
                           "'kpctl --help' lists the commands")
    except UsageError as e:
        ctx.report_usage(e)
        return EXIT_USAGE
    except KeyboardInterrupt:
        stderr.write("\n")
        return 130
    except BrokenPipeError:
        # `kpctl list | head`: the reader left; say nothing
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stdout.fileno())
        except Exception:  # noqa: BLE001 - a stream without a file descriptor
            pass
        return 0
    except Exception as e:  # noqa: BLE001 - a bug: one line and exit 2, no traceback
        ctx.report_internal(e)
        return EXIT_KERNEL
    finally:
        ctx.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
