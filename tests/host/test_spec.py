"""The spec kpctl runs on (kpctl/family.py, or a YAML file), and the
pyroute2 classes built from it (kpctl.pyroute2_msgs) as an outside
implementation that kpctl.wire must agree with."""

from __future__ import annotations

import socket
import struct

import pytest
import yaml
from pyroute2.netlink import NLA_F_NESTED

from kpctl import pyroute2_msgs, wire
from kpctl import spec as spec_mod
from kpctl.client import event_from_attrs, proxy_from_attrs

SPEC = spec_mod.default()
MSG_CLASS = pyroute2_msgs.message_class(SPEC)


def raw_yaml() -> dict:
    with open(spec_mod.schema_path()) as f:
        return yaml.safe_load(f)


def test_schema_found_in_checkout() -> None:
    assert spec_mod.schema_path().name == "kproxy.yaml"
    assert SPEC.path.name == "family.py"  # the generated table, not the YAML
    assert SPEC.raw == raw_yaml()
    assert SPEC.family == "kproxy"
    assert SPEC.version == 1
    assert SPEC.mcast_groups == ("monitor",)


def test_commands_follow_ynl_numbering() -> None:
    names = [op["name"] for op in raw_yaml()["operations"]["list"]]
    # Unified model: operations count from 1 in spec order.
    assert [SPEC.commands[n] for n in names] == list(range(1, len(names) + 1))
    assert SPEC.command_names[SPEC.cmd("proxy-get")] == "proxy-get"
    with pytest.raises(spec_mod.SpecError):
        SPEC.cmd("no-such-op")


def test_enum_maps_both_ways() -> None:
    reason = SPEC.enums["reason"]
    assert list(reason.by_name) == ["user", "closed", "reset", "error", "netns-exit", "unload",
                                    "tls-alert", "tls-rekey", "denied"]
    assert reason.by_name["user"] == 0
    for name, value in reason.by_name.items():
        assert reason.label(value) == name
    assert reason.label(99) == "99"
    assert SPEC.enums["state"].by_name == {"active": 0, "half-closed": 1, "closing": 2}


def test_attribute_numbers_come_from_yaml() -> None:
    for s in raw_yaml()["attribute-sets"]:
        for i, a in enumerate(s["attributes"], start=1):
            assert SPEC.attr(s["name"], a["name"]).value == i


def test_explicit_values_and_types() -> None:
    raw = {
        "name": "x",
        "protocol": "genetlink",
        "definitions": [
            {"name": "e", "type": "enum", "value-start": 3, "entries": ["a", "b"]},
            {"name": "f", "type": "flags", "entries": ["p", "q"]},
        ],
        "attribute-sets": [
            {
                "name": "s",
                "attributes": [
                    {"name": "a", "type": "u16", "byte-order": "big-endian"},
                    {"name": "b", "type": "string", "value": 7},
                    {"name": "c", "type": "s32"},
                ],
            }
        ],
        "operations": {"list": [{"name": "op", "attribute-set": "s", "value": 5}, {"name": "op2", "attribute-set": "s"}]},
    }
    s = spec_mod.build(raw, spec_mod.schema_path())
    assert s.enums["e"].by_name == {"a": 3, "b": 4}
    assert s.enums["f"].by_name == {"p": 1, "q": 2}
    assert [(a.value, a.big_endian) for a in s.attr_sets["s"].values()] == [(1, True), (7, False), (8, False)]
    assert pyroute2_msgs.message_class(s).nla_map == ((1, "a", "be16"), (7, "b", "asciiz"), (8, "c", "int32"))
    assert s.commands == {"op": 5, "op2": 6}
    # ... and kpctl.wire encodes them the same way.
    body = wire.encode_attrs(s, {"a": 0x1234, "b": "hi", "c": -1})
    assert body == b"\x06\x00\x01\x00\x12\x34\0\0" + b"\x07\x00\x07\x00hi\0\0" + struct.pack("=HHi", 8, 8, -1)
    assert wire.decoder(s).attrs(body, 0, len(body)) == {"a": 0x1234, "b": "hi", "c": -1}


def test_unknown_type_refused() -> None:
    raw = {
        "name": "x",
        "protocol": "genetlink",
        "attribute-sets": [{"name": "s", "attributes": [{"name": "a", "type": "bitfield32"}]}],
        "operations": {"list": [{"name": "op", "attribute-set": "s"}]},
    }
    with pytest.raises(spec_mod.SpecError, match="bitfield32"):
        spec_mod.build(raw, spec_mod.schema_path())
    raw["attribute-sets"][0]["attributes"][0] = {"name": "a", "type": "u32", "multi-attr": True}
    with pytest.raises(spec_mod.SpecError, match="multi-attr"):
        spec_mod.build(raw, spec_mod.schema_path())


def test_kproxy_schema_env_reads_a_yaml_file(tmp_path, monkeypatch) -> None:
    changed = raw_yaml()
    changed["version"] = 7
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump(changed))
    monkeypatch.setenv("KPROXY_SCHEMA", str(path))
    spec_mod.default.cache_clear()
    try:
        s = spec_mod.default()
        assert (s.path, s.version) == (path, 7)
    finally:
        monkeypatch.delenv("KPROXY_SCHEMA")
        spec_mod.default.cache_clear()
    assert spec_mod.default().version == 1


def test_library_imports_neither_yaml_nor_pyroute2_nor_rich() -> None:
    import subprocess
    import sys

    code = ("import sys, kpctl.client, kpctl.spec, kpctl.model, kpctl.procfs; kpctl.spec.default();"
            "print(sorted(m for m in ('yaml', 'pyroute2', 'rich', 'prompt_toolkit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def sock_nest(local: str, lport: int, remote: str, rport: int, family: int) -> dict:
    return {
        "attrs": [
            ["family", family],
            ["local-addr", socket.inet_pton(family, local)],
            ["local-port", lport],
            ["remote-addr", socket.inet_pton(family, remote)],
            ["remote-port", rport],
            ["tcp-state", 1],
        ]
    }


def reply_bytes(cmd: str, reason: str | None = None) -> bytes:
    """A reply as pyroute2 encodes it (an outside implementation)."""
    msg = pyroute2_msgs.new_msg(SPEC, cmd, cls=MSG_CLASS)
    msg["attrs"] = [
        ["id", 42],
        ["state", SPEC.enums["state"].value("half-closed")],
        ["create-time", 1_700_000_000_123_456_789],
        ["sock-a", sock_nest("10.0.0.1", 80, "10.0.0.2", 40000, socket.AF_INET)],
        ["sock-b", sock_nest("::1", 8080, "fe80::1", 443, socket.AF_INET6)],
        ["a-to-b", {"attrs": [["bytes", 2**40 + 5], ["skbs", 7], ["msgs", 7], ["drops", 0], ["queued", 1234], ["shut", True]]}],
        ["b-to-a", {"attrs": [["bytes", 9], ["skbs", 1], ["msgs", 1], ["drops", 2], ["queued", 0]]}],
    ]
    if reason is not None:
        msg["attrs"].append(["reason", SPEC.enums["reason"].value(reason)])
    msg["header"]["type"] = 0x1234
    msg["header"]["flags"] = 0
    msg.encode()
    return bytes(msg.data)


def decode(data: bytes):
    m = MSG_CLASS(data)
    m.decode()
    return m


def wire_attrs(data: bytes) -> dict:
    (m,) = wire.decoder(SPEC).messages(data, 0x1234)
    return m.attrs


def wire_cmd(data: bytes) -> int:
    return wire.GENLMSGHDR.unpack_from(data, 16)[0]


def test_nests_carry_nla_f_nested() -> None:
    data = reply_bytes("proxy-get")
    seen = {}
    pos = 20
    while pos < len(data):
        length, typ = struct.unpack_from("HH", data, pos)
        seen[typ & 0x3FFF] = typ
        pos += (length + 3) & ~3
    for a in SPEC.attr_sets["proxy"].values():
        if a.value in seen:
            nested = bool(seen[a.value] & NLA_F_NESTED)
            assert nested == (a.type == "nest"), a.name


def test_reply_round_trip_to_proxy() -> None:
    p = proxy_from_attrs(wire_attrs(reply_bytes("proxy-get")), SPEC)
    assert p.id == 42
    assert p.state == "half-closed"
    assert p.created_ns == 1_700_000_000_123_456_789
    assert p.a.family == socket.AF_INET
    assert str(p.a.local) == "10.0.0.1:80" and str(p.a.remote) == "10.0.0.2:40000"
    assert p.a.tcp_state == 1
    assert p.b.family == socket.AF_INET6
    assert str(p.b.local) == "[::1]:8080" and str(p.b.remote) == "[fe80::1]:443"
    assert p.a_to_b.bytes == 2**40 + 5 and p.a_to_b.queued == 1234 and p.a_to_b.shut is True
    assert p.b_to_a.drops == 2 and p.b_to_a.shut is False
    d = p.to_dict()
    assert d["a"]["local"] == "10.0.0.1:80" and d["a_to_b"]["bytes"] == 2**40 + 5


def test_notification_to_event() -> None:
    data = reply_bytes("proxy-del-ntf", "netns-exit")
    ev = event_from_attrs(wire_cmd(data), wire_attrs(data), SPEC, 1.5)
    assert ev is not None
    assert (ev.kind, ev.reason, ev.timestamp, ev.proxy.id) == ("del", "netns-exit", 1.5, 42)
    data = reply_bytes("proxy-new-ntf")
    ev = event_from_attrs(wire_cmd(data), wire_attrs(data), SPEC)
    assert ev is not None and ev.kind == "new" and ev.reason is None
    data = reply_bytes("proxy-get")
    assert event_from_attrs(wire_cmd(data), wire_attrs(data), SPEC) is None


def test_request_encoding_agrees_with_pyroute2() -> None:
    msg = pyroute2_msgs.new_msg(SPEC, "proxy-new", {"fd-a": 3, "fd-b": 4}, cls=MSG_CLASS)
    msg["header"]["type"] = 0x1234
    msg["header"]["flags"] = 1
    msg["header"]["sequence_number"] = 5
    msg.encode()
    ours = wire.request(0x1234, SPEC.cmd("proxy-new"), SPEC.version, 1, 5,
                        wire.encode_attrs(SPEC, {"fd-a": 3, "fd-b": 4}))
    assert bytes(msg.data) == ours
    m = decode(ours)
    assert m["cmd"] == SPEC.cmd("proxy-new")
    assert m.get_attr("fd-a") == 3 and m.get_attr("fd-b") == 4


def test_nests_encode_as_pyroute2_encodes_them() -> None:
    """wire's generic encoder (nests as dicts) gives pyroute2's bytes."""
    data = reply_bytes("proxy-get")
    assert wire.encode_attrs(SPEC, wire_attrs(data)) == data[20:]


def test_pyroute2_classes_are_compiled_each_for_itself() -> None:
    # A second class with a changed map decodes by its own map, not by a
    # table cached on a class it shares a base with.
    fd_a = SPEC.attr("proxy", "fd-a").value
    bogus = pyroute2_msgs.message_class(SPEC, extra=((fd_a, "fd-a", "uint16"),))
    for cls, size in ((MSG_CLASS, 8), (bogus, 6)):
        msg = pyroute2_msgs.new_msg(SPEC, "proxy-new", {"fd-a": 3}, cls=cls)
        msg["header"]["type"] = 0x1234
        msg.encode()
        assert struct.unpack_from("=H", msg.data, 20)[0] == size


def test_error_offset_names_attribute() -> None:
    data = reply_bytes("proxy-get")
    # Offset 20 is the first attribute (id); find sock-b's family inside the nest.
    assert wire.attr_at(SPEC, data, 20, "proxy") == "id"
    pos, target = 20, SPEC.attr("proxy", "sock-b").value
    while True:
        length, typ = struct.unpack_from("HH", data, pos)
        if typ & 0x3FFF == target:
            break
        pos += (length + 3) & ~3
    assert wire.attr_at(SPEC, data, pos, "proxy") == "sock-b"
    assert wire.attr_at(SPEC, data, pos + 4, "proxy") == "sock-b.family"
    assert wire.attr_at(SPEC, data, 10_000, "proxy") is None
