"""Model values: endpoints, JSON form, errors."""

from __future__ import annotations

import dataclasses
import errno
import json
import socket
import time

import pytest

from kpctl import DirStats, Endpoint, Event, KproxyError, Proxy, SockInfo, Totals
from kpctl.model import TCP_STATES, TlsInfo


def test_endpoint_str_and_parse() -> None:
    assert str(Endpoint("10.0.0.1", 80)) == "10.0.0.1:80"
    assert str(Endpoint("::1", 80)) == "[::1]:80"
    assert Endpoint.parse("10.0.0.1:80") == Endpoint("10.0.0.1", 80)
    assert Endpoint.parse("[::1]:80") == Endpoint("::1", 80)
    assert Endpoint.parse("[0:0::1]:65535") == Endpoint("::1", 65535)
    assert Endpoint.parse("10.0.0.1:80").family == socket.AF_INET
    for bad in ("10.0.0.1", "::1:80", "[::1]80", "1.2.3.4:99999", "host:80", "1.2.3.4:x"):
        with pytest.raises(ValueError):
            Endpoint.parse(bad)


def make_proxy() -> Proxy:
    a = SockInfo(socket.AF_INET, Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 2), 1)
    b = SockInfo(socket.AF_INET6, Endpoint("::1", 3), Endpoint("::1", 4), None)
    return Proxy(7, "active", time.time_ns() - 2_000_000_000, a, b, DirStats(bytes=5), DirStats(shut=True))


def test_frozen() -> None:
    p = make_proxy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.id = 8  # type: ignore[misc]


def test_age() -> None:
    assert 1.5 < make_proxy().age < 10


def test_to_dict_is_json() -> None:
    p = make_proxy()
    ev = Event("del", p, "reset", 12.5)
    d = json.loads(json.dumps(ev.to_dict()))
    assert d["kind"] == "del" and d["reason"] == "reset"
    assert d["proxy"]["a"] == {"family": "inet", "local": "127.0.0.1:1", "remote": "127.0.0.1:2",
                               "tcp_state": "established", "tls": None}
    assert d["tls_alert"] is None
    assert d["proxy"]["b"]["tcp_state"] is None
    assert d["proxy"]["b"]["family"] == "inet6" and d["proxy"]["b"]["local"] == "[::1]:3"
    assert d["proxy"]["a_to_b"]["bytes"] == 5 and d["proxy"]["b_to_a"]["shut"] is True
    t = Totals(active=1, bytes=10)
    assert json.loads(json.dumps(t.to_dict()))["bytes"] == 10


def test_tls_side_names_version_and_cipher() -> None:
    tls = TlsInfo.from_codes(0x0304, 51)
    assert tls == TlsInfo("1.3", "aes-128-gcm") and str(tls) == "TLS 1.3 aes-128-gcm"
    assert TlsInfo.from_codes(0x0303, 54) == TlsInfo("1.2", "chacha20-poly1305")
    # A version or cipher a newer kernel adds is shown, not dropped.
    assert TlsInfo.from_codes(0x0305, 99) == TlsInfo("0x0305", "cipher-99")
    assert TlsInfo.parse("1.2/aes-256-gcm") == TlsInfo("1.2", "aes-256-gcm")
    assert TlsInfo.parse("-") is None
    p = make_proxy()
    side = dataclasses.replace(p.a, tls=tls)
    assert json.loads(json.dumps(side.to_dict()))["tls"] == {"version": "1.3", "cipher": "aes-128-gcm"}


def test_error_format() -> None:
    e = KproxyError(errno.EPERM, "Operation not permitted")
    assert e.errno == errno.EPERM and e.errno_name == "EPERM"
    assert str(e) == "Operation not permitted (EPERM)"
    # Negative numbers (as in nlmsgerr) and missing text fall back sanely.
    e = KproxyError(-errno.ENOTSOCK)
    assert e.errno == errno.ENOTSOCK and e.message == "Socket operation on non-socket"
    assert e.to_dict() == {"errno": errno.ENOTSOCK, "errno_name": "ENOTSOCK", "message": e.message}
    assert KproxyError(4095).errno_name == "E4095"
    # One number, two names: the kernel's (and strace's) is EOPNOTSUPP.
    assert KproxyError(errno.EOPNOTSUPP).errno_name == "EOPNOTSUPP"


def test_tcp_states_are_the_names_ss_prints() -> None:
    assert [TCP_STATES[n] for n in range(1, 13)] == [
        "established", "syn-sent", "syn-recv", "fin-wait-1", "fin-wait-2", "time-wait",
        "close", "close-wait", "last-ack", "listen", "closing", "new-syn-recv"]
    unknown = SockInfo(socket.AF_INET, Endpoint("1.2.3.4", 1), Endpoint("1.2.3.4", 2), 99)
    assert unknown.to_dict()["tcp_state"] is None


def test_error_json_shape() -> None:
    e = KproxyError(errno.ENOENT, "no such proxy")
    assert json.loads(json.dumps({"error": e.to_dict()})) == {
        "error": {"errno": 2, "errno_name": "ENOENT", "message": "no such proxy"}}


def test_library_does_not_import_shell() -> None:
    import subprocess
    import sys

    code = "import kpctl, kpctl.procfs, sys; print('rich' in sys.modules or 'prompt_toolkit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
