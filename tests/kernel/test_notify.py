"""proxy-new's `notify` flag: the kernel unicasts a proxy's proxy-del-ntf
to the socket that created it, so that a creator (kpctl serve) learns the
end of its own proxies without listening to everyone's on the monitor
group.

Raw netlink only (rawnl): these tests read the bytes the kernel sends to
one socket, and must see every message that arrives there, the ones no
library would expect included.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import pytest
from rawnl import (
    A,
    GENLHDR,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    SOL_NETLINK,
    SPEC,
    Conn,
    Genl,
    Msg,
    decode_error,
    decode_set,
    family_ids,
    nla,
    nlmsg,
    parse_datagram,
    parse_nlas,
    u32,
)
from test_races import settled_baseline, wait_objects
from util import IO_TIMEOUT, kp, proc_ids, recv_exact, tcp_pair, wait_for  # noqa: F401

NETLINK_ADD_MEMBERSHIP = 1
GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 0x10, 3
CTRL_ATTR_FAMILY_NAME, CTRL_ATTR_MCAST_GROUPS = 2, 7
CTRL_ATTR_MCAST_GRP_NAME, CTRL_ATTR_MCAST_GRP_ID = 1, 2
DEL_NTF = SPEC.cmd("proxy-del-ntf")
REASON = SPEC.enums["reason"]
# How long a socket that should receive nothing is watched. Ends are
# notified by the ending thread before it frees the proxy, so once the
# proxy is gone from /proc a message would already be queued: this is slack.
QUIET = 1.0


def monitor_group(conn: Conn) -> int:
    """The id of kproxy's monitor group, from nlctrl."""
    body = GENLHDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + nla(CTRL_ATTR_FAMILY_NAME, b"kproxy\0")
    conn.send(nlmsg(GENL_ID_CTRL, NLM_F_REQUEST, 1, body))
    m = conn.next("nlctrl getfamily")
    assert m.type == GENL_ID_CTRL, f"nlctrl getfamily: message type {m.type}"
    attrs = {t: p for t, _f, p in parse_nlas(m.body[GENLHDR.size:], "nlctrl")}
    for _t, _f, grp in parse_nlas(attrs[CTRL_ATTR_MCAST_GROUPS], "mcast groups"):
        g = {t: p for t, _f, p in parse_nlas(grp, "mcast group")}
        if g[CTRL_ATTR_MCAST_GRP_NAME].rstrip(b"\0") == b"monitor":
            return struct.unpack("=I", g[CTRL_ATTR_MCAST_GRP_ID])[0]
    raise AssertionError("kproxy has no monitor group")


@dataclass
class Ntf:
    cmd: int
    pid: int
    seq: int
    attrs: dict


class Creator:
    """A netlink socket that creates proxies and reads what comes back,
    keeping every message that is not an answer to its requests."""

    def __init__(self, fid: int) -> None:
        self.g = Genl(fid)
        self.fid = fid
        self.ntfs: list[Ntf] = []
        self.answers: deque[Msg] = deque()

    @property
    def sock(self) -> socket.socket:
        return self.g.conn.sock

    def new(self, fd_a: int, fd_b: int, notify: bool) -> int:
        """proxy-new; the id of the new proxy."""
        self.g.seq += 1
        seq = self.g.seq
        body = GENLHDR.pack(SPEC.cmd("proxy-new"), SPEC.version, 0) + nla(A["fd-a"], u32(fd_a)) + nla(A["fd-b"], u32(fd_b))
        if notify:
            body += nla(A["notify"], b"")
        self.g.conn.send(nlmsg(self.fid, NLM_F_REQUEST | NLM_F_ACK, seq, body))
        pid = None
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            while not self.answers:
                assert self._pump(deadline - time.monotonic()), "proxy-new: no answer"
            m = self.answers.popleft()
            assert m.seq == seq, f"proxy-new: answer for seq {m.seq}, expected {seq}"
            if m.type == NLMSG_ERROR:
                e = decode_error(m, "proxy-new")
                assert e.errno == 0, f"proxy-new: errno {e.errno} ({e.msg})"
                assert pid is not None, "proxy-new: acked without a reply"
                return pid
            pid = decode_set(m.body[GENLHDR.size:], SPEC.root_set, "proxy-new reply")["id"]

    def _pump(self, timeout: float) -> bool:
        """Read one datagram within `timeout` (False: none came): its
        notifications (seq 0) go to self.ntfs, answers to self.answers."""
        if timeout <= 0 or not select.select([self.sock], [], [], timeout)[0]:
            return False
        for m in parse_datagram(self.sock.recv(1 << 20)):
            if m.seq == 0 and m.type == self.fid:
                cmd = GENLHDR.unpack_from(m.body)[0]
                attrs = decode_set(m.body[GENLHDR.size:], SPEC.root_set, "notification")
                self.ntfs.append(Ntf(cmd, m.pid, m.seq, attrs))
            else:
                assert m.pid == self.g.conn.portid, f"answer for port {m.pid}"
                self.answers.append(m)
        return True

    def wait_ntfs(self, n: int, timeout: float = IO_TIMEOUT) -> list[Ntf]:
        deadline = time.monotonic() + timeout
        while len(self.ntfs) < n:
            assert self._pump(deadline - time.monotonic()), \
                f"{len(self.ntfs)} notifications within {timeout}s, expected {n}"
        return self.ntfs

    def quiet(self, seconds: float = QUIET) -> list[Ntf]:
        """Whatever arrives within `seconds` (the test expects nothing new)."""
        deadline = time.monotonic() + seconds
        while self._pump(deadline - time.monotonic()):
            pass
        assert not self.answers, "an answer nobody asked for"
        return self.ntfs

    def close(self) -> None:
        self.g.close()


@pytest.fixture
def fid() -> int:
    conn = Conn()
    try:
        return family_ids(conn)["kproxy"]
    finally:
        conn.close()


@dataclass
class Pair:
    """c1 <-> s1 ==proxy== c2 <-> s2, the proxy's A is s1, B is c2."""

    c1: socket.socket
    s1: socket.socket
    c2: socket.socket
    s2: socket.socket

    def close(self) -> None:
        for s in (self.c1, self.s1, self.c2, self.s2):
            with contextlib.suppress(OSError):
                s.close()


@contextlib.contextmanager
def pairs(n: int = 1, listener: socket.socket | None = None) -> Iterator[list[Pair]]:
    made: list[Pair] = []
    try:
        for _ in range(n):
            made.append(Pair(*tcp_pair(listener=listener), *tcp_pair(listener=listener)))
        yield made
    finally:
        for p in made:
            p.close()


def proxied(creator: Creator, p: Pair, notify: bool) -> int:
    pid = creator.new(p.s1.fileno(), p.c2.fileno(), notify)
    # The proxy holds its own references; ours would only keep the sockets
    # from ending with the proxy.
    p.s1.close()
    p.c2.close()
    return pid


def delete(fid: int, pid: int) -> None:
    g = Genl(fid)
    try:
        a = g.request("proxy-del", {"id": pid})
        assert a.errno == 0, f"proxy-del {pid}: errno {a.errno} ({a.msg})"
    finally:
        g.close()


def test_creator_with_notify_reads_its_proxys_end_with_final_counters(fid, dmesg):
    c = Creator(fid)
    try:
        with pairs() as (p,):
            pid = proxied(c, p, notify=True)
            up, down = b"u" * 70_001, b"d" * 30_011
            p.c1.sendall(up)
            assert recv_exact(p.s2, len(up)) == up
            p.s2.sendall(down)
            assert recv_exact(p.c1, len(down)) == down
            # Both FINs: the proxy ends by itself, reason "closed".
            p.c1.shutdown(socket.SHUT_WR)
            p.s2.shutdown(socket.SHUT_WR)
            (n,) = c.wait_ntfs(1)
            assert (n.cmd, n.pid, n.seq) == (DEL_NTF, 0, 0)
            assert n.attrs["id"] == pid
            assert REASON.label(n.attrs["reason"]) == "closed"
            assert n.attrs["a-to-b"]["bytes"] == len(up)
            assert n.attrs["b-to-a"]["bytes"] == len(down)
            assert n.attrs["a-to-b"].get("shut") and n.attrs["b-to-a"].get("shut")
            assert c.quiet() == [n], "more than one message for one end"
    finally:
        c.close()
    assert dmesg.bad() == []


def test_delete_is_notified_with_reason_user(fid, dmesg):
    c = Creator(fid)
    try:
        with pairs() as (p,):
            pid = proxied(c, p, notify=True)
            p.c1.sendall(b"x" * 5)
            assert recv_exact(p.s2, 5) == b"x" * 5
            delete(fid, pid)
            (n,) = c.wait_ntfs(1)
            assert n.attrs["id"] == pid
            assert REASON.label(n.attrs["reason"]) == "user"
            assert (n.attrs["a-to-b"]["bytes"], n.attrs["b-to-a"]["bytes"]) == (5, 0)
    finally:
        c.close()
    assert dmesg.bad() == []


def join_monitor(fid: int) -> Conn:
    m = Conn()
    grp = monitor_group(m)
    m.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, grp)
    return m


def monitor_dels(m: Conn, pid: int, timeout: float) -> int:
    """How many proxy-del-ntf of `pid` the monitor socket reads: waits up to
    `timeout` for the first, then QUIET for any other."""
    seen, deadline = 0, time.monotonic() + timeout
    while True:
        if seen:
            deadline = min(deadline, time.monotonic() + QUIET)
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([m.sock], [], [], left)[0]:
            break
        for msg in parse_datagram(m.sock.recv(1 << 20)):
            cmd = GENLHDR.unpack_from(msg.body)[0]
            attrs = {t: pl for t, _f, pl in parse_nlas(msg.body[GENLHDR.size:], "monitor")}
            if cmd == DEL_NTF and struct.unpack("=I", attrs[A["id"]])[0] == pid:
                seen += 1
    return seen


def test_creator_without_notify_receives_nothing(fid, dmesg):
    c = Creator(fid)
    mon = join_monitor(fid)
    try:
        with pairs() as (p,):
            pid = proxied(c, p, notify=False)
            delete(fid, pid)
            # The end was notified: the group saw it, the creator did not.
            assert monitor_dels(mon, pid, 10) == 1
            assert c.quiet() == []
    finally:
        mon.close()
        c.close()
    assert dmesg.bad() == []


def test_creator_on_the_monitor_group_reads_its_end_once(fid, dmesg):
    c = Creator(fid)
    c.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, monitor_group(c.g.conn))
    other = join_monitor(fid)
    try:
        with pairs() as (p,):
            pid = proxied(c, p, notify=True)
            delete(fid, pid)
            assert monitor_dels(other, pid, 10) == 1
            c.quiet()
            dels = [n for n in c.ntfs if n.cmd == DEL_NTF]
            assert [n.attrs["id"] for n in dels] == [pid], "the creator read its end twice, or never"
    finally:
        other.close()
        c.close()
    assert dmesg.bad() == []


def test_a_creator_reads_only_its_own_proxies_ends(fid, dmesg):
    one, two = Creator(fid), Creator(fid)
    try:
        with pairs(2) as (p1, p2):
            id1 = proxied(one, p1, notify=True)
            id2 = proxied(two, p2, notify=True)
            delete(fid, id1)
            assert [n.attrs["id"] for n in one.wait_ntfs(1)] == [id1]
            assert two.quiet() == []
            p2.c1.close()  # FIN then, with s2's, "closed"
            p2.s2.close()
            assert [n.attrs["id"] for n in two.wait_ntfs(1)] == [id2]
            assert [n.attrs["id"] for n in one.quiet()] == [id1]
    finally:
        one.close()
        two.close()
    assert dmesg.bad() == []


def test_creator_closed_before_the_end_is_harmless(kp, fid, dmesg):  # noqa: F811
    base = settled_baseline(kp)
    c = Creator(fid)
    mon = join_monitor(fid)
    try:
        with pairs() as (p,):
            pid = proxied(c, p, notify=True)
            c.close()
            p.c1.sendall(b"after")
            assert recv_exact(p.s2, 5) == b"after"
            # Ended by FINs, not by proxy-del: a new netlink socket of this
            # process could be given the closed creator's portid (autobind
            # tries the pid first), and would then rightly receive the end.
            p.c1.close()
            p.s2.close()
            assert monitor_dels(mon, pid, 30) == 1
    finally:
        mon.close()
    wait_for(lambda: pid not in proc_ids(), timeout=30, what="the proxy to end")
    wait_objects(base)
    assert dmesg.bad() == []


def netlink_rmem(portid: int) -> int:
    """Rmem of a netlink socket, from /proc/net/netlink."""
    with open("/proc/net/netlink") as f:
        for line in f.read().splitlines()[1:]:
            cols = line.split()
            if int(cols[1]) == 16 and int(cols[2]) == portid:  # NETLINK_GENERIC
                return int(cols[4])
    raise AssertionError(f"netlink port {portid} not in /proc/net/netlink")


def test_creator_that_never_reads_loses_ends_not_memory(kp, fid, dmesg, say):  # noqa: F811
    """1,000 proxies end while their creator reads nothing: its receive
    buffer fills, the rest are dropped (ENOBUFS), nothing else is held."""
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * n + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    base = settled_baseline(kp)
    rcvbuf = 16384
    c = Creator(fid)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    rcvbuf = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(128)
    t0 = time.monotonic()
    try:
        with pairs(n, listener=ls) as made:
            ids = [proxied(c, p, notify=True) for p in made]
            assert c.ntfs == [], "an end before any proxy was told to end"
            for p in made:  # FIN both ways: every proxy ends by itself
                p.c1.close()
                p.s2.close()
            wait_for(lambda: not (set(ids) & proc_ids()), timeout=120, what="1000 proxies to end")
        wait_objects(base, timeout=60)
        rmem = netlink_rmem(c.g.conn.portid)
        # The kernel drops, it does not queue, past the receive buffer
        # (one message may cross it, as for any netlink socket).
        assert 0 < rmem <= rcvbuf + 8192, f"rmem {rmem} with SO_RCVBUF {rcvbuf}"
        got, overrun = 0, False
        c.sock.setblocking(False)
        while True:
            try:
                data = c.sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as e:
                assert e.errno == 105, f"recv: {e}"  # ENOBUFS: the loss is told
                overrun = True
                continue
            for m in parse_datagram(data):
                assert GENLHDR.unpack_from(m.body)[0] == DEL_NTF
                got += 1
        assert overrun, "ends were dropped without ENOBUFS"
        assert 0 < got < n
        say(f"notify, creator not reading: {n} proxies ended in {time.monotonic() - t0:.1f}s, "
            f"{got} ends queued in rmem {rmem} (SO_RCVBUF {rcvbuf}), the rest dropped with ENOBUFS")
    finally:
        c.close()
        ls.close()
    wait_objects(base)
    assert dmesg.bad() == []
