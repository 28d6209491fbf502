"""The kproxy family as described by schema/kproxy.yaml, read at run time.

The YAML is the one source of truth: the module's C tables are generated from
it, and this module builds the pyroute2 message classes, the command numbers
and the enum maps from the same file, so no attribute or command number is
written in Python.  Numbering follows the YNL rules (attributes and unified
operations count from 1, enum entries from 0, unless a `value` says
otherwise), the same rules the kernel's ynl-gen-c applies.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from pyroute2.netlink import NLA_F_NESTED, genlmsg, nla

# Where the schema lives: in a source checkout (editable install) it is the
# repository's schema/kproxy.yaml next to the package; an installed wheel
# carries it as package data kpctl/data/kproxy.yaml.  KPROXY_SCHEMA overrides
# both (useful to test a changed schema without reinstalling).
_REPO_SCHEMA = Path(__file__).resolve().parent.parent / "schema" / "kproxy.yaml"

# YNL scalar types -> pyroute2 NLA formats.  `pad` attributes only ever come
# from the kernel (alignment of u64) and are decoded as opaque bytes.
_SCALAR_FORMATS: dict[str, str] = {
    "u8": "uint8",
    "u16": "uint16",
    "u32": "uint32",
    "u64": "uint64",
    "s8": "int8",
    "s16": "int16",
    "s32": "int32",
    "s64": "int64",
    "flag": "flag",
    "binary": "cdata",
    "string": "asciiz",
    "pad": "hex",
}
_BIG_ENDIAN_FORMATS: dict[str, str] = {
    "u16": "be16",
    "u32": "be32",
    "u64": "be64",
}


# pyroute2 compiles an nla_map once per class and marks it so in a class
# attribute, which a subclass would inherit: every class built here starts
# with its own, uncompiled table.
_FRESH: dict[str, Any] = {
    "_nlmsg_base__compiled_nla": False,
    "_nlmsg_base__t_nla_map": None,
    "_nlmsg_base__r_nla_map": None,
}


class SpecError(Exception):
    """The schema cannot be found or uses something this reader does not know."""


def schema_path() -> Path:
    """Locate kproxy.yaml: $KPROXY_SCHEMA, the checkout, then package data."""
    env = os.environ.get("KPROXY_SCHEMA")
    if env:
        return Path(env)
    if _REPO_SCHEMA.is_file():
        return _REPO_SCHEMA
    try:
        res = importlib.resources.files("kpctl").joinpath("data/kproxy.yaml")
        if res.is_file():
            return Path(str(res))
    except (ModuleNotFoundError, FileNotFoundError):  # pragma: no cover
        pass
    raise SpecError(
        f"kproxy.yaml not found (looked at {_REPO_SCHEMA} and kpctl/data/kproxy.yaml)"
    )


@dataclass(frozen=True)
class EnumMap:
    """Both directions of one YNL enum: name <-> value."""

    name: str
    by_name: Mapping[str, int]
    by_value: Mapping[int, str]

    def value(self, name: str) -> int:
        return self.by_name[name]

    def label(self, value: int) -> str:
        # An unknown value (a newer module) is shown, not fatal.
        return self.by_value.get(value, str(value))


@dataclass(frozen=True)
class Attr:
    name: str
    value: int
    type: str
    nested: str | None
    enum: str | None


@dataclass(frozen=True)
class Spec:
    """Everything kpctl needs to know about the family, derived from the YAML."""

    path: Path
    family: str
    version: int
    mcast_groups: tuple[str, ...]
    commands: Mapping[str, int]
    command_names: Mapping[int, str]
    enums: Mapping[str, EnumMap]
    attr_sets: Mapping[str, Mapping[str, Attr]]
    msg_class: type[genlmsg]
    root_set: str
    raw: Mapping[str, Any]

    def cmd(self, name: str) -> int:
        try:
            return self.commands[name]
        except KeyError:
            raise SpecError(f"operation {name!r} not in {self.path}") from None

    def attr(self, set_name: str, name: str) -> Attr:
        return self.attr_sets[set_name][name]

    def new_msg(self, cmd: str, attrs: Mapping[str, Any] | None = None) -> genlmsg:
        """A request message of this family (attributes by their YAML names)."""
        msg = self.msg_class()
        msg["cmd"] = self.cmd(cmd)
        msg["version"] = self.version
        msg["reserved"] = 0
        msg["attrs"] = [[k, v] for k, v in (attrs or {}).items()]
        return msg


def _numbered(entries: list[Any], start: int) -> list[tuple[int, Any]]:
    """YNL numbering: consecutive from `start`, an explicit `value` resets it."""
    out: list[tuple[int, Any]] = []
    nxt = start
    for entry in entries:
        if isinstance(entry, dict) and "value" in entry:
            nxt = int(entry["value"])
        out.append((nxt, entry))
        nxt += 1
    return out


def _class_name(set_name: str) -> str:
    # A prefix keeps nested classes from shadowing pyroute2 attributes
    # (a nested class called `header` breaks encode()).
    return "nest_" + set_name.replace("-", "_")


def _nla_format(attr: Attr, raw: Mapping[str, Any]) -> str:
    if attr.type == "nest":
        if attr.nested is None:
            raise SpecError(f"nest {attr.name!r} without nested-attributes")
        fmt = _class_name(attr.nested)
    elif raw.get("byte-order") == "big-endian" and attr.type in _BIG_ENDIAN_FORMATS:
        fmt = _BIG_ENDIAN_FORMATS[attr.type]
    elif attr.type in _SCALAR_FORMATS:
        fmt = _SCALAR_FORMATS[attr.type]
    else:
        raise SpecError(f"attribute {attr.name!r}: type {attr.type!r} not supported")
    if raw.get("multi-attr"):
        fmt = "*" + fmt
    return fmt


def _build_classes(
    raw_sets: list[dict[str, Any]], attr_sets: Mapping[str, Mapping[str, Attr]]
) -> dict[str, type[nla]]:
    """One pyroute2 nla class per attribute set, wired to each other by name.

    pyroute2 resolves a format string naming a class by looking it up as an
    attribute of the class that holds the nla_map, so every nested class is
    attached to every class that may contain it (and to the message class).
    """
    raw_by_name = {s["name"]: s for s in raw_sets}
    classes: dict[str, type[nla]] = {}
    for name, attrs in attr_sets.items():
        raw_attrs = {a["name"]: a for a in raw_by_name[name]["attributes"]}
        nla_map = tuple(
            (a.value, a.name, _nla_format(a, raw_attrs[a.name])) for a in attrs.values()
        )
        # Strictly validated families refuse a nest without NLA_F_NESTED.
        classes[name] = type(
            _class_name(name), (nla,), {"nla_map": nla_map, "nla_flags": NLA_F_NESTED, **_FRESH}
        )
    for cls in classes.values():
        for name, other in classes.items():
            setattr(cls, _class_name(name), other)
    return classes


def _root_set(raw: Mapping[str, Any]) -> str:
    sets = {op.get("attribute-set") for op in raw["operations"]["list"]}
    sets.discard(None)
    if len(sets) != 1:
        raise SpecError(f"expected one top-level attribute set, found {sorted(sets)}")
    return sets.pop()


def build(raw: Mapping[str, Any], path: Path) -> Spec:
    """Derive a Spec from the parsed YAML (pure; the host tests feed it)."""
    if raw.get("protocol") not in ("genetlink", "genetlink-c", "genetlink-legacy"):
        raise SpecError(f"protocol {raw.get('protocol')!r} is not generic netlink")

    enums: dict[str, EnumMap] = {}
    for d in raw.get("definitions", []):
        if d.get("type") not in ("enum", "flags"):
            continue
        if d["type"] == "flags":
            # Flags count bit positions; values are 1 << position.
            pairs = [(1 << v, e) for v, e in _numbered(d["entries"], d.get("value-start", 0))]
        else:
            pairs = _numbered(d["entries"], d.get("value-start", 0))
        by_name = {(e["name"] if isinstance(e, dict) else e): v for v, e in pairs}
        enums[d["name"]] = EnumMap(d["name"], by_name, {v: k for k, v in by_name.items()})

    attr_sets: dict[str, dict[str, Attr]] = {}
    for s in raw["attribute-sets"]:
        attrs: dict[str, Attr] = {}
        for value, a in _numbered(s["attributes"], 1):
            attrs[a["name"]] = Attr(
                a["name"], value, a["type"], a.get("nested-attributes"), a.get("enum")
            )
        attr_sets[s["name"]] = attrs

    classes = _build_classes(raw["attribute-sets"], attr_sets)
    root = _root_set(raw)
    root_cls = classes[root]
    msg_attrs: dict[str, Any] = {"nla_map": root_cls.nla_map, **_FRESH}
    for name, cls in classes.items():
        msg_attrs[_class_name(name)] = cls
    msg_class = type(f"{raw['name']}msg", (genlmsg,), msg_attrs)

    ops = raw["operations"]
    commands = {op["name"]: v for v, op in _numbered(ops["list"], 1)}
    groups = tuple(g["name"] for g in raw.get("mcast-groups", {}).get("list", []))

    return Spec(
        path=path,
        family=raw["name"],
        version=int(raw.get("version", 1)),
        mcast_groups=groups,
        commands=commands,
        command_names={v: k for k, v in commands.items()},
        enums=enums,
        attr_sets=attr_sets,
        msg_class=msg_class,
        root_set=root,
        raw=raw,
    )


def load(path: Path | str | None = None) -> Spec:
    """Read and build the spec; `path` defaults to schema_path()."""
    p = Path(path) if path is not None else schema_path()
    try:
        with p.open() as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise SpecError(f"cannot read {p}: {e.strerror}") from e
    return build(raw, p)


@functools.lru_cache(maxsize=1)
def default() -> Spec:
    """The process-wide spec (parsed once)."""
    return load()
