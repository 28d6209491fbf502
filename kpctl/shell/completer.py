"""Tab completion for the shell, driven by the command table.

Completes command names (and exit/quit), a command's options, the values
of options with choices, and positional arguments by kind: live proxy ids
(from a callable: the shell's reads /proc/net/kproxy, never a netlink
dump), job numbers, command names (for `help`), files, and choices.
"""

from __future__ import annotations

from prompt_toolkit.completion import Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from kpctl.shell import table as T
from kpctl.shell.args import UsageError


def _split(text: str):
    """Words before the cursor, and the word being typed ('' after a space)."""
    import shlex
    lex = shlex.shlex(text, posix=True, punctuation_chars=False)
    lex.whitespace_split = True
    lex.commenters = ""
    try:
        words = list(lex)
    except ValueError:  # an open quote: fall back to plain splitting
        words = text.split()
    if not text or text[-1].isspace():
        return words, ""
    return words[:-1], (words[-1] if words else "")


class KpctlCompleter(Completer):
    def __init__(self, ids=None, commands=None, shell=True, jobs=None, listeners=None):
        """ids(): {id: description} of the live proxies; jobs(): {number:
        description} of the shell's jobs; listeners(): {id: description}
        of the kernel listeners."""
        self.ids = ids or (lambda: {})
        self.jobs = jobs or (lambda: {})
        self.listeners = listeners or (lambda: {})
        self.commands = commands if commands is not None else T.COMMANDS
        self.shell = shell
        self._paths = PathCompleter(expanduser=True)

    def _names(self):
        names = [(c.name, c.summary) for c in self.commands]
        if self.shell:
            names += [("exit", "leave the shell"), ("quit", "leave the shell")]
        return names

    def get_completions(self, document, complete_event):
        before, word = _split(document.text_before_cursor)
        if not before:
            for name, meta in self._names():
                if name.startswith(word):
                    yield Completion(name, -len(word), display_meta=meta)
            return
        try:
            cmd = T.resolve(before[0])
        except UsageError:
            return
        yield from self._complete_args(cmd, before[1:], word, document)

    def _complete_args(self, cmd, words, word, document):
        # walk the words: which option values and positionals are used
        used_opts, npos, pending = set(), 0, None
        only_pos = False
        for w in words:
            if pending is not None:
                pending = None
                continue
            if not only_pos and w == "--":
                only_pos = True
                continue
            if not only_pos and w.startswith("-") and len(w) > 1:
                try:
                    o = cmd.find_opt(w.split("=", 1)[0] if w.startswith("--") else w[:2])
                except UsageError:
                    continue
                used_opts.add(o.dest)
                if o.takes_value and "=" not in w and not (not w.startswith("--") and len(w) > 2):
                    pending = o
                continue
            npos += 1
        if pending is not None:
            yield from self._values(pending.complete, pending.choices, word, document,
                                    pending.metavar)
            return
        if word.startswith("-") and not only_pos:
            for o in cmd.opts:
                if o.dest in used_opts and not o.multi:
                    continue
                for f in o.flags:
                    if f.startswith(word):
                        yield Completion(f, -len(word), display_meta=o.help)
            return
        arg = self._arg_at(cmd, npos)
        if arg is not None:
            done = set(words) if arg.nargs in ("*", "+") else set()
            kind = arg.complete
            if kind == "id" and "listener" in used_opts:
                kind = "listener"  # show --listener ID
            yield from self._values(kind, arg.choices, word, document, arg.metavar,
                                    exclude=done)
        if not word and not only_pos:
            # nothing positional left (or optional): offer the options too
            if arg is None or arg.nargs in ("?", "*"):
                for o in cmd.opts:
                    if o.dest in used_opts and not o.multi:
                        continue
                    yield Completion(o.flags[-1], 0, display_meta=o.help)

    @staticmethod
    def _arg_at(cmd, n):
        k = 0
        for a in cmd.args:
            if a.nargs in ("*", "+"):
                return a
            if k == n:
                return a
            k += 1
        return None

    def _values(self, kind, choices, word, document, metavar, exclude=()):
        if choices:
            for c in choices:
                if c.startswith(word) and c not in exclude:
                    yield Completion(c, -len(word))
            return
        if kind in ("id", "job", "listener"):
            source = {"id": self.ids, "job": self.jobs, "listener": self.listeners}[kind]
            try:
                known = source() or {}
            except Exception:  # noqa: BLE001 - no module, no /proc file: nothing to offer
                known = {}
            for n in sorted(known):
                s = str(n)
                if s.startswith(word) and s not in exclude:
                    yield Completion(s, -len(word), display_meta=known[n] or "")
        elif kind == "command":
            for c in self.commands:
                if c.name.startswith(word):
                    yield Completion(c.name, -len(word), display_meta=c.summary)
        elif kind in ("file", "prog"):
            if kind == "prog":
                from kpctl.bpf import SHIPPED  # stdlib only: cheap
                for name, what in SHIPPED.items():
                    if name.startswith(word):
                        yield Completion(name, -len(word), display_meta=what)
            sub = Document(word, len(word))
            yield from self._paths.get_completions(sub, None)
