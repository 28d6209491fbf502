"""The interactive shell: a prompt-toolkit session over the command table.

- completion of commands, options, live proxy ids and job numbers, in a
  thread (ids come from /proc/net/kproxy: one file read, no netlink dump);
- the toolbar's count and totals are refreshed by a background thread at
  start and after the commands the table marks as changing proxies: the
  prompt never waits for a refresh; a new id completes at once (create
  tells the shell);
- `serve ... &` runs a service as a job (kpctl/shell/jobs.py); finished
  jobs are announced before the next prompt, the toolbar shows the running
  ones, and leaving with jobs running asks what to do with them;
- fish-style suggestions from history; history in
  $XDG_STATE_HOME/kpctl/history (default ~/.local/state/kpctl/history);
- Ctrl-C cancels the line (and stops monitor/top/stats -w), Ctrl-D exits;
- errors print as `Error: <extack text> (<ERRNO>)` and the shell goes on.
"""

from __future__ import annotations

import os
import shlex
import threading

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.history import FileHistory, InMemoryHistory

from kpctl.shell import table as T
from kpctl.shell.args import UsageError
from kpctl.shell.completer import KpctlCompleter
from kpctl.shell.context import Context, totals_dict
from kpctl.shell.jobs import Job, Jobs
from kpctl.shell.listeners import listener_ids

PROMPT = "kpctl> "
EXIT_QUESTION = ("{n} job{s} running. Stop {them}: [d]rain (wait for their proxies), "
                 "[k]ill their proxies, [l]eave the proxies to the kernel, [c]ancel? ")
EXIT_ANSWERS = {"d": "drain", "drain": "drain", "k": "kill", "kill": "kill",
                "l": "leave", "leave": "leave"}


def history_file(env=None) -> str:
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "kpctl", "history")


class ShellState:
    """What the toolbar and the completer show."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.ids: dict[int, str] = {}
        self.listeners: dict[int, str] = {}
        self.count: int | None = None
        self.totals: dict | None = None
        self.problem: str | None = None
        self._lock = threading.Lock()
        self._running = False
        self._again = False
        self.on_refreshed = None  # redraws the prompt

    def refresh(self) -> None:
        """Read the live ids and the totals (two /proc files)."""
        ids, count, problem = {}, None, None
        try:
            ids = self.ctx.read_ids()
            count = len(ids)
        except Exception as e:  # noqa: BLE001 - module not loaded, no netns...
            problem = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
            if isinstance(e, FileNotFoundError):
                problem = "no /proc/net/kproxy: is the kproxy module loaded?"
        try:
            totals = totals_dict(self.ctx.read_totals())
        except Exception:  # noqa: BLE001 - the toolbar shows what it has
            totals = None
        self.ids, self.count, self.totals, self.problem = ids, count, totals, problem
        self.listeners = listener_ids(self.ctx.netns)  # {} without the file

    def refresh_in_background(self) -> None:
        """A refresh in a thread; one at a time, and one more if asked meanwhile."""
        with self._lock:
            if self._running:
                self._again = True
                return
            self._running = True

        def work() -> None:
            while True:
                self.refresh()
                if self.on_refreshed is not None:
                    self.on_refreshed()
                with self._lock:
                    if not self._again:
                        self._running = False
                        return
                    self._again = False
        threading.Thread(target=work, name="kpctl-refresh", daemon=True).start()

    def live_ids(self) -> dict[int, str]:
        """For completion (in the completer's thread): the file, fresh."""
        try:
            self.ids = self.ctx.read_ids()
        except Exception:  # noqa: BLE001 - keep what the last refresh saw
            pass
        return self.ids

    def changed(self, added: list[int], removed: list[int]) -> None:
        ids = dict(self.ids)
        for pid in added:
            ids.setdefault(pid, "new")
        for pid in removed:
            ids.pop(pid, None)
        self.ids = ids

    def job_names(self) -> dict[int, str]:
        jobs = self.ctx.jobs.all() if self.ctx.jobs is not None else []
        return {j.number: f"{j.state} {j.listen} → {j.target}" for j in jobs}

    def toolbar(self) -> str:
        if self.count is None and self.problem is None:
            return " kpctl: reading /proc/net/kproxy..."
        parts = []
        if self.count is None:
            parts.append(f" kpctl: {self.problem}")
        else:
            parts.append(f" {self.count} prox{'y' if self.count == 1 else 'ies'}")
            if self.listeners:
                n = len(self.listeners)
                parts.append(f"{n} listener{'' if n == 1 else 's'}")
        if self.totals:
            from kpctl.shell.units import human_bytes
            t = self.totals
            ended = sum(v for k, v in t.items() if k.startswith("ended_"))
            parts.append(f"created {t.get('created', 0)}")
            parts.append(f"ended {ended}")
            parts.append(f"forwarded {human_bytes(t.get('bytes', 0))}")
            if t.get("drops"):
                parts.append(f"drops {t['drops']}")
        parts += self._jobs_parts()
        if self.ctx.netns:
            parts.append(f"netns {self.ctx.netns}")
        parts.append("help: help CMD, exit: Ctrl-D")
        return " | ".join(parts)

    def _jobs_parts(self) -> list[str]:
        if self.ctx.jobs is None:
            return []
        out = []
        for j in self.ctx.jobs.running():
            c = j.counters()
            out.append(f"[{j.number}] {j.listen} {j.state} active {c.get('active', 0)} "
                       f"accepted {c.get('accepted', 0)}")
        return out


def make_session(state: ShellState, *, input=None, output=None, history_path=None,
                 env=None) -> PromptSession:
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
        completer=KpctlCompleter(ids=state.live_ids, jobs=state.job_names,
                                 listeners=lambda: listener_ids(state.ctx.netns)),
        complete_in_thread=True,
        complete_while_typing=False,
        auto_suggest=AutoSuggestFromHistory(),
        history=history or InMemoryHistory(),
        bottom_toolbar=state.toolbar,
        refresh_interval=1.0,  # the jobs' counters in the toolbar
        input=input,
        output=output,
    )


def _announce(ctx: Context, job: Job) -> None:
    from kpctl.shell.service import job_line
    ctx.write(job_line(job))


def _ask(session: PromptSession, question: str) -> str:
    # prompt(message) sets the session's message for later prompts too: the
    # main loop passes PROMPT each time.
    try:
        return session.prompt(question).strip().lower()
    except (EOFError, KeyboardInterrupt):
        return "c"


def may_leave(ctx: Context, session: PromptSession) -> bool:
    """Leaving with jobs running: ask; stop them as answered, or stay."""
    running = ctx.jobs.running()
    if not running:
        return True
    n = len(running)
    question = EXIT_QUESTION.format(n=n, s="" if n == 1 else "s", them="it" if n == 1 else "them")
    while True:
        answer = _ask(session, question)
        if answer in ("c", "cancel", ""):
            return False
        mode = EXIT_ANSWERS.get(answer)
        if mode is not None:
            break
    for job in running:
        job.stop(mode)
    try:
        for job in running:
            if mode == "drain" and job.alive:
                ctx.note(f"[{job.number}] waiting for its proxies to end (Ctrl-C: leave "
                         f"them to the kernel)")
            job.wait(None)
    except KeyboardInterrupt:
        for job in running:
            if job.alive:
                job.stop("leave")
        for job in running:
            job.wait(None)
    for job in running:
        _announce(ctx, job)
    return True


def run_shell(ctx: Context, *, input=None, output=None, history_path=None) -> int:
    state = ShellState(ctx)
    session = make_session(state, input=input, output=output, history_path=history_path,
                           env=ctx.env)

    def redraw(*_: object) -> None:
        app = session.app
        if app.is_running:
            app.invalidate()
    ctx.jobs = Jobs(on_end=redraw)
    ctx.on_change = state.changed
    state.on_refreshed = redraw
    state.refresh_in_background()  # the first prompt does not wait for it
    while True:
        for job in ctx.jobs.finished():
            _announce(ctx, job)
        try:
            line = session.prompt(PROMPT)
        except KeyboardInterrupt:
            continue
        except EOFError:
            if may_leave(ctx, session):
                break
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:
            ctx.report_usage(UsageError(str(e)))
            continue
        if not tokens:
            continue
        if tokens[0] in T.SHELL_ONLY:
            if may_leave(ctx, session):
                break
            continue
        try:
            T.execute(ctx, tokens)
        except KeyboardInterrupt:
            ctx.stderr.write("interrupted\n")
        if T.changes_proxies(tokens):
            state.refresh_in_background()
    return 0
