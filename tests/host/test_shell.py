"""The interactive shell, driven through prompt_toolkit's pipe input."""

import io
import json
import threading
import time

from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from cli_fakes import FakeKproxy, Harness, make_proxy
from kpctl.model import Totals
from kpctl.shell import repl


class Shell:
    """kpctl's main() with no command, on a pipe input, in a thread, so that
    keys can be sent one step at a time (completion runs asynchronously)."""

    def __init__(self, tmp_path, client=None, totals=None, server_factory=None):
        self.h = Harness(client or FakeKproxy([make_proxy(3, ab=4096), make_proxy(12)]),
                         totals=totals or [Totals(active=2, created=9, ended_closed=7,
                                                  bytes=3 << 20)])
        self.history = str(tmp_path / "state" / "kpctl" / "history")
        self.out, self.err = io.StringIO(), io.StringIO()
        self.rc = None
        self.server_factory = server_factory

    def __enter__(self):
        self._pipe = create_pipe_input()
        self.inp = self._pipe.__enter__()
        from kpctl.cli import main

        def run():
            self.rc = main([], client_factory=self.h.factory, stdout=self.out, stderr=self.err,
                           env={}, totals_reader=self.h.read_totals,
                           ids_reader=self.h.read_ids, clock=self.h.clock,
                           sleep=self.h.sleep, width=120, shell_input=self.inp,
                           shell_output=DummyOutput(), history_path=self.history,
                           prog_loader=self.h.load_prog,
                           server_factory=self.server_factory)
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def send(self, text, pause=0.3):
        self.inp.send_text(text)
        time.sleep(pause)

    def wait(self, timeout=10):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the shell did not exit"
        return self.rc

    def __exit__(self, *exc):
        if self.thread.is_alive():
            self.inp.send_text("\x04")
            self.thread.join(5)
        self._pipe.__exit__(*exc)


def test_runs_commands_and_exits_on_ctrl_d(tmp_path):
    with Shell(tmp_path) as sh:
        sh.send("list\r")
        sh.send("\x04")
        assert sh.wait() == 0
    assert "127.0.0.1:8000" in sh.out.getvalue() and "4.0 KiB" in sh.out.getvalue()


def test_exit_and_quit(tmp_path):
    for word in ("exit", "quit"):
        with Shell(tmp_path) as sh:
            sh.send(word + "\r")
            assert sh.wait() == 0


def test_errors_print_and_the_shell_goes_on(tmp_path):
    with Shell(tmp_path) as sh:
        sh.send("show 99\r")
        sh.send("sh x\r")
        sh.send("s 1\r")
        sh.send("attach 3 parser p.o\r")
        sh.send("show 3\r")
        sh.send("\x04")
        assert sh.wait() == 0
    err = sh.err.getvalue()
    assert "Error: no proxy with this id (ENOENT)" in err
    assert "show: 'x' is not a proxy id" in err and "usage: show [-l] ID" in err
    assert "ambiguous command 's': could be show, stats" in err
    assert "Error: p.o: no such file (ENOENT)" in err
    assert "kpctl:" not in err and "Traceback" not in err
    assert "proxy 3" in sh.out.getvalue()


def test_ctrl_c_cancels_the_line(tmp_path):
    with Shell(tmp_path) as sh:
        sh.send("destroy 3")
        sh.send("\x03")
        sh.send("list\r")
        sh.send("\x04")
        assert sh.wait() == 0
    assert 3 in sh.h.client.proxies


def test_tab_completes_a_live_id_refreshed_after_create(tmp_path):
    import socket
    s1, s2 = socket.socketpair()
    with s1, s2, Shell(tmp_path, client=FakeKproxy([make_proxy(12)])) as sh:
        sh.send("sho\t")
        sh.send(" 1\t")
        sh.send("\r")
        sh.send(f"create --fd {s1.fileno()} --fd {s2.fileno()}\r")
        sh.send("destroy 1")
        sh.send("\t")  # 12 and 13 now: the common part only
        sh.send("3\r")
        sh.send("\x04")
        assert sh.wait() == 0
    out = sh.out.getvalue()
    assert "proxy 12" in out  # `show 12` ran
    assert "proxy 13 created" in out and "proxy 13 destroyed" in out


def test_history_is_written_and_reloaded(tmp_path):
    with Shell(tmp_path) as sh:
        sh.send("list\r")
        sh.send("show 3\r")
        sh.send("\x04")
        sh.wait()
    with open(sh.history) as f:
        saved = f.read()
    assert "+list" in saved and "+show 3" in saved
    with Shell(tmp_path) as sh2:
        sh2.send("\x1b[A")  # up: the last line of the previous session
        sh2.send("\r")
        sh2.send("\x04")
        assert sh2.wait() == 0
    assert "proxy 3" in sh2.out.getvalue()


def test_history_default_location():
    assert repl.history_file({"XDG_STATE_HOME": "/x/state"}) == "/x/state/kpctl/history"
    assert repl.history_file({}).endswith("/.local/state/kpctl/history")


def test_toolbar(tmp_path):
    h = Harness(FakeKproxy([make_proxy(1)]),
                totals=[Totals(active=1, created=4, ended_user=1, ended_reset=2, bytes=2048,
                               drops=3)])
    from kpctl.shell import table as C
    ctx = C.Context(client_factory=h.factory, totals_reader=h.read_totals,
                    ids_reader=lambda: {1: "active 10.0.0.1:40001 ⇄ 127.0.0.1:9000"}, env={})
    st = repl.ShellState(ctx)
    assert "reading /proc/net/kproxy" in st.toolbar()
    st.refresh()
    assert st.ids == {1: "active 10.0.0.1:40001 ⇄ 127.0.0.1:9000"}
    bar = st.toolbar()
    assert bar.startswith(" 1 proxy | created 4 | ended 3 | forwarded 2.0 KiB | drops 3")


def test_toolbar_when_the_module_is_missing():
    from kpctl.errors import KproxyError
    from kpctl.shell import table as C

    def ids():
        raise FileNotFoundError(2, "No such file or directory", "/proc/net/kproxy")
    ctx = C.Context(ids_reader=ids, totals_reader=lambda: Totals(), env={})
    st = repl.ShellState(ctx)
    st.refresh()
    assert "is the kproxy module loaded" in st.toolbar()


# -- jobs: serve ... & ------------------------------------------------------------


def _job_shell(tmp_path):
    from cli_fakes import FakeServer
    FakeServer.made.clear()
    return Shell(tmp_path, server_factory=FakeServer), FakeServer.made


def test_serve_in_the_background_jobs_and_stop(tmp_path):
    sh, made = _job_shell(tmp_path)
    with sh:
        sh.send("serve 127.0.0.1:9000 127.0.0.1:9001 &\r")
        sh.send("list\r")  # the prompt is back while the job serves
        sh.send("jobs\r")
        sh.send("jobs -j\r")
        sh.send("stop 1 --kill\r")
        sh.send("jobs\r")
        sh.send("\x04")
        assert sh.wait() == 0
    out = sh.out.getvalue()
    assert "[1] serving 127.0.0.1:9000 → 127.0.0.1:9001" in out
    assert ("[1] running   127.0.0.1:9000 → 127.0.0.1:9001  accepted 3  active 2  failed 1  "
            "refused 0  ended 1: ↑ 300 B ↓ 4.0 KiB") in out
    doc = [json.loads(l) for l in out.splitlines() if l.startswith("[{")][0]
    assert doc[0]["job"] == 1 and doc[0]["state"] == "running"
    assert doc[0]["counters"]["bytes_b_to_a"] == 4096
    assert made[0].stops == ["kill"]
    assert "[1] done      127.0.0.1:9000 → 127.0.0.1:9001  accepted 3  active 0" in out
    assert out.rstrip().endswith("no jobs ('serve LISTEN TARGET &' starts one)")
    assert "Traceback" not in sh.err.getvalue()


def test_leaving_with_a_job_running_asks(tmp_path):
    sh, made = _job_shell(tmp_path)
    with sh:
        sh.send("serve --background 127.0.0.1:9000 127.0.0.1:9001\r")
        sh.send("exit\r")
        sh.send("c\r")  # cancel: still in the shell
        sh.send("jobs\r")
        sh.send("\x04")
        sh.send("x\r")  # not an answer: asked again
        sh.send("d\r")
        assert sh.wait() == 0
    out = sh.out.getvalue()
    assert out.count("[1] running") == 1
    assert made[0].stops == ["drain"]
    assert "[1] done" in out


def test_stop_without_a_mode_uses_serves_own(tmp_path):
    sh, made = _job_shell(tmp_path)
    with sh:
        sh.send("serve --drain 127.0.0.1:9000 127.0.0.1:9001 &\r")
        sh.send("stop %1\r")
        sh.send("stop 1\r")  # gone once reported
        sh.send("\x04")
        assert sh.wait() == 0
    assert made[0].stops == [None] and made[0].options.on_stop == "drain"
    assert "stop: no job 1" in sh.err.getvalue()


def test_a_job_that_ends_is_announced_before_the_next_prompt(tmp_path):
    sh, made = _job_shell(tmp_path)
    with sh:
        sh.send("serve 127.0.0.1:9000 127.0.0.1:9001 &\r")
        made[0].stop("leave")  # as if it ended on its own
        assert made[0].ended.wait(5)
        time.sleep(0.2)  # its thread's last steps
        sh.send("\r")
        sh.send("jobs\r")
        sh.send("\x04")
        assert sh.wait() == 0
    out = sh.out.getvalue()
    assert "[1] done" in out and "no jobs" in out


def test_create_with_listen_in_the_shell_completes_the_new_id(tmp_path):
    import socket
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(1)
    la = socket.socket()
    la.bind(("127.0.0.1", 0))
    la.listen(1)
    with target, la, Shell(tmp_path, client=FakeKproxy([make_proxy(12)])) as sh:
        sh.send(f"create --connect 127.0.0.1:{la.getsockname()[1]} "
                f"--connect 127.0.0.1:{target.getsockname()[1]}\r")
        sh.send("show 1\t")  # 12 and 13: their common part only
        sh.send("3\r")
        sh.send("\x04")
        assert sh.wait() == 0
    assert "proxy 13 created" in sh.out.getvalue()
    assert "proxy 13" in sh.out.getvalue().split("created", 1)[1]


def test_help_and_global_options_in_the_shell(tmp_path):
    with Shell(tmp_path) as sh:
        sh.send("help list\r")
        sh.send("list --help\r")
        sh.send("list -j\r")
        sh.send("\x04")
        assert sh.wait() == 0
    out = sh.out.getvalue()
    assert out.count("usage: list") == 2
    assert [p["id"] for p in json.loads(out.splitlines()[-1])] == [3, 12]
