"""serve --workers N (kpctl.serve_workers): N forked workers on one port,
one report with the summed counters, each connection's events naming
its worker."""

from __future__ import annotations

import errno
import socket
import threading

import pytest

from kpctl.address import resolve
from kpctl.serve import Server, ServeError, ServeOptions
from kpctl.serve_workers import WorkerError, WorkerPool, sum_counters
from test_serve import T, EchoServer, RelayKproxy, wait_for


def _relay_server(listen, target, options, on_event):
    return Server(RelayKproxy(), listen, target, options, on_event=on_event)


class Pool:
    def __init__(self, target, workers=2, connection_events=True):
        self.events = []
        self.lock = threading.Lock()
        opts = ServeOptions(userspace=True, workers=workers, connection_events=connection_events)
        self.pool = WorkerPool(resolve("127.0.0.1:0", listen=True), target, opts, workers,
                               on_event=self._on, server_factory=_relay_server)
        self.addr = self.pool.open()
        self.result = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _on(self, kind, data):
        with self.lock:
            self.events.append((kind, data))

    def _run(self):
        self.result = self.pool.run(install_signals=False)

    def kinds(self, kind):
        with self.lock:
            return [d for k, d in self.events if k == kind]

    def stop(self, mode=None):
        self.pool.stop(mode)
        self.t.join(T)
        assert not self.t.is_alive(), "the pool did not stop"
        return self.result


def _echo_once(addr, payload):
    with socket.create_connection(addr.sockaddr()[:2], timeout=T) as c:
        c.sendall(payload)
        got = b""
        while len(got) < len(payload):
            d = c.recv(65536)
            assert d, "EOF before the echo"
            got += d
        return got


def test_workers_share_the_port_and_report_as_one():
    echo = EchoServer(backlog=256)
    p = Pool(echo.addr)
    try:
        assert p.addr.port != 0
        (listening,) = p.kinds("listening")
        assert len(listening["workers"]) == 2 and listening["listen"] == str(p.addr)
        for n in range(40):
            payload = bytes([n]) * 1000
            assert _echo_once(p.addr, payload) == payload
        wait_for(lambda: p.pool.snapshot().get("ended") == 40, what="40 ends in the ticks")
        c = p.stop()
        assert (c.accepted, c.created, c.ended, c.failed) == (40, 40, 40, 0)
        assert (c.bytes_a_to_b, c.bytes_b_to_a) == (40_000, 40_000)
        proxies = p.kinds("proxy")
        assert len(proxies) == 40
        # SO_REUSEPORT spread them (all 40 on one worker: a 2^-39 chance)
        assert {d["worker"] for d in proxies} == {0, 1}
        assert {d["worker"] for d in p.kinds("ended")} == {0, 1}
        (stopped,) = p.kinds("stopped")
        assert stopped["accepted"] == 40 and len(p.kinds("stopping")) == 1
    finally:
        echo.close()


def test_without_connection_events_only_the_counts_come():
    echo = EchoServer()
    p = Pool(echo.addr, connection_events=False)
    try:
        for n in range(6):
            assert _echo_once(p.addr, b"hi") == b"hi"
        wait_for(lambda: p.pool.snapshot().get("ended") == 6, what="6 ends in the ticks")
        c = p.stop("kill")
        assert (c.accepted, c.ended, c.bytes_a_to_b, c.bytes_b_to_a) == (6, 6, 12, 12)
        assert p.kinds("proxy") == [] and p.kinds("ended") == []
    finally:
        echo.close()


def test_a_worker_that_cannot_listen_fails_open():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        pool = WorkerPool(resolve("127.0.0.1:%d" % busy.getsockname()[1], listen=True),
                          resolve("127.0.0.1:9"), ServeOptions(userspace=True, workers=2), 2,
                          server_factory=_relay_server)
        with pytest.raises(OSError) as ei:
            pool.open()
        assert ei.value.errno == errno.EADDRINUSE
    finally:
        busy.close()


def test_worker_error_is_the_workers_words():
    def broken(listen, target, options, on_event):
        raise ServeError("no such thing")
    pool = WorkerPool(resolve("127.0.0.1:0", listen=True), resolve("127.0.0.1:9"),
                      ServeOptions(userspace=True, workers=2), 2, server_factory=broken)
    with pytest.raises(WorkerError) as ei:
        pool.open()
    assert ei.value.message == "no such thing"


def test_workers_need_the_userspace_path():
    with pytest.raises(ServeError) as ei:
        ServeOptions(workers=2).check()
    assert "give --userspace" in ei.value.message
    ServeOptions(workers=2, userspace=True).check()


def test_counters_are_summed():
    a = {"accepted": 3, "active": 1, "failures": {"ECONNREFUSED": 1}, "started": 20.0,
         "elapsed": 4.0, "bytes_a_to_b": 10}
    b = {"accepted": 2, "active": 0, "failures": {"ECONNREFUSED": 2, "ETIMEDOUT": 1},
         "started": 10.0, "elapsed": 5.0, "bytes_a_to_b": 5}
    s = sum_counters([a, b])
    assert (s["accepted"], s["active"], s["bytes_a_to_b"]) == (5, 1, 15)
    assert s["failures"] == {"ECONNREFUSED": 3, "ETIMEDOUT": 1}
    assert (s["started"], s["elapsed"]) == (10.0, 5.0)


def test_workers_obey_the_parent_alone():
    """A signal sent to a worker itself (systemd signals every process of
    the unit) is ignored: the parent passes its own on, once."""
    import os
    import signal
    echo = EchoServer()
    p = Pool(echo.addr)
    try:
        (listening,) = p.kinds("listening")
        for pid in listening["workers"]:
            os.kill(pid, signal.SIGTERM)
        for n in range(8):
            assert _echo_once(p.addr, b"still") == b"still"
        assert p.kinds("stopping") == []
        c = p.stop()
        assert c.accepted == 8
        assert [d["mode"] for d in p.kinds("stopping")] == ["leave"]
    finally:
        echo.close()
