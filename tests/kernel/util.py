"""Helpers of the data-path kernel tests: loopback pairs, proxies, waits.

Everything is bounded: every wait has a deadline, every socket a timeout,
because the VM may run under software emulation and a hang must become a
failure, not a stuck CI job.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import select
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

from kpctl import Event, Kproxy, Proxy
from kpctl.client import Monitor
from kpctl.procfs import PROXIES_PATH, parse_proxies

T = TypeVar("T")

# Generous: TCG is 10-50x slower than a real CPU.
IO_TIMEOUT = 120.0

# How long a new Python process (kpctl, a helper) may take to start. Under
# TCG with one vCPU beside another VM `import kpctl.cli` took 8-17 s on
# 6.12, and a monitor once over 120 s in CI; on the debug kernel
# (make test-debug: KASAN, lockdep, kmemleak; guest.sh sets
# KPROXY_TEST_DEBUG_KERNEL) 20 s idle and over 120 s late in a whole-suite
# boot.
DEBUG_KERNEL = os.environ.get("KPROXY_TEST_DEBUG_KERNEL") == "1"
PROCESS_START_TIMEOUT = 600.0 if DEBUG_KERNEL else 300.0

# `make test` runs every test at a size that fits CI's time under software
# emulation; `make test-long` (KPROXY_TEST_LONG=1) at the sizes the issues
# name. long_or(full, ci) picks one.
LONG = os.environ.get("KPROXY_TEST_LONG") == "1"


def long_or(full: T, ci: T) -> T:
    return full if LONG else ci


def tcp_pair(
    host: str = "127.0.0.1",
    bufsize: int | None = None,
    listener: socket.socket | None = None,
) -> tuple[socket.socket, socket.socket]:
    """(client, server): a connected TCP pair on loopback.

    `bufsize` fixes SO_SNDBUF/SO_RCVBUF on both ends before the handshake
    (which also turns off autotuning), to make backpressure reachable.
    """
    own = listener is None
    if listener is None:
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        if bufsize:
            _bufs(listener, bufsize)
        listener.bind((host, 0))
        listener.listen(8)
    cli = socket.socket(listener.family)
    if bufsize:
        _bufs(cli, bufsize)
    cli.settimeout(IO_TIMEOUT)
    cli.connect(listener.getsockname()[:2])
    listener.settimeout(IO_TIMEOUT)
    srv, _ = listener.accept()
    srv.settimeout(IO_TIMEOUT)
    if own:
        listener.close()
    return cli, srv


def _bufs(s: socket.socket, size: int) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


@dataclass
class Chain:
    """c1 <-> s1 ==proxy== c2 <-> s2: c1 talks to s2 through the proxy.

    The proxy's A is s1 (so a_to_b carries c1's bytes), B is c2.
    """

    c1: socket.socket
    s1: socket.socket
    c2: socket.socket
    s2: socket.socket
    proxy: Proxy

    def close_inner(self) -> None:
        """Drop our fds of the proxied sockets (the proxy keeps its own)."""
        for s in (self.s1, self.c2):
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        for s in (self.c1, self.s1, self.c2, self.s2):
            with contextlib.suppress(OSError):
                s.close()


def make_chain(kp: Kproxy, host: str = "127.0.0.1", bufsize: int | None = None) -> Chain:
    c1, s1 = tcp_pair(host, bufsize)
    c2, s2 = tcp_pair(host, bufsize)
    p = kp.create(s1, c2)
    return Chain(c1, s1, c2, s2, p)


def wait_for(pred: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        time.sleep(interval)


def wait_event(mon: Monitor, pred: Callable[[Event], bool], timeout: float = 10.0) -> Event:
    deadline = time.monotonic() + timeout
    seen: list[Event] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching event within {timeout}s; saw {[(e.kind, e.proxy.id, e.reason) for e in seen]}")
        ev = mon.get(left)
        if ev is None:
            continue
        seen.append(ev)
        if pred(ev):
            return ev


def proc_proxies(path: str = PROXIES_PATH) -> list[Proxy]:
    with open(path) as f:
        return parse_proxies(f.read())


def proc_ids() -> set[int]:
    return {p.id for p in proc_proxies()}


def listed_ids(kp: Kproxy) -> set[int]:
    return {p.id for p in kp.list()}


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_until_eof(s: socket.socket, limit: int = 1 << 24) -> bytes:
    buf = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise AssertionError("no EOF")


def stream_chunks(total: int, seed: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Reproducible random bytes, generated piecewise (no 64 MiB buffer)."""
    rng = random.Random(seed)
    left = total
    while left:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


class Sender(threading.Thread):
    """Sends `total` random bytes; .digest is their sha256."""

    def __init__(self, s: socket.socket, total: int, seed: int, close_wr: bool = False) -> None:
        super().__init__(daemon=True)
        self.s, self.total, self.seed, self.close_wr = s, total, seed, close_wr
        self.digest = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            h = hashlib.sha256()
            for chunk in stream_chunks(self.total, self.seed):
                h.update(chunk)
                self.s.sendall(chunk)
            if self.close_wr:
                self.s.shutdown(socket.SHUT_WR)
            self.digest = h.hexdigest()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


class Receiver(threading.Thread):
    """Receives exactly `total` bytes; .digest is their sha256."""

    def __init__(self, s: socket.socket, total: int) -> None:
        super().__init__(daemon=True)
        self.s, self.total = s, total
        self.digest = ""
        self.got = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            h = hashlib.sha256()
            while self.got < self.total:
                chunk = self.s.recv(min(1 << 20, self.total - self.got))
                if not chunk:
                    raise AssertionError(f"EOF after {self.got} of {self.total} bytes")
                h.update(chunk)
                self.got += len(chunk)
            self.digest = h.hexdigest()
        except BaseException as e:  # noqa: BLE001
            self.error = e


def both_ways(ch: Chain, total: int, seed: int) -> list[Sender | Receiver]:
    """Threads (not started) moving `total` random bytes each way through the
    chain: forward sender and receiver, then backward sender and receiver."""
    return [Sender(ch.c1, total, seed), Receiver(ch.s2, total),
            Sender(ch.s2, total, seed + 1), Receiver(ch.c1, total)]


def join_all(threads: list, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for t in threads:
        assert not t.is_alive(), f"{t} still running after {timeout}s"
        assert t.error is None, f"{t}: {t.error!r}"


def assert_pingpong(a: socket.socket, b: socket.socket, payload: bytes = b"ping") -> None:
    """a -> b and b -> a each deliver `payload`."""
    a.sendall(payload)
    assert recv_exact(b, len(payload)) == payload
    b.sendall(payload[::-1])
    assert recv_exact(a, len(payload)) == payload[::-1]


# The module's count of struct kproxy objects allocated and not yet freed
# (module-wide, root-only).
OBJECTS_PATH = "/sys/kernel/debug/kproxy/objects"


def live_objects() -> int:
    if not os.path.exists("/sys/kernel/debug/kproxy"):
        subprocess.run(["mount", "-t", "debugfs", "debugfs", "/sys/kernel/debug"], check=False)
    with open(OBJECTS_PATH) as f:
        return int(f.read())


# The module's parameters (README "Limits"), writable by root.
PARAMS_DIR = "/sys/module/kproxy/parameters"


@contextlib.contextmanager
def module_param(name: str, value: str) -> Iterator[None]:
    """Set a module parameter for the time of a `with` block."""
    path = os.path.join(PARAMS_DIR, name)
    assert os.path.exists(path), f"kproxy has no {name} parameter ({path} missing)"
    with open(path) as f:
        old = f.read().strip()
    with open(path, "w") as f:
        f.write(value)
    try:
        yield
    finally:
        with open(path, "w") as f:
            f.write(old)


def closed_fd_number() -> int:
    """An fd number that is not open in this process."""
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    return fd


def destroy_all(kp: Kproxy) -> None:
    """Test isolation: end every proxy of this netns that a test left."""
    try:
        left = kp.list()
    except Exception:  # noqa: BLE001 - e.g. the module was reloaded: a fresh handle
        with Kproxy() as fresh:
            for p in fresh.list():
                with contextlib.suppress(Exception):
                    fresh.destroy(p.id)
        return
    for p in left:
        with contextlib.suppress(Exception):
            kp.destroy(p.id)


# --- kernel memory a remote peer can make the kernel hold ---------------------------


def kernel_kb() -> int:
    """Slab + Percpu from /proc/meminfo, in kB."""
    m = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            m[k] = int(v.split()[0])
    return m["Slab"] + m["Percpu"]


class KernelMemory(threading.Thread):
    """Samples Slab + Percpu every 0.25 s: the peak growth over the value
    at the start; `over` is set once the growth passes `limit_kb`."""

    def __init__(self, limit_kb: int) -> None:
        super().__init__(daemon=True)
        self.limit_kb = limit_kb
        self.base = kernel_kb()
        self.peak = 0
        self.samples = 0
        self.over = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(0.25):
                g = kernel_kb() - self.base
                self.samples += 1
                self.peak = max(self.peak, g)
                if g > self.limit_kb:
                    self.over.set()
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def finish(self) -> None:
        self.stop.set()
        self.join(10)
        assert self.error is None, repr(self.error)


def trickle(s: socket.socket, data: bytes | memoryview, start: int, seconds: float, mem: KernelMemory) -> int:
    """Send data[start:] one byte per send() for `seconds`, or until the
    kernel's memory grew past the sampler's limit; returns the offset
    reached.  A full send buffer waits for room (select, 0.1 s)."""
    s.setblocking(False)
    send = s.send
    n = start
    end = time.monotonic() + seconds
    try:
        while n < len(data):
            if n & 63 == 0 and (time.monotonic() > end or mem.over.is_set()):
                break
            try:
                send(data[n : n + 1])
                n += 1
            except BlockingIOError:
                if time.monotonic() > end or mem.over.is_set():
                    break
                select.select([], [s], [], 0.1)
    finally:
        s.settimeout(IO_TIMEOUT)
    return n


LIMIT_STOP_KB = 64 * 1024  # stop early: the VM has 1 GiB
LIMIT_OK_KB = 32 * 1024


def measured_trickle(s: socket.socket, data: bytes | memoryview, start: int,
                     seconds: float) -> tuple[int, float, KernelMemory]:
    """trickle() while kernel memory is sampled: (where it got to, seconds
    it took, the sampler with its peak)."""
    mem = KernelMemory(LIMIT_STOP_KB)
    mem.start()
    t0 = time.monotonic()
    try:
        at = trickle(s, data, start, seconds, mem)
    finally:
        mem.finish()
    return at, time.monotonic() - t0, mem


import pytest  # noqa: E402 - fixtures below, helpers above stay pytest-free


@pytest.fixture
def kp() -> Iterator[Kproxy]:
    """A Kproxy of the initial netns; proxies a test leaves are ended after it."""
    with Kproxy() as k:
        yield k
        destroy_all(k)
