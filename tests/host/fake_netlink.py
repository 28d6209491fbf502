"""A kproxy family in a Python object: what a Kproxy's sockets talk to in
host tests (no module, no root).  Messages are laid out as kmod/netlink.c
fills them (kproxy_fill), so the library's list path meets the bytes the
kernel sends."""

from __future__ import annotations

import errno
import socket
import struct
from collections import deque
from typing import Any

from kpctl import spec as spec_mod
from kpctl import wire


SPEC = spec_mod.default()
FAMILY_ID = 0x1C
MONITOR_GROUP = 5
DUMP_SKB = 32 << 10  # netlink_dump's largest datagram
_SOCK_FILL = ("family", "local-addr", "local-port", "remote-addr", "remote-port", "tcp-state")


def proxy_attrs(pid: int, *, v6: bool = False, parser: int = 0, verdict: int = 0,
                shut: bool = False, reason: int | None = None) -> dict[str, Any]:
    """A proxy's attributes in kproxy_fill's order (u64s unpadded, as on x86)."""
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    addr = socket.inet_pton(fam, "::1" if v6 else "127.0.0.1")

    def sock(lport: int, rport: int) -> dict[str, Any]:
        return dict(zip(_SOCK_FILL, (fam, addr, lport, addr, rport, 1)))

    def direction(n: int) -> dict[str, Any]:
        d: dict[str, Any] = {"bytes": n * 1000, "skbs": n, "msgs": n, "drops": 0, "queued": 0}
        if parser:
            d["parser-id"] = parser
        if verdict:
            d["verdict-id"] = verdict
        if shut:
            d["shut"] = True
        return d

    attrs = {"id": pid, "state": 0, "create-time": 1_700_000_000_000_000_000 + pid,
             "sock-a": sock(40000, 10000 + pid % 50000), "sock-b": sock(20000 + pid % 40000, 40001),
             "a-to-b": direction(pid), "b-to-a": direction(pid + 1)}
    if reason is not None:
        attrs["reason"] = reason
    return attrs


def message(cmd: str, attrs: dict[str, Any] | bytes, seq: int, flags: int = 0) -> bytes:
    body = attrs if isinstance(attrs, bytes) else wire.encode_attrs(
        SPEC, attrs, SPEC.set_of(SPEC.cmd(cmd)))
    return wire.request(FAMILY_ID, SPEC.cmd(cmd), SPEC.version, flags, seq, body)


def ack(req: bytes, seq: int, error: int = 0, ext: bytes = b"") -> bytes:
    """NLMSG_ERROR echoing the request (as without NETLINK_CAP_ACK)."""
    payload = struct.pack("=i", -error) + req + b"\0" * (-len(req) % 4) + ext
    flags = wire.NLM_F_ACK_TLVS if ext else 0
    return wire.NLMSGHDR.pack(16 + len(payload), wire.NLMSG_ERROR, flags, seq, 0) + payload


def datagrams(messages: list[bytes], done_seq: int) -> list[bytes]:
    """Messages packed into dump datagrams of at most DUMP_SKB, then DONE."""
    out, cur = [], b""
    for m in messages:
        if len(cur) + len(m) > DUMP_SKB:
            out.append(cur)
            cur = b""
        cur += m
    done = wire.NLMSGHDR.pack(20, wire.NLMSG_DONE, wire.NLM_F_MULTI, done_seq, 0) + b"\0" * 4
    out.append(cur + done)
    return out


class FakeKernel:
    """The family's side: proxies by id, and the answers to requests."""

    def __init__(self, proxies: list[dict[str, Any]] | None = None, *, loaded: bool = True) -> None:
        self.proxies = {p["id"]: p for p in proxies or []}
        self.loaded = loaded
        self.sockets: list[FakeSocket] = []
        self.prepared: dict[int, list[bytes]] = {}  # dump datagrams by seq, built beforehand
        self.refused_fds: set[int] = set()  # proxy-new refuses these fds (ENOTCONN)

    def socket(self) -> "FakeSocket":
        s = FakeSocket(self)
        self.sockets.append(s)
        return s

    def dump(self, seq: int) -> list[bytes]:
        """The datagrams of a proxy-get dump of sequence number `seq`."""
        msgs = [message("proxy-get", p, seq, wire.NLM_F_MULTI) for p in self.proxies.values()]
        return datagrams(msgs, seq)

    def answer(self, sock: "FakeSocket", req: bytes) -> None:
        _len, mtype, flags, seq, _pid = wire.NLMSGHDR.unpack_from(req)
        if mtype == wire.GENL_ID_CTRL:
            if not self.loaded:
                sock.queue(ack(req, seq, errno.ENOENT))
                return
            grp = wire.nla(1, wire.nla(wire.CTRL_ATTR_MCAST_GRP_NAME, b"monitor\0")
                           + wire.nla(wire.CTRL_ATTR_MCAST_GRP_ID, struct.pack("=I", MONITOR_GROUP)),
                           nested=True)
            body = (wire.nla(wire.CTRL_ATTR_FAMILY_ID, struct.pack("=H", FAMILY_ID))
                    + wire.nla(wire.CTRL_ATTR_VERSION, struct.pack("=I", 1))
                    + wire.nla(wire.CTRL_ATTR_MCAST_GROUPS, grp, nested=True))
            sock.queue(wire.request(wire.GENL_ID_CTRL, 1, 2, 0, seq, body) + ack(req, seq))
            return
        cmd = SPEC.command_names[req[16]]
        attrs = wire.decoder(SPEC).attrs(req, wire.HEADERS, len(req))
        if flags & wire.NLM_F_DUMP == wire.NLM_F_DUMP:
            for d in self.prepared.pop(seq, None) or self.dump(seq):
                sock.queue(d)
            return
        pid = attrs.get("id")
        if cmd == "proxy-new":
            if "fd-b" not in attrs:
                miss = wire.nla(wire.NLMSGERR_ATTR_MSG, b"Missing attribute\0") + wire.nla(
                    wire.NLMSGERR_ATTR_MISS_TYPE, struct.pack("=I", SPEC.attr("proxy", "fd-b").value))
                sock.queue(ack(req, seq, errno.EINVAL, miss))
                return
            bad = next((n for n in ("fd-a", "fd-b") if attrs[n] in self.refused_fds), None)
            if bad is not None:
                # Where the kernel points: the offending attribute's header.
                at = next(a - 4 for k, a, _e in wire._walk(req, wire.HEADERS, len(req))
                          if k == SPEC.attr("proxy", bad).value)
                offs = wire.nla(wire.NLMSGERR_ATTR_MSG, b"not a connected TCP socket\0") \
                    + wire.nla(wire.NLMSGERR_ATTR_OFFS, struct.pack("=I", at))
                sock.queue(ack(req, seq, errno.ENOTCONN, offs))
                return
            pid = max(self.proxies, default=0) + 1
            self.proxies[pid] = proxy_attrs(pid)
            if attrs.get("notify"):
                sock.notify_ids.add(pid)
            # No ack unless asked for (NLM_F_ACK): only a refusal is always answered.
            sock.queue(message("proxy-new", self.proxies[pid], seq)
                       + (ack(req, seq) if flags & wire.NLM_F_ACK else b""))
        elif pid not in self.proxies:
            offs = wire.nla(wire.NLMSGERR_ATTR_MSG, b"no such proxy\0") + wire.nla(
                wire.NLMSGERR_ATTR_OFFS, struct.pack("=I", wire.HEADERS))
            sock.queue(ack(req, seq, errno.ENOENT, offs))
        elif cmd == "proxy-get":
            sock.queue(message("proxy-get", self.proxies[pid], seq) + ack(req, seq))
        elif cmd == "proxy-del":
            self.end(pid, SPEC.enums["reason"].value("user"), before=(sock, ack(req, seq)))

    def end(self, pid: int, reason: int, before: tuple["FakeSocket", bytes] | None = None) -> None:
        """A proxy ends: its unicast end goes to the socket that asked for it."""
        attrs = dict(self.proxies.pop(pid), reason=reason)
        ntf = message("proxy-del-ntf", attrs, 0)
        for s in self.sockets:
            if pid in s.notify_ids:
                s.notify_ids.discard(pid)
                # The kernel sends the notification before the ack of the
                # proxy-del that caused it.
                if before is not None and before[0] is s:
                    s.queue(ntf + before[1])
                    before = None
                else:
                    s.queue(ntf)
        if before is not None:
            before[0].queue(before[1])


class FakeSocket:
    """The parts of a netlink socket a Kproxy uses."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.inbox: deque[bytes] = deque()
        self.notify_ids: set[int] = set()
        self.closed = False
        self.sent = 0  # send() calls
        self.dups: list[FakeSocket] = []  # handles made by dup()
        self.dup_of: FakeSocket | None = None
        self.timeout: float | None = None
        self._r, self._w = socket.socketpair()  # readable while the inbox is not empty

    def queue(self, data: bytes) -> None:
        self.inbox.append(data)
        self._w.send(b"x")

    def send(self, data: bytes) -> int:
        # Every message of the datagram, in order (netlink_rcv_skb).
        data = bytes(data)
        off = 0
        while off + wire.NLMSGHDR.size <= len(data):
            length = wire.NLMSGHDR.unpack_from(data, off)[0]
            self.kernel.answer(self, data[off:off + length])
            off += (length + 3) & ~3
        self.sent += 1
        return len(data)

    def recv_into(self, buf: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        if not self.inbox:
            if self.timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "no data")  # a non-blocking handle
            if self.timeout:
                # CPython waits for readability before any recv on a socket
                # with a timeout, MSG_DONTWAIT or not: a real one would sit
                # here for the whole timeout.
                raise TimeoutError(errno.ETIMEDOUT, f"waited {self.timeout} s on an empty socket")
            if flags & socket.MSG_DONTWAIT:
                raise BlockingIOError(errno.EAGAIN, "no data")
            raise TimeoutError(errno.ETIMEDOUT, "the fake kernel has nothing to say")
        data = self.inbox.popleft()
        self._r.recv(1)
        n = min(len(data), len(buf))
        buf[:n] = data[:n]
        return len(data) if flags & socket.MSG_TRUNC else n

    def fileno(self) -> int:
        return self._r.fileno()

    def dup(self) -> "FakeSocket":
        """The same socket (inbox) through another handle, as socket.dup()."""
        twin = FakeSocket.__new__(FakeSocket)
        twin.__dict__.update(self.__dict__)
        twin.timeout = None
        twin.dup_of = self
        twin.dups = []
        self.dups.append(twin)
        return twin

    def setblocking(self, flag: bool) -> None:
        self.timeout = None if flag else 0.0

    def setsockopt(self, *args: Any) -> None:
        pass

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def close(self) -> None:
        if self.dup_of is not None:  # a dup's close leaves the socket open
            self.closed = True
            return
        if not self.closed:
            self.closed = True
            self._r.close()
            self._w.close()

    def __enter__(self) -> "FakeSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
