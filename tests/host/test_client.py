"""Kproxy against a fake family (fake_netlink): family resolution, do and
dump requests, refusals in the kernel's words, unicast ends."""

from __future__ import annotations

import errno
import select
import time

import pytest

import fake_netlink as fake
from kpctl import Kproxy, KproxyError


@pytest.fixture
def kernel(monkeypatch) -> fake.FakeKernel:
    k = fake.FakeKernel([fake.proxy_attrs(1), fake.proxy_attrs(2, v6=True)])
    monkeypatch.setattr(Kproxy, "_raw_socket", lambda self: k.socket())
    return k


@pytest.fixture
def kp(kernel) -> Kproxy:
    with Kproxy(spec=fake.SPEC) as k:
        yield k


def test_family_resolved_by_the_controller(kp) -> None:
    assert (kp.family_id, kp.version, kp.mcast_groups) == (fake.FAMILY_ID, 1, {"monitor": fake.MONITOR_GROUP})


def test_module_not_loaded(monkeypatch) -> None:
    k = fake.FakeKernel(loaded=False)
    monkeypatch.setattr(Kproxy, "_raw_socket", lambda self: k.socket())
    with pytest.raises(KproxyError) as ei:
        Kproxy(spec=fake.SPEC)
    assert str(ei.value) == "kproxy module not loaded (family 'kproxy' not found) (ENOENT)"
    assert all(s.closed for s in k.sockets)


def test_get_list_destroy(kp, kernel) -> None:
    p = kp.get(2)
    assert (p.id, str(p.a.local), p.a.to_dict()["tcp_state"]) == (2, "[::1]:40000", "established")
    assert [x.id for x in kp.list()] == [1, 2]
    assert kp.list() == [kp.get(1), kp.get(2)]
    kp.destroy(1)
    assert [x.id for x in kp.list()] == [2]


def test_refusals_name_the_attribute(kp) -> None:
    with pytest.raises(KproxyError) as ei:
        kp.get(99)
    assert (ei.value.errno, ei.value.message) == (errno.ENOENT, "no such proxy (attribute id)")
    with pytest.raises(KproxyError) as ei:
        kp.request("proxy-new", {"fd-a": 3})
    assert ei.value.message == "Missing attribute (missing attribute fd-b)"
    with pytest.raises(KproxyError) as ei:
        kp.request("proxy-get", {"id": 1, "sock-a": 5})
    assert ei.value.errno == errno.EINVAL and "dict" in ei.value.message


def test_unicast_ends_are_kept_for_ended(kp, kernel) -> None:
    t0 = time.monotonic()
    assert kp.ended() == []
    assert time.monotonic() - t0 < 0.5  # ended(0) never waits, though the socket has a timeout
    mine = kp.create(5, 6, notify_end=True)
    other = kp.create(7, 8)
    kernel.end(mine.id, 2)  # reset, by the peer: arrives with nobody reading
    assert select.select([kp.fileno()], [], [], 0)[0] == [kp.fileno()]
    kernel.end(other.id, 1)  # not asked for: never seen here
    (ev,) = kp.ended()
    assert (ev.kind, ev.reason, ev.proxy.id) == ("del", "reset", mine.id)
    assert kp.ended() == []
    # An end that arrives while a request waits for its reply is kept too.
    third = kp.create(9, 10, notify_end=True)
    kp.destroy(third.id)
    assert [(e.proxy.id, e.reason) for e in kp.ended(timeout=1.0)] == [(third.id, "user")]
    # and while a dump runs
    fourth = kp.create(11, 12, notify_end=True)
    kernel.end(fourth.id, 1)
    assert fourth.id not in [p.id for p in kp.list()]
    assert [e.proxy.id for e in kp.ended()] == [fourth.id]


def test_creates_in_one_send_without_acks(kp, kernel) -> None:
    """send_creates: one datagram for many proxy-new, no ack asked; the
    answers by seq, a refusal in the kernel's words, ends kept meanwhile."""
    sock = kernel.sockets[-1]
    kernel.refused_fds.add(8)
    sent = sock.sent
    seqs = kp.send_creates([(5, 6), (7, 8), (9, 10)])
    assert sock.sent == sent + 1 and len(set(seqs)) == 3
    got = kp.read_created(seqs)
    ok = [got[seqs[0]], got[seqs[2]]]
    assert all(isinstance(i, int) for i in ok) and sorted(ok) == sorted(set(kernel.proxies) - {1, 2})
    err = got[seqs[1]]
    assert isinstance(err, KproxyError)
    assert (err.errno, err.message) == (errno.ENOTCONN, "not a connected TCP socket (attribute fd-b)")
    # Nothing is left on the socket: no acks came (a request after this one
    # gets its own answer), and the proxies were asked to report their end.
    assert select.select([kp.fileno()], [], [], 0)[0] == []
    assert kp.get(ok[0]).id == ok[0]
    kernel.end(ok[1], 1)
    more = kp.send_creates([(11, 12)])
    (pid,) = kp.read_created(more).values()
    assert [(e.proxy.id, e.reason) for e in kp.ended()] == [(ok[1], "closed")]
    assert kp.send_creates([]) == [] and kp.read_created([]) == {}
    assert isinstance(pid, int)


def test_an_answer_lost_is_enobufs(kp, kernel) -> None:
    seqs = kp.send_creates([(5, 6)])
    kernel.sockets[-1].inbox.clear()  # dropped: the receive buffer was full
    kernel.sockets[-1]._r.recv(16)
    (err,) = kp.read_created(seqs).values()
    assert isinstance(err, KproxyError) and err.errno == errno.ENOBUFS
    with pytest.raises(KproxyError) as ei:
        kp.ended()
    assert ei.value.errno == errno.ENOBUFS


def test_notify_end_needs_the_attribute_in_the_schema(kernel) -> None:
    import copy

    from kpctl import spec as spec_mod

    raw = copy.deepcopy(dict(fake.SPEC.raw))
    root = next(s for s in raw["attribute-sets"] if s["name"] == fake.SPEC.root_set)
    root["attributes"] = [a for a in root["attributes"] if a["name"] != "notify"]
    with Kproxy(spec=spec_mod.build(raw, fake.SPEC.path)) as k:
        with pytest.raises(KproxyError) as ei:
            k.create(1, 2, notify_end=True)
    assert ei.value.errno == errno.EOPNOTSUPP


def test_closed_handle_refuses(kernel) -> None:
    k = Kproxy(spec=fake.SPEC)
    k.close()
    with pytest.raises(KproxyError) as ei:
        k.list()
    assert ei.value.errno == errno.EBADF


def test_ended_brief_parses_what_serve_counts(kp, kernel) -> None:
    """ended_brief(): the same ends as ended(), as (id, reason, bytes each
    way, tls alert), including those a request met on its way."""
    (a, b, c) = kp.read_created(kp.send_creates([(5, 6), (7, 8), (9, 10)])).values()
    kernel.end(a, 2)
    kp.destroy(b)  # its end arrives before the ack: kept by the request
    kernel.end(c, 1)
    want = {a: (a, "reset", a * 1000, (a + 1) * 1000, None),
            b: (b, "user", b * 1000, (b + 1) * 1000, None),
            c: (c, "closed", c * 1000, (c + 1) * 1000, None)}
    got = kp.ended_brief()
    assert sorted(tuple(e) for e in got) == sorted(want.values())
    assert kp.ended_brief() == [] and kp.ended() == []
    # the answers and ends are read through a non-blocking twin of the
    # request socket, closed with the handle
    (twin,) = kernel.sockets[-1].dups
    kp.close()
    assert twin.closed and kernel.sockets[-1].closed
