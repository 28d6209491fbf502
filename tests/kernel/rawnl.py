"""Raw generic netlink for the kernel tests that must build or read
messages byte by byte (the fuzzer), or talk to the kproxy family from a
forked child where pyroute2 has no business (the permission tests).

No pyroute2 here: struct only.  Numbers of the netlink core are its stable
ABI (uapi/linux/netlink.h, genetlink.h); the family's come from the schema.
Every message the kernel sends must be well formed: the parsers assert it.
"""

from __future__ import annotations

import select
import socket
import struct
from collections import deque
from dataclasses import dataclass

from kpctl import spec

SPEC = spec.default()
# A kernel that does not answer within this is as good as one that never does.
REPLY_TIMEOUT = 30.0

# --- netlink numbers (uapi/linux/netlink.h, genetlink.h: stable ABI) ------

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLMSG_ERROR, NLMSG_DONE, NLMSG_MIN_TYPE = 2, 3, 0x10
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 3, 1, 2
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_ECHO = 0x1, 0x2, 0x4, 0x8
NLM_F_DUMP_INTR, NLM_F_ROOT, NLM_F_MATCH, NLM_F_DUMP = 0x10, 0x100, 0x200, 0x300
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLA_F_NESTED, NLA_F_NET_BYTEORDER, NLA_TYPE_MASK = 0x8000, 0x4000, 0x3FFF
NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS, NLMSGERR_ATTR_MISS_TYPE = 1, 2, 5
NLHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
GENLHDR = struct.Struct("=BBH")  # cmd, version, reserved
NLAHDR = struct.Struct("=HH")  # len, type
INT_MAX = (1 << 31) - 1
U32_MAX = (1 << 32) - 1


def align4(n: int) -> int:
    return (n + 3) & ~3


def u32(v: int) -> bytes:
    return struct.pack("=I", v & U32_MAX)


def nla(type_: int, payload: bytes, length: int | None = None) -> bytes:
    """One attribute; `length` overrides nla_len (a lie about the payload)."""
    n = 4 + len(payload) if length is None else length
    return NLAHDR.pack(n & 0xFFFF, type_ & 0xFFFF) + payload + bytes(align4(len(payload)) - len(payload))


def nlmsg(type_: int, flags: int, seq: int, body: bytes, length: int | None = None, pid: int = 0) -> bytes:
    n = NLHDR.size + len(body) if length is None else length
    return NLHDR.pack(n & U32_MAX, type_, flags & 0xFFFF, seq, pid) + body


# --- replies --------------------------------------------------------------


@dataclass
class Msg:
    type: int
    flags: int
    seq: int
    pid: int
    body: bytes


def parse_datagram(data: bytes) -> list[Msg]:
    """Messages the kernel sent: they must be well formed, every one."""
    out, off = [], 0
    while off < len(data):
        assert len(data) - off >= NLHDR.size, f"reply datagram ends in a partial header: {data.hex()}"
        n, typ, flags, seq, pid = NLHDR.unpack_from(data, off)
        assert NLHDR.size <= n <= len(data) - off, f"reply nlmsg_len {n} out of bounds: {data.hex()}"
        out.append(Msg(typ, flags, seq, pid, data[off + NLHDR.size: off + n]))
        off += align4(n)
    return out


def parse_nlas(data: bytes, what: str) -> list[tuple[int, int, bytes]]:
    """(type without flags, flags, payload) of well-formed attributes, all of them."""
    out, off = [], 0
    while off < len(data):
        assert len(data) - off >= NLAHDR.size, f"{what}: trailing {len(data) - off} bytes"
        n, t = NLAHDR.unpack_from(data, off)
        assert NLAHDR.size <= n <= len(data) - off, f"{what}: attribute {t} has nla_len {n}"
        out.append((t & NLA_TYPE_MASK, t & ~NLA_TYPE_MASK & 0xFFFF, data[off + NLAHDR.size: off + n]))
        off += align4(n)
    return out


_SIZES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "flag": 0}
_FMT = {"u8": "=B", "u16": "=H", "u32": "=I", "u64": "=Q"}


def decode_set(data: bytes, set_name: str, what: str) -> dict:
    """A reply's attributes by name, checked against the schema: every type
    known, every size right, every nest flagged NLA_F_NESTED."""
    by_value = {a.value: a for a in SPEC.attr_sets[set_name].values()}
    out: dict = {}
    for t, flags, payload in parse_nlas(data, what):
        a = by_value.get(t)
        assert a is not None, f"{what}: attribute type {t} is not in the schema's {set_name} set"
        where = f"{what}.{a.name}"
        if a.type == "pad":
            continue
        assert a.name not in out, f"{where} appears twice"
        if a.type == "nest":
            assert flags & NLA_F_NESTED, f"{where}: nest without NLA_F_NESTED"
            out[a.name] = decode_set(payload, a.nested, where)
        elif a.type == "binary":
            out[a.name] = payload
        else:
            assert len(payload) == _SIZES[a.type], f"{where}: {len(payload)} bytes for a {a.type}"
            out[a.name] = True if a.type == "flag" else struct.unpack(_FMT[a.type], payload)[0]
    return out


@dataclass
class ErrorMsg:
    errno: int
    msg: str | None
    miss: int | None
    offs: int | None


def decode_error(m: Msg, what: str) -> ErrorMsg:
    assert len(m.body) >= 4 + NLHDR.size, f"{what}: NLMSG_ERROR of {len(m.body)} bytes"
    (err,) = struct.unpack_from("=i", m.body)
    assert err <= 0, f"{what}: positive error {err}"
    # NETLINK_CAP_ACK: only the request's header is echoed back.
    assert m.flags & NLM_F_CAPPED, f"{what}: ack not capped despite NETLINK_CAP_ACK"
    echo = NLHDR.unpack_from(m.body, 4)
    assert echo[3] == m.seq, f"{what}: echoed seq {echo[3]} != {m.seq}"
    msg = miss = offs = None
    if m.flags & NLM_F_ACK_TLVS:
        for t, _f, payload in parse_nlas(m.body[4 + NLHDR.size:], f"{what} extack"):
            if t == NLMSGERR_ATTR_MSG:
                msg = payload.rstrip(b"\0").decode()
            elif t == NLMSGERR_ATTR_MISS_TYPE:
                (miss,) = struct.unpack("=I", payload)
            elif t == NLMSGERR_ATTR_OFFS:
                (offs,) = struct.unpack("=I", payload)
    return ErrorMsg(-err, msg, miss, offs)


class Conn:
    """A raw NETLINK_GENERIC socket with extended acks, capped echoes."""

    def __init__(self, sock: socket.socket | None = None,
                 notifications: list[Msg] | None = None) -> None:
        # notifications: where next() puts what the kernel sends on its own
        # (seq 0, port 0: e.g. a proxy's end unicast to its creator) instead
        # of returning it as an answer.
        self.notifications = notifications
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        if self.sock.getsockname()[0] == 0:
            self.sock.bind((0, 0))
        self.sock.settimeout(REPLY_TIMEOUT)
        self.portid = self.sock.getsockname()[0]
        self.pending: deque[Msg] = deque()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def next(self, what: str) -> Msg:
        while True:
            while not self.pending:
                try:
                    data = self.sock.recv(1 << 20)
                except TimeoutError:
                    raise AssertionError(f"{what}: no answer within {REPLY_TIMEOUT}s") from None
                self.pending.extend(parse_datagram(data))
            m = self.pending.popleft()
            if self.notifications is not None and m.seq == 0 and m.pid == 0:
                self.notifications.append(m)
                continue
            assert m.pid == self.portid, f"{what}: answer for port {m.pid}, we are {self.portid}"
            return m

    def drain_notifications(self) -> None:
        """Move the notifications waiting in the socket to `notifications`,
        without blocking (select first: CPython waits on a socket with a
        timeout before any recv, MSG_DONTWAIT or not)."""
        assert self.notifications is not None
        while select.select([self.sock], [], [], 0)[0]:
            for m in parse_datagram(self.sock.recv(1 << 20)):
                if m.seq == 0 and m.pid == 0:
                    self.notifications.append(m)
                else:
                    self.pending.append(m)

    def close(self) -> None:
        self.sock.close()


def family_ids(conn: Conn) -> dict[str, int]:
    """Every registered generic-netlink family, from nlctrl's dump."""
    conn.send(nlmsg(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_DUMP, 1, GENLHDR.pack(CTRL_CMD_GETFAMILY, 1, 0)))
    out = {}
    while True:
        m = conn.next("nlctrl dump")
        if m.type == NLMSG_DONE:
            return out
        assert m.type == GENL_ID_CTRL, f"nlctrl dump: message type {m.type}"
        attrs = {t: p for t, _f, p in parse_nlas(m.body[GENLHDR.size:], "nlctrl")}
        out[attrs[CTRL_ATTR_FAMILY_NAME].rstrip(b"\0").decode()] = struct.unpack("=H", attrs[CTRL_ATTR_FAMILY_ID])[0]


# --- requests of the family, for tests that need no malformation ----------

A = {name: a.value for name, a in SPEC.attr_sets[SPEC.root_set].items()}


@dataclass
class Answer:
    errno: int  # 0: done
    msg: str | None  # the extack message
    replies: list[dict]  # decoded proxies (a do's reply, or a dump's)

    @property
    def ids(self) -> list[int]:
        return [r["id"] for r in self.replies]


class Genl:
    """kproxy requests over a raw socket (a given one, e.g. opened before
    the caller changed namespace or identity, or a new one)."""

    def __init__(self, family_id: int, sock: socket.socket | None = None) -> None:
        self.fid = family_id
        self.conn = Conn(sock)
        self.seq = 0

    def request(self, op: str, attrs: dict[str, int] | None = None, dump: bool = False) -> Answer:
        self.seq += 1
        body = GENLHDR.pack(SPEC.cmd(op), SPEC.version, 0) + b"".join(
            nla(A[n], u32(v)) for n, v in (attrs or {}).items())
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        self.conn.send(nlmsg(self.fid, flags, self.seq, body))
        replies = []
        while True:
            m = self.conn.next(op)
            assert m.seq == self.seq, f"{op}: answer for seq {m.seq}, expected {self.seq}"
            if m.type == NLMSG_ERROR:
                e = decode_error(m, op)
                return Answer(e.errno, e.msg, replies)
            if m.type == NLMSG_DONE:
                return Answer(0, None, replies)
            assert m.type == self.fid, f"{op}: message type {m.type}"
            replies.append(decode_set(m.body[GENLHDR.size:], SPEC.root_set, op))

    def close(self) -> None:
        self.conn.close()
