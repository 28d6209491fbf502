"""Where and when a direction's work runs (issue 20): it is queued on the
CPU whose softirq brought the data when the direction was idle, on another
CPU while it streams, and it does not take the source's lock when nothing
waits there. Each of these rules could lose a wakeup or a byte; these tests
try to make them: alternating tiny round trips (every wakeup after an idle
period, the idle/streaming guess flipping each time), bursts between them,
and a CPU taken offline and back under traffic (work queued on a CPU that
goes away)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from util import (  # noqa: F401 - kp is a fixture
    both_ways,
    join_all,
    kp,
    long_or,
    make_chain,
    recv_exact,
)

MiB = 1 << 20
# A round trip takes about a millisecond under TCG: a round that waits this
# long lost its wakeup.
ROUND_TIMEOUT = 10.0


def test_one_byte_round_trips_each_answered_without_a_lost_wakeup(kp, dmesg):
    rounds = long_or(20000, 2000)
    burst = 64 * 1024
    ch = make_chain(kp)
    try:
        for s in (ch.c1, ch.s2):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(ROUND_TIMEOUT)
        sent = 0
        for i in range(rounds):
            byte = bytes([i & 0xFF])
            try:
                ch.c1.sendall(byte)
                assert recv_exact(ch.s2, 1) == byte
                ch.s2.sendall(byte)
                assert recv_exact(ch.c1, 1) == byte
            except TimeoutError:
                pytest.fail(f"round {i} of {rounds} waited over {ROUND_TIMEOUT}s: a wakeup was lost")
            sent += 1
            if i % 500 == 499:
                # A stream between idle rounds: the direction goes from
                # streaming back to idle.
                data = os.urandom(burst)
                ch.c1.sendall(data)
                assert recv_exact(ch.s2, burst) == data
                sent += burst
        p = kp.get(ch.proxy.id)
        assert p.a_to_b.bytes == sent
        assert p.b_to_a.bytes == rounds
        assert p.a_to_b.queued == 0 and p.b_to_a.queued == 0
    finally:
        ch.close()
    assert dmesg.bad() == []


def _online_path(cpu: int) -> Path:
    return Path(f"/sys/devices/system/cpu/cpu{cpu}/online")


@contextlib.contextmanager
def _cpu_back_online(cpu: int) -> Iterator[None]:
    try:
        yield
    finally:
        _online_path(cpu).write_text("1")


def test_bytes_through_while_a_cpu_goes_offline_and_back(kp, dmesg, say):
    # CPU 0 cannot go offline on x86; the last one can, where there are two.
    cpu = (os.cpu_count() or 1) - 1
    if cpu < 1 or not _online_path(cpu).exists():
        pytest.skip("needs a second CPU that can go offline (the suite's VMs have two; test-debug's has one)")
    total = long_or(64, 16) * MiB
    ch = make_chain(kp)
    try:
        threads = both_ways(ch, total, seed=20)
        with _cpu_back_online(cpu):
            for t in threads:
                t.start()
            toggles = 0
            while any(t.is_alive() for t in threads) and toggles < 8:
                time.sleep(0.3)
                state = "0" if toggles % 2 == 0 else "1"
                _online_path(cpu).write_text(state)
                assert _online_path(cpu).read_text().strip() == state
                toggles += 1
        say(f"CPU {cpu} went offline or back {toggles} times under traffic")
        assert toggles >= 2, "the transfer ended before the CPU went offline once: grow it"
        join_all(threads, timeout=600)
        fwd_send, fwd_recv, back_send, back_recv = threads
        assert fwd_recv.digest == fwd_send.digest
        assert back_recv.digest == back_send.digest
        p = kp.get(ch.proxy.id)
        assert p.a_to_b.bytes == total and p.b_to_a.bytes == total
        assert p.state == "active"
    finally:
        ch.close()
    assert _online_path(cpu).read_text().strip() == "1"
    assert dmesg.bad() == []
