"""Messages of a known shape decoded with two struct calls.

The kernel fills every proxy message in the same order (kmod/netlink.c,
kproxy_fill); the shape changes only with the address families and the
optional attributes (program ids, the shut flag).  A Layout is learnt from
the first message of a shape by walking it as the general decoder does,
and filed under the length of the message's attributes.  A later message
of that length is checked by unpacking all its attribute headers at once
and comparing them with the learnt ones: equal headers mean the general
decoder would visit the same offsets with the same types, so the values
unpacked at those offsets are exactly what it would return.  Any other
message (a new shape, an extra or reordered attribute, a short one) takes
the general decoder, and teaches a new layout when it can.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from . import wire

Path = tuple[str, ...]
T = TypeVar("T")

# Shapes kept per decoder: a handful occur (families x optional attributes);
# the cap keeps a hostile or buggy peer from growing the cache forever.
MAX_LAYOUTS = 64


@dataclass(frozen=True)
class Layout:
    """Where everything is in one shape of message (offsets from the first
    attribute)."""

    check: struct.Struct  # every attribute header (length, type); payloads skipped
    expect: tuple[int, ...]  # what `check` unpacks to for this shape
    values: struct.Struct  # every decoded value; headers skipped
    paths: tuple[Path, ...]  # the attribute path of each value of `values`
    flags: frozenset[Path]  # the flag attributes present


def _struct(fields: list[tuple[int, str, int]]) -> struct.Struct:
    """A struct reading `code` at each offset (sorted), skipping the rest."""
    fmt, pos = ["="], 0
    for off, code, size in sorted(fields):
        if off > pos:
            fmt.append(f"{off - pos}x")
        fmt.append(code)
        pos = off + size
    return struct.Struct("".join(fmt))


def learn(dec: wire.Decoder, buf: bytes | bytearray | memoryview, off: int, end: int) -> Layout | None:
    """The layout of the attributes in buf[off:end], or None for a shape
    kept to the general decoder (a short value, a string, a big-endian
    integer, a malformed header)."""
    headers: list[tuple[int, str, int]] = []
    expect: list[int] = []
    values: list[tuple[int, str, int]] = []
    paths: dict[int, Path] = {}
    flags: set[Path] = set()

    def walk(pos: int, stop: int, table: wire.Table, prefix: Path) -> bool:
        while pos + 4 <= stop:
            length, kind = wire.NLAHDR.unpack_from(buf, pos)
            nxt = pos + length
            if length < 4 or nxt > stop:
                return False
            headers.append((pos - off, "HH", 4))
            expect.extend((length, kind))
            entry = table.get(kind & wire.NLA_TYPE_MASK)
            if entry is not None:
                name, how, arg = entry
                path = prefix + (name,)
                if how == wire.INT:
                    if length - 4 != arg.size or arg.format[0] == ">":
                        return False
                    values.append((pos + 4 - off, arg.format[-1], arg.size))
                    paths[pos + 4 - off] = path
                elif how == wire.BYTES:
                    values.append((pos + 4 - off, f"{length - 4}s", length - 4))
                    paths[pos + 4 - off] = path
                elif how == wire.FLAG:
                    flags.add(path)
                elif how == wire.NEST:
                    if not walk(pos + 4, nxt, arg, path):
                        return False
                else:
                    return False
            pos = (nxt + 3) & ~3
        return pos >= stop

    if not walk(off, end, dec.root, ()):
        return None
    ordered = tuple(paths[o] for o, _, _ in sorted(values))
    if len(set(ordered)) != len(ordered):
        return None  # a repeated attribute: the general decoder keeps the last
    return Layout(_struct(headers), tuple(expect), _struct(values), ordered, frozenset(flags))


class Layouts(Generic[T]):
    """The learnt layouts of one decoder, each with the function that makes
    a T from its values (`compile`); `general` makes a T from the general
    decoder's dict when no layout fits."""

    def __init__(self, dec: wire.Decoder, compile: Callable[[Layout], Callable[[tuple], T]],
                 general: Callable[[dict], T]) -> None:
        self._dec = dec
        self._compile = compile
        self._general = general
        self._by_length: dict[int, list[tuple[struct.Struct, tuple[int, ...], struct.Struct,
                                              Callable[[tuple], T]]]] = {}
        self._count = 0

    def decode(self, buf: bytes | bytearray | memoryview, off: int, end: int) -> T:
        """The T of the attributes in buf[off:end]."""
        for check, expect, values, make in self._by_length.get(end - off, ()):
            if check.unpack_from(buf, off) == expect:
                return make(values.unpack_from(buf, off))
        if self._count < MAX_LAYOUTS:
            lay = learn(self._dec, buf, off, end)
            if lay is not None:
                make = self._compile(lay)
                self._by_length.setdefault(end - off, []).append(
                    (lay.check, lay.expect, lay.values, make))
                self._count += 1
                return make(lay.values.unpack_from(buf, off))
        return self._general(self._dec.attrs(buf, off, end))
