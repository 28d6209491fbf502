"""kpctl.1, generated from the command table:  python -m kpctl.shell.manpage > kpctl.1"""

from __future__ import annotations

import sys

from kpctl.shell import table as C
from kpctl.shell.misc import version_string


def _esc(text: str) -> str:
    out = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in out.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _bold_opt(flag: str) -> str:
    return f"\\fB{_esc(flag)}\\fR"


def render(date: str = "", version: str | None = None) -> str:
    version = version or version_string()
    o = []
    o.append(f'.TH KPCTL 1 "{date}" "kpctl {_esc(version)}" "User Commands"')
    o.append(".SH NAME")
    o.append("kpctl \\- manage kproxy, the in\\-kernel joiner of two TCP sockets")
    o.append(".SH SYNOPSIS")
    o.append(".B kpctl")
    o.append("[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR...]")
    o.append(".br")
    o.append(".B kpctl")
    o.append("[\\fIOPTIONS\\fR] \\fB\\-b\\fR \\fIFILE\\fR|\\fB\\-\\fR [\\fB\\-\\-force\\fR]")
    o.append(".br")
    o.append(".B kpctl")
    o.append("[\\fIOPTIONS\\fR]")
    o.append(".SH DESCRIPTION")
    o.append(_esc("kpctl creates, lists and ends the proxies of the kproxy module, which "
                  "joins two connected TCP sockets inside the kernel, over the kproxy "
                  "generic netlink family, and reads its statistics from /proc/net/kproxy_stat."))
    o.append(".PP")
    o.append(_esc("With a command, kpctl runs it and exits. With -b it runs one command a "
                  "line from a file. Without a command, on a terminal, it opens an "
                  "interactive shell with completion of commands, options and live proxy "
                  "ids, history and a status bar. Commands may be abbreviated to a unique "
                  "prefix (sh 3 is show 3)."))
    o.append(".SH OPTIONS")
    for flags, text in C.GLOBAL_OPTIONS:
        o.append(".TP")
        parts = [p.strip() for p in flags.split(",")]
        rendered = []
        for p in parts:
            name, _, meta = p.partition(" ")
            rendered.append(_bold_opt(name) + (f" \\fI{_esc(meta)}\\fR" if meta else ""))
        o.append(", ".join(rendered))
        o.append(_esc(text))
    o.append(".PP")
    o.append(_esc(C.TRAILING_NOTE + " Every command accepts -h and --help."))
    o.append(".SH COMMANDS")
    for c in C.COMMANDS:
        o.append(".TP")
        syn = c.synopsis().split(" ", 1)
        o.append(f"\\fB{_esc(syn[0])}\\fR" + (f" {_esc(syn[1])}" if len(syn) > 1 else ""))
        text = c.summary[0].upper() + c.summary[1:] + "."
        if c.description:
            text += " " + c.description
        o.append(_esc(text))
        for a in c.args:
            o.append(".RS")
            o.append(".TP")
            o.append(f"\\fI{_esc(a.metavar)}\\fR")
            o.append(_esc(a.help + (f" ({'|'.join(a.choices)})" if a.choices else "")))
            o.append(".RE")
        for opt in c.opts:
            o.append(".RS")
            o.append(".TP")
            head = ", ".join(_bold_opt(f) for f in opt.flags)
            if opt.takes_value:
                head += f" \\fI{_esc(opt.metavar)}\\fR"
            o.append(head)
            o.append(_esc(opt.help + (f" ({'|'.join(opt.choices)})" if opt.choices else "")))
            o.append(".RE")
    o.append(".SH OUTPUT")
    o.append(_esc("Tables for people on a terminal, with colour only there and never with "
                  "--no-color or NO_COLOR. Off a terminal, list prints plain columns as ss "
                  "does: a header line, then one line per proxy, exact byte counts, no "
                  "space inside a column. With -j the output is JSON: an array for list "
                  "and jobs, an object for show, create, destroy and stats, one object per "
                  "line for monitor, top and stats -w, and an error as "
                  '{"error": {"errno": N, "errno_name": "ENOENT", "message": "..."}} '
                  "(usage errors: errno 22, EINVAL; an internal error: errno 0, "
                  "errno_name null). In batch mode with -j, each command prints its own "
                  "JSON document on its own line."))
    o.append(".SH SHELL")
    o.append(_esc("Tab completes (live proxy ids from /proc/net/kproxy); arrows recall "
                  "history; Ctrl-C cancels the line or stops monitor, top and stats -w; "
                  "Ctrl-D or exit leaves. help COMMAND explains a command. Errors print as "
                  "Error: MESSAGE (ERRNO) and the shell goes on."))
    o.append(".PP")
    o.append(_esc("serve ... & (or serve --background) runs a service as a job of the "
                  "shell: jobs lists the jobs with their counters, stop N ends one, the "
                  "status bar shows them. Leaving the shell with jobs running asks what to "
                  "do: stop them draining, kill their proxies, leave the proxies to the "
                  "kernel, or cancel."))
    o.append(".SH EXIT STATUS")
    o.append(".TP\n0\nSuccess.\n.TP\n1\nUsage error (a bad command line or batch line).")
    o.append(".TP\n2")
    o.append(_esc("The kernel (or the system) refused: the kernel's own message is printed "
                  "as Error: MESSAGE (ERRNO). Also a bug in kpctl: Error: internal error: "
                  "..., never a traceback."))
    o.append(".SH ENVIRONMENT")
    o.append(".TP\n.B NO_COLOR\nWhen set and not empty, no colour.")
    o.append(".TP\n.B XDG_STATE_HOME")
    o.append(_esc("The shell's history is $XDG_STATE_HOME/kpctl/history "
                  "(default ~/.local/state/kpctl/history)."))
    o.append(".SH FILES")
    o.append(".TP\n.I /proc/net/kproxy\nOne line per proxy of the network namespace.")
    o.append(".TP\n.I /proc/net/kproxy_stat\nTotals of the network namespace since the module "
             "was loaded.")
    o.append(".SH EXAMPLES")
    for c in C.COMMANDS:
        for e in c.examples:
            o.append(".PP\n.nf\n.RS\n" + _esc(e) + "\n.RE\n.fi")
    o.append(".SH SEE ALSO")
    o.append(".BR ip (8),\n.BR ss (8),\n.BR bpftool (8)")
    return "\n".join(o) + "\n"


def main(argv=None) -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
