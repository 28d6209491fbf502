"""kpctl's one-shot commands, batch mode and shell against the real module.

Run as root in the VM (`pytest tests/kernel`) with kproxy loaded.  Where
the process matters, kpctl runs as a subprocess (`python -m kpctl.cli`), as
a user would run it: the sockets `create` joins are inherited fds
(pass_fds), `monitor` runs beside the test, the shell runs on a pty.  The
other commands run through `kpctl.cli.main()` in this process, with the
same argv, streams and exit status: a subprocess costs seconds of imports
in an emulated VM, and the command under test is the same code.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kpctl import cli
from util import IO_TIMEOUT, PROCESS_START_TIMEOUT, kp, recv_exact, tcp_pair  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
# Each command is a new Python process; its own work takes a moment.
CMD_TIMEOUT = PROCESS_START_TIMEOUT


def kpctl(*args, pass_fds=(), input=None, timeout=CMD_TIMEOUT, check_rc=None):
    """Run kpctl with `args`: as a subprocess when it must inherit fds,
    else in this process. Returns a CompletedProcess either way."""
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1")
    if pass_fds:
        r = subprocess.run([sys.executable, "-m", "kpctl.cli", *args], cwd=REPO, env=env,
                           pass_fds=pass_fds, input=input, capture_output=True, text=True,
                           timeout=timeout)
    else:
        out, err = io.StringIO(), io.StringIO()
        rc = cli.main(list(args), stdout=out, stderr=err, env=env,
                      stdin=io.StringIO(input or ""))
        r = subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())
    assert "Traceback" not in r.stderr, r.stderr
    if check_rc is not None:
        assert r.returncode == check_rc, f"rc={r.returncode}\nout={r.stdout}\nerr={r.stderr}"
    return r


def sockets_for_proxy():
    """c1 <-> s1 and c2 <-> s2 on loopback; the proxy joins s1 (A) and c2 (B)."""
    c1, s1 = tcp_pair()
    c2, s2 = tcp_pair()
    return c1, s1, c2, s2


def close_all(*socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


@pytest.fixture
def chain(kp):  # noqa: F811 - the fixture from util
    """A proxy made by `kpctl -j create --fd --fd` (in this process: the
    inherited-fd path has its own test below)."""
    c1, s1, c2, s2 = sockets_for_proxy()
    r = kpctl("-j", "create", "--fd", str(s1.fileno()), "--fd", str(c2.fileno()), check_rc=0)
    p = json.loads(r.stdout)
    yield p, (c1, s1, c2, s2)
    close_all(c1, s1, c2, s2)


def test_create_with_inherited_fds_forwards(kp):  # noqa: F811
    """`kpctl create` as its own process, joining fds it inherited."""
    c1, s1, c2, s2 = sockets_for_proxy()
    try:
        r = kpctl("-j", "create", "--fd", str(s1.fileno()), "--fd", str(c2.fileno()),
                  pass_fds=(s1.fileno(), c2.fileno()), check_rc=0)
        check_inherited_proxy(json.loads(r.stdout), kp, c1, s1, c2, s2)
    finally:
        close_all(c1, s1, c2, s2)


def check_inherited_proxy(p, kp, c1, s1, c2, s2):  # noqa: F811
    assert p["id"] >= 1 and p["state"] == "active"
    assert p["a"]["local"] == "%s:%d" % s1.getsockname()[:2]
    assert p["b"]["remote"] == "%s:%d" % c2.getpeername()[:2]
    # kpctl has exited and closed its fds: the proxy holds its own references
    c1.sendall(b"through kpctl")
    assert recv_exact(s2, 13) == b"through kpctl"
    s2.sendall(b"back")
    assert recv_exact(c1, 4) == b"back"
    assert p["id"] in {x.id for x in kp.list()}


def test_create_text_prints_the_id(kp):  # noqa: F811
    c1, s1, c2, s2 = sockets_for_proxy()
    try:
        r = kpctl("create", "--fd", str(s1.fileno()), "--fd", str(c2.fileno()),
                  pass_fds=(s1.fileno(), c2.fileno()), check_rc=0)
        m = re.fullmatch(r"proxy (\d+) created\n", r.stdout)
        assert m, r.stdout
        assert int(m.group(1)) in {x.id for x in kp.list()}
    finally:
        close_all(c1, s1, c2, s2)


def test_create_refused_by_the_kernel_is_exit_2(kp):  # noqa: F811
    # a listening socket is TCP but not connected: the kernel says why
    import socket
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    c1, s1 = tcp_pair()
    try:
        r = kpctl("create", "--fd", str(lst.fileno()), "--fd", str(s1.fileno()),
                  pass_fds=(lst.fileno(), s1.fileno()))
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert re.fullmatch(r"Error: .+ \(E[A-Z]+\)\n", r.stderr), r.stderr
        r = kpctl("-j", "create", "--fd", str(lst.fileno()), "--fd", str(s1.fileno()),
                  pass_fds=(lst.fileno(), s1.fileno()))
        assert r.returncode == 2
        err = json.loads(r.stdout)["error"]
        assert err["errno"] > 0 and err["errno_name"].startswith("E") and err["message"]
    finally:
        close_all(lst, c1, s1)


def test_create_usage_error_without_kernel(kp):  # noqa: F811
    r = kpctl("create", "--fd", "3", check_rc=1)
    assert "needs exactly two --fd" in r.stderr


def test_list_json(chain):
    p, _ = chain
    r = kpctl("-j", "list", check_rc=0)
    data = json.loads(r.stdout)
    assert isinstance(data, list)
    mine = [x for x in data if x["id"] == p["id"]]
    assert len(mine) == 1 and mine[0]["a"] == p["a"] and mine[0]["b"] == p["b"]


def test_list_text(chain):
    p, _ = chain
    r = kpctl("list", check_rc=0)
    rows = [l.split() for l in r.stdout.splitlines()]
    assert rows[0] == ["ID", "STATE", "A-LOCAL", "A-REMOTE", "B-LOCAL", "B-REMOTE", "A→B",
                       "B→A", "AGE", "TLS"]
    mine = [row for row in rows[1:] if row[0] == str(p["id"])]
    assert mine and mine[0][1] == "active" and mine[0][2] == p["a"]["local"]
    assert mine[0][-1] == "-"  # plain TCP on both sides
    assert "\x1b[" not in r.stdout
    r = kpctl("list", "-j", check_rc=0)  # a global option after the command
    assert p["id"] in [x["id"] for x in json.loads(r.stdout)]


def test_create_connect_connect_joins_two_connections(kp):  # noqa: F811
    import socket
    la, lb = socket.socket(), socket.socket()
    for s in (la, lb):
        s.bind(("127.0.0.1", 0))
        s.listen(1)
    try:
        r = kpctl("-j", "create", "--connect", "127.0.0.1:%d" % la.getsockname()[1],
                  "--connect", "127.0.0.1:%d" % lb.getsockname()[1], "--timeout", "30",
                  check_rc=0)
        p = json.loads(r.stdout)
        a, _ = la.accept()
        b, _ = lb.accept()
        with a, b:
            assert p["a"]["remote"] == "127.0.0.1:%d" % la.getsockname()[1]
            a.sendall(b"from A's server")
            assert recv_exact(b, 15) == b"from A's server"
            assert p["id"] in {x.id for x in kp.list()}
    finally:
        close_all(la, lb)


def test_show_counts_bytes(chain):
    p, (c1, s1, c2, s2) = chain
    c1.sendall(b"x" * 3000)
    assert recv_exact(s2, 3000) == b"x" * 3000
    r = kpctl("-j", "show", str(p["id"]), check_rc=0)
    shown = json.loads(r.stdout)
    assert shown["id"] == p["id"] and shown["a_to_b"]["bytes"] == 3000
    r = kpctl("show", str(p["id"]), check_rc=0)
    assert f"proxy {p['id']}" in r.stdout and "(3000)" in r.stdout
    r = kpctl("sh", str(p["id"]), check_rc=0)  # a unique prefix
    assert f"proxy {p['id']}" in r.stdout


def test_destroy(chain, kp):  # noqa: F811
    p, (c1, s1, c2, s2) = chain
    r = kpctl("-j", "destroy", str(p["id"]), check_rc=0)
    assert json.loads(r.stdout) == {"destroyed": [p["id"]]}
    assert p["id"] not in {x.id for x in kp.list()}


def test_refused_request_exit_2_with_extack(kp):  # noqa: F811
    missing = 0x7FFFFFF0
    for args in (["destroy", str(missing)], ["show", str(missing)]):
        r = kpctl(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        m = re.search(r"Error: (.+) \((E[A-Z]+)\)$", r.stderr.strip())
        assert m, r.stderr
        assert m.group(2) == "ENOENT" and m.group(1).strip()
    r = kpctl("-j", "show", str(missing))
    assert r.returncode == 2
    err = json.loads(r.stdout)["error"]
    assert err["errno"] == 2 and err["errno_name"] == "ENOENT" and err["message"]


def test_stats_interval(chain):
    p, (c1, s1, c2, s2) = chain
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            c1.sendall(b"y" * 1000)
            recv_exact(s2, 1000)
            time.sleep(0.05)
    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        r = kpctl("-j", "stats", "-c", "2", "-w", "1", check_rc=0)
    finally:
        stop.set()
        t.join(IO_TIMEOUT)
    docs = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(docs) == 2
    for d in docs:
        assert d["interval"] > 0.5
        assert d["deltas"]["active"] >= 1  # a gauge
        assert set(d["rates"]) == set(d["deltas"]) - {"active"}
    assert sum(d["deltas"]["bytes"] for d in docs) > 0
    r = kpctl("-j", "stats", check_rc=0)
    totals = json.loads(r.stdout)
    assert totals["active"] >= 1 and totals["created"] >= 1


def subscribed(pid: int) -> bool:
    """Has process PID a generic netlink socket that joined a multicast group?"""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except FileNotFoundError:
        return False
    for line in Path("/proc/net/netlink").read_text().splitlines()[1:]:
        f = line.split()
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        if f[1] == "16" and f[9] in inodes and int(f[3], 16) != 0:
            return True
    return False


def test_monitor_sees_a_proxy_come_and_go(kp):  # noqa: F811
    env = dict(os.environ, PYTHONPATH=str(REPO))
    mon = subprocess.Popen([sys.executable, "-m", "kpctl.cli", "-j", "monitor", "-c", "2"],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    c1, s1, c2, s2 = sockets_for_proxy()
    a_local = "%s:%d" % s1.getsockname()[:2]
    try:
        # start once kpctl listens (the Groups column shows the first 32
        # groups only: past a deadline, go on and hope).
        deadline = time.monotonic() + PROCESS_START_TIMEOUT
        while not subscribed(mon.pid) and time.monotonic() < deadline:
            assert mon.poll() is None, mon.communicate()
            time.sleep(0.1)
        time.sleep(0.2)
        p = kp.create(s1, c2)
        kp.destroy(p.id)
        out, err = mon.communicate(timeout=CMD_TIMEOUT)
    finally:
        close_all(c1, s1, c2, s2)
        if mon.poll() is None:
            mon.kill()
            mon.wait()
    assert mon.returncode == 0, err
    events = [json.loads(l) for l in out.splitlines()]
    assert [e["kind"] for e in events] == ["new", "del"]
    assert events[0]["proxy"]["id"] == events[1]["proxy"]["id"] == p.id
    assert events[1]["reason"] == "user"
    assert events[0]["timestamp"] > 0
    assert events[0]["proxy"]["a"]["local"] == a_local


def test_batch_stops_at_first_failure_unless_force(chain, kp):  # noqa: F811
    p, _ = chain
    missing = 0x7FFFFFF0
    script = f"# a batch\nlist\nshow {p['id']}\ndestroy {missing}\ndestroy {p['id']}\n"
    r = kpctl("-b", "-", input=script)
    assert r.returncode == 2
    assert "Command failed <stdin>:4" in r.stderr and "ENOENT" in r.stderr
    assert p["id"] in {x.id for x in kp.list()}  # line 5 did not run
    r = kpctl("--force", "-b", "-", input=script)
    assert r.returncode == 2
    assert f"proxy {p['id']} destroyed" in r.stdout
    assert p["id"] not in {x.id for x in kp.list()}


def test_batch_json_lines(chain, tmp_path):
    p, _ = chain
    f = tmp_path / "cmds"
    f.write_text(f"list\nshow {p['id']}\nstats\n")
    r = kpctl("-j", "-b", str(f), check_rc=0)
    docs = [json.loads(l) for l in r.stdout.splitlines()]
    assert isinstance(docs[0], list) and docs[1]["id"] == p["id"] and "created" in docs[2]


# -- the shell, through a pseudo-terminal ---------------------------------------

pexpect = pytest.importorskip("pexpect")


def spawn_shell(state_home):
    env = dict(os.environ, PYTHONPATH=str(REPO), PROMPT_TOOLKIT_NO_CPR="1",
               XDG_STATE_HOME=str(state_home), TERM="xterm", NO_COLOR="1")
    child = pexpect.spawn(sys.executable, ["-m", "kpctl.cli"], cwd=str(REPO), env=env,
                          dimensions=(50, 200), encoding="utf-8", timeout=CMD_TIMEOUT)
    child.expect_exact("kpctl>")
    return child


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_shell_completes_live_id_runs_list_and_keeps_history(chain, tmp_path):
    p, _ = chain
    pid = str(p["id"])
    child = spawn_shell(tmp_path)
    try:
        child.send("list\r")  # after a command the ids are fresh (no race
        child.expect(r"\s%s\s+active" % re.escape(pid))  # with the first refresh)
        child.expect_exact("kpctl>")
        # every other proxy of the test run is gone (kp fixture), so `show <Tab>`
        # has one candidate: ours
        child.send("show ")
        time.sleep(0.5)
        child.send("\t")
        time.sleep(0.5)
        child.send("\r")
        # the panel of our proxy: the id came from the completion alone
        child.expect(r"─ proxy %s ─" % re.escape(pid))
        child.expect_exact("kpctl>")
        child.send("show 2147483632\r")
        child.expect_exact("Error: ")
        child.expect_exact("(ENOENT)")
        child.expect_exact("kpctl>")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    hist = (tmp_path / "kpctl" / "history").read_text()
    assert "+list" in hist and f"+show {pid}" in hist, hist

    child = spawn_shell(tmp_path)  # a new session: the history is back
    try:
        # what is shown while browsing is redrawn in pieces: check by running
        child.send("\x1b[A")  # up: `show 2147483632`, the last line of the last session
        time.sleep(0.3)
        child.send("\r")
        child.expect_exact("(ENOENT)")
        child.expect_exact("kpctl>")
        child.send("\x1b[A\x1b[A\x1b[A")  # up x3: `list`
        time.sleep(0.3)
        child.send("\r")
        child.expect(r"\s%s\s+active" % re.escape(pid))
        child.expect_exact("kpctl>")
        child.send("exit\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
