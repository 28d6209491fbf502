"""pyroute2 message classes of the kproxy family, built from the spec.

kpctl itself does not use pyroute2 (kpctl.wire does its netlink); this is
for whoever drives the family with pyroute2 as an outside client (tests
that check the module against a second implementation, scripts).  Import
it only there: it imports pyroute2.

Built with pyroute2's ordinary API only: each class is a direct subclass of
genlmsg or nla with its own `nla_map`.  pyroute2 compiles a class's
nla_map on first use and caches it per class; genlmsg and nla have an
empty map and are never compiled, so nothing cached is inherited and no
private attribute needs resetting.  (Subclassing one of the classes built
here would inherit its compiled table: build a new class instead, with
message_class(spec, extra=...).)
"""

from __future__ import annotations

from typing import Any, Mapping

from pyroute2.netlink import NLA_F_NESTED, genlmsg, nla

from .spec import Attr, Spec, SpecError

# YNL types -> pyroute2 NLA formats.  `pad` attributes only ever come from
# the kernel (alignment of u64) and are decoded as opaque bytes.
_FORMATS = {
    "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64",
    "s8": "int8", "s16": "int16", "s32": "int32", "s64": "int64",
    "flag": "flag", "binary": "cdata", "string": "asciiz", "pad": "hex",
}  # fmt: skip
_BIG_ENDIAN = {"u16": "be16", "u32": "be32", "u64": "be64"}

NlaMap = tuple[tuple[int, str, str], ...]


def class_name(set_name: str) -> str:
    # A prefix keeps nested classes from shadowing pyroute2 attributes
    # (a nested class called `header` breaks encode()).
    return "nest_" + set_name.replace("-", "_")


def nla_format(attr: Attr) -> str:
    if attr.type == "nest":
        return class_name(attr.nested or "")
    if attr.big_endian and attr.type in _BIG_ENDIAN:
        return _BIG_ENDIAN[attr.type]
    try:
        return _FORMATS[attr.type]
    except KeyError:
        raise SpecError(f"attribute {attr.name!r}: type {attr.type!r} has no pyroute2 format") from None


def nla_map(spec: Spec, set_name: str) -> NlaMap:
    return tuple((a.value, a.name, nla_format(a)) for a in spec.attr_sets[set_name].values())


def message_class(spec: Spec, extra: NlaMap = ()) -> type[genlmsg]:
    """A genlmsg class of the family; `extra` entries replace (by name) or
    add to the root set's map, for requests the kernel must refuse (an
    attribute of the wrong size, one the spec does not define)."""
    nests: dict[str, Any] = {}
    for set_name in spec.attr_sets:
        # Strictly validated families refuse a nest without NLA_F_NESTED.
        nests[class_name(set_name)] = type(
            class_name(set_name), (nla,),
            {"nla_map": nla_map(spec, set_name), "nla_flags": NLA_F_NESTED})
    # pyroute2 resolves a format naming a class as an attribute of the class
    # that holds the map: every nested class knows every other.
    for cls in nests.values():
        for name, other in nests.items():
            setattr(cls, name, other)
    replaced = {e[1] for e in extra}
    root = tuple(e for e in nla_map(spec, spec.root_set) if e[1] not in replaced) + extra
    return type(f"{spec.family.replace('-', '_')}msg", (genlmsg,), {"nla_map": root, **nests})


def new_msg(spec: Spec, cmd: str, attrs: Mapping[str, Any] | None = None,
            cls: type[genlmsg] | None = None) -> genlmsg:
    """A request message (attributes by their YAML names; nests as
    {"attrs": [[name, value], ...]} in pyroute2's form)."""
    msg = (cls or message_class(spec))()
    msg["cmd"] = spec.cmd(cmd)
    msg["version"] = spec.version
    msg["reserved"] = 0
    msg["attrs"] = [[k, v] for k, v in (attrs or {}).items()]
    return msg
