"""The command table: every kpctl command, its arguments and its help, for
the one-shot CLI (`kpctl list`), batch mode (`kpctl -b FILE`) and the shell
(`kpctl> list`), which all run a line through execute().  The completer, the
man page and the bash completion are generated from COMMANDS.

Adding a command: its handler goes in the module of its group (proxies,
programs, observe, service, misc), its line here.

Exit codes: 0 ok, 1 usage error, 2 the kernel (or the system) refused, or
an internal error.
"""

from __future__ import annotations

from typing import Sequence

from kpctl.shell import listeners, misc, observe, programs, proxies, service
from kpctl.shell.httpopts import RULE_OPTS
from kpctl.shell.args import (EXIT_KERNEL, EXIT_USAGE, Arg, Command, HelpRequested, Opt,
                              UsageError, count, fd_number, hostport, job_number,
                              listen_hostport, offset_value, parse_args, proxy_id, seconds,
                              tls_list)
from kpctl.shell.context import Context, is_kernel_error

_DIR = Opt(("--dir",), "dir", "direction the program applies to", metavar="DIR",
           choices=("a-to-b", "b-to-a", "both"), default="both")

COMMANDS: list[Command] = [
    Command("list", "list the proxies (or the listeners) of the network namespace",
            proxies.cmd_list,
            args=(Arg("what", "WHAT", "what to list (default proxies)", nargs="?",
                      choices=("proxies", "listeners")),),
            description="One line per proxy: id, state, both sockets' local and remote "
                        "addresses, bytes forwarded each way and age. With -j, an array "
                        "of proxy objects (a listener's proxies carry its listener_id). "
                        "`list listeners`: one line per kernel listener (see listen) with "
                        "its counters; with -j, an array of listener objects.",
            examples=("kpctl list", "kpctl -j list", "kpctl list listeners")),
    Command("show", "show one proxy (or listener) in detail", proxies.cmd_show,
            args=(Arg("id", "ID", "proxy id (listener id with --listener)", type=proxy_id,
                      complete="id"),),
            opts=(Opt(("-l", "--listener"), "listener", "ID is a listener's: show it"),),
            description="Every attribute of one proxy: sockets, TCP states and the "
                        "counters of each direction. With --listener, every attribute "
                        "and counter of a kernel listener.",
            examples=("kpctl show 3", "kpctl show --listener 1")),
    Command("create", "join two TCP connections in the kernel", proxies.cmd_create,
            opts=(Opt(("--listen",), "listen", "accept one client on LISTEN: it is socket A",
                      metavar="LISTEN", type=listen_hostport),
                  Opt(("--connect",), "connect", "connect to ADDR: the target with --listen "
                      "(socket B); else give it twice, A then B",
                      metavar="ADDR", type=hostport, multi=True),
                  Opt(("--timeout",), "timeout", "wait at most SECS for the client and for "
                      "each connect (default: until Ctrl-C)", metavar="SECS", type=seconds),
                  Opt(("--fd",), "fds", "an inherited socket fd (give it twice: A then B)",
                      metavar="FD", type=fd_number, multi=True, complete="fd")),
            check=proxies.check_create, changes=True,
            usage="--listen LISTEN --connect TARGET | --connect A --connect B | "
                  "--fd A --fd B  [--timeout SECS]",
            description="Makes one proxy and prints its id (with -j, the proxy). With "
                        "--listen, kpctl listens on LISTEN (its port on stderr: :0 picks "
                        "one), accepts one client, closes the listener, connects to TARGET "
                        "and joins the two. With two --connect, it connects to A, then to "
                        "B, and joins them. With --fd, it joins two connected TCP sockets "
                        "open in kpctl's own fd table (inherited from the caller). On "
                        "--timeout, or a refused connect, the error names the address and "
                        "nothing is left open. Sockets are made in the -n namespace.",
            examples=("kpctl create --listen 127.0.0.1:9000 --connect 127.0.0.1:80",
                      "kpctl create --connect 10.0.0.1:5000 --connect 10.0.0.2:5000 "
                      "--timeout 5",
                      "kpctl create --fd 3 --fd 4    # fds 3 and 4 inherited from the caller")),
    Command("destroy", "end proxies and give their sockets back", proxies.cmd_destroy,
            args=(Arg("ids", "ID", "proxy id", nargs="*", type=proxy_id, complete="id"),),
            opts=(Opt(("-a", "--all"), "all", "destroy every proxy of the netns"),),
            check=proxies.check_destroy, changes=True, usage="ID... | --all",
            examples=("kpctl destroy 3 4", "kpctl destroy --all")),
    Command("listen", "accept and proxy connections in the kernel (a kernel listener)",
            listeners.cmd_listen,
            args=(Arg("listen", "LISTEN", "address to listen on: HOST:PORT, [IPV6]:PORT, :PORT",
                      type=listen_hostport),
                  Arg("target", "TARGET", "address to forward to: HOST:PORT or [IPV6]:PORT",
                      type=hostport)),
            opts=(Opt(("--max-proxies",), "max_proxies", "at most N proxies at once, "
                      "connects in flight included (beyond: the client is reset)",
                      metavar="N", type=count),
                  Opt(("--connect-timeout",), "connect_timeout", "a connect to TARGET may "
                      "take SECS (default 10)", metavar="SECS", type=seconds),
                  Opt(("--source",), "source", "connect to TARGET from this address "
                      "(HOST:PORT, port 0: any)", metavar="ADDR", type=hostport),
                  Opt(("--parser",), "parser", "a parser program on both directions of "
                      "every proxy", metavar="PROG", complete="prog"),
                  Opt(("--verdict",), "verdict", "a verdict program on both directions of "
                      "every proxy (needs --parser)", metavar="PROG", complete="prog")),
            check=listeners.check_listen, changes=True,
            description="kpctl listens on LISTEN and hands the socket to the kernel, then "
                        "exits: the module accepts every connection, connects it to "
                        "TARGET and joins the two as a proxy, with no userspace per "
                        "connection. Prints the listener's id (with -j, the listener). "
                        "A refused, unreachable or timed-out connect resets the client "
                        "and is counted (see `list listeners`). The socket is made in the "
                        "-n namespace, and so are the connects to TARGET.",
            examples=("kpctl listen 127.0.0.1:8080 127.0.0.1:80",
                      "kpctl listen :443 10.0.0.2:443 --max-proxies 1000 "
                      "--connect-timeout 2")),
    Command("unlisten", "delete a kernel listener", listeners.cmd_unlisten,
            args=(Arg("id", "ID", "listener id", type=proxy_id, complete="listener"),),
            opts=(Opt(("--kill",), "kill", "also end the proxies it made (default: they "
                      "go on)"),),
            changes=True,
            description="The kernel stops accepting on the listener's socket (connections "
                        "still waiting there are left to nobody and reset when the socket "
                        "closes) and resets the connects in flight. Its proxies go on "
                        "until they end, unless --kill.",
            examples=("kpctl unlisten 1", "kpctl unlisten 1 --kill")),
    Command("attach", "attach (or replace) a BPF parser or verdict program", programs.cmd_attach,
            args=(Arg("id", "ID", "proxy id", type=proxy_id, complete="id"),
                  Arg("kind", "KIND", "program kind", choices=("parser", "verdict")),
                  Arg("prog", "PROG", "a shipped program (lenprefix, lines, drop-prefix, "
                      "pass, http, http-filter), an ELF object FILE.o[:NAME] or a program pinned in bpffs",
                      complete="prog")),
            opts=(_DIR,
                  Opt(("--prefix",), "prefix", "drop-prefix: drop messages whose payload "
                      "starts with TEXT", metavar="TEXT"),
                  Opt(("--offset",), "offset", "drop-prefix: where the payload starts in a "
                      "message (default 4, after lenprefix's header)", metavar="N",
                      type=offset_value)) + RULE_OPTS,
            check=programs.check_attach,
            description="Loads PROG as a socket filter (through libbpf for an ELF object) "
                        "and attaches it to one direction or both (default), replacing the "
                        "program of that kind there, while traffic flows. A parser cuts the "
                        "stream into messages (its return: the message length, 0 for more "
                        "bytes, negative for a protocol error that ends the proxy); a "
                        "verdict needs a parser and drops a message when it returns 0. A "
                        "program the verifier refuses is reported with the end of its log. "
                        "HTTP: the http parser frames requests (a-to-b) and responses "
                        "(b-to-a); attached to one direction while the other has it, the "
                        "same program is used, so both share one state. The http-filter "
                        "verdict reads that state: attach the parser first; its rules are the "
                        "options below (or --rules FILE), and a request they deny is answered "
                        "with a canned 403, 405, 413, 414, 431 (or 400 for a malformed or "
                        "smuggled one) and a close, never forwarded. Use --dir a-to-b for it: "
                        "on b-to-a it judges responses, and answers a malformed one to the "
                        "target. `http-rules` changes the rules later.",
            examples=("kpctl attach 3 parser lenprefix",
                      "kpctl attach 3 parser http",
                      "kpctl attach 3 verdict http-filter --dir a-to-b --deny-path /admin "
                      "--allow-methods GET,HEAD,POST --max-header-bytes 16384",
                      "kpctl attach 3 verdict http-filter --dir a-to-b --rules waf.rules",
                      "kpctl attach 3 verdict drop-prefix --prefix DROP --dir a-to-b",
                      "kpctl attach 3 parser ./my.o:parse_http",
                      "kpctl attach 3 verdict /sys/fs/bpf/my_verdict")),
    Command("http-rules", "show or change the rules of a running http-filter",
            programs.cmd_http_rules,
            args=(Arg("id", "ID", "proxy id (listener id with --listener)", type=proxy_id,
                      complete="id"),),
            opts=(Opt(("-l", "--listener"), "listener", "ID is a listener's (serve --http "
                      "makes one): change its filter, shared by all its proxies"),) + RULE_OPTS,
            usage="ID [--listener] [--rules FILE] [RULE OPTIONS]",
            description="Without rule options, prints the rules in force in the http-filter "
                        "verdict of proxy ID (or of listener ID), one `KEYWORD VALUE` a line "
                        "as in a rules file. With rule options (or --rules FILE), replaces "
                        "them all at once: one map update, so no byte is lost or judged "
                        "twice; the next request is judged by the new rules.",
            examples=("kpctl http-rules 3", "kpctl http-rules 3 --deny-path /admin "
                      "--deny-path /debug", "kpctl http-rules --listener 1 --rules waf.rules",
                      "kpctl -j http-rules 3")),
    Command("detach", "detach a BPF parser or verdict program", programs.cmd_detach,
            args=(Arg("id", "ID", "proxy id", type=proxy_id, complete="id"),
                  Arg("kind", "KIND", "program kind", choices=("parser", "verdict"))),
            opts=(_DIR,),
            description="Detaches the program of that kind from one direction or both "
                        "(default). A parser cannot go while a verdict needs it (EBUSY): "
                        "detach the verdict first. Without a parser the direction is a "
                        "plain byte stream again.",
            examples=("kpctl detach 3 verdict", "kpctl detach 3 parser --dir b-to-a")),
    Command("stats", "module totals from /proc/net/kproxy_stat", observe.cmd_stats,
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
    Command("monitor", "print proxy and listener events until interrupted", observe.cmd_monitor,
            opts=(Opt(("-c", "--count"), "count", "stop after COUNT events",
                      metavar="COUNT", type=count),),
            description="One line per event with its timestamp; with -j one JSON object "
                        "per line. Ctrl-C ends it.",
            examples=("kpctl monitor", "kpctl -j monitor -c 2")),
    Command("top", "live table of listeners and of proxies by throughput", observe.cmd_top,
            opts=(Opt(("-d", "--delay"), "delay", "seconds between refreshes (default 1)",
                      metavar="SECS", type=seconds, default=1.0),
                  Opt(("-c", "--count"), "count", "stop after COUNT refreshes",
                      metavar="COUNT", type=count)),
            description="Proxies sorted by bytes per second over the last interval (the "
                        "first screen shows the average since creation); above them the "
                        "listeners, with connections accepted per second, active proxies, "
                        "failed connects and refusals at the limit. Ctrl-C ends it.",
            examples=("kpctl top", "kpctl -j top -c 3")),
    Command("serve", "listen and hand every connection to the kernel (an L4 proxy)",
            service.cmd_serve,
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
                  Opt(("--userspace",), "userspace",
                      "accept and connect in kpctl, not in a kernel listener (TLS always "
                      "does)"),
                  Opt(("--workers",), "workers", "with --userspace: N processes accept on "
                      "LISTEN (SO_REUSEPORT), one report (default 1)", metavar="N", type=count,
                      default=1),
                  Opt(("--drain",), "drain", "on SIGINT/SIGTERM wait for running proxies to end"),
                  Opt(("--kill",), "kill", "on SIGINT/SIGTERM end running proxies"),
                  Opt(("--background",), "background",
                      "in the shell: run as a job (as a trailing &); 'jobs', 'stop N'"),
                  Opt(("-q", "--quiet"), "quiet",
                      "no status line, summary or per-connection lines"),
                  Opt(("-j", "--json"), "json", "JSON log lines (as kpctl -j)"),
                  Opt(("--parser",), "parser", "BPF parser attached to both directions of "
                      "every proxy (as attach: a shipped name, FILE.o[:NAME] or a bpffs pin)",
                      metavar="PROG", complete="prog"),
                  Opt(("--verdict",), "verdict", "BPF verdict attached to both directions of "
                      "every proxy, after the parser (needs --parser)",
                      metavar="PROG", complete="prog"),
                  Opt(("--http",), "http", "an HTTP proxy: the http parser on both "
                      "directions and the http-filter verdict on requests, with the rules "
                      "below (none: only malformed and smuggled requests are refused)"),
                  Opt(("--prefix",), "prefix", "drop-prefix verdict: drop messages whose "
                      "payload starts with TEXT", metavar="TEXT"),
                  Opt(("--offset",), "offset", "drop-prefix verdict: where the payload starts "
                      "in a message (default 4, after lenprefix's header)", metavar="N",
                      type=offset_value),
                  Opt(("--tls-cert",), "tls_cert", "terminate TLS: the certificate chain "
                      "(PEM) shown to clients (needs --tls-key)", metavar="FILE",
                      complete="file"),
                  Opt(("--tls-key",), "tls_key", "terminate TLS: the private key (PEM) of "
                      "--tls-cert", metavar="FILE", complete="file"),
                  Opt(("--target-tls",), "target_tls", "originate TLS: speak TLS to TARGET "
                      "(with --tls-cert: re-encrypt)"),
                  Opt(("--target-ca",), "target_ca", "CA certificates (PEM) that TARGET's "
                      "certificate must chain to (default: the system store)",
                      metavar="FILE", complete="file"),
                  Opt(("--target-sni",), "target_sni", "the name sent as SNI and checked in "
                      "TARGET's certificate (default: TARGET's host name)", metavar="NAME"),
                  Opt(("--target-insecure",), "target_insecure", "accept any certificate "
                      "from TARGET (no check: for tests)"),
                  Opt(("--tls-versions",), "tls_versions", "TLS versions allowed on both "
                      "sides, e.g. 1.3 (default 1.2,1.3)", metavar="LIST", type=tls_list),
                  Opt(("--tls-ciphers",), "tls_ciphers", "ciphers allowed on both sides: "
                      "AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305 or suite names, "
                      "comma-separated (default: all that kTLS takes)", metavar="LIST",
                      type=tls_list),
                  Opt(("--handshake-timeout",), "handshake_timeout", "reset a client whose "
                      "TLS handshake (either side) is not done after SECS (default 10)",
                      metavar="SECS", type=seconds, default=10.0),
                  Opt(("--handshake-workers",), "handshake_workers", "threads running TLS "
                      "handshakes beside the accept loop (default 16)", metavar="N",
                      type=count, default=16)) + RULE_OPTS,
            check=service.check_serve, changes=True, usage="LISTEN TARGET [OPTIONS] [&]",
            description="Listens on LISTEN and hands the socket to a kernel listener (see "
                        "listen): the module accepts, connects to TARGET and joins the two, "
                        "with no Python per connection; serve reports what the kernel tells "
                        "it (a failed or refused connection has no client address then). "
                        "With --userspace, or with TLS, serve itself accepts, connects to "
                        "TARGET without blocking, joins the two "
                        "sockets in the kernel and closes its own fds: the process carries no "
                        "bytes; --workers N runs N such processes on LISTEN (SO_REUSEPORT), "
                        "reported as one service (JSON lines name each connection's worker). A target that refuses or times out resets that client, counted; "
                        "accept errors (EMFILE...) pause accepting. Names are resolved once at "
                        "start. On a terminal a status line shows accepted, active, failed, "
                        "refused and bytes each way (kernel counters); a summary on exit. "
                        "SIGINT/SIGTERM stop accepting; running proxies go on in the kernel "
                        "unless --drain (wait) or --kill (end them). SIGHUP is ignored, "
                        "with a message (no reload). --parser and --verdict are loaded once "
                        "at start and attached to every proxy right after it is made; a "
                        "proxy the kernel refuses them on is ended and counted as failed. "
                        "The parser applies from the first byte the kernel has not read "
                        "yet: bytes a client sent before the attach pass as a plain stream. "
                        "In the shell, a trailing & (or --background) runs the service as a "
                        "job beside the prompt: 'jobs' lists the jobs with their counters, "
                        "'stop N' ends one, the toolbar shows them. "
                        "TLS: --tls-cert/--tls-key terminate it (clients speak TLS, TARGET "
                        "plain), --target-tls originates it (clients plain, TARGET TLS), both "
                        "re-encrypt; the kernel (kTLS) then carries the records, the parser "
                        "and verdict see plaintext. Certificates are loaded once at start. "
                        "Handshakes run in a pool of threads, never in the accept loop; one "
                        "that fails or outlasts --handshake-timeout resets that client "
                        "(failed, stage tls), and counts toward --max-conns while it runs. "
                        "HTTP: --http attaches the http parser to both directions and the "
                        "http-filter verdict to requests (a-to-b) of every proxy, with the "
                        "rule options or --rules FILE (see attach); a denied, malformed or "
                        "smuggled request is answered with its canned status and a close, "
                        "never forwarded. With --tls-cert it filters the decrypted requests. "
                        "On a kernel listener, `http-rules --listener ID` changes the rules "
                        "of every proxy at once (`list listeners` shows the id).",
            examples=("kpctl serve 0.0.0.0:8080 127.0.0.1:80",
                      "kpctl serve [::]:443 backend.internal:443 --max-conns 1000",
                      "kpctl serve -j --drain :5432 10.0.0.7:5432",
                      "kpctl serve :9000 127.0.0.1:9001 --parser lenprefix "
                      "--verdict drop-prefix --prefix DROP",
                      "kpctl serve :443 127.0.0.1:8080 --tls-cert site.pem --tls-key site.key",
                      "kpctl serve :8080 127.0.0.1:80 --http --deny-path /admin "
                      "--allow-methods GET,HEAD,POST",
                      "kpctl serve :443 127.0.0.1:80 --http --rules waf.rules --tls-cert "
                      "site.pem --tls-key site.key",
                      "kpctl serve :8080 api.internal:443 --target-tls",
                      "kpctl> serve :9000 127.0.0.1:9001 &    # in the shell: a job")),
    Command("jobs", "list the shell's background services with their counters",
            service.cmd_jobs,
            description="One line per job started with 'serve ... &': its number, state "
                        "(running, stopping, done, failed), addresses and counters "
                        "(accepted, active, failed, refused, bytes each way). With -j, an "
                        "array of jobs. Only in the shell.",
            examples=("kpctl> jobs",)),
    Command("stop", "stop a background service of the shell", service.cmd_stop,
            args=(Arg("job", "N", "job number ('jobs' lists them; %N works too)",
                      type=job_number, complete="job"),),
            opts=(Opt(("--drain",), "drain", "wait for its running proxies to end"),
                  Opt(("--kill",), "kill", "end its running proxies"),
                  Opt(("--leave",), "leave", "leave its running proxies to the kernel")),
            check=service.check_stop, changes=True,
            description="The job stops accepting. Its running proxies go on in the kernel "
                        "(--leave), end now (--kill) or are waited for (--drain); without "
                        "one of them, as serve's own --drain/--kill said (default: leave). "
                        "A draining job shows as 'stopping' until its last proxy ends. "
                        "Only in the shell.",
            examples=("kpctl> stop 1", "kpctl> stop 1 --kill")),
    Command("help", "list the commands, or explain one", misc.cmd_help,
            args=(Arg("command", "COMMAND", "a command", nargs="?", complete="command"),)),
    Command("version", "print kpctl's version", misc.cmd_version),
]

SHELL_ONLY = ("exit", "quit")

def find_command(name: str) -> Command:
    for c in COMMANDS:
        if c.name == name:
            return c
    raise KeyError(name)


# Prefixes that named one command before a later one shared them, kept so
# that what users type still works: `h` was help before http-rules came.
KEPT_PREFIXES = {"h": "help"}


def resolve(word: str) -> Command:
    """A command by its name or a unique prefix of it."""
    for c in COMMANDS:
        if c.name == word:
            return c
    if word in KEPT_PREFIXES:
        return find_command(KEPT_PREFIXES[word])
    cands = [c for c in COMMANDS if c.name.startswith(word)]
    if len(cands) == 1:
        return cands[0]
    # A name that starts every other candidate's wins: `l` and `lis` are
    # still list, as before listen came; `liste` is listen.
    for c in cands:
        if all(o.name.startswith(c.name) for o in cands):
            return c
    if not cands:
        raise UsageError(f"unknown command '{word}'; 'help' lists the commands")
    raise UsageError(f"ambiguous command '{word}': could be {', '.join(c.name for c in cands)}")


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

TRAILING_NOTE = ("-j, -p, -n and --no-color may also follow the command (kpctl list -j); "
                 "a command's own option of the same name wins (serve -j: JSON log lines).")


def overview_help(prog: str = "kpctl", interactive: bool = False) -> str:
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
        lines.append("'help COMMAND' (or 'COMMAND --help') explains one. Tab completes "
                     "commands, options and ids.")
        lines.append("'serve ... &' runs a service as a job: 'jobs' lists them, 'stop N' "
                     "ends one.")
    else:
        lines.append("")
        lines.append("Options:")
        for f, h in GLOBAL_OPTIONS:
            lines.append(f"  {f.ljust(18)}  {h}")
        lines.append("")
        lines.append(TRAILING_NOTE)
        lines.append("")
        lines.append(f"'{prog} help COMMAND' or '{prog} COMMAND --help' explains one. Exit "
                     "status: 0 ok, 1 usage error, 2 refused by the kernel (or an "
                     "internal error).")
    return "\n".join(lines)


def command_help(cmd: Command, prog: str | None = None) -> str:
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
# Running one command line


def split_background(tokens: Sequence[str]) -> tuple[list[str], bool]:
    """A trailing `&` (a word of its own, or glued to the last one): the
    line without it, and whether it was there."""
    tokens = list(tokens)
    if len(tokens) > 1 and tokens[-1] == "&":
        return tokens[:-1], True
    if len(tokens) > 1 and tokens[-1].endswith("&"):
        return tokens[:-1] + [tokens[-1][:-1]], True
    return tokens, False


def changes_proxies(tokens: Sequence[str]) -> bool:
    """Does this line run a command that makes or ends proxies?"""
    try:
        return bool(tokens) and resolve(tokens[0]).changes
    except UsageError:
        return False


def execute(ctx: Context, tokens: Sequence[str], where: str = "") -> int:
    """Run one command line (already split): the exit code; every error
    reported on ctx (a bug too: one line, never a traceback)."""
    run_ctx = ctx
    try:
        tokens, background = split_background(tokens)
        if not tokens:
            raise UsageError("missing command; 'help' lists the commands")
        cmd = resolve(tokens[0])
        ns = parse_args(cmd, tokens[1:])
        if background:
            if cmd.name != "serve":
                raise UsageError(f"{cmd.name}: only serve runs in the background (&)", cmd)
            ns["background"] = True
        run_ctx = ctx.derive(**ns.globals_)
        return cmd.run(run_ctx, ns) or 0
    except HelpRequested as h:
        text = command_help(h.command, prog=None if ctx.interactive else ctx.prog)
        ctx.emit_json({"help": text}) if ctx.json else ctx.write(text)
        return 0
    except UsageError as e:
        if run_ctx is ctx:
            run_ctx = ctx.derive(**e.globals_)
        run_ctx.report_usage(e, where)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if ctx.interactive:
            ctx.stderr.write("interrupted\n")
            return 130
        raise
    except BrokenPipeError:
        raise
    except Exception as e:  # noqa: BLE001 - every error becomes one line
        if is_kernel_error(e) or isinstance(e, OSError):
            run_ctx.report_kernel(e, where)
        else:
            run_ctx.report_internal(e, where)
        return EXIT_KERNEL
    finally:
        if run_ctx is not ctx:
            run_ctx.close()
