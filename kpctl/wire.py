"""Netlink messages of the kproxy family, to and from bytes, with struct only.

Everything kpctl sends or reads goes through here: request framing, the
attribute encoder (every type the schema uses), the general attribute
decoder, the generic-netlink controller's family lookup and the one parser
of extended acks (which names the offending attribute by schema name).

Attributes the schema does not name, and attributes too short for their
type, are skipped rather than trusted: a newer module may add attributes.
"""

from __future__ import annotations

import errno as _errno
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from . import spec as spec_mod

# <linux/netlink.h> and <linux/genetlink.h>: the kernel's stable ABI.
NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_EXT_ACK = 11
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLA_F_NESTED = 0x8000
NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2
NLMSGERR_ATTR_MISS_TYPE = 5
GENL_ID_CTRL = 16
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_VERSION = 3
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2

NLMSGHDR = struct.Struct("=IHHII")
GENLMSGHDR = struct.Struct("=BBH")
NLAHDR = struct.Struct("=HH")
HEADERS = NLMSGHDR.size + GENLMSGHDR.size  # where a message's attributes start
_ERRNO = struct.Struct("=i")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_NLA_HEADER_FROM = NLAHDR.unpack_from
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

INT_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "s8": "b", "s16": "h", "s32": "i", "s64": "q"}

# How a table entry decodes its payload.
INT, NEST, FLAG, BYTES, STRING = range(5)


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


# --- decoding ----------------------------------------------------------


Table = dict[int, tuple[str, int, Any]]


class Decoder:
    """Attribute tables of one spec, compiled once."""

    def __init__(self, spec: spec_mod.Spec) -> None:
        self.spec = spec
        self.tables: dict[str, Table] = {name: {} for name in spec.attr_sets}
        for set_name, attrs in spec.attr_sets.items():
            table = self.tables[set_name]
            for a in attrs.values():
                if a.type in INT_CODES:
                    order = ">" if a.big_endian else "="
                    table[a.value] = (a.name, INT, struct.Struct(order + INT_CODES[a.type]))
                elif a.type == "nest":
                    table[a.value] = (a.name, NEST, self.tables[a.nested])
                elif a.type == "flag":
                    table[a.value] = (a.name, FLAG, None)
                elif a.type == "string":
                    table[a.value] = (a.name, STRING, None)
                elif a.type == "binary":
                    table[a.value] = (a.name, BYTES, None)
        self.root = self.tables[spec.root_set]

    def table_of(self, cmd: int) -> Table:
        """The table of the attribute set a message of `cmd` carries."""
        return self.tables[self.spec.set_of(cmd)]

    def attrs(self, buf: bytes | bytearray | memoryview, off: int, end: int,
              table: Table | None = None) -> dict[str, Any]:
        """The attributes in buf[off:end] of the root set (or `table`)."""
        table = self.root if table is None else table
        out: dict[str, Any] = {}
        header = _NLA_HEADER_FROM  # locals: this loop runs ~30 times a proxy
        lookup = table.get
        while off + 4 <= end:
            length, kind = header(buf, off)
            nxt = off + length
            if length < 4 or nxt > end:
                break
            entry = lookup(kind & NLA_TYPE_MASK)
            if entry is not None:
                name, how, arg = entry
                if how == INT:
                    if length - 4 >= arg.size:
                        out[name] = arg.unpack_from(buf, off + 4)[0]
                elif how == NEST:
                    out[name] = self.attrs(buf, off + 4, nxt, arg)
                elif how == FLAG:
                    out[name] = True
                elif how == STRING:
                    out[name] = _string(buf, off + 4, nxt)
                else:
                    out[name] = bytes(buf[off + 4:nxt])
            off = (nxt + 3) & ~3
        return out

    def messages(self, buf: bytes | bytearray | memoryview, family_id: int,
                 end: int | None = None) -> Iterator[Message]:
        """Every message in one datagram (buf[:end]); attributes decoded for ours."""
        off, end = 0, len(buf) if end is None else end
        while off + NLMSGHDR.size <= end:
            length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(buf, off)
            if length < NLMSGHDR.size or off + length > end:
                break
            body = off + NLMSGHDR.size
            if mtype == family_id and length >= HEADERS:
                cmd = GENLMSGHDR.unpack_from(buf, body)[0]
                yield Message(mtype, flags, seq, cmd,
                              self.attrs(buf, off + HEADERS, off + length, self.table_of(cmd)))
            elif mtype == NLMSG_ERROR:
                yield error_message(buf, off, length, flags, seq)
            else:
                yield Message(mtype, flags, seq)
            off += (length + 3) & ~3


def _string(buf: bytes | bytearray | memoryview, off: int, end: int) -> str:
    return bytes(buf[off:end]).split(b"\0", 1)[0].decode(errors="replace")


def error_message(buf: bytes | bytearray | memoryview, off: int, length: int,
                  flags: int, seq: int) -> Message:
    """An NLMSG_ERROR (an ack when its errno is 0) with its extended ack."""
    body = off + NLMSGHDR.size
    code = -_ERRNO.unpack_from(buf, body)[0]
    ext = _extack(buf, body, off + length, flags)
    return Message(NLMSG_ERROR, flags, seq, error=code,
                   error_msg=ext.get(NLMSGERR_ATTR_MSG, ""),
                   error_offset=ext.get(NLMSGERR_ATTR_OFFS),
                   error_missing=ext.get(NLMSGERR_ATTR_MISS_TYPE))


def done_errno(buf: bytes | bytearray | memoryview, off: int, length: int) -> int:
    """The (positive) errno an NLMSG_DONE carries; 0 for a complete dump."""
    return -_ERRNO.unpack_from(buf, off + NLMSGHDR.size)[0] if length >= NLMSGHDR.size + 4 else 0


def _extack(buf: bytes | bytearray | memoryview, body: int, end: int, flags: int) -> dict[int, Any]:
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
        kind &= NLA_TYPE_MASK
        if kind == NLMSGERR_ATTR_MSG:
            out[kind] = _string(buf, off + 4, off + length)
        elif kind in (NLMSGERR_ATTR_OFFS, NLMSGERR_ATTR_MISS_TYPE) and length >= 8:
            out[kind] = _U32.unpack_from(buf, off + 4)[0]
        off += (length + 3) & ~3
    return out


# --- what an error points at ---------------------------------------------


def attr_at(spec: spec_mod.Spec, request: bytes, offset: int, set_name: str) -> str | None:
    """Name the attribute of `request` at byte `offset` (NLMSGERR_ATTR_OFFS).

    The kernel points at the offending attribute by its offset in our own
    request; walking the attribute headers turns that into a name such as
    "sock-a.family" or "attribute 99".
    """
    names = {a.value: a for a in spec.attr_sets.get(set_name, {}).values()}
    pos = HEADERS
    prefix = ""
    end = len(request)
    while pos + NLAHDR.size <= end:
        length, typ = NLAHDR.unpack_from(request, pos)
        if length < NLAHDR.size:
            return None
        typ &= NLA_TYPE_MASK
        attr = names.get(typ)
        label = prefix + (attr.name if attr else f"attribute {typ}")
        if pos <= offset < pos + length:
            inner = pos + NLAHDR.size
            if attr is not None and attr.nested and offset >= inner:
                # Descend into the nest and keep walking its attributes.
                names = {a.value: a for a in spec.attr_sets[attr.nested].values()}
                prefix = label + "."
                end = pos + length
                pos = inner
                continue
            return label
        pos += (length + 3) & ~3
    return None


def error_text(spec: spec_mod.Spec, m: Message, request: bytes) -> str:
    """The words of a refusal: the kernel's extended-ack message (or
    strerror), followed by the attribute it points at when the message
    does not already name it, e.g. "Missing attribute (missing attribute fd-b)"."""
    base = m.error_msg or os.strerror(m.error)
    detail = None
    # The request's own command says which set its attributes are of.
    set_name = spec.root_set
    if len(request) >= HEADERS:
        set_name = spec.set_of(GENLMSGHDR.unpack_from(request, NLMSGHDR.size)[0])
    if m.error_offset is not None:
        name = attr_at(spec, request, m.error_offset, set_name)
        if name:
            detail = name if name.startswith("attribute") else f"attribute {name}"
    elif m.error_missing is not None:
        names = {a.value: a.name for a in spec.attr_sets[set_name].values()}
        detail = f"missing attribute {names.get(m.error_missing, m.error_missing)}"
    if detail and detail.split(" ", 1)[-1] not in base:
        return f"{base} ({detail})"
    return base


# --- encoding ------------------------------------------------------------


class EncodeError(ValueError):
    """A value that cannot be sent: `errno` is ERANGE for a number its type
    cannot hold, EINVAL for anything else."""

    def __init__(self, message: str, errno: int = _errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = errno


def request(family_id: int, cmd: int, version: int, flags: int, seq: int,
            attrs: bytes = b"") -> bytes:
    """A request message; `attrs` from encode_attrs() (or nla())."""
    size = HEADERS + len(attrs)
    return NLMSGHDR.pack(size, family_id, flags, seq, 0) + GENLMSGHDR.pack(cmd, version, 0) + attrs


def nla(kind: int, payload: bytes = b"", nested: bool = False) -> bytes:
    """One attribute, padded to 4 bytes (tests build malformed ones with it)."""
    head = NLAHDR.pack(NLAHDR.size + len(payload), kind | (NLA_F_NESTED if nested else 0))
    return head + payload + b"\0" * (-len(payload) % 4)


def encode_attrs(spec: spec_mod.Spec, values: Mapping[str, Any], set_name: str | None = None) -> bytes:
    """Attributes by schema name: ints, flags (True: present, False:
    left out), strings, bytes (binary), nests as dicts, lists for
    multi-attr attributes.  Raises EncodeError
    for a name the set does not have or a value its type cannot hold."""
    set_name = set_name or spec.root_set
    out = []
    for name, value in values.items():
        try:
            a = spec.attr(set_name, name)
        except KeyError:
            raise EncodeError(f"{name}: not an attribute of {set_name}") from None
        out.append(_encode_one(spec, a, value))
    return b"".join(out)


def _encode_one(spec: spec_mod.Spec, a: spec_mod.Attr, value: Any) -> bytes:
    if a.multi:
        if not isinstance(value, (list, tuple)):
            raise EncodeError(f"{a.name}: a multi-attr is given as a list of values")
        return b"".join(_encode_single(spec, a, v) for v in value)
    return _encode_single(spec, a, value)


def _encode_single(spec: spec_mod.Spec, a: spec_mod.Attr, value: Any) -> bytes:
    if a.type in INT_CODES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EncodeError(f"{a.name}: {a.type} needs an int, not {type(value).__name__}")
        try:
            payload = struct.pack((">" if a.big_endian else "=") + INT_CODES[a.type], value)
        except struct.error:
            raise EncodeError(f"{a.name}: {value} does not fit in {a.type}", _errno.ERANGE) from None
        return nla(a.value, payload)
    if a.type == "flag":
        if not isinstance(value, bool):
            raise EncodeError(f"{a.name}: a flag is True or False, not {value!r}")
        return nla(a.value) if value else b""
    if a.type == "string":
        if not isinstance(value, str):
            raise EncodeError(f"{a.name}: a string attribute needs a str")
        return nla(a.value, value.encode() + b"\0")
    if a.type == "binary":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise EncodeError(f"{a.name}: a binary attribute needs bytes")
        return nla(a.value, bytes(value))
    if a.type == "nest":
        if not isinstance(value, Mapping):
            raise EncodeError(f"{a.name}: a nest is given as a dict of its attributes")
        return nla(a.value, encode_attrs(spec, value, a.nested), nested=True)
    raise EncodeError(f"{a.name}: {a.type} attributes are never sent")


# --- the generic-netlink controller ---------------------------------------


@dataclass(frozen=True)
class FamilyInfo:
    """What the controller says about a family (CTRL_CMD_GETFAMILY)."""

    id: int
    version: int
    mcast_groups: dict[str, int] = field(default_factory=dict)


def getfamily_request(name: str, seq: int) -> bytes:
    return request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, NLM_F_REQUEST | NLM_F_ACK, seq,
                   nla(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"))


def parse_family(buf: bytes | bytearray | memoryview, off: int, end: int) -> FamilyInfo:
    """The controller's reply message at buf[off:end] (its nlmsghdr first)."""
    fid = version = 0
    groups: dict[str, int] = {}
    for kind, start, stop in _walk(buf, off + HEADERS, end):
        if kind == CTRL_ATTR_FAMILY_ID and stop - start >= 2:
            fid = _U16.unpack_from(buf, start)[0]
        elif kind == CTRL_ATTR_VERSION and stop - start >= 4:
            version = _U32.unpack_from(buf, start)[0]
        elif kind == CTRL_ATTR_MCAST_GROUPS:
            for _index, gstart, gstop in _walk(buf, start, stop):
                name, gid = None, None
                for gkind, s, e in _walk(buf, gstart, gstop):
                    if gkind == CTRL_ATTR_MCAST_GRP_NAME:
                        name = _string(buf, s, e)
                    elif gkind == CTRL_ATTR_MCAST_GRP_ID and e - s >= 4:
                        gid = _U32.unpack_from(buf, s)[0]
                if name is not None and gid is not None:
                    groups[name] = gid
    return FamilyInfo(fid, version, groups)


def _walk(buf: bytes | bytearray | memoryview, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in buf[off:end]."""
    while off + 4 <= end:
        length, kind = NLAHDR.unpack_from(buf, off)
        if length < 4 or off + length > end:
            return
        yield kind & NLA_TYPE_MASK, off + 4, off + length
        off += (length + 3) & ~3


_decoders: dict[int, tuple[spec_mod.Spec, Decoder]] = {}


def decoder(spec: spec_mod.Spec) -> Decoder:
    """The Decoder of `spec`, compiled on first use (a spec is immutable)."""
    hit = _decoders.get(id(spec))
    if hit is None or hit[0] is not spec:
        hit = _decoders[id(spec)] = (spec, Decoder(spec))
    return hit[1]
