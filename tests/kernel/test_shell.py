"""The shell on a pseudo-terminal against the real module: creating a proxy
with --listen/--connect, its id completing at once, and services as jobs
(`serve ... &`, `jobs`, `stop 1 --kill`, leaving with a job running)."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from test_cli import CMD_TIMEOUT, spawn_shell
from test_serve import free_port
from util import IO_TIMEOUT, kp, recv_exact  # noqa: F401

pexpect = pytest.importorskip("pexpect")


class Echo:
    """An echo server on 127.0.0.1, a thread per connection."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def echo():
    e = Echo()
    yield e
    e.close()


def connect_retry(port: int) -> socket.socket:
    deadline = time.monotonic() + CMD_TIMEOUT
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def echoes(c: socket.socket, data: bytes) -> bool:
    c.sendall(data)
    return recv_exact(c, len(data)) == data


@pytest.fixture
def shell(tmp_path):
    child = spawn_shell(tmp_path)
    yield child
    child.close(force=True)


def test_create_listen_connect_and_the_id_completes(shell, echo, kp):  # noqa: F811
    port = free_port()
    shell.send(f"create --listen 127.0.0.1:{port} --connect 127.0.0.1:{echo.port} "
               f"--timeout 120\r")
    shell.expect_exact(f"waiting for a client on 127.0.0.1:{port}")
    with connect_retry(port) as c:
        shell.expect(r"proxy (\d+) created")
        pid = shell.match.group(1)
        shell.expect_exact("kpctl>")
        assert echoes(c, b"through the shell's proxy" * 1000)
        assert int(pid) in {p.id for p in kp.list()}
        # the kp fixture ended every other proxy: ours is the one candidate
        shell.send("show ")
        time.sleep(0.5)
        shell.send("\t")
        time.sleep(0.5)
        shell.send("\r")
        shell.expect(r"─ proxy %s ─" % re.escape(pid))
        shell.expect_exact("(25000)")  # its a_to_b bytes
        shell.expect_exact("kpctl>")
        shell.send("create --listen 127.0.0.1:0 --connect 127.0.0.1:9 --timeout 0.5\r")
        shell.expect(r"Error: no client connected to 127\.0\.0\.1:\d+ within 0\.5 s "
                     r"\(ETIMEDOUT\)")
        shell.expect_exact("kpctl>")
        shell.send("exit\r")
        shell.expect(pexpect.EOF)


def test_serve_as_a_job_jobs_and_stop_kill(shell, echo, kp):  # noqa: F811
    port = free_port()
    shell.send(f"serve 127.0.0.1:{port} 127.0.0.1:{echo.port} &\r")
    shell.expect_exact(f"[1] serving 127.0.0.1:{port} → 127.0.0.1:{echo.port}")
    shell.expect_exact("kpctl>")
    with connect_retry(port) as c:
        assert echoes(c, b"x" * 5000)
        shell.send("jobs\r")
        shell.expect(r"\[1\] running\s+127\.0\.0\.1:%d → 127\.0\.0\.1:%d  accepted 1  "
                     r"active 1" % (port, echo.port))
        shell.expect_exact("kpctl>")
        shell.send("stop 1 --kill\r")
        shell.expect(r"\[1\] done\s+127\.0\.0\.1:%d → \S+  accepted 1  active 0" % port)
        shell.expect_exact("kpctl>")
        c.settimeout(IO_TIMEOUT)
        try:
            assert c.recv(1) == b""  # its proxy was ended
        except ConnectionResetError:
            pass
    with pytest.raises(ConnectionRefusedError):  # not listening any more
        socket.create_connection(("127.0.0.1", port), timeout=5)
    shell.send("jobs\r")
    shell.expect_exact("no jobs")
    shell.send("\x04")
    shell.expect(pexpect.EOF)  # no job: no question


def test_leaving_with_a_job_asks_and_leave_keeps_its_proxies(shell, echo, kp):  # noqa: F811
    port = free_port()
    shell.send(f"serve 127.0.0.1:{port} 127.0.0.1:{echo.port} --background\r")
    shell.expect_exact("[1] serving")
    shell.expect_exact("kpctl>")
    with connect_retry(port) as c:
        assert echoes(c, b"before")
        shell.send("exit\r")
        shell.expect_exact("1 job running. Stop it: [d]rain")
        shell.send("c\r")  # cancel: still in the shell
        shell.expect_exact("kpctl>")
        shell.sendcontrol("d")
        shell.expect_exact("1 job running.")
        shell.send("l\r")  # leave the proxies to the kernel
        shell.expect(r"\[1\] done\s+127\.0\.0\.1:%d" % port)
        shell.expect(pexpect.EOF)
        assert echoes(c, b"after the shell left")  # the kernel still carries it
        assert len(kp.list()) == 1
