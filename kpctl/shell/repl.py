"""The interactive shell: a prompt-toolkit session over the command table.

- completion of commands, options and live proxy ids (refreshed after
  create/destroy and after every command);
- fish-style suggestions from history; history in
  $XDG_STATE_HOME/kpctl/history (default ~/.local/state/kpctl/history);
- Ctrl-C cancels the line (and stops monitor/top/stats -w), Ctrl-D exits;
- a bottom toolbar with the number of proxies and the module totals;
- errors print as `Error: <extack text> (<ERRNO>)` and the shell goes on.

The first prompt comes before the library (pyroute2) is imported: the
toolbar and the ids are filled by a background thread.
"""

from __future__ import annotations

import os
import shlex
import threading

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.history import FileHistory, InMemoryHistory

from kpctl.shell import commands as C
from kpctl.shell.completer import KpctlCompleter

PROMPT = "kpctl> "


def history_file(env=None) -> str:
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "kpctl", "history")


class ShellState:
    """What the toolbar and the completer show; refreshed after commands."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.ids: dict[int, str] = {}
        self.count: int | None = None
        self.totals: dict | None = None
        self.problem: str | None = None
        self.lock = threading.Lock()

    def refresh(self) -> None:
        ids, count, totals, problem = {}, None, None, None
        with self.lock:
            try:
                proxies = self.ctx.client().list()
                ids = {p.id: f"{p.state} {p.a.remote} ⇄ {p.b.remote}" for p in proxies}
                count = len(ids)
            except Exception as e:  # module not loaded, no permission...
                problem = getattr(e, "message", None) or str(e)
            try:
                totals = C.totals_dict(self.ctx.read_totals())
            except Exception:
                totals = None
        self.ids, self.count, self.totals, self.problem = ids, count, totals, problem

    def toolbar(self) -> str:
        if self.count is None and self.problem is None:
            return " kpctl: connecting..."
        if self.count is None:
            return f" kpctl: {self.problem}"
        parts = [f" {self.count} prox{'y' if self.count == 1 else 'ies'}"]
        if self.totals:
            from kpctl.shell.render import human_bytes
            t = self.totals
            ended = sum(v for k, v in t.items() if k.startswith("ended_"))
            parts.append(f"created {t.get('created', 0)}")
            parts.append(f"ended {ended}")
            parts.append(f"forwarded {human_bytes(t.get('bytes', 0))}")
            if t.get("drops"):
                parts.append(f"drops {t['drops']}")
        if self.ctx.netns:
            parts.append(f"netns {self.ctx.netns}")
        parts.append("help: help CMD, exit: Ctrl-D")
        return " | ".join(parts)


def make_session(state: ShellState, *, input=None, output=None, history_path=None,
                 env=None):
    if history_path is None:
        history_path = history_file(env)
    history = None
    if history_path:
        try:
            os.makedirs(os.path.dirname(history_path), mode=0o700, exist_ok=True)
            history = FileHistory(history_path)
        except OSError:
            history = None
    return PromptSession(
        message=PROMPT,
        completer=KpctlCompleter(ids=lambda: state.ids),
        complete_while_typing=False,
        auto_suggest=AutoSuggestFromHistory(),
        history=history or InMemoryHistory(),
        bottom_toolbar=state.toolbar,
        input=input,
        output=output,
    )


def _later(fn, delay=0.05):
    def pre_run():
        import asyncio
        asyncio.get_running_loop().call_later(delay, fn)
    return pre_run


def run_shell(ctx, *, input=None, output=None, history_path=None, background=None) -> int:
    state = ShellState(ctx)
    session = make_session(state, input=input, output=output, history_path=history_path,
                           env=ctx.env)
    if background is None:
        background = input is None
    started = []

    def start_refresh():
        # after the first prompt is drawn: pyroute2's import (~0.3 s) must
        # not delay it
        if started:
            return
        started.append(True)

        def first():
            state.refresh()
            app = session.app
            if app.is_running:
                app.invalidate()
        threading.Thread(target=first, name="kpctl-refresh", daemon=True).start()

    if not background:
        state.refresh()
        started.append(True)
    while True:
        try:
            line = session.prompt(pre_run=None if started else _later(start_refresh))
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:
            ctx.report_usage(C.UsageError(str(e)))
            continue
        if not tokens:
            continue
        if tokens[0] in C.SHELL_ONLY:
            break
        try:
            with state.lock:  # the refresh thread shares the client
                C.execute(ctx, tokens)
        except KeyboardInterrupt:
            ctx.stderr.write("interrupted\n")
        except Exception as e:  # a bug: say it, keep the shell
            ctx.stderr.write(f"internal error: {type(e).__name__}: {e}\n")
        state.refresh()
    return 0
