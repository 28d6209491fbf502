"""In-kernel listeners (issue 21): the module accepts on a listening
socket, connects each connection to a target and joins the two, with no
userspace per connection.

Every test uses real sockets and real traffic: bytes through with their
sha256, what a client sees when its connect fails (a reset), counters
equal to what was done, errno and extack text for bad input, and dmesg
clean.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from identity import become_nobody, enter_userns, run_child
from kpctl import Kproxy, KproxyError
from kpctl.procfs import LISTENERS_PATH, parse_listeners
from util import (  # noqa: F401
    IO_TIMEOUT,
    Receiver,
    Sender,
    closed_fd_number,
    join_all,
    kp,
    live_objects,
    long_or,
    proc_proxies,
    recv_exact,
    wait_event,
    wait_for,
)

LOOP4, LOOP6 = "127.0.0.1", "::1"


# --- helpers ------------------------------------------------------------------


class EchoServer:
    """The target: echoes every byte of each connection back, then closes
    its side once the client's FIN has come and all is sent."""

    def __init__(self, host: str = LOOP4) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.addr = self.sock.getsockname()[:2]
        self.served = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self.addr
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT)
        with conn:
            try:
                while True:
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    conn.sendall(chunk)
                conn.shutdown(socket.SHUT_WR)
                self.served += 1
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(10)


def listening(host: str = LOOP4, backlog: int = 128) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    s.listen(backlog)
    return s


def connect(lsock: socket.socket) -> socket.socket:
    c = socket.socket(lsock.family)
    c.settimeout(IO_TIMEOUT)
    c.connect(lsock.getsockname()[:2])
    return c


def exchange(lsock: socket.socket, size: int, seed: int) -> None:
    """One connection through the listener: `size` random bytes out, the
    same back (sha256 compared), then both ends closed."""
    with connect(lsock) as c:
        tx = Sender(c, size, seed, close_wr=True)
        rx = Receiver(c, size)
        tx.start()
        rx.start()
        join_all([tx, rx], IO_TIMEOUT)
        assert rx.digest == tx.digest, "bytes came back different"
        assert c.recv(1) == b"", "no EOF after the echo"


def assert_reset(c: socket.socket, timeout: float = 30.0) -> None:
    """The client's connection was reset (not closed cleanly)."""
    c.settimeout(timeout)
    with pytest.raises(ConnectionResetError):
        data = c.recv(100)
        # A clean EOF is not what a failed connect must give.
        raise AssertionError(f"got {data!r} instead of a reset")


def accept_from(lsock: socket.socket, client: socket.socket) -> socket.socket:
    """Accept `client`'s connection on `lsock`, skipping (and closing) any
    queued before it (clients of a storm that connected after the
    listener was deleted)."""
    lsock.settimeout(30)
    want = client.getsockname()[:2]
    while True:
        conn, peer = lsock.accept()
        if peer[:2] == want:
            return conn
        conn.close()


def connect_is_reset(lsock: socket.socket, timeout: float = 30.0) -> None:
    """A client of `lsock` is reset: while connecting (the kernel's reset
    can beat connect()'s return) or on its first read."""
    try:
        c = connect(lsock)
    except ConnectionResetError:
        return
    with c:
        assert_reset(c, timeout)


def assert_handed_back(lsock: socket.socket) -> None:
    """The listening socket is its owner's again, and works: a client of
    it is accepted by the owner."""
    with connect(lsock):
        lsock.settimeout(60)
        conn, _ = lsock.accept()
        conn.close()


def dead_port(host: str = LOOP4) -> int:
    """A port nobody listens on."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Blackhole:
    """A target that never answers a SYN: a listening socket whose accept
    queue (backlog 0) is already full, so TCP drops every new SYN."""

    def __init__(self, host: str = LOOP4, make=socket.socket) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = make(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(0)
        self.addr = self.sock.getsockname()[:2]
        self.filler = make(family, socket.SOCK_STREAM)
        self.filler.settimeout(IO_TIMEOUT)
        self.filler.connect(self.addr)

    @property
    def endpoint(self) -> str:
        host, port = self.addr
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        self.filler.close()
        self.sock.close()


def settled(kp: Kproxy, lid: int, **want: int):
    """Wait until the listener's counters are `want`; the listener."""
    last = {}

    def check():
        nonlocal last
        li = kp.get_listener(lid)
        last = {k: getattr(li, k) for k in want}
        return li if last == want else None

    try:
        return wait_for(check, timeout=60, what=f"listener {lid} counters {want}")
    except AssertionError:
        raise AssertionError(f"listener {lid}: counters {last}, expected {want}") from None


@pytest.fixture
def echo():
    srv = EchoServer()
    yield srv
    srv.close()


@pytest.fixture
def clean(kp, dmesg):  # noqa: F811
    """No listener, proxy or kernel object left, and dmesg clean."""
    before = live_objects()
    yield
    # A fresh handle: a test may have reloaded the module.
    if not Path("/sys/module/kproxy").exists():
        subprocess.run(["insmod", os.environ["KPROXY_KO"]], check=True, timeout=120)
    with Kproxy() as fresh:
        for li in fresh.listeners():
            with contextlib.suppress(KproxyError):
                fresh.close_listener(li.id, end_proxies=True)
        for p in fresh.list():
            with contextlib.suppress(KproxyError):
                fresh.destroy(p.id)
    wait_for(lambda: live_objects() <= before, timeout=60, what="kernel objects to be freed")
    assert dmesg.bad() == [], dmesg.bad()


# --- bytes through -------------------------------------------------------------


def test_sequential_and_concurrent_connections_carry_every_byte(kp, echo, clean, say):  # noqa: F811
    lsock = listening()
    mon = kp.monitor(listeners=True)
    try:
        li = kp.listen(lsock, echo.endpoint)
        lsock_addr = lsock.getsockname()
        lsock.close()  # the listener holds its own reference
        assert li.id > 0 and str(li.listen) == f"{lsock_addr[0]}:{lsock_addr[1]}"
        assert str(li.target) == echo.endpoint and li.source is None
        ev = wait_event(mon, lambda e: e.kind == "listener-new")
        assert ev.listener.id == li.id

        sequential = long_or(200, 40)
        t0 = time.monotonic()
        for i in range(sequential):
            with connect_addr(lsock_addr) as c:
                payload = os.urandom(1000 + i)
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                got = recv_all(c)
                assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
        took = time.monotonic() - t0
        t0 = time.monotonic()
        for i in range(sequential):  # the same, straight to the target
            with connect_addr(echo.addr) as c:
                c.sendall(os.urandom(1000 + i))
                c.shutdown(socket.SHUT_WR)
                recv_all(c)
        direct = time.monotonic() - t0
        say(f"listener: {sequential} sequential connections (1 KB echoed each) "
            f"{sequential / took:.1f} conn/s through the listener, "
            f"{sequential / direct:.1f} conn/s direct")

        concurrent = 20
        size = long_or(4 << 20, 256 << 10)
        errors: list[BaseException] = []

        def one(seed: int) -> None:
            try:
                with connect_addr(lsock_addr) as c:
                    tx = Sender(c, size, seed, close_wr=True)
                    rx = Receiver(c, size)
                    tx.start()
                    rx.start()
                    join_all([tx, rx], IO_TIMEOUT)
                    assert rx.digest == tx.digest
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=one, args=(s,)) for s in range(concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(IO_TIMEOUT * 2)
        assert not errors, errors[:3]

        total = sequential + concurrent
        # Every byte each way, in the counters of the ended proxies.
        carried = sum(1000 + i for i in range(sequential)) + concurrent * size
        li = settled(kp, li.id, accepted=total, created=total, failed_refused=0,
                     failed_timeout=0, failed_other=0, refused_limit=0, pending=0,
                     active=0, ended=total, ended_bytes_a_to_b=carried,
                     ended_bytes_b_to_a=carried)
        # /proc says what netlink says.
        with open(LISTENERS_PATH) as f:
            (row,) = [x for x in parse_listeners(f.read()) if x.id == li.id]
        assert (row.accepted, row.created, str(row.target)) == (total, total, echo.endpoint)
        assert (row.ended, row.ended_bytes_a_to_b, row.ended_bytes_b_to_a) == \
            (total, carried, carried)

        # Every proxy the listener made was announced with its id.
        news = 0
        deadline = time.monotonic() + 60
        while news < total and time.monotonic() < deadline:
            e = mon.get(1)
            if e is not None and e.kind == "new":
                assert e.proxy.listener_id == li.id
                news += 1
        assert news == total
        kp.close_listener(li.id)
        ev = wait_event(mon, lambda e: e.kind == "listener-del")
        assert ev.listener.id == li.id and ev.listener.created == total
    finally:
        mon.close()


def connect_addr(addr) -> socket.socket:
    c = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET)
    c.settimeout(IO_TIMEOUT)
    c.connect(addr[:2])
    return c


def recv_all(c: socket.socket) -> bytes:
    buf = bytearray()
    while True:
        chunk = c.recv(65536)
        if not chunk:
            return bytes(buf)
        buf += chunk


def test_a_listeners_proxy_is_an_ordinary_proxy(kp, echo, clean):  # noqa: F811
    lsock = listening()
    li = kp.listen(lsock, echo.endpoint)
    with connect(lsock) as c:
        c.sendall(b"hello")
        assert recv_exact(c, 5) == b"hello"
        (p,) = [p for p in kp.list() if p.listener_id == li.id]
        assert kp.get(p.id).listener_id == li.id
        (row,) = [r for r in proc_proxies() if r.id == p.id]
        assert row.listener_id == li.id
        assert str(p.a.remote) == "{}:{}".format(*c.getsockname()[:2])
        assert str(p.b.remote) == echo.endpoint
        assert kp.get_listener(li.id).active == 1
        kp.destroy(p.id)
        settled(kp, li.id, active=0, created=1)
    lsock.close()
    # A proxy made by proxy-new has no listener.
    assert all(r.listener_id is None for r in proc_proxies() if r.id != p.id)


def test_notify_sends_the_listeners_news_to_its_creator(kp, echo, clean):  # noqa: F811
    """With notify, the births and ends of the listener's proxies come to
    the socket that made it (once: it is not in the monitor group), as
    well as to the monitor group."""
    lsock = listening()
    mon = kp.monitor()
    try:
        with Kproxy() as owner:
            li = owner.listen(lsock, echo.endpoint, notify=True)
            with connect(lsock) as c:
                c.sendall(b"news")
                assert recv_exact(c, 4) == b"news"
            got: list = []
            deadline = time.monotonic() + 60
            while len(got) < 2 and time.monotonic() < deadline:
                got += owner.ended(1, with_new=True)
            assert [e.kind for e in got] == ["new", "del"], got
            assert got[0].proxy.listener_id == li.id and got[1].proxy.id == got[0].proxy.id
            assert got[1].proxy.a_to_b.bytes == 4 and got[1].reason == "closed"
            pid = got[0].proxy.id
            wait_event(mon, lambda e: e.kind == "new" and e.proxy.id == pid, 30)
            wait_event(mon, lambda e: e.kind == "del" and e.proxy.id == pid, 30)
            assert owner.ended(0.5, with_new=True) == []
            owner.close_listener(li.id)
    finally:
        mon.close()
        lsock.close()


def test_ipv6_and_across_families(kp, clean):  # noqa: F811
    echo6 = EchoServer(LOOP6)
    try:
        for host in (LOOP6, LOOP4):
            lsock = listening(host)
            li = kp.listen(lsock, echo6.endpoint)
            assert str(li.target) == echo6.endpoint
            exchange(lsock, 300_000, seed=7)
            settled(kp, li.id, accepted=1, created=1)
            kp.close_listener(li.id)
            lsock.close()
    finally:
        echo6.close()


def test_source_address_is_bound(kp, clean):  # noqa: F811
    seen: list[tuple] = []
    target = listening()

    def serve():
        conn, peer = target.accept()
        seen.append(peer)
        conn.sendall(b"x")
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    lsock = listening()
    li = kp.listen(lsock, "{}:{}".format(*target.getsockname()), source="127.0.0.9:0")
    assert str(li.source) == "127.0.0.9:0"
    with connect(lsock) as c:
        assert c.recv(1) == b"x"
    t.join(IO_TIMEOUT)
    assert seen and seen[0][0] == "127.0.0.9"
    lsock.close()
    target.close()


# --- failed connects -------------------------------------------------------------


def test_dead_target_resets_the_client_and_counts_refused(kp, clean):  # noqa: F811
    lsock = listening()
    li = kp.listen(lsock, f"127.0.0.1:{dead_port()}")
    for _ in range(3):
        connect_is_reset(lsock)
    settled(kp, li.id, accepted=3, created=0, failed_refused=3, pending=0, active=0)
    lsock.close()


def test_blackholed_target_times_out_and_resets_the_client(kp, clean):  # noqa: F811
    hole = Blackhole()
    lsock = listening()
    try:
        li = kp.listen(lsock, hole.endpoint, connect_timeout=0.5)
        assert li.connect_timeout_ms == 500
        t0 = time.monotonic()
        with connect(lsock) as c:
            assert_reset(c)
        took = time.monotonic() - t0
        assert took >= 0.4, f"reset after {took:.2f}s, before the timeout"
        settled(kp, li.id, accepted=1, failed_timeout=1, created=0, pending=0)
    finally:
        lsock.close()
        hole.close()


def test_target_dying_mid_connect_resets_every_waiting_client(kp, clean):  # noqa: F811
    """Connects in flight to a target that goes away: its SYNs were being
    dropped (a full backlog), then it closes, so the next retransmitted
    SYN meets a reset. Each waiting client is reset, each connect counted
    refused, and nothing stays pending."""
    hole = Blackhole()
    lsock = listening()
    clients: list[socket.socket] = []
    try:
        li = kp.listen(lsock, hole.endpoint, connect_timeout=30)
        for _ in range(5):
            clients.append(connect(lsock))
        settled(kp, li.id, accepted=5, pending=5, created=0)
        hole.close()  # the target dies while its SYNs are unanswered
        for c in clients:
            assert_reset(c)
        settled(kp, li.id, accepted=5, failed_refused=5, failed_timeout=0, created=0,
                pending=0, active=0)
    finally:
        for c in clients:
            c.close()
        lsock.close()
        hole.close()


@pytest.fixture
def netns():
    name = f"kpl-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=60)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=60)
    try:
        yield name
    finally:
        if Path(f"/var/run/netns/{name}").exists():
            subprocess.run(["ip", "netns", "del", name], timeout=60)


def test_upstream_is_made_in_the_listeners_netns(kp, netns, clean):  # noqa: F811
    """A listener of another netns connects from there: a target that is
    reachable from here is unreachable there (only lo, no route)."""
    lsock = listening()
    with Kproxy(netns=netns) as kx:
        li = kx.listen(lsock, "10.255.255.1:80")
        assert li.id not in {x.id for x in kp.listeners()}
        connect_is_reset(lsock)
        settled(kx, li.id, accepted=1, failed_unreachable=1, pending=0)
    lsock.close()


def test_max_proxies_resets_beyond_the_limit(kp, echo, clean):  # noqa: F811
    lsock = listening()
    li = kp.listen(lsock, echo.endpoint, max_proxies=2)
    held = [connect(lsock) for _ in range(2)]
    try:
        for c in held:
            c.sendall(b"ping")
            assert recv_exact(c, 4) == b"ping"
        settled(kp, li.id, active=2, pending=0)
        connect_is_reset(lsock)
        settled(kp, li.id, refused_limit=1, created=2)
        held.pop().close()
        settled(kp, li.id, active=1)
        exchange(lsock, 10_000, seed=3)
        settled(kp, li.id, accepted=4, created=3, refused_limit=1)
    finally:
        for c in held:
            c.close()
        lsock.close()


# --- deletion, unload, netns ---------------------------------------------------------


def _storm(addr, stop: threading.Event, counts: dict) -> None:
    while not stop.is_set():
        try:
            with connect_addr(addr) as c:
                c.settimeout(10)
                c.sendall(b"storm")
                c.shutdown(socket.SHUT_WR)
                if recv_all(c) == b"storm":
                    counts["ok"] += 1
        except OSError:
            counts["failed"] += 1


def hang_up_queued(lsock: socket.socket, threads: list[threading.Thread]) -> None:
    """Accept and close the storm's connections left queued on `lsock`
    (its owner's again, and the owner serves nobody) until every thread
    has ended: each would otherwise wait out its 10 s read timeout."""
    lsock.settimeout(0.1)
    deadline = time.monotonic() + 60
    while any(t.is_alive() for t in threads):
        assert time.monotonic() < deadline, "storm threads still running after 60 s"
        try:
            lsock.accept()[0].close()
        except TimeoutError:
            pass


@pytest.mark.parametrize("end_proxies", [False, True])
def test_delete_during_a_connection_storm(kp, echo, clean, end_proxies):  # noqa: F811
    for _ in range(long_or(10, 3)):
        lsock = listening()
        addr = lsock.getsockname()
        li = kp.listen(lsock, echo.endpoint)
        stop = threading.Event()
        counts = {"ok": 0, "failed": 0}
        threads = [threading.Thread(target=_storm, args=(addr, stop, counts), daemon=True)
                   for _ in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: counts["ok"] >= 5, timeout=60, what="connections through")
        kp.close_listener(li.id, end_proxies=end_proxies)
        with pytest.raises(KproxyError) as ei:
            kp.get_listener(li.id)
        assert ei.value.errno == errno.ENOENT
        if end_proxies:
            assert not [p for p in kp.list() if p.listener_id == li.id]
        stop.set()
        hang_up_queued(lsock, threads)
        # The socket is its owner's again: a connection waits to be accepted.
        with connect_addr(addr) as c:
            conn = accept_from(lsock, c)
            conn.sendall(b"owner")
            assert recv_exact(c, 5) == b"owner"
            conn.close()
        lsock.close()
        wait_for(lambda: not [p for p in kp.list() if p.listener_id == li.id], timeout=60,
                 what="the listener's proxies to end")


def test_unload_with_a_listener_and_pending_connects(kp, clean):  # noqa: F811
    hole = Blackhole()
    lsock = listening()
    clients = []
    try:
        li = kp.listen(lsock, hole.endpoint, connect_timeout=600)
        clients = [connect(lsock) for _ in range(3)]
        settled(kp, li.id, pending=3)
        t0 = time.monotonic()
        subprocess.run(["rmmod", "kproxy"], check=True, timeout=120)
        assert time.monotonic() - t0 < 60
        for c in clients:
            assert_reset(c)
        assert_handed_back(lsock)
    finally:
        for c in clients:
            c.close()
        lsock.close()
        hole.close()


def test_what_the_owner_accepts_meanwhile_is_a_plain_socket(kp, echo, clean):  # noqa: F811
    """A co-owner of the fd may accept on it while the listener lives, and
    wins some connections. Those are the owner's ordinary sockets: nothing
    of the listener's rides along in them, so data still reaches them
    after the listener is deleted and after the module is unloaded (were
    the listener hooked into the socket's callbacks, TCP would copy the
    hook into every connection it clones from it)."""
    lsock = listening()
    li = kp.listen(lsock, echo.endpoint)
    won: dict[tuple, socket.socket] = {}
    stop = threading.Event()

    def owner() -> None:
        # Short waits: it also tries accept() often without being woken.
        lsock.settimeout(0.01)
        while not stop.is_set():
            try:
                conn, peer = lsock.accept()
            except TimeoutError:
                continue
            won[peer[:2]] = conn

    thread = threading.Thread(target=owner, daemon=True)
    thread.start()
    clients = []
    try:
        deadline = time.monotonic() + 120
        while len(won) < 3 and len(clients) < 300 and time.monotonic() < deadline:
            clients.append(connect(lsock))
        stop.set()
        thread.join(10)
        mine = [(c, won[c.getsockname()[:2]]) for c in clients if c.getsockname()[:2] in won]
        assert mine, f"the owner won none of {len(clients)} connections"
        kp.close_listener(li.id, end_proxies=True)
        for step in (b"after the listener", b"after the unload"):
            if step == b"after the unload":
                subprocess.run(["rmmod", "kproxy"], check=True, timeout=120)
            for c, conn in mine:
                c.sendall(step)
                conn.settimeout(IO_TIMEOUT)
                assert recv_exact(conn, len(step)) == step
                conn.sendall(step)
                assert recv_exact(c, len(step)) == step
    finally:
        stop.set()
        for sock in [*clients, *won.values(), lsock]:
            sock.close()


def test_netns_deletion_ends_its_listener(kp, netns, clean):  # noqa: F811
    """The listener belongs to the netns of the request; its upstream
    sockets are made there. Deleting the netns ends the listener and its
    connects in flight, and hands the listening socket back."""
    # A target that drops every SYN without a socket pinning the netns: a
    # veth without ARP sends to its own MAC, which the peer drops.
    for cmd in (["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                ["link", "set", "v0", "up", "arp", "off"], ["link", "set", "v1", "up"],
                ["addr", "add", "10.9.9.1/24", "dev", "v0"]):
        subprocess.run(["ip", "-n", netns, *cmd], check=True, timeout=60)
    lsock = listening()
    clients = []
    try:
        with Kproxy(netns=netns) as kx:
            li = kx.listen(lsock, "10.9.9.2:80", connect_timeout=600)
            clients = [connect(lsock) for _ in range(2)]
            settled(kx, li.id, pending=2)
            assert {x.id for x in kx.listeners()} == {li.id}
        subprocess.run(["ip", "netns", "del", netns], check=True, timeout=60)
        for c in clients:
            assert_reset(c, timeout=120)
        assert_handed_back(lsock)
    finally:
        for c in clients:
            c.close()
        lsock.close()


# --- permissions and bad input -----------------------------------------------------------


def _userns_root_listens(ch) -> dict:
    become_nobody()
    enter_userns(netns=True)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    with Kproxy() as k:
        try:
            k.listen(lsock, "127.0.0.1:9")
        except KproxyError as e:
            return {"errno": e.errno, "message": e.message}
    return {"errno": 0}


def test_unprivileged_user_namespace_is_refused(kp, clean):  # noqa: F811
    got = run_child(_userns_root_listens)
    assert got["errno"] == errno.EPERM, got
    assert "kproxy needs CAP_NET_ADMIN in the initial user namespace" in got["message"], got


def _refused(kp, want_errno: int, text: str, **kw) -> None:  # noqa: F811
    with pytest.raises(KproxyError) as ei:
        kp.request("listener-new", kw)
    assert ei.value.errno == want_errno, ei.value
    assert text in ei.value.message, ei.value.message


def _target(host: str = "127.0.0.1", port: int = 9, family: int = socket.AF_INET) -> dict:
    return {"family": family, "addr": socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                                       host), "port": port}


def test_bad_input_is_refused_with_a_reason(kp, clean):  # noqa: F811
    r, w = os.pipe()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unlistened = socket.socket()
    lsock = listening()
    try:
        _refused(kp, errno.ENOTSOCK, "fd is not a socket", fd=r, target=_target())
        _refused(kp, errno.EPROTONOSUPPORT, "fd is not a TCP socket", fd=udp.fileno(), target=_target())
        _refused(kp, errno.EINVAL, "fd is not a listening socket", fd=unlistened.fileno(),
                 target=_target())
        _refused(kp, errno.EAFNOSUPPORT, "family must be AF_INET (2) or AF_INET6 (10)",
                 fd=lsock.fileno(), target=_target(family=socket.AF_UNIX))
        _refused(kp, errno.EINVAL, "an AF_INET addr is 4 bytes", fd=lsock.fileno(),
                 target=_target("::1", family=socket.AF_INET))
        _refused(kp, errno.EINVAL, "the target needs a port", fd=lsock.fileno(),
                 target=_target(port=0))
        _refused(kp, errno.EINVAL, "source and target must be of the same family",
                 fd=lsock.fileno(), target=_target(), source=_target("::1", 0, socket.AF_INET6))
        _refused(kp, errno.EINVAL, "a verdict needs a parser", fd=lsock.fileno(),
                 target=_target(), **{"verdict-fd": r})
        _refused(kp, errno.EBADF, "not a BPF program", fd=lsock.fileno(),
                 target=_target(), **{"parser-fd": closed_fd_number()})
        # A socket that already has a listener.
        li = kp.listen(lsock, "127.0.0.1:9")
        _refused(kp, errno.EBUSY, "fd is already the socket of a listener", fd=lsock.fileno(),
                 target=_target())
        # Nothing was left hooked by the refusals: the socket still works.
        kp.close_listener(li.id)
        with connect(lsock) as c:
            lsock.settimeout(30)
            conn, _ = lsock.accept()
            conn.sendall(b"ok")
            assert recv_exact(c, 2) == b"ok"
            conn.close()
        with pytest.raises(KproxyError) as ei:
            kp.close_listener(li.id)
        assert ei.value.errno == errno.ENOENT
        assert "no such listener" in ei.value.message
    finally:
        for fd in (r, w):
            os.close(fd)
        for s in (udp, unlistened, lsock):
            s.close()


# --- kpctl serve's text mode: counts from the listener, no news per connection --------


def serve_text(listen_port: int, target: str, *args: str) -> subprocess.Popen:
    """`kpctl serve` with text output (a pipe: no status line, a summary at
    the end), listening once the kernel listener exists."""
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), NO_COLOR="1")
    proc = subprocess.Popen([sys.executable, "-m", "kpctl.cli", "serve",
                             f"127.0.0.1:{listen_port}", target, *args],
                            cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def up():
        assert proc.poll() is None, proc.communicate()
        with Kproxy() as k:
            return any(li.listen.port == listen_port for li in k.listeners())

    wait_for(up, timeout=120, what="serve's kernel listener")
    return proc


@pytest.mark.parametrize("mode", ["--drain", "--kill"])
def test_serve_text_mode_counts_from_the_listener(kp, echo, clean, mode):  # noqa: F811
    """Text output asks for no event per connection: the listener notifies
    nobody, and serve's summary (proxied, ended, bytes each way) comes from
    the listener's counters. On stop the listening socket is shut (a new
    client is refused) while a live proxy goes on; --drain waits for its
    end, --kill ends it, and either way its bytes are in the summary."""
    port = dead_port()
    proc = serve_text(port, echo.endpoint, mode)
    try:
        (li,) = [x for x in kp.listeners() if x.listen.port == port]
        sent = 0
        for i in range(30):
            with connect_addr(("127.0.0.1", port)) as c:
                payload = os.urandom(500 + i)
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                assert hashlib.sha256(recv_all(c)).digest() == hashlib.sha256(payload).digest()
                sent += len(payload)
        held = connect_addr(("127.0.0.1", port))
        held.sendall(b"held")
        assert recv_exact(held, 4) == b"held"
        sent += 4
        proc.send_signal(signal.SIGTERM)
        if mode == "--drain":
            # Shut to newcomers, still serving the held connection.
            wait_for(lambda: not listens(port), timeout=60, what="the listening socket shut")
            assert not connects(port)
            held.sendall(b"more")
            assert recv_exact(held, 4) == b"more"
            sent += 4
            assert proc.poll() is None, "serve left while a proxy was running"
            assert [x.id for x in kp.listeners()] == [li.id], "deleted while counting"
            held.shutdown(socket.SHUT_WR)
            assert recv_all(held) == b""
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        held.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "31 accepted, 31 proxied, 0 failed, 0 refused" in out, out
    assert "bytes of the 31 ended: client→target" in out, out
    assert out.count(f"({sent})") == 2, out  # each way: the echo
    assert kp.listeners() == [] and not [p for p in kp.list() if p.listener_id == li.id]


def listens(port: int) -> bool:
    """Whether a socket listens on the port (/proc/net/tcp, state 0A):
    looking, unlike connecting, makes no connection to count."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return any(r[1].endswith(f":{port:04X}") and r[3] == "0A" for r in rows)


def connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False
