"""Decoding kproxy's replies and notifications straight from their bytes.

pyroute2 frames and sends every request and turns errors into exceptions;
but its generic attribute parser costs about 0.5 ms per proxy message on a
fast CPU, which makes a dump of 10,000 proxies take seconds. The messages
the library reads in bulk (dumps, notifications) are decoded here instead,
with one table per attribute set built from the schema: a few microseconds
per message.

Attributes the schema does not name, and attributes too short for their
type, are skipped rather than trusted: a newer module may add attributes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Iterator

from . import spec as spec_mod

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2
NLMSGERR_ATTR_MISS_TYPE = 5
NLM_F_CAPPED = 0x100

NLMSGHDR = struct.Struct("=IHHII")
GENLMSGHDR = struct.Struct("=BBH")
NLAHDR = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")
_NLA_HEADER_FROM = NLAHDR.unpack_from
_NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

_INTS = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "s8": "b", "s16": "h", "s32": "i", "s64": "q"}

# How a table entry decodes its payload.
_INT, _NEST, _FLAG, _BYTES, _STRING = range(5)


@dataclass(frozen=True)
class Message:
    """One netlink message: its header fields and, for ours, the decoded
    attributes (by schema name, nests as dicts)."""

    type: int
    flags: int
    seq: int
    cmd: int = 0
    attrs: dict[str, Any] | None = None
    error: int = 0  # NLMSG_ERROR: the (positive) errno, 0 for an ack
    error_msg: str = ""  # NLMSG_ERROR: the extended ack's message
    error_offset: int | None = None  # ...the offending attribute's offset in the request
    error_missing: int | None = None  # ...the type of a missing attribute


class Decoder:
    """Attribute tables of one spec, compiled once."""

    def __init__(self, spec: spec_mod.Spec) -> None:
        self._tables: dict[str, dict[int, tuple[str, int, Any]]] = {}
        for set_name in spec.attr_sets:
            self._tables[set_name] = {}
        for set_name, attrs in spec.attr_sets.items():
            table = self._tables[set_name]
            for a in attrs.values():
                if a.type in _INTS:
                    table[a.value] = (a.name, _INT, struct.Struct("=" + _INTS[a.type]))
                elif a.type == "nest" and a.nested in self._tables:
                    table[a.value] = (a.name, _NEST, self._tables[a.nested])
                elif a.type == "flag":
                    table[a.value] = (a.name, _FLAG, None)
                elif a.type == "string":
                    table[a.value] = (a.name, _STRING, None)
                elif a.type == "binary":
                    table[a.value] = (a.name, _BYTES, None)
        self._root = self._tables[spec.root_set]

    def attrs(self, buf: bytes | memoryview, off: int, end: int, table=None) -> dict[str, Any]:
        """The attributes in buf[off:end] of the root set (or `table`)."""
        table = self._root if table is None else table
        out: dict[str, Any] = {}
        header = _NLA_HEADER_FROM  # locals: this loop runs ~30 times a proxy
        lookup = table.get
        while off + 4 <= end:
            length, kind = header(buf, off)
            nxt = off + length
            if length < 4 or nxt > end:
                break
            entry = lookup(kind & _NLA_TYPE_MASK)
            if entry is not None:
                name, how, arg = entry
                if how == _INT:
                    if length - 4 >= arg.size:
                        out[name] = arg.unpack_from(buf, off + 4)[0]
                elif how == _NEST:
                    out[name] = self.attrs(buf, off + 4, nxt, arg)
                elif how == _FLAG:
                    out[name] = True
                elif how == _STRING:
                    out[name] = bytes(buf[off + 4:nxt]).split(b"\0", 1)[0].decode(errors="replace")
                else:
                    out[name] = bytes(buf[off + 4:nxt])
            off = (nxt + 3) & ~3
        return out

    def messages(self, buf: bytes | memoryview, family_id: int) -> Iterator[Message]:
        """Every message in one datagram; attributes decoded for ours."""
        off, end = 0, len(buf)
        while off + NLMSGHDR.size <= end:
            length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(buf, off)
            if length < NLMSGHDR.size or off + length > end:
                break
            body = off + NLMSGHDR.size
            if mtype == family_id and length >= NLMSGHDR.size + GENLMSGHDR.size:
                cmd = GENLMSGHDR.unpack_from(buf, body)[0]
                yield Message(mtype, flags, seq, cmd,
                              self.attrs(buf, body + GENLMSGHDR.size, off + length))
            elif mtype == NLMSG_ERROR:
                code = -_ERRNO.unpack_from(buf, body)[0]
                ext = _extack(buf, body, off + length, flags)
                yield Message(mtype, flags, seq, error=code,
                              error_msg=ext.get(NLMSGERR_ATTR_MSG, ""),
                              error_offset=ext.get(NLMSGERR_ATTR_OFFS),
                              error_missing=ext.get(NLMSGERR_ATTR_MISS_TYPE))
            else:
                yield Message(mtype, flags, seq)
            off += (length + 3) & ~3


def _extack(buf: bytes | memoryview, body: int, end: int, flags: int) -> dict[int, Any]:
    """The extended ack of an error: its message, offset and missing type."""
    out: dict[int, Any] = {}
    if not flags & NLM_F_ACK_TLVS:
        return out
    # struct nlmsgerr: the errno, then the request's header, and its payload
    # too unless NLM_F_CAPPED says it was left out.
    req_len = NLMSGHDR.unpack_from(buf, body + 4)[0]
    off = body + 4 + (NLMSGHDR.size if flags & NLM_F_CAPPED else (req_len + 3) & ~3)
    while off + 4 <= end:
        length, kind = NLAHDR.unpack_from(buf, off)
        if length < 4 or off + length > end:
            break
        kind &= _NLA_TYPE_MASK
        if kind == NLMSGERR_ATTR_MSG:
            out[kind] = bytes(buf[off + 4:off + length]).split(b"\0", 1)[0].decode(errors="replace")
        elif kind in (NLMSGERR_ATTR_OFFS, NLMSGERR_ATTR_MISS_TYPE) and length >= 8:
            out[kind] = struct.unpack_from("=I", buf, off + 4)[0]
        off += (length + 3) & ~3
    return out


def request(family_id: int, cmd: int, version: int, flags: int, seq: int,
            attrs: bytes = b"") -> bytes:
    """A request message; `attrs` from encode_attrs()."""
    size = NLMSGHDR.size + GENLMSGHDR.size + len(attrs)
    return NLMSGHDR.pack(size, family_id, flags, seq, 0) + GENLMSGHDR.pack(cmd, version, 0) + attrs


def encode_attrs(spec: spec_mod.Spec, values: dict[str, int]) -> bytes:
    """Integer attributes of the root set, by schema name (what the do
    operations take). Raises ValueError for a value its type cannot hold."""
    out = []
    for name, value in values.items():
        a = spec.attr(spec.root_set, name)
        fmt = _INTS.get(a.type)
        if fmt is None:
            raise ValueError(f"{name}: {a.type} attributes are not encoded here")
        try:
            payload = struct.pack("=" + fmt, value)
        except struct.error:
            raise ValueError(f"{name}: {value} does not fit in {a.type}") from None
        nla = NLAHDR.pack(4 + len(payload), a.value) + payload
        out.append(nla + b"\0" * (-len(nla) % 4))
    return b"".join(out)


_decoders: dict[int, tuple[spec_mod.Spec, Decoder]] = {}


def decoder(spec: spec_mod.Spec) -> Decoder:
    """The Decoder of `spec`, compiled on first use (a spec is immutable)."""
    hit = _decoders.get(id(spec))
    if hit is None or hit[0] is not spec:
        hit = _decoders[id(spec)] = (spec, Decoder(spec))
    return hit[1]
