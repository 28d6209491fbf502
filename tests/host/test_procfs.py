"""/proc/net/kproxy and kproxy_stat parsing (docs/CONTRACT.md)."""

from __future__ import annotations

import socket

import pytest

from kpctl import Totals
from kpctl.procfs import ProcFormatError, parse_proxies, parse_totals, read_proxies, read_totals

HEADER = (
    "id state a_local a_remote b_local b_remote ab_bytes ab_skbs ab_msgs ab_drops "
    "ab_queued ba_bytes ba_skbs ba_msgs ba_drops ba_queued created"
)


def test_ipv4_and_ipv6_lines() -> None:
    text = (
        HEADER + "\n"
        "1 active 127.0.0.1:5000 127.0.0.1:40000 127.0.0.1:40001 127.0.0.1:6000 "
        "100 2 2 0 10 200 3 3 1 0 1700000000000000000\n"
        "2 half-closed [::1]:80 [::1]:5555 [fe80::1]:81 [2001:db8::2]:443 "
        "18446744073709551615 0 0 0 0 0 0 0 0 0 5\n"
    )
    a, b = parse_proxies(text)
    assert a.id == 1 and a.state == "active" and a.created_ns == 1700000000000000000
    assert str(a.a.local) == "127.0.0.1:5000" and str(a.b.remote) == "127.0.0.1:6000"
    assert a.a.family == socket.AF_INET and a.a.tcp_state is None
    assert a.a_to_b.bytes == 100 and a.a_to_b.queued == 10 and a.b_to_a.drops == 1
    assert b.a.family == socket.AF_INET6 and str(b.b.remote) == "[2001:db8::2]:443"
    assert b.a_to_b.bytes == 2**64 - 1 and b.state == "half-closed"


def test_columns_by_header_and_extra_ignored() -> None:
    cols = HEADER.split()
    cols.reverse()
    cols.insert(3, "future_col")
    values = {
        "id": "9", "state": "closing", "a_local": "1.1.1.1:1", "a_remote": "2.2.2.2:2",
        "b_local": "3.3.3.3:3", "b_remote": "4.4.4.4:4", "ab_bytes": "11", "ab_skbs": "12",
        "ab_msgs": "13", "ab_drops": "14", "ab_queued": "15", "ba_bytes": "21", "ba_skbs": "22",
        "ba_msgs": "23", "ba_drops": "24", "ba_queued": "25", "created": "99", "future_col": "zzz",
    }  # fmt: skip
    text = " ".join(cols) + "\n" + " ".join(values[c] for c in cols) + "\n"
    (p,) = parse_proxies(text)
    assert p.id == 9 and p.state == "closing" and p.created_ns == 99
    assert str(p.a.remote) == "2.2.2.2:2" and str(p.b.local) == "3.3.3.3:3"
    assert (p.a_to_b.bytes, p.a_to_b.skbs, p.a_to_b.msgs, p.a_to_b.drops, p.a_to_b.queued) == (11, 12, 13, 14, 15)
    assert (p.b_to_a.bytes, p.b_to_a.queued) == (21, 25)


def test_header_only_and_empty() -> None:
    assert parse_proxies(HEADER + "\n") == []
    assert parse_proxies("") == []


def test_bad_files() -> None:
    with pytest.raises(ProcFormatError, match="created"):
        parse_proxies(HEADER.replace(" created", "") + "\n")
    with pytest.raises(ProcFormatError, match="line 2"):
        parse_proxies(HEADER + "\n1 active 1.1.1.1:1\n")
    with pytest.raises(ProcFormatError, match="line 2"):
        parse_proxies(HEADER + "\n" + " ".join(["x"] * 17) + "\n")


def test_totals() -> None:
    text = "\n".join(f"{name} {i}" for i, name in enumerate(Totals.field_names(), start=1))
    t = parse_totals(text + "\nsomething_new 5\n")
    names = Totals.field_names()
    assert [getattr(t, n) for n in names] == list(range(1, len(names) + 1))
    assert t.ended_netns_exit == Totals.field_names().index("ended_netns_exit") + 1
    with pytest.raises(ProcFormatError):
        parse_totals("active x\n")


def test_read_files(tmp_path) -> None:
    p = tmp_path / "kproxy"
    p.write_text(HEADER + "\n3 active 1.1.1.1:1 2.2.2.2:2 3.3.3.3:3 4.4.4.4:4 0 0 0 0 0 0 0 0 0 0 1\n")
    assert [x.id for x in read_proxies(str(p))] == [3]
    s = tmp_path / "stat"
    s.write_text("active 3\ncreated 4\n")
    assert read_totals(str(s)) == Totals(active=3, created=4)


def test_live_ids(tmp_path) -> None:
    from kpctl.procfs import live_ids

    f = tmp_path / "kproxy"
    f.write_text(HEADER + "\n"
                 "3 active 127.0.0.1:1 127.0.0.1:2 127.0.0.1:3 127.0.0.1:4 0 0 0 0 0 0 0 0 0 0 1\n"
                 "12 closing [::1]:1 [::1]:2 [::1]:3 [::1]:4 0 0 0 0 0 0 0 0 0 0 1\n")
    assert live_ids(str(f)) == [3, 12]
    f.write_text(HEADER + "\n")
    assert live_ids(str(f)) == []
    assert live_ids(str(tmp_path / "absent")) == []  # module not loaded
    f.write_text("state id\nactive 3\n")
    with pytest.raises(ProcFormatError):
        live_ids(str(f))
