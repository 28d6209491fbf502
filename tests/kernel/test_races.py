"""Races of issue 8, item 3, each repeated (100 times in `make test-long`,
a few times at CI size) with the user-visible outcome asserted on every
repetition:

  a. a reset from the far end while bytes flow both ways;
  b. the caller's fds closed by another thread while `proxy-new` is in flight;
  c. `proxy-del` while the proxy's send side is stalled on a full buffer;
  d. deleting a netns that owns proxies under traffic;
  e. unloading the module under traffic;
  f. attaching, replacing and detaching BPF programs in a loop under traffic.

Every test ends with no proxy left, the module's count of live struct
kproxy objects (debugfs) back to where it started, and a clean kernel log.
Random choices come from a seed that is printed (and can be replayed with
KPROXY_TEST_SEED=N).  Every wait is bounded.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import os
import random
import select
import socket
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

import conftest
from kpctl import Event, Kproxy, KproxyError, bpf
from kpctl.client import Monitor
from test_bpf import frame, seq_payload
from util import (  # noqa: F401 - kp is a fixture
    IO_TIMEOUT,
    Chain,
    assert_pingpong,
    join_all,
    kp,
    listed_ids,
    live_objects,
    long_or,
    make_chain,
    proc_ids,
    tcp_pair,
    wait_for,
)

KiB, MiB = 1 << 10, 1 << 20


# --- shared helpers --------------------------------------------------------------


def make_seed(say, name: str) -> random.Random:
    env = os.environ.get("KPROXY_TEST_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(1 << 32)
    say(f"{name}: seed {seed} (replay: KPROXY_TEST_SEED={seed})")
    return random.Random(seed)


# Streams are windows of one pool of random bytes at random offsets: each
# connection carries its own bytes without the cost of generating them
# under emulation, and a byte from another stream or position shows.
POOL_SIZE = 8 * MiB
_pool: list[memoryview] = []


def window(rng: random.Random, n: int) -> memoryview:
    if not _pool:
        _pool.append(memoryview(random.Random(0x6B707278).randbytes(POOL_SIZE)))
    off = rng.randrange(POOL_SIZE - n + 1)
    return _pool[0][off : off + n]


class Sink:
    """What one end received: a running sha256 and a count."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.n = 0

    def feed(self, b: bytes) -> None:
        self.h.update(b)
        self.n += len(b)

    def is_prefix_of(self, data: memoryview) -> bool:
        return self.n <= len(data) and self.h.hexdigest() == hashlib.sha256(data[: self.n]).hexdigest()


def end_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e))


class Job(threading.Thread):
    """fn(*args) in a thread; .result, or .error for join_all to report."""

    def __init__(self, fn: Callable, *args) -> None:
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:  # noqa: BLE001 - reported by join_all
            self.error = e


def read_to_end(s: socket.socket, sink: Sink, timeout: float = IO_TIMEOUT) -> str:
    """Read until the connection ends: "eof" or the errno's name."""
    s.setblocking(True)
    s.settimeout(timeout)
    while True:
        try:
            b = s.recv(256 * KiB)
        except TimeoutError:
            raise AssertionError(f"no end of stream within {timeout}s ({sink.n} bytes read)") from None
        except OSError as e:
            return end_name(e)
        if not b:
            return "eof"
        sink.feed(b)


class Events:
    """A monitor that keeps every event it reads, to count them later."""

    def __init__(self, mon: Monitor) -> None:
        self.mon = mon
        self.seen: list[Event] = []

    def _pull(self, timeout: float) -> bool:
        ev = self.mon.get(timeout)
        if ev is not None:
            self.seen.append(ev)
        return ev is not None

    def wait_dels(self, ids: set[int], timeout: float = 30.0) -> dict[int, Event]:
        deadline = time.monotonic() + timeout
        while True:
            got = {e.proxy.id: e for e in self.seen if e.kind == "del" and e.proxy.id in ids}
            if len(got) == len(ids):
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no proxy-del-ntf within {timeout}s for {sorted(ids - set(got))}")
            self._pull(left)

    def settle(self, quiet: float = 0.5, limit: float = 10.0) -> None:
        """Read until nothing arrives for `quiet` seconds (late duplicates)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self._pull(quiet):
            pass

    def del_counts(self) -> collections.Counter:
        return collections.Counter(e.proxy.id for e in self.seen if e.kind == "del")


def settled_baseline(kp: Kproxy) -> int:
    """live_objects() once proxies of earlier tests have finished ending."""
    wait_for(lambda: not kp.list(), timeout=30, what="proxies of earlier tests to end")
    last: list[int] = []

    def stable() -> bool:
        last.append(live_objects())
        return len(last) >= 2 and last[-1] == last[-2]

    wait_for(stable, timeout=30, interval=0.2, what="a stable count of live objects")
    return last[-1]


def wait_objects(baseline: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (now := live_objects()) != baseline:
        assert time.monotonic() < deadline, f"{now} struct kproxy alive, {baseline} before: leaked"
        time.sleep(0.05)


def assert_clean(baseline: int, dmesg) -> None:
    """No proxy left, nothing leaked, nothing in the kernel log."""
    with Kproxy() as k:
        wait_for(lambda: not k.list() and not proc_ids(), timeout=30, what="no proxy left")
    wait_objects(baseline)
    assert dmesg.bad() == []


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, timeout=60)


# --- a. reset from the far end ---------------------------------------------------


def duplex(sock: socket.socket, out: memoryview, sink: Sink, deadline: float,
           reset_after: int | None = None) -> tuple[str, int, float]:
    """Send `out` and receive into `sink` at once, from one thread that owns
    the socket, until the connection ends: returns (how, bytes sent, when).
    With `reset_after`, once that many bytes have arrived, reset the
    connection instead (SO_LINGER 0 then close: an RST, no FIN)."""
    sock.setblocking(False)
    sent = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"connection still open: {sink.n} bytes in, {sent} out")
        r, w, _ = select.select([sock], [sock] if sent < len(out) else [], [], min(left, 0.5))
        if r:
            try:
                b = sock.recv(256 * KiB)
            except BlockingIOError:
                b = None
            except OSError as e:
                return end_name(e), sent, time.monotonic()
            if b == b"":
                return "eof", sent, time.monotonic()
            if b:
                sink.feed(b)
                if reset_after is not None and sink.n >= reset_after:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                    return "reset", sent, time.monotonic()
        if w:
            try:
                sent += sock.send(out[sent : sent + 64 * KiB])
            except BlockingIOError:
                pass
            except OSError as e:
                return end_name(e), sent, time.monotonic()


def test_reset_from_far_end_mid_transfer(kp, dmesg, say):
    """c1 <-> s1 ==proxy== c2 <-> s2, bytes flowing both ways; c1 (the far
    end) resets its connection after a random number of bytes.  The design
    says a reset on one side aborts the other: the proxy resets c2, so s2's
    first sign of the end is ECONNRESET (never a clean EOF, which would pass
    a cut-off stream as complete).  What each end got is an exact prefix of
    what the other sent; the proxy ends with reason `reset`, one
    proxy-del-ntf each."""
    rng = make_seed(say, "reset race")
    reps = long_or(100, 6)
    total = 2 * MiB
    # 64 KiB buffers: at most ~1 MiB is in flight between s2 and c1 (four
    # socket buffers, doubled by the kernel, and the proxy's 512 KiB queue),
    # so a reset after < 768 KiB always interrupts s2's 2 MiB.
    buf = 64 * KiB
    base = settled_baseline(kp)
    ids: set[int] = set()
    with kp.monitor() as mon:
        events = Events(mon)
        for rep in range(reps):
            ch = make_chain(kp, bufsize=buf)
            pid = ch.proxy.id
            ids.add(pid)
            ch.close_inner()
            a, b = window(rng, total), window(rng, total)  # c1 -> s2, s2 -> c1
            k = rng.randrange(16 * KiB, 768 * KiB)
            at_c1, at_s2 = Sink(), Sink()
            ctx = f"rep {rep}, reset after {k} bytes"
            try:
                deadline = time.monotonic() + IO_TIMEOUT
                far = Job(duplex, ch.c1, a, at_c1, deadline, k)
                near = Job(duplex, ch.s2, b, at_s2, deadline)
                far.start()
                near.start()
                join_all([far, near], IO_TIMEOUT + 10)
                _, _, t_reset = far.result
                end, s2_sent, t_end = near.result
                assert end == "ECONNRESET", f"{ctx}: s2 saw {end} first, not a reset"
                assert s2_sent < total, f"{ctx}: s2 had sent everything: no transfer to interrupt"
                assert t_end - t_reset < 10, f"{ctx}: s2 saw the reset {t_end - t_reset:.1f}s late"
                assert at_s2.is_prefix_of(a), f"{ctx}: s2 got {at_s2.n} bytes that are not c1's"
                assert at_c1.is_prefix_of(b), f"{ctx}: c1 got {at_c1.n} bytes that are not s2's"
                ev = events.wait_dels({pid})[pid]
                assert ev.reason == "reset", f"{ctx}: ended with reason {ev.reason}"
                assert at_s2.n <= ev.proxy.a_to_b.bytes, f"{ctx}: s2 got more than the proxy sent"
            finally:
                ch.close()
            wait_objects(base)
        events.settle()
        dels = events.del_counts()
        assert {i: dels[i] for i in ids if dels[i] != 1} == {}, "proxies without exactly one proxy-del-ntf"
    assert_clean(base, dmesg)


# --- b. fds closed during create ---------------------------------------------------


def test_close_fds_during_create(kp, dmesg, say):
    """Another thread closes the two fds while `proxy-new` is in flight.
    The kernel resolves each fd once and keeps its own reference, so the
    request either succeeds (and the proxy works without the caller's fds)
    or fails with EBADF -- never anything else.  Either way no reference is
    leaked: once the fds are closed and the proxy (if any) destroyed, the
    sockets close and their peers see EOF."""
    rng = make_seed(say, "close-during-create race")
    reps = long_or(100, 20)
    base = settled_baseline(kp)

    # The close lands at a random point of a request: calibrate its length.
    lat = []
    for _ in range(5):
        c1, s1 = tcp_pair()
        c2, s2 = tcp_pair()
        t0 = time.perf_counter()
        p = kp.create(s1, c2)
        lat.append(time.perf_counter() - t0)
        kp.destroy(p.id)
        for s in (c1, s1, c2, s2):
            s.close()
    # Over one request's length (the closer also needs time to wake up):
    # both outcomes come up.
    span = sorted(lat)[len(lat) // 2]

    outcomes: collections.Counter = collections.Counter()
    timing: collections.Counter = collections.Counter()
    for rep in range(reps):
        c1, s1 = tcp_pair()
        c2, s2 = tcp_pair()
        fa, fb = s1.detach(), c2.detach()  # plain fds: the closer owns them now
        # No delay: the closer runs as soon as it gets the GIL, which the
        # caller drops when it enters the netlink syscall that runs proxy-new.
        delay = 0.0 if rng.random() < 0.3 else rng.uniform(0, span)
        order = (fa, fb) if rng.random() < 0.5 else (fb, fa)
        go = threading.Event()
        when: list[float] = []

        def closer() -> None:
            assert go.wait(10)
            if delay:
                time.sleep(delay)
            when.append(time.perf_counter())
            for fd in order:
                os.close(fd)
            when.append(time.perf_counter())

        ctx = f"rep {rep}, close after {delay * 1e3:.2f} ms"
        t = Job(closer)
        t.start()
        try:
            go.set()
            t0 = time.perf_counter()
            try:
                p = kp.create(fa, fb)
            except KproxyError as e:
                assert e.errno == errno.EBADF, f"{ctx}: create failed with {e.errno_name}: {e}"
                p = None
            t1 = time.perf_counter()
            join_all([t], 10)
            # Where the closes fell, for the record: before, within or after the call.
            timing["before" if when[1] < t0 else "after" if when[0] > t1 else "within"] += 1
            if p is not None:
                outcomes["created"] += 1
                assert_pingpong(c1, s2, b"the kernel holds its own references")
                kp.destroy(p.id)  # its references were the last: s1 and c2 close
            else:
                outcomes["EBADF"] += 1
                assert listed_ids(kp) == set(), f"{ctx}: a failed create left a proxy"
            for s in (c1, s2):
                s.settimeout(10)
                try:
                    assert s.recv(100) == b"", f"{ctx}: unexpected data"
                except TimeoutError:
                    raise AssertionError(f"{ctx}: its peer never closed: a socket reference leaked") from None
        finally:
            c1.close()
            s2.close()
        wait_objects(base)
    say(f"close-during-create: {dict(outcomes)} over {reps} runs; closes {dict(timing)} the "
        f"create call (spread over {span * 1e3:.1f} ms)")
    assert_clean(base, dmesg)


# --- c. delete while the send side is stalled ------------------------------------


def test_delete_while_send_side_stalled(kp, dmesg, say):
    """s2 never reads and every buffer is small, so c1's bytes pile up until
    the proxy's queue is stuck behind a full c2.  `proxy-del` then returns
    at once and hands the sockets back.  README: "proxy-del sends what is
    already queued before handing the sockets back; bytes still in the
    receive buffers stay there for the owner to read" -- so what s2 gets
    (through c2) followed by what is left in s1 is exactly what c1 sent:
    no byte lost, none twice.  Afterwards both sockets work normally."""
    rng = make_seed(say, "delete-while-stalled race")
    reps = long_or(100, 5)
    base = settled_baseline(kp)
    worst = 0.0
    for rep in range(reps):
        ch = make_chain(kp, bufsize=rng.choice((16, 32, 64)) * KiB)
        pid = ch.proxy.id
        data = window(rng, 4 * MiB)
        ctx = f"rep {rep}"
        try:
            ch.c1.setblocking(False)
            sent = 0
            last, still_since = None, None
            deadline = time.monotonic() + IO_TIMEOUT
            while True:  # fill until nothing moves any more
                assert time.monotonic() < deadline, f"{ctx}: never stalled"
                if sent == len(data):
                    break
                with contextlib.suppress(BlockingIOError):
                    sent += ch.c1.send(data[sent : sent + 64 * KiB])
                    continue
                p = kp.get(pid)
                now = (sent, p.a_to_b.bytes, p.a_to_b.queued)
                if now != last:
                    last, still_since = now, time.monotonic()
                elif time.monotonic() - still_since > 0.3:
                    break
                time.sleep(0.02)
            assert sent < len(data), f"{ctx}: 4 MiB absorbed with a reader that never reads"
            assert p.a_to_b.queued > 0, f"{ctx}: the proxy held nothing: its send side was not stalled"
            queued, forwarded = p.a_to_b.queued, p.a_to_b.bytes

            t0 = time.monotonic()
            kp.destroy(pid)
            took = time.monotonic() - t0
            worst = max(worst, took)
            assert took < 5, f"{ctx}: proxy-del took {took:.1f}s"
            assert pid not in listed_ids(kp)

            # Ours again: let both writers finish, then read each socket dry.
            ch.c1.setblocking(True)
            ch.c1.shutdown(socket.SHUT_WR)
            ch.c2.shutdown(socket.SHUT_WR)
            at_s2, at_s1 = bytearray(), bytearray()
            for s, into in ((ch.s2, at_s2), (ch.s1, at_s1)):
                s.settimeout(IO_TIMEOUT)
                while chunk := s.recv(256 * KiB):
                    into += chunk
            lost = sent - len(at_s2) - len(at_s1)
            assert lost == 0, (f"{ctx}: c1 sent {sent}, s2 got {len(at_s2)} (proxy had sent "
                               f"{forwarded}, {queued} queued), s1 kept {len(at_s1)}: "
                               f"{lost} bytes {'lost' if lost > 0 else 'too many'}")
            assert bytes(at_s2) + bytes(at_s1) == data[:sent], f"{ctx}: bytes reordered or altered"
            # The other directions never went through anything odd: plain sockets.
            ch.s1.sendall(b"s1 to c1 directly")
            ch.c1.settimeout(10)
            assert ch.c1.recv(100) == b"s1 to c1 directly"
            ch.s2.sendall(b"s2 to c2 directly")
            ch.c2.settimeout(10)
            assert ch.c2.recv(100) == b"s2 to c2 directly"
        finally:
            ch.close()
        wait_objects(base)
    say(f"delete-while-stalled: {reps} runs, slowest proxy-del {worst * 1e3:.1f} ms")
    assert_clean(base, dmesg)


# --- traffic through many proxies from one thread --------------------------------


class Pump(threading.Thread):
    """Moves bytes both ways through chains from their outer ends, all from
    one thread with non-blocking sockets: c1 sends a[i] and reads what s2
    sends, s2 sends b[i] and reads what c1 sends.  An end that sees EOF or
    an error stops there: ends[(i, "c1"|"s2")] says how ("eof", errno name)."""

    def __init__(self, chains: list[Chain], rng: random.Random, length: int) -> None:
        super().__init__(daemon=True)
        self.socks = {}
        self.out: dict[tuple[int, str], memoryview] = {}
        for i, ch in enumerate(chains):
            for side, s in (("c1", ch.c1), ("s2", ch.s2)):
                s.setblocking(False)
                self.socks[(i, side)] = s
                self.out[(i, side)] = window(rng, length)
        self.sent = collections.Counter()
        self.sinks = {key: Sink() for key in self.socks}
        self.ends: dict[tuple[int, str], str] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def a(self, i: int) -> memoryview:  # c1 -> s2
        return self.out[(i, "c1")]

    def b(self, i: int) -> memoryview:  # s2 -> c1
        return self.out[(i, "s2")]

    def got_at_s2(self, i: int) -> Sink:
        return self.sinks[(i, "s2")]

    def got_at_c1(self, i: int) -> Sink:
        return self.sinks[(i, "c1")]

    def run(self) -> None:
        try:
            while not self.stop.is_set() and len(self.ends) < len(self.socks):
                moved = False
                for key, s in self.socks.items():
                    if key in self.ends:
                        continue
                    try:
                        b = s.recv(64 * KiB)
                        if not b:
                            self.ends[key] = "eof"
                            continue
                        self.sinks[key].feed(b)
                        moved = True
                    except BlockingIOError:
                        pass
                    except OSError as e:
                        self.ends[key] = end_name(e)
                        continue
                    out, n = self.out[key], self.sent[key]
                    if n < len(out):
                        try:
                            self.sent[key] += s.send(out[n : n + 16 * KiB])
                            moved = True
                        except BlockingIOError:
                            pass
                        except OSError as e:
                            self.ends[key] = end_name(e)
                if not moved:
                    time.sleep(0.002)
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def flowing(self) -> bool:
        """Every chain has carried bytes both ways."""
        assert self.error is None, self.error
        return all(s.n > 0 for s in self.sinks.values())

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        assert not self.is_alive(), "pump stuck"
        assert self.error is None, repr(self.error)


def check_outer_ends(pump: Pump, i: int, ctx: str, still_open: bool = False) -> None:
    """Chain i's outer ends saw their connection end, after exact prefixes:
    EOF; ECONNRESET when the kernel closed a socket with unread bytes; or
    EPIPE, when the end had the FIN but, with bytes still to read, sent on
    and drew the closed socket's reset (tcp_reset() in CLOSE_WAIT)."""
    for side, want in (("s2", pump.a(i)), ("c1", pump.b(i))):
        key = (i, side)
        end = pump.ends.get(key)
        if end is None:
            end = read_to_end(pump.socks[key], pump.sinks[key], timeout=60)
        assert end in ("eof", "ECONNRESET", "EPIPE"), f"{ctx}: chain {i} {side} ended with {end}"
        assert pump.sinks[key].is_prefix_of(want), f"{ctx}: chain {i} {side} got bytes not sent to it"


# --- d. netns deleted under traffic ------------------------------------------------


@pytest.mark.timeout(long_or(4 * 3600, 600))
def test_netns_delete_under_traffic(kp, dmesg, say):
    """Proxies belong to the netns of the netlink socket that made them, and
    deleting that netns ends them (pernet exit, reason netns-exit).  Their
    sockets live in the initial netns here: sockets pin their own netns, so
    proxies of sockets inside the deleted netns would only end with their
    connections (README, Limits).  No monitor can report the reason: a
    socket in the dying netns would keep it alive.  What users see: every
    outer end sees its connection end (the proxy's sockets are closed:
    check_outer_ends) after an exact prefix of the peer's bytes, and every
    struct kproxy is freed."""
    rng = make_seed(say, "netns-exit race")
    n = long_or(100, 8)
    reps = long_or(100, 3)
    base = settled_baseline(kp)
    slowest = 0.0
    for rep in range(reps):
        name = f"kpx-race-{uuid.uuid4().hex[:6]}"
        sh("ip", "netns", "add", name)
        chains: list[Chain] = []
        kx = None
        pump = None
        ctx = f"rep {rep}"
        try:
            kx = Kproxy(netns=name)
            for _ in range(n):
                c1, s1 = tcp_pair()
                c2, s2 = tcp_pair()
                chains.append(Chain(c1, s1, c2, s2, kx.create(s1, c2)))
                s1.close()
                c2.close()
            ids = {c.proxy.id for c in chains}
            assert listed_ids(kx) == ids
            assert not ids & listed_ids(kp), "another netns's proxies visible"
            pump = Pump(chains, rng, 2 * MiB)
            pump.start()
            wait_for(pump.flowing, timeout=120, what="bytes through every proxy")
            time.sleep(rng.uniform(0, 0.2))

            t0 = time.monotonic()
            sh("ip", "netns", "del", name)
            kx.close()  # the last reference on the netns: it goes now
            wait_for(lambda: len(pump.ends) == len(pump.socks) or pump.error, timeout=120,
                     what="every outer end to see its connection end")
            slowest = max(slowest, time.monotonic() - t0)
            pump.finish()
            for i in range(n):
                check_outer_ends(pump, i, ctx)
            wait_objects(base, timeout=60)
        finally:
            if pump is not None:
                pump.stop.set()
                pump.join(30)
            if kx is not None:
                kx.close()
            for c in chains:
                c.close()
            if Path(f"/var/run/netns/{name}").exists():
                subprocess.run(["ip", "netns", "del", name], timeout=60)
    say(f"netns-exit: {reps} x {n} proxies, slowest end of all connections {slowest:.2f}s")
    assert_clean(base, dmesg)


# --- e. module unload under traffic ------------------------------------------------


@pytest.mark.timeout(long_or(4 * 3600, 600))
def test_unload_under_traffic(dmesg, say):
    """rmmod while every proxy carries bytes both ways.  Nothing pins the
    module (refcnt 0: proxies and netlink sockets hold no module reference),
    so rmmod succeeds at once; every proxy ends with reason `unload`, one
    proxy-del-ntf each.  Half the chains kept the proxy's fds: they get
    their sockets back with no byte lost (what the far end got plus what
    is left in the proxy's source socket is exactly what was sent, both
    ways).  The other half's sockets are closed by the last reference:
    their outer ends see the end after a prefix.  The module loads again
    and works."""
    rng = make_seed(say, "unload race")
    n = long_or(8, 4)
    reps = long_or(100, 3)
    with Kproxy() as k:
        # Only to let earlier tests' proxies end: the reload below starts
        # the object count from zero.
        settled_baseline(k)
    ended = 0
    for rep in range(reps):
        ctx = f"rep {rep}"
        chains: list[Chain] = []
        pump = None
        kp = Kproxy()
        mon = kp.monitor()
        try:
            chains = [make_chain(kp) for _ in range(n)]
            ids = {c.proxy.id for c in chains}
            kept = {i for i in range(n) if i % 2 == 0}
            for i, c in enumerate(chains):
                if i not in kept:
                    c.close_inner()
            pump = Pump(chains, rng, 4 * MiB)
            pump.start()
            wait_for(pump.flowing, timeout=120, what="bytes through every proxy")
            time.sleep(rng.uniform(0, 0.2))

            refcnt = Path("/sys/module/kproxy/refcnt").read_text().strip()
            assert refcnt == "0", f"{ctx}: something holds the module ({refcnt} references)"
            conftest.unload()
            got = Events(mon).wait_dels(ids, timeout=60)
            reasons = collections.Counter(e.reason for e in got.values())
            assert reasons == {"unload": n}, f"{ctx}: {reasons}"
            ended += n
            pump.finish()
            still = [i for i in range(n) if pump.sent[(i, "c1")] < len(pump.a(i))]
            assert still, f"{ctx}: every stream had been sent before the unload"

            for i, c in enumerate(chains):
                if i not in kept:
                    check_outer_ends(pump, i, ctx)
                    continue
                # Handed back: let every writer finish, read every socket dry.
                for s in (c.c1, c.c2, c.s1, c.s2):
                    s.setblocking(True)
                    s.shutdown(socket.SHUT_WR)
                for stream, sent, first, second in (
                    ("c1->s2", pump.sent[(i, "c1")], (c.s2, (i, "s2")), c.s1),
                    ("s2->c1", pump.sent[(i, "s2")], (c.c1, (i, "c1")), c.c2),
                ):
                    sock, key = first
                    sink = pump.sinks[key]
                    if key not in pump.ends:
                        assert read_to_end(sock, sink) == "eof", f"{ctx}: chain {i} {stream}"
                    far_end = sink.n
                    assert read_to_end(second, sink) == "eof", f"{ctx}: chain {i} {stream}"
                    want = pump.a(i) if stream == "c1->s2" else pump.b(i)
                    assert sink.n == sent, (f"{ctx}: chain {i} {stream}: {sent} sent, {far_end} "
                                            f"arrived, {sink.n - far_end} left in the socket: "
                                            f"{sent - sink.n} bytes lost")
                    assert sink.is_prefix_of(want), f"{ctx}: chain {i} {stream}: bytes altered"
        finally:
            if pump is not None:
                pump.stop.set()
                pump.join(30)
            mon.close()
            kp.close()
            for c in chains:
                c.close()
            if not conftest.is_loaded():
                conftest.load()
    say(f"unload: {reps} unloads under traffic, {ended} proxies ended with reason unload")
    # Loaded again, it works; its object count started from zero.
    with Kproxy() as k:
        ch = make_chain(k)
        try:
            assert_pingpong(ch.c1, ch.s2, b"after reload")
            k.destroy(ch.proxy.id)
        finally:
            ch.close()
    assert_clean(0, dmesg)


# --- f. BPF programs attached and detached under traffic -------------------------


class MsgPump(threading.Thread):
    """Sends length-prefixed messages (seq_payload: each says where it
    belongs) until `stop`, then shuts its write side.  Holds at `gate`
    between messages; `lock` is held while one message is being sent."""

    def __init__(self, s: socket.socket, seed: int, stop: threading.Event, gate: threading.Event) -> None:
        super().__init__(daemon=True)
        self.s, self.seed, self.stop, self.gate = s, seed, stop, gate
        self.lock = threading.Lock()
        self.sent = self.bytes = 0
        self.digest = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            rng, h = random.Random(self.seed), hashlib.sha256()
            while not self.stop.is_set():
                if not self.gate.wait(IO_TIMEOUT):
                    raise AssertionError("held at the gate too long")
                data = frame(seq_payload(self.sent, min(64 * KiB, int(2 ** rng.uniform(2, 16)))))
                with self.lock:
                    self.s.sendall(data)
                    self.sent += 1
                h.update(data)
                self.bytes += len(data)
            self.s.shutdown(socket.SHUT_WR)
            self.digest = h.hexdigest()
        except BaseException as e:  # noqa: BLE001 - reported by join_all
            self.error = e


class MsgSink(threading.Thread):
    """Reads messages until EOF; each must be the next in sequence, whole."""

    def __init__(self, s: socket.socket) -> None:
        super().__init__(daemon=True)
        self.s = s
        self.got = 0
        self.digest = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            h, buf = hashlib.sha256(), bytearray()
            while chunk := self.s.recv(1 << 20):
                h.update(chunk)
                buf += chunk
                while len(buf) >= 4:
                    (n,) = struct.unpack_from(">I", buf)
                    if len(buf) < 4 + n:
                        break
                    msg = bytes(buf[4 : 4 + n])
                    del buf[: 4 + n]
                    if msg != seq_payload(self.got, n):
                        seq = struct.unpack(">I", msg[:4])[0] if n >= 4 else None
                        raise AssertionError(f"message {self.got}: {n} bytes with seq {seq}")
                    self.got += 1
            assert not buf, f"EOF inside a message ({len(buf)} bytes)"
            self.digest = h.hexdigest()
        except BaseException as e:  # noqa: BLE001
            self.error = e


@pytest.mark.timeout(long_or(2 * 3600, 600))
def test_bpf_attach_detach_loop_under_traffic(kp, dmesg, say):
    """Length-prefixed messages flow both ways while programs change in a
    loop: a verdict attached, replaced and detached, the parser replaced
    (with and without a verdict), detached (a plain stream again) and
    attached anew.  Every change succeeds; every message arrives once,
    whole and in order; both streams' sha256 match; nothing is dropped.

    A plain stream has no message boundaries, so a parser is attached to
    one only at a quiet point (senders held between messages until all
    has arrived), as a real user would; every other change happens while
    bytes are in flight."""
    rng = make_seed(say, "bpf attach/detach race")
    cycles = long_or(100, 8)
    base = settled_baseline(kp)
    progs = [bpf.load(n) for n in ("lenprefix", "lenprefix", "pass", "drop-prefix")]
    lp1, lp2, ps, never = progs
    never.set_prefix(b"\xffNEVER")  # payloads start with a seq < 2**24: never matches
    ch = make_chain(kp)
    pid = ch.proxy.id
    stop, gate = threading.Event(), threading.Event()
    gate.set()
    fwd = MsgPump(ch.c1, rng.randrange(1 << 32), stop, gate)
    back = MsgPump(ch.s2, rng.randrange(1 << 32), stop, gate)
    fwd_sink, back_sink = MsgSink(ch.s2), MsgSink(ch.c1)
    threads = [fwd, fwd_sink, back, back_sink]

    def failed() -> bool:
        return any(t.error for t in threads)

    def at_boundary(step: Callable[[], None]) -> None:
        gate.clear()
        try:
            with fwd.lock, back.lock:
                wait_for(lambda: (fwd_sink.got == fwd.sent and back_sink.got == back.sent)
                         or failed(), timeout=IO_TIMEOUT, what="the receivers to catch up")
                step()
        finally:
            gate.set()

    steps = [
        ("attach verdict", lambda: kp.attach(pid, "verdict", ps)),
        ("replace verdict", lambda: kp.attach(pid, "verdict", never)),
        ("replace parser under a verdict", lambda: kp.attach(pid, "parser", lp2)),
        ("detach verdict", lambda: kp.detach(pid, "verdict")),
        ("replace parser", lambda: kp.attach(pid, "parser", lp1)),
        ("detach parser", lambda: kp.detach(pid, "parser")),
        ("attach parser at a quiet point", lambda: at_boundary(lambda: kp.attach(pid, "parser", lp1))),
    ]
    try:
        with kp.monitor() as mon:
            kp.attach(pid, "parser", lp1)  # before the first byte: at a boundary
            for t in threads:
                t.start()
            seen = []
            for cycle in range(cycles):
                wait_for(lambda: fwd_sink.got > (seen[-1][0] if seen else 0) and
                         back_sink.got > (seen[-1][1] if seen else 0) or failed(),
                         timeout=IO_TIMEOUT, what="messages flowing both ways")
                seen.append((fwd_sink.got, back_sink.got))
                if failed():
                    break
                for name, step in steps:
                    try:
                        step()
                    except KproxyError as e:
                        raise AssertionError(f"cycle {cycle}, {name}: {e.errno_name}: {e}") from None
                    time.sleep(rng.random() * 0.01)
            stop.set()
            join_all(threads, IO_TIMEOUT)
            assert fwd_sink.got == fwd.sent and fwd_sink.digest == fwd.digest
            assert back_sink.got == back.sent and back_sink.digest == back.digest
            ev = Events(mon).wait_dels({pid})[pid]  # both FINs forwarded: it ends
        assert ev.reason == "closed"
        assert (ev.proxy.a_to_b.bytes, ev.proxy.b_to_a.bytes) == (fwd.bytes, back.bytes)
        assert ev.proxy.a_to_b.drops == 0 and ev.proxy.b_to_a.drops == 0
        say(f"bpf race: {cycles} cycles of {len(steps)} changes, {fwd.sent} + {back.sent} messages, "
            f"{(fwd.bytes + back.bytes) / MiB:.0f} MiB")
    finally:
        stop.set()
        gate.set()
        ch.close()
        for p in progs:
            p.close()
    assert_clean(base, dmesg)
