"""One-shot and batch modes of kpctl, against a fake client (no kernel)."""

import errno
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from cli_fakes import NOW, FakeKproxy, Harness, del_event, make_proxy, new_event
from kpctl.errors import KproxyError
from kpctl.model import Totals
from kpctl.shell import table as C

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def h():
    return Harness(FakeKproxy([make_proxy(1, ab=2048, ba=10), make_proxy(3, state="half-closed")]))


def no_traceback(h):
    assert "Traceback" not in h.out + h.err


# -- the command table ---------------------------------------------------------

def test_every_command_has_help_and_synopsis():
    names = [c.name for c in C.COMMANDS]
    assert names == ["list", "show", "create", "destroy", "listen", "unlisten", "attach",
                     "http-rules", "detach", "stats",
                     "monitor", "top", "serve", "jobs", "stop", "help", "version"]
    for c in C.COMMANDS:
        assert c.summary and c.synopsis().startswith(c.name)
        assert c.name in C.command_help(c, prog="kpctl")


@pytest.mark.parametrize("word,name", [("l", "list"), ("lis", "list"), ("liste", "listen"),
                                       ("unl", "unlisten"), ("sh", "show"), ("show", "show"),
                                       ("cr", "create"), ("des", "destroy"), ("det", "detach"),
                                       ("sta", "stats"), ("sto", "stop"), ("j", "jobs"), ("m", "monitor"), ("t", "top"),
                                       ("h", "help"), ("v", "version")])
def test_unique_prefixes(word, name):
    assert C.resolve(word).name == name


@pytest.mark.parametrize("word,cands", [("s", "show, stats, serve, stop"), ("st", "stats, stop"), ("d", "destroy, detach"), ("de", "destroy, detach"),
                                        ("", "list, show")])
def test_ambiguous_prefix_lists_candidates(h, word, cands):
    rc = h.run(word, "1") if word else h.run("", "1")
    assert rc == 1
    assert "ambiguous command" in h.err and cands in h.err
    no_traceback(h)


def test_unknown_command(h):
    assert h.run("frobnicate") == 1
    assert "unknown command 'frobnicate'" in h.err
    no_traceback(h)


# -- list / show ---------------------------------------------------------------

def test_list_off_a_terminal_is_plain_columns(h):
    assert h.run("list") == 0
    assert h.out.splitlines() == [
        "ID  STATE        A-LOCAL         A-REMOTE        B-LOCAL          B-REMOTE         "
        "A→B  B→A    AGE  TLS",
        " 1  active       127.0.0.1:8000  10.0.0.1:40001  127.0.0.1:50001  127.0.0.1:9000  "
        "2048   10  3m12s  -",
        " 3  half-closed  127.0.0.1:8000  10.0.0.3:40003  127.0.0.1:50003  127.0.0.1:9000  "
        "   0    0  3m12s  -",
    ]
    # one cell per column: awk and sort -k work
    assert all(len(line.split()) == 10 for line in h.out.splitlines())


def test_list_plain_does_not_import_rich():
    code = ("import io, sys; sys.path.insert(0, 'tests/host');"
            "from cli_fakes import Harness, FakeKproxy, make_proxy;"
            "h = Harness(FakeKproxy([make_proxy(n) for n in range(1, 2001)]));"
            "assert h.run('list') == 0, h.err;"
            "print(len(h.out.splitlines()), 'rich' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2001", "False"]


def test_list_empty_off_a_terminal_is_the_header():
    h = Harness(FakeKproxy())
    assert h.run("list") == 0
    assert h.out.split() == ["ID", "STATE", "A-LOCAL", "A-REMOTE", "B-LOCAL", "B-REMOTE",
                             "A→B", "B→A", "AGE", "TLS"]


def test_list_json_is_an_array(h):
    assert h.run("-j", "list") == 0
    data = json.loads(h.out)
    assert [p["id"] for p in data] == [1, 3]
    assert data[0]["a_to_b"]["bytes"] == 2048
    assert data[0]["a"]["remote"] == "10.0.0.1:40001"


def test_list_empty_json_is_empty_array():
    h = Harness(FakeKproxy())
    assert h.run("-j", "list") == 0
    assert json.loads(h.out) == []


def test_pretty_json(h):
    assert h.run("-p", "list") == 0
    assert h.out.startswith("[\n  {")
    assert json.loads(h.out)[1]["state"] == "half-closed"


def test_prefix_runs_command(h):
    assert h.run("-j", "sh", "3") == 0
    assert json.loads(h.out)["id"] == 3


def test_show_text(h):
    assert h.run("show", "1") == 0
    assert "proxy 1" in h.out and "127.0.0.1:8000" in h.out and "ESTABLISHED" in h.out
    assert "2.0 KiB (2048)" in h.out


@pytest.mark.parametrize("args,msg", [(["show"], "missing ID"),
                                      (["show", "x"], "'x' is not a proxy id"),
                                      (["show", "0"], "'0' is not a proxy id"),
                                      (["show", "-1"], "'-1' is not a proxy id"),
                                      (["show", "1", "2"], "unexpected argument '2'"),
                                      (["show", "--bogus", "1"], "unknown option '--bogus'"),
                                      (["list", "extra"], "WHAT must be one of proxies, listeners, not 'extra'"),
                                      (["list", "listeners", "extra"], "unexpected argument 'extra'")])
def test_bad_arguments_are_usage_errors(h, args, msg):
    assert h.run(*args) == 1
    assert msg in h.err
    assert "usage: kpctl " + args[0] in h.err
    assert h.out == ""
    no_traceback(h)


def test_unknown_id_is_kernel_error(h):
    assert h.run("show", "42") == 2
    assert h.err == "Error: no proxy with this id (ENOENT)\n"


def test_unknown_id_json_error(h):
    assert h.run("-j", "show", "42") == 2
    assert json.loads(h.out) == {"error": {"errno": 2, "errno_name": "ENOENT",
                                           "message": "no proxy with this id"}}


def test_usage_error_json(h):
    assert h.run("-j", "show") == 1
    err = json.loads(h.out)["error"]
    assert err["errno"] == 22 and err["errno_name"] == "EINVAL" and "missing ID" in err["message"]


def test_open_failure_is_reported():
    def factory(netns):
        raise FileNotFoundError(2, "No such file or directory", "/var/run/netns/nope")
    from kpctl.cli import main
    import io
    out, err = io.StringIO(), io.StringIO()
    rc = main(["-n", "nope", "list"], client_factory=factory, stdout=out, stderr=err, env={})
    assert rc == 2
    assert err.getvalue() == "Error: No such file or directory: /var/run/netns/nope (ENOENT)\n"


# -- create / destroy ----------------------------------------------------------

def test_create_with_inherited_fds(h):
    s1, s2 = socket.socketpair()
    with s1, s2:
        fa, fb = s1.fileno(), s2.fileno()
        assert h.run("create", "--fd", str(fa), "--fd=%d" % fb) == 0
    assert h.client.calls[-1] == ("create", fa, fb)
    assert h.out == "proxy 4 created\n"


def test_create_json(h):
    s1, s2 = socket.socketpair()
    with s1, s2:
        assert h.run("-j", "create", "--fd", str(s1.fileno()), "--fd", str(s2.fileno())) == 0
    assert json.loads(h.out)["id"] == 4


@pytest.mark.parametrize("args,msg", [
    (["create"], "needs exactly two --fd options (got 0)"),
    (["create", "--fd", "3"], "needs exactly two --fd options (got 1)"),
    (["create", "--fd", "0", "--fd", "0"], "must be different"),
    (["create", "--fd", "a", "--fd", "4"], "'a' is not a file descriptor number"),
    (["create", "--fd"], "option --fd needs a value (FD)"),
    (["create", "--fd", "1000", "--fd", "1001"], "fd 1000 is not open"),
])
def test_create_bad_arguments(h, args, msg):
    assert h.run(*args) == 1
    assert msg in h.err
    assert not any(c[0] == "create" for c in h.client.calls)
    no_traceback(h)


def test_destroy_ids(h):
    assert h.run("destroy", "1", "3") == 0
    assert h.out == "proxy 1 destroyed\nproxy 3 destroyed\n"
    assert h.client.proxies == {}


def test_destroy_all_json(h):
    assert h.run("-j", "destroy", "--all") == 0
    assert json.loads(h.out) == {"destroyed": [1, 3]}


def test_destroy_unknown_goes_on_and_fails(h):
    assert h.run("destroy", "7", "1") == 2
    assert "proxy 7: Error: no proxy with this id (ENOENT)" in h.err
    assert h.out == "proxy 1 destroyed\n"


@pytest.mark.parametrize("args,msg", [(["destroy"], "missing ID (or --all)"),
                                      (["destroy", "--all", "1"], "not both"),
                                      (["destroy", "one"], "'one' is not a proxy id")])
def test_destroy_bad_arguments(h, args, msg):
    assert h.run(*args) == 1
    assert msg in h.err
    no_traceback(h)


# -- attach / detach -------------------------------------------------------------


@pytest.fixture
def hp():
    """A harness with proxy 3."""
    return Harness(FakeKproxy([make_proxy(3)]))


def test_attach_parser_then_verdict(hp):
    assert hp.run("attach", "3", "parser", "lenprefix") == 0
    assert hp.out == "proxy 3: parser lenprefix (id 40) attached on both directions\n"
    assert hp.run("attach", "3", "verdict", "pass", "--dir", "a-to-b") == 0
    assert "verdict pass (id 41) attached on a-to-b" in hp.out
    attaches = [c for c in hp.client.calls if c[0] == "attach"]
    assert attaches == [("attach", 3, "parser", 99, "both"), ("attach", 3, "verdict", 99, "a-to-b")]
    assert all(p.closed for p in hp.loaded)  # the kernel keeps its own reference


def test_attach_json_and_prefix(hp):
    hp.run("attach", "3", "parser", "lenprefix")
    assert hp.run("-j", "attach", "3", "verdict", "drop-prefix", "--prefix", "DROP") == 0
    out = json.loads(hp.out)
    assert out == {"id": 3, "kind": "verdict", "direction": "both", "prefix": "DROP", "offset": 4,
                   "prog": {"id": 41, "name": "drop_prefix", "source": "drop-prefix"}}
    assert hp.loaded[-1].prefix == (b"DROP", 4)
    assert hp.run("attach", "3", "verdict", "drop-prefix", "--prefix", "GET ", "--offset", "0") == 0
    assert hp.loaded[-1].prefix == (b"GET ", 0)


@pytest.mark.parametrize("args,msg", [
    (["attach", "3", "parser", "lenprefix", "--prefix", "x"], "--prefix configures a verdict"),
    (["attach", "3", "verdict", "drop-prefix", "--offset", "2"], "--offset goes with --prefix"),
    (["attach", "3", "verdict", "drop-prefix", "--prefix", ""], "--prefix must not be empty"),
    (["attach", "3", "verdict", "drop-prefix", "--prefix", "x" * 65], "at most 64 bytes"),
    (["attach", "3", "verdict", "drop-prefix", "--prefix", "x", "--offset", "-1"], "not a byte offset"),
    (["attach", "3", "filter", "p.o"], "KIND must be one of parser, verdict"),
    (["attach", "3", "parser"], "missing PROG"),
    (["attach", "3", "parser", "p.o", "--dir", "up"], "must be one of a-to-b, b-to-a, both"),
    (["detach", "3"], "missing KIND"),
    (["detach", "x", "parser"], "'x' is not a proxy id"),
])
def test_attach_detach_usage_errors(hp, args, msg):
    assert hp.run(*args) == 1
    assert msg in hp.err
    assert not [c for c in hp.client.calls if c[0] in ("attach", "detach")]
    no_traceback(hp)


def test_attach_errors_from_the_loader_and_the_kernel(hp):
    assert hp.run("attach", "3", "parser", "p.o") == 2
    assert hp.err == "Error: p.o: no such file (ENOENT)\n"
    assert hp.run("attach", "3", "verdict", "pass") == 2
    assert "Error: a verdict needs a parser on its direction (EINVAL)" in hp.err
    assert hp.loaded[-1].closed  # closed on failure too
    assert hp.run("-j", "attach", "9", "parser", "lines") == 2
    assert json.loads(hp.out)["error"]["errno_name"] == "ENOENT"
    no_traceback(hp)


def test_detach(hp):
    hp.run("attach", "3", "parser", "lenprefix")
    hp.run("attach", "3", "verdict", "pass")
    assert hp.run("detach", "3", "parser") == 2
    assert "detach the verdict first (EBUSY)" in hp.err
    assert hp.run("detach", "3", "verdict", "--dir", "b-to-a") == 0
    assert hp.out == "proxy 3: verdict detached from b-to-a\n"
    assert hp.run("-j", "det", "3", "parser") == 0
    assert json.loads(hp.out) == {"id": 3, "kind": "parser", "direction": "both", "detached": True}
    assert hp.run("detach", "3", "parser") == 2
    assert "no parser attached (ENOENT)" in hp.err


def test_attach_help_names_the_shipped_programs(hp):
    assert hp.run("help", "attach") == 0
    for name in ("lenprefix", "lines", "drop-prefix", "pass", "--prefix", "--dir"):
        assert name in hp.out


# -- serve with BPF programs (the service itself: tests/host/test_serve.py) -------


def test_serve_help_describes_the_programs(hp):
    assert hp.run("help", "serve") == 0
    for text in ("--parser PROG", "--verdict PROG", "--prefix TEXT", "--offset N",
                 "needs --parser", "first byte the kernel has not read"):
        assert text in hp.out, text


@pytest.mark.parametrize("args,msg", [
    (["--verdict", "pass"], "serve: --verdict: a verdict needs a parser (give --parser too)"),
    # ServeOptions.check()'s words (the one check of serve's options)
    (["--parser", "lenprefix", "--prefix", "x"], "give --verdict"),
    # the same checks, and words, as attach's
    (["--parser", "lenprefix", "--verdict", "drop-prefix", "--offset", "2"],
     "serve: --offset goes with --prefix"),
    (["--parser", "lenprefix", "--verdict", "drop-prefix", "--prefix", ""],
     "serve: --prefix must not be empty"),
    (["--parser", "lenprefix", "--verdict", "drop-prefix", "--prefix", "x" * 65],
     "serve: --prefix is at most 64 bytes"),
    # loaded at start: a name that is no program is a usage error (exit 1)
    (["--parser", "nope"], "serve: --parser: nope: no such file"),
])
def test_serve_program_options_usage_errors(hp, args, msg):
    assert hp.run("serve", "127.0.0.1:0", "127.0.0.1:9", *args) == 1
    assert msg in hp.err, hp.err
    assert hp.client.calls == []
    assert all(p.closed for p in hp.loaded)
    no_traceback(hp)


def _serve_fake(client, h, argv, connections):
    """kpctl -j serve ARGV with the fake client and loader; `connections`
    clients connect, then SIGTERM.  Returns (rc, JSON lines, stderr)."""
    from test_serve import _connect_retry, _serve_in_main_thread, free_port, wait_for

    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(64)  # connects complete in the backlog: nothing to serve
    port = free_port()
    held = []

    def ready(out):
        for _ in range(connections):
            try:
                held.append(_connect_retry(port))
            except ConnectionResetError:
                pass  # accepted, failed and reset by serve before connect() returned
        wait_for(lambda: out.getvalue().count('"event":"proxy"')
                 + out.getvalue().count('"event":"failed"') == connections)

    try:
        rc, out, err = _serve_in_main_thread(
            ["serve", "-j", "127.0.0.1:%d" % port, "127.0.0.1:%d" % target.getsockname()[1],
             *argv], client, ready, prog_loader=h.load_prog)
    finally:
        for c in held:
            c.close()
        target.close()
    return rc, [json.loads(line) for line in out.splitlines()], err


def test_serve_attaches_parser_then_verdict_to_every_proxy():
    h = Harness(FakeKproxy())
    rc, lines, err = _serve_fake(h.client, h, ["--parser", "lenprefix", "--verdict",
                                               "drop-prefix", "--prefix", "DROP"], 2)
    assert rc == 0, err
    attaches = [c for c in h.client.calls if c[0] == "attach"]
    assert attaches == [("attach", pid, kind, 99, "both") for pid in (1, 2)
                        for kind in ("parser", "verdict")]
    # each right after its create
    kinds = [c[0] for c in h.client.calls if c[0] in ("create", "attach")]
    assert kinds == ["create", "attach", "attach"] * 2
    assert [p.source for p in h.loaded] == ["lenprefix", "drop-prefix"]  # once
    assert h.loaded[1].prefix == (b"DROP", 4) and all(p.closed for p in h.loaded)
    assert lines[-1]["event"] == "summary" and lines[-1]["created"] == 2


def test_serve_attach_refused_is_a_failed_connection_at_stage_attach():
    class Refusing(FakeKproxy):
        def attach(self, pid, kind, prog, direction="both"):
            if pid == 1 and kind == "verdict":
                self.calls.append(("attach", pid, kind, prog.fileno(), direction))
                raise KproxyError(errno.EINVAL, "prog-fd: not a socket filter program")
            return super().attach(pid, kind, prog, direction)

    h = Harness(Refusing())
    rc, lines, err = _serve_fake(h.client, h, ["--parser", "lenprefix", "--verdict", "pass"], 2)
    assert rc == 0, err
    [failed] = [x for x in lines if x["event"] == "failed"]
    assert failed["stage"] == "attach" and failed["error"] == {
        "errno": errno.EINVAL, "errno_name": "EINVAL", "message": failed["reason"]}
    assert failed["reason"] == ("kernel refused the verdict: prog-fd: not a socket filter "
                                "program (EINVAL)")
    assert ("destroy", 1) in h.client.calls  # that proxy went; serving went on
    assert [x["id"] for x in lines if x["event"] == "proxy"] == [2]
    summary = lines[-1]
    assert (summary["accepted"], summary["created"], summary["failed"]) == (2, 1, 1)
    assert summary["failures"] == {"EINVAL": 1}


# -- stats ---------------------------------------------------------------------

T0 = Totals(active=2, created=5, ended_user=1, ended_closed=2, bytes=1000, skbs=10)
T1 = Totals(active=3, created=6, ended_user=1, ended_closed=2, bytes=3048, skbs=14)
T2 = Totals(active=1, created=6, ended_user=2, ended_closed=3, bytes=5096, skbs=20)


def test_stats_totals():
    h = Harness(totals=[T0])
    assert h.run("stats") == 0
    lines = dict(l.split(None, 1) for l in h.out.splitlines())
    assert lines["active"].strip() == "2"
    assert lines["bytes"].split()[0] == "1000"
    assert list(lines)[:3] == ["active", "created", "ended_user"]


def test_stats_json():
    h = Harness(totals=[T0])
    assert h.run("-j", "stats") == 0
    assert json.loads(h.out) == T0.to_dict()


def test_stats_interval_json_lines():
    h = Harness(totals=[T0, T1, T2])
    assert h.run("-j", "stats", "-w", "2", "-c", "2") == 0
    docs = [json.loads(l) for l in h.out.splitlines()]
    assert len(docs) == 2 and h.slept == [2.0, 2.0]
    assert docs[0]["deltas"]["bytes"] == 2048 and docs[0]["rates"]["bytes"] == 1024.0
    assert docs[0]["deltas"]["active"] == 3  # a gauge: its value
    assert "active" not in docs[0]["rates"]
    assert docs[1]["deltas"]["ended_closed"] == 1 and docs[1]["interval"] == 2.0


def test_stats_interval_text():
    h = Harness(totals=[T0, T1])
    assert h.run("stats", "-w", "1", "-c", "1") == 0
    assert h.out.startswith("# ")
    bytes_line = [l for l in h.out.splitlines() if l.startswith("bytes")][0]
    assert "+2048" in bytes_line and "2.0 KiB/s" in bytes_line


def test_stats_count_alone_means_every_second():
    h = Harness(totals=[T0, T1])
    assert h.run("-j", "stats", "-c", "1") == 0
    assert h.slept == [1.0]


@pytest.mark.parametrize("args,msg", [(["stats", "-w", "0"], "positive number of seconds"),
                                      (["stats", "-w", "x"], "'x' is not a number of seconds"),
                                      (["stats", "-c", "0"], "is not a count"),
                                      (["stats", "-w"], "needs a value (SECS)")])
def test_stats_bad_arguments(args, msg):
    h = Harness()
    assert h.run(*args) == 1 and msg in h.err
    no_traceback(h)


def test_stats_missing_proc_file():
    def reader():
        raise FileNotFoundError(2, "No such file or directory", "/proc/net/kproxy_stat")
    import io
    from kpctl.cli import main
    err = io.StringIO()
    rc = main(["stats"], totals_reader=reader, stdout=io.StringIO(), stderr=err, env={})
    assert rc == 2 and "Error: No such file or directory: /proc/net/kproxy_stat" in err.getvalue()


# -- monitor / top -------------------------------------------------------------

def test_monitor_json_lines():
    p = make_proxy(5)
    h = Harness(FakeKproxy(events=[new_event(p), del_event(p, "reset"), new_event(p)]))
    assert h.run("-j", "monitor", "-c", "2") == 0
    docs = [json.loads(l) for l in h.out.splitlines()]
    assert [d["kind"] for d in docs] == ["new", "del"]
    assert docs[1]["reason"] == "reset" and docs[1]["proxy"]["id"] == 5


def test_monitor_text_has_timestamps():
    p = make_proxy(5, ab=1 << 20)
    h = Harness(FakeKproxy(events=[new_event(p), del_event(p)]))
    assert h.run("monitor") == 0
    lines = h.out.splitlines()
    assert len(lines) == 2
    assert "[NEW] proxy 5" in lines[0] and "[DEL] proxy 5" in lines[1]
    assert "reason closed" in lines[1] and "1.0 MiB" in lines[1]
    import time
    assert lines[0].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(NOW)))


def test_top_sorted_by_throughput():
    client = FakeKproxy([make_proxy(1, ab=0), make_proxy(2, ab=0)])

    def grow(c):  # proxy 2 moves 10 KiB/s, proxy 1 1 KiB/s
        for pid, step in ((1, 1024), (2, 10240)):
            p = c.proxies[pid]
            from dataclasses import replace
            c.proxies[pid] = replace(p, a_to_b=replace(p.a_to_b, bytes=p.a_to_b.bytes + step))
    client.list_hook = grow
    h = Harness(client)
    assert h.run("-j", "top", "-c", "3") == 0
    docs = [json.loads(l) for l in h.out.splitlines()]
    assert len(docs) == 3 and h.slept == [1.0, 1.0]
    assert [p["id"] for p in docs[2]["proxies"]] == [2, 1]
    assert docs[2]["proxies"][0]["rate_a_to_b"] == 10240.0


def test_top_json_has_listeners_with_their_accept_rate():
    from cli_fakes import make_listener
    client = FakeKproxy([make_proxy(1)], listeners=[make_listener(2, accepted=10, active=1)])

    def accept(c):
        li = c.listeners_[2]
        from dataclasses import replace
        c.listeners_[2] = replace(li, accepted=li.accepted + 20)
    client.list_hook = accept
    h = Harness(client)
    assert h.run("-j", "top", "-c", "2") == 0
    docs = [json.loads(l) for l in h.out.splitlines()]
    (li,) = docs[1]["listeners"]
    assert (li["id"], li["listen"], li["target"], li["accepted_per_s"]) == \
        (2, "127.0.0.1:8002", "[::1]:80", 20.0)
    assert li["counters"]["active"] == 1
    assert [p["id"] for p in docs[1]["proxies"]] == [1]


def test_top_text():
    h = Harness(FakeKproxy([make_proxy(1, ab=192 * 1024)]))
    assert h.run("top", "-c", "1", "-d", "0.5") == 0
    assert "kpctl top" in h.out and "1.0 KiB/s" in h.out  # first screen: average since creation


# -- help / version / global options ------------------------------------------

def test_help(h):
    assert h.run("--help") == 0
    assert "usage: kpctl" in h.out and "monitor" in h.out
    assert h.run("help", "sh") == 0
    assert h.out.startswith("usage: kpctl show [-l] ID")
    assert h.run("help", "s") == 1 and "ambiguous" in h.err


def test_version(h):
    assert h.run("-V") == 0 and h.out.startswith("kpctl ")
    assert h.run("-j", "version") == 0 and "version" in json.loads(h.out)


@pytest.mark.parametrize("args,msg", [(["-x"], "unknown option '-x'"),
                                      (["-n"], "option -n needs a value"),
                                      (["--force", "list"], "only applies to batch")])
def test_bad_global_options(h, args, msg):
    assert h.run(*args) == 1 and msg in h.err
    no_traceback(h)


def test_no_command_off_terminal_is_usage(h):
    assert h.run() == 1 and "missing command" in h.err


def test_netns_is_passed_to_the_client(h):
    assert h.run("-n", "blue", "list") == 0
    assert h.netns_seen == ["blue"]
    assert h.run("--netns=red", "-j", "list") == 0
    assert h.netns_seen[-1] == "red"


def test_bundled_global_flags(h):
    assert h.run("-jp", "list") == 0
    assert h.out.startswith("[\n")


# -- batch ---------------------------------------------------------------------

BATCH = """# a comment
list
show 1   # trailing comment

show 42
destroy 3
"""


def test_batch_stops_at_first_failure(h):
    assert h.run("-b", "-", stdin=BATCH) == 2
    assert "<stdin>:5: Error: no proxy with this id (ENOENT)" in h.err
    assert "Command failed <stdin>:5" in h.err
    assert 3 in h.client.proxies  # destroy 3 never ran


def test_batch_force_goes_on(h):
    assert h.run("--force", "-b", "-", stdin=BATCH) == 2
    assert 3 not in h.client.proxies
    assert "proxy 3 destroyed" in h.out


def test_batch_file_usage_error_line(h, tmp_path):
    f = tmp_path / "cmds"
    f.write_text("list\nshow x\nlist\n")
    assert h.run("-b", str(f)) == 1
    assert f"{f}:2: show: 'x' is not a proxy id" in h.err


def test_batch_json_one_document_per_line(h):
    assert h.run("-j", "-b", "-", stdin="list\nshow 1\nshow 9\n") == 2
    docs = [json.loads(l) for l in h.out.splitlines()]
    assert isinstance(docs[0], list) and docs[1]["id"] == 1
    assert docs[2]["error"]["errno_name"] == "ENOENT"
    assert docs[2]["error"]["message"].startswith("<stdin>:3: ")


def test_batch_unreadable_file(h):
    assert h.run("-b", "/nonexistent/x") == 1
    assert "cannot read batch file" in h.err


def test_batch_bad_quote(h):
    assert h.run("-b", "-", stdin='show "1\n') == 1
    assert "<stdin>:1:" in h.err


# -- colour --------------------------------------------------------------------

class TTY:
    """A StringIO that says it is a terminal."""

    def __init__(self):
        import io
        self.buf = io.StringIO()

    def write(self, s):
        return self.buf.write(s)

    def flush(self):
        pass

    def isatty(self):
        return True


def _run_tty(argv, env):
    import io
    from kpctl.cli import main
    out = TTY()
    h = Harness(FakeKproxy([make_proxy(1)]))
    rc = main(argv, client_factory=h.factory, stdout=out, stderr=io.StringIO(), env=env,
              width=120)
    return rc, out.buf.getvalue()


def test_colour_on_a_terminal_only():
    rc, text = _run_tty(["list"], {"TERM": "xterm-256color"})
    assert rc == 0 and "\x1b[" in text


@pytest.mark.parametrize("argv,env", [(["--no-color", "list"], {"TERM": "xterm"}),
                                      (["list"], {"TERM": "xterm", "NO_COLOR": "1"})])
def test_no_colour(argv, env):
    rc, text = _run_tty(argv, env)
    assert rc == 0 and "\x1b[" not in text and "127.0.0.1" in text


# -- the real entry point ------------------------------------------------------

def test_module_entry_point_help_and_usage_exit_codes():
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-m", "kpctl.cli", "--help"], capture_output=True,
                       text=True, env=env, cwd=REPO)
    assert r.returncode == 0 and "usage: kpctl" in r.stdout
    r = subprocess.run([sys.executable, "-m", "kpctl.cli", "show"], capture_output=True,
                       text=True, env=env, cwd=REPO)
    assert r.returncode == 1 and "missing ID" in r.stderr and "Traceback" not in r.stderr


def test_help_does_not_import_heavy_modules():
    code = ("import sys; from kpctl.cli import main; import io;"
            "main(['--help'], stdout=io.StringIO());"
            "heavy=[m for m in ('rich','prompt_toolkit','pyroute2') if m in sys.modules];"
            "print(','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr
    # rich and prompt_toolkit never; pyroute2 only if kpctl/__init__.py imports it eagerly
    assert "rich" not in r.stdout and "prompt_toolkit" not in r.stdout


def test_list_answers_within_100_ms_and_imports_nothing_heavy():
    """`kpctl list` as a process: interpreter, imports, family resolution and
    the answer (here the module is not loaded: the family lookup's refusal,
    one round trip like the empty dump). Best of 10, so a busy host's
    scheduler does not decide: measured about 80 ms on a 2-core host with a
    VM running beside it, and 87 ms (best of 20) on a slower one where the
    interpreter alone starts in 35 ms and best of 5 went over 100 ms a third
    of the time. pyroute2 alone took 130 ms to import."""
    import time
    argv = [sys.executable, "-m", "kpctl", "list"]
    env = dict(os.environ, PYTHONPATH=REPO)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/")
        best = min(best, time.perf_counter() - t0)
        assert r.returncode == 2 and r.stderr.startswith("Error: kproxy module not loaded"), r
    assert best <= 0.100, f"kpctl list took {best * 1000:.0f} ms"
    code = ("import sys, io; from kpctl.cli import main;"
            "main(['list'], stdout=io.StringIO(), stderr=io.StringIO());"
            "print(','.join(m for m in ('pyroute2', 'yaml', 'rich', 'prompt_toolkit')"
            " if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd="/", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "", (r.stdout, r.stderr)


# -- generated from the table: man page and bash completion --------------------

def test_manpage_lists_every_command_and_option():
    from kpctl.shell import manpage
    text = manpage.render(date="2026-01-01", version="1.0")
    assert text.startswith('.TH KPCTL 1 "2026-01-01" "kpctl 1.0"')
    for c in C.COMMANDS:
        name = c.name.replace("-", "\\-")
        assert f"\\fB{name}\\fR" in text
        for o in c.opts:
            for f in o.flags:
                assert f.replace("-", "\\-") in text
    assert ".SH EXIT STATUS" in text and "\\-\\-no\\-color" in text


def test_manpage_formats_with_groff(tmp_path):
    import shutil
    if not shutil.which("groff"):
        pytest.skip("no groff")
    from kpctl.shell import manpage
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww"], input=manpage.render(),
                       capture_output=True, text=True)
    assert r.returncode == 0 and "warning" not in r.stderr.lower(), r.stderr
    import re
    plain = re.sub(r".\x08", "", r.stdout).replace("‐", "-")  # overstrike bold
    assert "destroy ID... | --all" in plain


BASH_DRIVER = r"""
source "$1"
comp() { COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMPREPLY=(); _kpctl; echo "${COMPREPLY[*]}"; }
comp "$2" ""
comp "$2" s
comp "$2" sh ""
comp "$2" -j destroy ""
comp "$2" stats -
comp "$2" attach 3 ""
comp "$2" detach 3 parser --dir b
comp "$2" help mo
comp "$2" --n
"""


def test_bash_completion(tmp_path):
    import shutil
    if not shutil.which("bash"):
        pytest.skip("no bash")
    from kpctl.shell import bashcomp
    script = tmp_path / "kpctl.bash"
    script.write_text(bashcomp.render())
    proc = tmp_path / "kproxy"  # as /proc/net/kproxy: the ids are its first column
    proc.write_text("id state a_local a_remote\n3 active 1.1.1.1:1 2.2.2.2:2\n"
                    "12 active 1.1.1.1:1 2.2.2.2:3\n")
    fake = tmp_path / "kpctl"  # a kpctl that must not run per TAB
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    fake.chmod(0o755)
    driver = tmp_path / "driver.sh"
    driver.write_text(f"_kpctl_proc={proc}\n" + BASH_DRIVER)
    r = subprocess.run(["bash", str(driver), str(script), str(fake)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "ran").exists()
    assert r.stdout.splitlines() == [
        " ".join(c.name for c in C.COMMANDS),
        "show stats serve stop",
        "3 12",
        "3 12",
        "-w --interval -c --count",
        "parser verdict",
        "b-to-a both",
        "monitor",
        "--no-color --netns",
    ]


def test_generators_run_as_modules():
    env = dict(os.environ, PYTHONPATH=REPO)
    for mod in ("kpctl.shell.manpage", "kpctl.shell.bashcomp"):
        r = subprocess.run([sys.executable, "-m", mod], capture_output=True, text=True,
                           env=env, cwd=REPO)
        assert r.returncode == 0 and len(r.stdout) > 1000, r.stderr


# -- --help and global options after the command -----------------------------------


@pytest.mark.parametrize("name", [c.name for c in C.COMMANDS])
def test_every_command_accepts_help(h, name):
    for flag in ("--help", "-h"):
        assert h.run(name, flag) == 0, h.err
        assert h.out.startswith(f"usage: kpctl {name}"), h.out
        assert h.err == ""
    assert h.client.calls == []  # nothing ran


def test_help_wins_over_bad_arguments(h):
    assert h.run("show", "x", "--help") == 0  # as git: --help before checking
    assert h.out.startswith("usage: kpctl show [-l] ID")


def test_global_options_after_the_command(h):
    assert h.run("list", "-j") == 0
    assert [p["id"] for p in json.loads(h.out)] == [1, 3]
    assert h.run("show", "1", "--pretty") == 0
    assert h.out.startswith("{\n  ")
    assert h.run("list", "-n", "blue") == 0 and h.netns_seen[-1] == "blue"
    assert h.run("list", "--netns=red", "-j") == 0 and h.netns_seen[-1] == "red"
    assert h.run("show", "9", "-j") == 2
    assert json.loads(h.out)["error"]["errno_name"] == "ENOENT"
    assert h.run("show", "-j") == 1  # a usage error in JSON too
    assert json.loads(h.out)["error"]["errno_name"] == "EINVAL"


def test_an_option_value_is_never_a_global_option():
    hp = Harness(FakeKproxy([make_proxy(3)]))
    assert hp.run("attach", "3", "parser", "lenprefix") == 0
    assert hp.run("attach", "3", "verdict", "drop-prefix", "--prefix", "-j") == 0
    assert hp.loaded[-1].prefix == (b"-j", 4)
    assert hp.out.startswith("proxy 3: verdict")  # text: -j was the prefix


def test_a_commands_own_option_wins_a_clash():
    cmd = C.find_command("serve")
    ns = C.parse_args(cmd, ["-j", "127.0.0.1:1", "127.0.0.1:2"])
    assert ns.json is True and ns.globals_ == {}
    ns = C.parse_args(C.find_command("list"), ["-j"])
    assert ns.globals_ == {"json": True}


def test_unknown_option_after_the_command(h):
    assert h.run("list", "-x") == 1 and "list: unknown option '-x'" in h.err


# -- create --listen / --connect ------------------------------------------------------


class Recording(FakeKproxy):
    """create() sees the sockets kpctl made: their peers, then closes nothing."""

    def create(self, a, b):
        self.joined = (a.getpeername(), b.getpeername(), a.getsockname())
        self.made = (a, b)
        return super().create(a.fileno(), b.fileno())


def _listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    return s


def _fds():
    return sorted(os.listdir("/proc/self/fd"))


def test_create_connect_connect_joins_two_outgoing_connections():
    la, lb = _listener(), _listener()
    h = Harness(Recording())
    with la, lb:
        before = _fds()
        A, B = "127.0.0.1:%d" % la.getsockname()[1], "127.0.0.1:%d" % lb.getsockname()[1]
        assert h.run("create", "--connect", A, "--connect", B, "--timeout", "5") == 0, h.err
        assert h.out == "proxy 1 created\n"
        assert h.client.joined[:2] == (la.getsockname(), lb.getsockname())
        assert all(s.fileno() == -1 for s in h.client.made)  # the kernel holds them now
        assert _fds() == before


def test_create_listen_accepts_one_client_and_connects_the_target():
    import threading
    from test_serve import _connect_retry, free_port
    target = _listener()
    port = free_port()
    h = Harness(Recording())
    clients = []
    t = threading.Thread(target=lambda: clients.append(_connect_retry(port)), daemon=True)
    t.start()
    with target:
        rc = h.run("-j", "create", "--listen", "127.0.0.1:%d" % port, "--connect",
                   "127.0.0.1:%d" % target.getsockname()[1], "--timeout", "10")
        t.join(10)
        assert rc == 0, h.err
        assert json.loads(h.out)["id"] == 1
        a_peer, b_peer, a_local = h.client.joined
        assert a_local == ("127.0.0.1", port) and a_peer == clients[0].getsockname()
        assert b_peer == target.getsockname()
        # the listener is gone: one client only
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    clients[0].close()


def test_create_listen_says_where_it_waits():
    h = Harness(Recording())
    rc = h.run("create", "--listen", "127.0.0.1:0", "--connect", "127.0.0.1:9",
               "--timeout", "0.2")
    assert rc == 2
    port = int(re.search(r"waiting for a client on 127\.0\.0\.1:(\d+)", h.err).group(1))
    assert port > 0
    assert h.err.endswith(f"Error: no client connected to 127.0.0.1:{port} within 0.2 s "
                          f"(ETIMEDOUT)\n")


def test_create_timeout_and_refusal_leave_nothing_open():
    from test_serve import free_port
    h = Harness(Recording())
    before = _fds()
    port = free_port()
    assert h.run("create", "--listen", "127.0.0.1:%d" % port, "--connect", "127.0.0.1:9",
                 "--timeout", "0.1") == 2
    assert "(ETIMEDOUT)" in h.err
    with pytest.raises(ConnectionRefusedError):  # not listening any more
        socket.create_connection(("127.0.0.1", port), timeout=2)
    live = _listener()
    with live:
        closed = free_port()
        assert h.run("create", "--connect", "127.0.0.1:%d" % live.getsockname()[1],
                     "--connect", "127.0.0.1:%d" % closed) == 2
        assert h.err == (f"Error: cannot connect to 127.0.0.1:{closed}: Connection refused "
                         f"(ECONNREFUSED)\n")
        assert h.run("-j", "create", "--connect", "127.0.0.1:%d" % closed, "--connect",
                     "127.0.0.1:%d" % closed) == 2
        assert json.loads(h.out)["error"]["errno_name"] == "ECONNREFUSED"
    assert _fds() == before
    assert not any(c[0] == "create" for c in h.client.calls)


@pytest.mark.parametrize("args,msg", [
    (["--listen", "127.0.0.1:0"], "--listen needs exactly one --connect (the target; got 0)"),
    (["--connect", "127.0.0.1:1"], "give --connect twice (A then B; got 1)"),
    (["--listen", ":0", "--connect", "1.1.1.1:1", "--connect", "1.1.1.1:2"], "got 2"),
    (["--fd", "0", "--connect", "127.0.0.1:1"], "not both"),
    (["--fd", "0", "--fd", "1", "--timeout", "2"], "--timeout goes with --listen/--connect"),
    (["--connect", "nohost", "--connect", "1.1.1.1:1"], "missing ':PORT'"),
    (["--connect", "127.0.0.1:1", "--connect", "127.0.0.1:2", "--timeout", "0"],
     "positive number of seconds"),
])
def test_create_usage_errors(h, args, msg):
    assert h.run("create", *args) == 1
    assert msg in h.err, h.err
    assert "usage: kpctl create --listen LISTEN --connect TARGET" in h.err
    no_traceback(h)


# -- jobs outside the shell ---------------------------------------------------------


@pytest.mark.parametrize("args,msg", [
    (["serve", "127.0.0.1:0", "127.0.0.1:9", "&"], "needs the shell"),
    (["serve", "127.0.0.1:0", "127.0.0.1:9&"], "needs the shell"),
    (["serve", "--background", "127.0.0.1:0", "127.0.0.1:9"], "needs the shell"),
    (["list", "&"], "list: only serve runs in the background (&)"),
    (["jobs"], "jobs live in the shell"),
    (["stop", "1"], "jobs live in the shell"),
    (["stop", "x"], "'x' is not a job number"),
    (["stop", "1", "--kill", "--drain"], "exclusive"),
])
def test_jobs_are_the_shells(h, args, msg):
    assert h.run(*args) == 1
    assert msg in h.err, h.err
    assert h.client.calls == []
    no_traceback(h)


# -- internal errors --------------------------------------------------------------


class Buggy(FakeKproxy):
    def list(self):
        raise RuntimeError("a bug")


def test_internal_error_is_one_line_and_exit_2():
    h = Harness(Buggy())
    assert h.run("list") == 2
    assert h.err == "Error: internal error: RuntimeError: a bug\n" and h.out == ""
    assert h.run("-j", "list") == 2
    assert json.loads(h.out) == {"error": {"errno": 0, "errno_name": None,
                                           "message": "internal error: RuntimeError: a bug"}}


def test_internal_error_outside_a_command_is_caught_by_main():
    class Exploding:
        def __iter__(self):
            raise RuntimeError("stdin broke")

    import io
    from kpctl.cli import main
    err = io.StringIO()
    rc = main(["-b", "-"], stdin=Exploding(), stdout=io.StringIO(), stderr=err, env={})
    assert rc == 2 and err.getvalue() == "Error: internal error: RuntimeError: stdin broke\n"


def test_internal_error_in_a_real_process_has_no_traceback(tmp_path):
    # a client factory that raises, in a fresh interpreter: what a user sees
    code = ("import sys; from kpctl.cli import main;"
            "def f(netns): raise KeyError('x');"
            "sys.exit(main(['list'], client_factory=f))")
    r = subprocess.run([sys.executable, "-c", code.replace(";def", "\ndef").replace(
        ";sys.exit", "\nsys.exit")], capture_output=True, text=True, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 2
    assert r.stderr == "Error: internal error: KeyError: 'x'\n"


@pytest.mark.parametrize("argv,events", [(["serve"], False), (["-j", "serve"], True)])
def test_serve_asks_for_per_connection_events_only_for_json(argv, events):
    """Text in the foreground shows counts alone, from the kernel listener's
    counters (no notification per connection); -j prints every connection."""
    seen = []

    class Refusing:
        def __init__(self, client, listen, target, options, **kw):
            seen.append(options.connection_events)

        def open(self):
            raise KproxyError(errno.EADDRINUSE, "stop here")

    h = Harness(FakeKproxy())
    h.server_factory = Refusing
    assert h.run(*argv, "127.0.0.1:9000", "127.0.0.1:9001") != 0
    assert seen == [events]
