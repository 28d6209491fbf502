"""Bad input is refused with a precise errno and the kernel's message."""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

from kpctl import KproxyError, pyroute2_msgs, spec, wire
from util import closed_fd_number, kp, make_chain, tcp_pair  # noqa: F401

SPEC = spec.default()


def refused(expected: tuple[int, ...] | int, fn, *args) -> KproxyError:
    exp = (expected,) if isinstance(expected, int) else expected
    with pytest.raises(KproxyError) as ei:
        fn(*args)
    e = ei.value
    assert e.errno in exp, f"got {e.errno_name} ({e.message}), expected {[os.strerror(x) for x in exp]}"
    assert e.message.strip(), "empty error message"
    return e


@pytest.fixture
def good():
    c, s = tcp_pair()
    yield s
    c.close()
    s.close()


def test_not_a_socket(kp, good):
    r, w = os.pipe()
    try:
        refused(errno.ENOTSOCK, kp.create, r, good)
        refused(errno.ENOTSOCK, kp.create, good, w)
    finally:
        os.close(r)
        os.close(w)


def test_udp_socket(kp, good):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(("127.0.0.1", 9))
    try:
        refused(errno.EPROTONOSUPPORT, kp.create, u, good)
    finally:
        u.close()


def test_listening_socket(kp, good):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    try:
        refused(errno.ENOTCONN, kp.create, ls, good)
    finally:
        ls.close()


def test_unconnected_socket(kp, good):
    s = socket.socket()
    try:
        refused(errno.ENOTCONN, kp.create, good, s)
    finally:
        s.close()


def test_same_socket_twice(kp, good):
    refused(errno.EINVAL, kp.create, good, good)


def test_socket_already_proxied(kp):
    ch = make_chain(kp)
    c3, s3 = tcp_pair()
    try:
        refused(errno.EBUSY, kp.create, ch.s1, s3)
        refused(errno.EBUSY, kp.create, s3, ch.c2)
        # The refusal did not disturb the existing proxy.
        ch.c1.sendall(b"still fine")
        assert ch.s2.recv(100) == b"still fine"
    finally:
        ch.close()
        c3.close()
        s3.close()


def test_fd_not_open(kp, good):
    refused(errno.EBADF, kp.create, closed_fd_number(), good)


def test_unknown_proxy_id(kp):
    refused(errno.ENOENT, kp.get, 0x7FFFFFF0)
    refused(errno.ENOENT, kp.destroy, 0x7FFFFFF0)


def test_id_zero_refused_by_policy(kp):
    # The schema says id >= 1: the policy itself refuses 0.
    e = refused((errno.EINVAL, errno.ERANGE), kp.get, 0)
    assert "id" in e.message


def test_missing_attribute_raw_pyroute2(good):
    """proxy-new with only fd-a, sent through pyroute2 without kpctl's netlink."""
    cls = pyroute2_msgs.message_class(SPEC)
    with GenericNetlinkSocket(ext_ack=True) as nl:
        nl.bind(SPEC.family, cls)
        msg = pyroute2_msgs.new_msg(SPEC, "proxy-new", {"fd-a": good.fileno()}, cls=cls)
        with pytest.raises(NetlinkError) as ei:
            tuple(nl.nlm_request(msg, msg_type=nl.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK))
        assert ei.value.code == errno.EINVAL
        assert str(ei.value.args[1]).strip()


def test_missing_attribute_via_library(kp, good):
    e = refused(errno.EINVAL, kp.request, "proxy-new", {"fd-a": good.fileno()})
    assert "missing attribute fd-b" in e.message, e.message


def test_value_out_of_range_is_refused_before_sending(kp):
    e = refused(errno.ERANGE, kp.get, 1 << 32)
    assert e.message == "id: 4294967296 does not fit in u32"


def test_request_returns_the_decoded_reply(kp):
    ch = make_chain(kp)
    try:
        (m,) = kp.request("proxy-get", {"id": ch.proxy.id})
        assert m.cmd == SPEC.cmd("proxy-get") and m.attrs["id"] == ch.proxy.id
        assert m.attrs["sock-a"]["tcp-state"] == 1  # TCP_ESTABLISHED
        dumped = kp.request("proxy-get", dump=True)
        assert [x.attrs["id"] for x in dumped] == [ch.proxy.id]
    finally:
        ch.close()


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def test_attribute_of_wrong_size(kp, good):
    fd_a, fd_b = SPEC.attr("proxy", "fd-a").value, SPEC.attr("proxy", "fd-b").value
    body = wire.nla(fd_a, struct.pack("=H", good.fileno())) + wire.nla(fd_b, u32(good.fileno()))
    e = refused((errno.EINVAL, errno.ERANGE), kp.send_raw, "proxy-new", body)
    assert "attribute fd-a" in e.message, e.message


def test_unknown_attribute(kp, good):
    unknown = max(a.value for a in SPEC.attr_sets["proxy"].values()) + 7
    c, s = tcp_pair()
    try:
        body = wire.encode_attrs(SPEC, {"fd-a": good.fileno(), "fd-b": s.fileno()}) \
            + wire.nla(unknown, u32(1))
        e = refused((errno.EINVAL, errno.EOPNOTSUPP), kp.send_raw, "proxy-new", body)
        assert f"attribute {unknown}" in e.message, e.message
        assert not kp.list(), "a refused request created a proxy"
    finally:
        c.close()
        s.close()
