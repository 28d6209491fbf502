"""The kproxy family as described by schema/kproxy.yaml.

The YAML is the one source of truth: the module's C tables and
kpctl/family.py (the parsed YAML as a Python literal, which an installed
kpctl carries as package code) are generated from it by schema/gen.py.
This module derives the command numbers, the attribute tables and the enum
maps from that data, so no attribute or command number is written in
Python.  Numbering follows the YNL rules (attributes and unified operations
count from 1, enum entries from 0, unless a `value` says otherwise), the
same rules the kernel's ynl-gen-c applies.

KPROXY_SCHEMA=path makes kpctl read a YAML file instead (to try a changed
schema without regenerating); only then is PyYAML imported.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

# The schema file of a source checkout (tests, tools such as the kernel's
# YNL cli); an installed kpctl does not need it.
_REPO_SCHEMA = Path(__file__).resolve().parent.parent / "schema" / "kproxy.yaml"

# The attribute types kpctl encodes and decodes (kpctl.wire).  `pad`
# attributes only come from the kernel (alignment of u64) and are skipped.
SCALARS = ("u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64")
TYPES = frozenset(SCALARS + ("flag", "binary", "string", "pad", "nest"))


class SpecError(Exception):
    """The schema cannot be found or uses something this reader does not know."""


def schema_path() -> Path:
    """The YAML file: $KPROXY_SCHEMA, else the checkout's schema/kproxy.yaml."""
    env = os.environ.get("KPROXY_SCHEMA")
    if env:
        return Path(env)
    if _REPO_SCHEMA.is_file():
        return _REPO_SCHEMA
    raise SpecError(f"kproxy.yaml not found at {_REPO_SCHEMA} (not a source checkout)")


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
    big_endian: bool = False  # byte-order: big-endian (scalars only)
    multi: bool = False  # multi-attr: repeated, given as a list of values


@dataclass(frozen=True)
class Spec:
    """Everything kpctl needs to know about the family, derived from the YAML
    data (`raw`, as kpctl/family.py or a YAML file holds it)."""

    path: Path
    family: str
    version: int
    mcast_groups: tuple[str, ...]
    commands: Mapping[str, int]
    command_names: Mapping[int, str]
    enums: Mapping[str, EnumMap]
    attr_sets: Mapping[str, Mapping[str, Attr]]
    root_set: str
    raw: Mapping[str, Any]
    # The attribute set of each command by number (a notification: the set
    # of the operation it notifies as), for sets other than root_set too.
    cmd_sets: Mapping[int, str] = dataclasses.field(default_factory=dict)

    def set_of(self, cmd: int) -> str:
        """The attribute set a message of command `cmd` carries."""
        return self.cmd_sets.get(cmd, self.root_set)

    def cmd(self, name: str) -> int:
        try:
            return self.commands[name]
        except KeyError:
            raise SpecError(f"operation {name!r} not in {self.path}") from None

    def attr(self, set_name: str, name: str) -> Attr:
        return self.attr_sets[set_name][name]


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


def _attr(set_name: str, value: int, a: Mapping[str, Any], sets: set[str]) -> Attr:
    """One attribute, refused if kpctl.wire could not encode or decode it."""
    typ = a["type"]
    where = f"attribute {set_name}.{a['name']}"
    if typ not in TYPES:
        raise SpecError(f"{where}: type {typ!r} not supported")
    multi = bool(a.get("multi-attr"))
    if multi and typ != "binary":
        raise SpecError(f"{where}: multi-attr is supported for binary only")
    nested = a.get("nested-attributes")
    if typ == "nest" and nested not in sets:
        raise SpecError(f"{where}: nest of unknown attribute set {nested!r}")
    big = a.get("byte-order") == "big-endian"
    return Attr(a["name"], value, typ, nested, a.get("enum"), big and typ in SCALARS, multi)


def _root_set(raw: Mapping[str, Any]) -> str:
    """The set of the first operation (proxy-new): proxies' set, which
    messages of an unknown command are read with."""
    for op in raw["operations"]["list"]:
        if op.get("attribute-set"):
            return op["attribute-set"]
    raise SpecError("no operation names an attribute set")


def _cmd_sets(raw: Mapping[str, Any], commands: Mapping[str, int]) -> dict[int, str]:
    by_name = {op["name"]: op for op in raw["operations"]["list"]}
    out: dict[int, str] = {}
    for op in raw["operations"]["list"]:
        aset = op.get("attribute-set")
        if aset is None and op.get("notify") in by_name:
            aset = by_name[op["notify"]].get("attribute-set")
        if aset is not None:
            out[commands[op["name"]]] = aset
    return out


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

    set_names = {s["name"] for s in raw["attribute-sets"]}
    attr_sets: dict[str, dict[str, Attr]] = {}
    for s in raw["attribute-sets"]:
        attr_sets[s["name"]] = {
            a["name"]: _attr(s["name"], value, a, set_names)
            for value, a in _numbered(s["attributes"], 1)
        }
    root = _root_set(raw)

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
        root_set=root,
        raw=raw,
        cmd_sets=_cmd_sets(raw, commands),
    )


def load(path: Path | str | None = None) -> Spec:
    """Read and build the spec of a YAML file; `path` defaults to schema_path()."""
    import yaml  # only here: kpctl itself runs from kpctl/family.py

    p = Path(path) if path is not None else schema_path()
    try:
        with p.open() as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise SpecError(f"cannot read {p}: {e.strerror}") from e
    return build(raw, p)


def generated() -> Spec:
    """The spec of kpctl/family.py, the table generated with the C tables."""
    from . import family

    return build(family.FAMILY, Path(family.__file__))


@functools.lru_cache(maxsize=1)
def default() -> Spec:
    """The process-wide spec (built once): $KPROXY_SCHEMA if set, else the
    generated table."""
    return load() if os.environ.get("KPROXY_SCHEMA") else generated()
