"""kpctl.wire: framing, the encoder, the decoder, the controller's family
reply and extended acks, against messages pyroute2 encodes from the schema
(the kernel's layout)."""

from __future__ import annotations

import errno
import struct

from kpctl import wire
from kpctl.client import proxy_from_attrs
from test_spec import SPEC, decode, reply_bytes

FAMILY = 0x1234  # reply_bytes' message type
DEC = wire.decoder(SPEC)


def nlmsg(mtype: int, flags: int, payload: bytes, seq: int = 1) -> bytes:
    body = wire.NLMSGHDR.pack(16 + len(payload), mtype, flags, seq, 0) + payload
    return body + b"\0" * (-len(body) % 4)


def test_decodes_what_pyroute2_decodes() -> None:
    data = reply_bytes("proxy-get")
    (m,) = list(DEC.messages(data, FAMILY))
    assert m.type == FAMILY and m.cmd == SPEC.cmd("proxy-get")
    theirs = decode(data)
    assert m.attrs["id"] == theirs.get_attr("id") == 42
    assert m.attrs["sock-a"]["local-port"] == theirs.get_attr("sock-a").get_attr("local-port") == 80
    assert proxy_from_attrs(m.attrs, SPEC).b_to_a.drops == 2
    assert m.attrs["a-to-b"]["shut"] is True and "shut" not in m.attrs["b-to-a"]
    assert m.attrs["sock-b"]["local-addr"] == b"\0" * 15 + b"\1"


def test_a_datagram_of_many_messages_ends_at_done() -> None:
    one = reply_bytes("proxy-get")
    done = nlmsg(wire.NLMSG_DONE, 0x2, struct.pack("=i", 0))
    msgs = list(DEC.messages(one * 3 + done, FAMILY))
    assert [m.type for m in msgs] == [FAMILY] * 3 + [wire.NLMSG_DONE]
    assert msgs[-1].attrs is None


def test_error_carries_errno_and_extended_ack_message() -> None:
    request = wire.request(FAMILY, 3, 1, 0x301, 9)
    text = b"unknown proxy\0"
    tlv = struct.pack("=HH", 4 + len(text), wire.NLMSGERR_ATTR_MSG) + text
    tlv += b"\0" * (-len(tlv) % 4)
    err = nlmsg(wire.NLMSG_ERROR, wire.NLM_F_ACK_TLVS | 0x100,
                struct.pack("=i", -errno.ENOENT) + request[:16] + tlv)
    (m,) = list(DEC.messages(err, FAMILY))
    assert (m.error, m.error_msg) == (errno.ENOENT, "unknown proxy")


def test_unknown_and_short_attributes_are_skipped() -> None:
    # id (u32) with only 2 bytes of payload, then attribute 999, then state.
    attrs = struct.pack("=HHH", 6, 1, 7) + b"\0\0" + struct.pack("=HHI", 8, 999, 1) \
        + struct.pack("=HHI", 8, SPEC.attr("proxy", "state").value, 2)
    assert DEC.attrs(attrs, 0, len(attrs)) == {"state": 2}


def test_truncated_input_stops_without_raising() -> None:
    data = reply_bytes("proxy-get")
    for cut in (3, 17, 21, 40, len(data) - 1):
        for m in DEC.messages(data[:cut], FAMILY):
            assert m.type == FAMILY
    # An attribute claiming more bytes than there are ends the walk.
    bad = struct.pack("=HHI", 200, 1, 5)
    assert DEC.attrs(bad, 0, len(bad)) == {}


def test_dump_request_layout() -> None:
    req = wire.request(FAMILY, SPEC.cmd("proxy-get"), SPEC.version, 0x301, 7)
    assert wire.NLMSGHDR.unpack_from(req) == (20, FAMILY, 0x301, 7, 0)
    assert wire.GENLMSGHDR.unpack_from(req, 16) == (SPEC.cmd("proxy-get"), SPEC.version, 0)


def test_do_request_attributes_encode_by_schema_name() -> None:
    body = wire.encode_attrs(SPEC, {"fd-a": 3, "fd-b": 4})
    fa, fb = SPEC.attr("proxy", "fd-a").value, SPEC.attr("proxy", "fd-b").value
    assert body == struct.pack("=HHIHHI", 8, fa, 3, 8, fb, 4)
    assert DEC.attrs(body, 0, len(body)) == {"fd-a": 3, "fd-b": 4}


def test_values_the_type_cannot_hold_are_refused_before_sending() -> None:
    import pytest

    with pytest.raises(ValueError, match="does not fit in u32"):
        wire.encode_attrs(SPEC, {"id": 1 << 32})
    with pytest.raises(ValueError, match="does not fit"):
        wire.encode_attrs(SPEC, {"id": -1})
    with pytest.raises(wire.EncodeError, match="given as a dict") as ei:
        wire.encode_attrs(SPEC, {"sock-a": 1})
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(wire.EncodeError, match="not an attribute"):
        wire.encode_attrs(SPEC, {"nope": 1})
    with pytest.raises(wire.EncodeError) as ei:
        wire.encode_attrs(SPEC, {"id": 1 << 32})
    assert ei.value.errno == errno.ERANGE


def test_error_points_at_the_offending_or_missing_attribute() -> None:
    request = wire.request(FAMILY, SPEC.cmd("proxy-new"), 1, 0x5, 3,
                           wire.encode_attrs(SPEC, {"fd-a": 3, "fd-b": 4}))
    tlvs = struct.pack("=HHI", 8, wire.NLMSGERR_ATTR_OFFS, 28)  # fd-b's header
    err = nlmsg(wire.NLMSG_ERROR, wire.NLM_F_ACK_TLVS,
                struct.pack("=i", -errno.EBADF) + request + tlvs)
    (m,) = list(DEC.messages(err, FAMILY))
    assert (m.error, m.error_offset, m.error_missing) == (errno.EBADF, 28, None)
    assert wire.error_text(SPEC, m, request) == "Bad file descriptor (attribute fd-b)"
    fd_b = SPEC.attr("proxy", "fd-b").value
    missing = wire.Message(wire.NLMSG_ERROR, 0, 3, error=errno.EINVAL,
                           error_msg="Missing attribute", error_missing=fd_b)
    assert wire.error_text(SPEC, missing, request) == "Missing attribute (missing attribute fd-b)"
    # a message that already names the attribute is left alone
    named = wire.Message(wire.NLMSG_ERROR, 0, 3, error=errno.EBADF,
                         error_msg="attribute fd-b: bad fd", error_offset=28)
    assert wire.error_text(SPEC, named, request) == "attribute fd-b: bad fd"


def test_encoder_covers_every_type_the_schema_uses() -> None:
    attrs = {"id": 7, "sock-a": {"family": 10, "local-addr": b"\0" * 15 + b"\1", "tcp-state": 1},
             "a-to-b": {"bytes": 2**40, "shut": True}, "b-to-a": {"shut": False}}
    body = wire.encode_attrs(SPEC, attrs)
    assert DEC.attrs(body, 0, len(body)) == dict(attrs, **{"b-to-a": {}})
    # nests carry NLA_F_NESTED (strict validation refuses them otherwise)
    off = len(wire.nla(1, b"\0" * 4))
    assert wire.NLAHDR.unpack_from(body, off)[1] == SPEC.attr("proxy", "sock-a").value | wire.NLA_F_NESTED


def test_controller_family_reply() -> None:
    grp = wire.nla(1, wire.nla(wire.CTRL_ATTR_MCAST_GRP_NAME, b"monitor\0")
                   + wire.nla(wire.CTRL_ATTR_MCAST_GRP_ID, struct.pack("=I", 9)), nested=True)
    body = (wire.nla(wire.CTRL_ATTR_FAMILY_NAME, b"kproxy\0") + wire.nla(wire.CTRL_ATTR_FAMILY_ID, struct.pack("=H", 0x21))
            + wire.nla(wire.CTRL_ATTR_VERSION, struct.pack("=I", 1))
            + wire.nla(wire.CTRL_ATTR_MCAST_GROUPS, grp, nested=True))
    msg = wire.request(wire.GENL_ID_CTRL, 1, 2, 0, 1, body)
    assert wire.parse_family(msg, 0, len(msg)) == wire.FamilyInfo(0x21, 1, {"monitor": 9})
    req = wire.getfamily_request("kproxy", 4)
    assert wire.NLMSGHDR.unpack_from(req) == (len(req), wire.GENL_ID_CTRL, 0x5, 4, 0)
    assert req[20:] == wire.nla(wire.CTRL_ATTR_FAMILY_NAME, b"kproxy\0")
