"""The data path as a user sees it: bytes through, in order, counted;
half-close, reset, backpressure, and sockets handed back."""

from __future__ import annotations

import errno
import hashlib
import socket
import struct
import time

import pytest

from kpctl import KproxyError
from util import (  # noqa: F401 - kp is a fixture
    IO_TIMEOUT,
    assert_pingpong,
    both_ways,
    join_all,
    kp,
    listed_ids,
    make_chain,
    proc_ids,
    proc_proxies,
    recv_exact,
    recv_until_eof,
    wait_event,
    wait_for,
)

MiB = 1 << 20


def test_64mib_each_way_at_once(kp):
    total = 64 * MiB
    ch = make_chain(kp)
    try:
        threads = both_ways(ch, total, seed=1)
        for t in threads:
            t.start()
        join_all(threads, timeout=900)
        fwd_send, fwd_recv, back_send, back_recv = threads
        assert fwd_recv.digest == fwd_send.digest
        assert back_recv.digest == back_send.digest

        p = kp.get(ch.proxy.id)
        assert p.a_to_b.bytes == total  # c1 -> s1 (A) -> c2 (B) -> s2
        assert p.b_to_a.bytes == total
        assert p.a_to_b.queued == 0 and p.b_to_a.queued == 0
        assert p.a_to_b.skbs > 0 and p.b_to_a.skbs > 0
        assert p.state == "active"
        (line,) = [x for x in proc_proxies() if x.id == p.id]
        assert line.a_to_b.bytes == total and line.b_to_a.bytes == total
        assert str(line.a.local) == str(p.a.local) and str(line.b.remote) == str(p.b.remote)
    finally:
        ch.close()


def test_caller_closes_fds_after_create(kp):
    ch = make_chain(kp)
    pid = ch.proxy.id
    ch.close_inner()  # the usual case for a proxy service
    try:
        assert_pingpong(ch.c1, ch.s2, b"hello through a proxy whose fds are closed")
        assert pid in listed_ids(kp)
    finally:
        ch.c1.close()
        ch.s2.close()
    # Both outer ends closed: FINs are forwarded, the proxy ends by itself.
    wait_for(lambda: pid not in listed_ids(kp) and pid not in proc_ids(), timeout=20, what="proxy gone")
    with pytest.raises(KproxyError) as ei:
        kp.get(pid)
    assert ei.value.errno == errno.ENOENT


def test_half_close(kp):
    with kp.monitor() as mon:
        ch = make_chain(kp)
        pid = ch.proxy.id
        ch.close_inner()
        try:
            request = b"GET / HTTP/1.0\r\n\r\n" * 100
            ch.c1.sendall(request)
            ch.c1.shutdown(socket.SHUT_WR)
            # The server sees the whole request, then EOF...
            assert recv_until_eof(ch.s2) == request
            p = wait_for(lambda: (q := kp.get(pid)).a_to_b.shut and q, timeout=10, what="a_to_b.shut")
            assert p.state == "half-closed" and not p.b_to_a.shut
            # ...and can still answer over the open direction.
            answer = b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 100_000
            ch.s2.sendall(answer)
            ch.s2.shutdown(socket.SHUT_WR)
            assert recv_until_eof(ch.c1) == answer
            ev = wait_event(mon, lambda e: e.kind == "del" and e.proxy.id == pid, timeout=20)
            assert ev.reason == "closed"
            assert ev.proxy.a_to_b.bytes == len(request)
            assert ev.proxy.b_to_a.bytes == len(answer)
        finally:
            ch.close()


def test_reset_aborts_other_side(kp):
    with kp.monitor() as mon:
        ch = make_chain(kp)
        pid = ch.proxy.id
        ch.close_inner()
        try:
            assert_pingpong(ch.c1, ch.s2)
            ch.c1.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ch.c1.close()  # sends RST to s1
            ch.s2.settimeout(10)
            t0 = time.monotonic()
            try:
                data = ch.s2.recv(100)
                assert data == b"", f"unexpected data {data!r}"
            except ConnectionResetError:
                pass
            elapsed = time.monotonic() - t0
            assert elapsed < 2.0, f"other side saw the end after {elapsed:.2f}s"
            ev = wait_event(mon, lambda e: e.kind == "del" and e.proxy.id == pid, timeout=10)
            assert ev.reason == "reset"
        finally:
            ch.close()


def test_slow_reader_backpressure(kp):
    total = 4 * MiB
    ch = make_chain(kp, bufsize=64 * 1024)
    pid = ch.proxy.id
    try:
        data = hashlib.sha256(b"seed").digest() * (total // 32)
        ch.c1.setblocking(False)
        sent = 0
        eagain = False
        max_queued = 0
        received = bytearray()

        def push() -> None:
            nonlocal sent, eagain
            while sent < total:
                try:
                    n = ch.c1.send(data[sent : sent + 65536])
                except BlockingIOError:
                    eagain = True
                    return
                sent += n

        def sample() -> None:
            nonlocal max_queued
            p = kp.get(pid)
            max_queued = max(max_queued, p.a_to_b.queued)
            assert p.a_to_b.queued < MiB, f"proxy queue grew to {p.a_to_b.queued}"

        # Phase 1: a reader taking 1 KiB every 10 ms for 3 s.  The writer must
        # block (EAGAIN) and the proxy must not buffer what TCP would not.
        ch.s2.settimeout(5)
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            push()
            received += ch.s2.recv(1024)
            sample()
            time.sleep(0.01)
        assert eagain, "the writer never blocked: no backpressure"
        assert sent < total, "all 4 MiB were absorbed while the reader was slow"

        # Phase 2: the reader catches up; every byte arrives, in order.
        deadline = time.monotonic() + IO_TIMEOUT
        while len(received) < total:
            assert time.monotonic() < deadline, f"stalled at {len(received)} of {total}"
            push()
            try:
                received += ch.s2.recv(256 * 1024)
            except socket.timeout:
                pass
            sample()
        assert len(received) == total
        assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
        assert kp.get(pid).a_to_b.bytes == total
    finally:
        ch.close()


def test_destroy_hands_sockets_back(kp):
    ch = make_chain(kp)
    pid = ch.proxy.id
    try:
        assert_pingpong(ch.c1, ch.s2, b"through the proxy")
        kp.destroy(pid)
        assert pid not in listed_ids(kp)
        assert pid not in proc_ids()
        # Both former proxy sockets are ordinary connected sockets again.
        assert_pingpong(ch.c1, ch.s1, b"c1 and s1 talk directly")
        assert_pingpong(ch.c2, ch.s2, b"c2 and s2 talk directly")
        with pytest.raises(KproxyError) as ei:
            kp.destroy(pid)
        assert ei.value.errno == errno.ENOENT
    finally:
        ch.close()
