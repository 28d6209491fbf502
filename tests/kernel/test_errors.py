"""Bad input is refused with a precise errno and the kernel's message."""

from __future__ import annotations

import errno
import os
import socket

import pytest
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, genlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

from kpctl import KproxyError, spec
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
    """proxy-new with only fd-a, sent through pyroute2 without kpctl."""
    with GenericNetlinkSocket(ext_ack=True) as nl:
        nl.bind(SPEC.family, SPEC.msg_class)
        msg = SPEC.new_msg("proxy-new", {"fd-a": good.fileno()})
        with pytest.raises(NetlinkError) as ei:
            tuple(nl.nlm_request(msg, msg_type=nl.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK))
        assert ei.value.code == errno.EINVAL
        assert str(ei.value.args[1]).strip()


def test_missing_attribute_via_library(kp, good):
    e = refused(errno.EINVAL, kp.request, "proxy-new", {"fd-a": good.fileno()})
    assert "fd-b" in e.message, e.message


def bogus_msg_class(extra: tuple) -> type[genlmsg]:
    """The family's message class with attributes changed for a bad request.

    Numbers still come from the spec: only the format (size) differs, or an
    attribute past the last one the spec defines is added.
    """
    base = SPEC.msg_class
    nla_map = tuple(e for e in base.nla_map if e[1] not in {x[1] for x in extra}) + extra
    attrs = {k: getattr(base, k) for k in dir(base) if k.startswith("nest_")}
    return type("bogusmsg", (genlmsg,), {"nla_map": nla_map, **attrs,
                                          "_nlmsg_base__compiled_nla": False,
                                          "_nlmsg_base__t_nla_map": None,
                                          "_nlmsg_base__r_nla_map": None})


def bogus(cls: type[genlmsg], attrs: list) -> genlmsg:
    msg = cls()
    msg["cmd"] = SPEC.cmd("proxy-new")
    msg["version"] = SPEC.version
    msg["reserved"] = 0
    msg["attrs"] = attrs
    return msg


def test_attribute_of_wrong_size(kp, good):
    fd_a = SPEC.attr("proxy", "fd-a").value
    cls = bogus_msg_class(((fd_a, "fd-a", "uint16"),))
    msg = bogus(cls, [["fd-a", good.fileno()], ["fd-b", good.fileno()]])
    e = refused((errno.EINVAL, errno.ERANGE), kp.send_raw, msg)
    assert "fd-a" in e.message, e.message


def test_unknown_attribute(kp, good):
    unknown = max(a.value for a in SPEC.attr_sets["proxy"].values()) + 7
    cls = bogus_msg_class(((unknown, "bogus", "uint32"),))
    c, s = tcp_pair()
    try:
        msg = bogus(cls, [["fd-a", good.fileno()], ["fd-b", s.fileno()], ["bogus", 1]])
        e = refused((errno.EINVAL, errno.EOPNOTSUPP), kp.send_raw, msg)
        assert str(unknown) in e.message or "bogus" in e.message, e.message
        assert not kp.list(), "a refused request created a proxy"
    finally:
        c.close()
        s.close()
