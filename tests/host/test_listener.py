"""Listeners in the library, /proc and the CLI, against the fakes: what
listen() sends, what listeners()/get_listener() decode, the events a
monitor gives, /proc/net/kproxy_listeners and the commands."""

from __future__ import annotations

import errno
import json
import socket
import struct
from typing import Any

import pytest

import fake_netlink as fake
from cli_fakes import FakeKproxy, Harness
from kpctl import Kproxy, KproxyError, wire
from kpctl.decode import listener_event_from_attrs
from kpctl.model import Endpoint, Listener
from kpctl.procfs import parse_listeners, parse_proxies

L = "listener"


def listener_attrs(lid: int, **over: Any) -> dict[str, Any]:
    """A listener's attributes as kproxy_fill_listener lays them out."""
    lo = socket.inet_pton(socket.AF_INET, "127.0.0.1")
    attrs: dict[str, Any] = {
        "id": lid,
        "listen": {"family": socket.AF_INET, "addr": lo, "port": 8080},
        "target": {"family": socket.AF_INET6, "addr": socket.inet_pton(socket.AF_INET6, "::1"),
                   "port": 80},
        "max-proxies": 0, "connect-timeout-ms": 10000,
        "create-time": 1_700_000_000_000_000_000,
        "accepted": 12, "created": 9, "failed-refused": 1, "failed-unreachable": 0,
        "failed-timeout": 1, "failed-other": 0, "refused-limit": 1, "active": 3, "pending": 1,
        "ended": 6, "ended-bytes-a-to-b": 6144, "ended-bytes-b-to-a": 12288,
    }
    attrs.update(over)
    return attrs


class ListeningKernel(fake.FakeKernel):
    """The fake family with listeners."""

    def __init__(self) -> None:
        super().__init__([])
        self.listeners: dict[int, dict[str, Any]] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def answer(self, sock: fake.FakeSocket, req: bytes) -> None:
        _len, mtype, flags, seq, _pid = wire.NLMSGHDR.unpack_from(req)
        if mtype == wire.GENL_ID_CTRL or not fake.SPEC.command_names[req[16]].startswith(L):
            return super().answer(sock, req)
        cmd = fake.SPEC.command_names[req[16]]
        attrs = wire.decoder(fake.SPEC).attrs(req, wire.HEADERS, len(req),
                                               wire.decoder(fake.SPEC).table_of(req[16]))
        self.requests.append((cmd, attrs))
        if flags & wire.NLM_F_DUMP == wire.NLM_F_DUMP:
            msgs = [fake.message("listener-get", a, seq, wire.NLM_F_MULTI)
                    for a in self.listeners.values()]
            for d in fake.datagrams(msgs, seq):
                sock.queue(d)
            return
        if cmd == "listener-new":
            if attrs["target"]["family"] not in (socket.AF_INET, socket.AF_INET6):
                ext = wire.nla(wire.NLMSGERR_ATTR_MSG, b"family must be AF_INET (2) or AF_INET6 (10)\0")
                sock.queue(fake.ack(req, seq, errno.EAFNOSUPPORT, ext))
                return
            lid = max(self.listeners, default=0) + 1
            self.listeners[lid] = listener_attrs(lid, target=attrs["target"],
                                                 **{"max-proxies": attrs.get("max-proxies", 0)})
            sock.queue(fake.message("listener-new", self.listeners[lid], seq) + fake.ack(req, seq))
            return
        lid = attrs.get("id")
        if lid not in self.listeners:
            ext = wire.nla(wire.NLMSGERR_ATTR_MSG, b"no such listener in this network namespace\0")
            sock.queue(fake.ack(req, seq, errno.ENOENT, ext))
        elif cmd == "listener-get":
            sock.queue(fake.message("listener-get", self.listeners[lid], seq) + fake.ack(req, seq))
        elif cmd == "listener-del":
            del self.listeners[lid]
            sock.queue(fake.ack(req, seq))


@pytest.fixture
def kernel(monkeypatch) -> ListeningKernel:
    k = ListeningKernel()
    monkeypatch.setattr(Kproxy, "_raw_socket", lambda self: k.socket())
    return k


@pytest.fixture
def kp(kernel) -> Kproxy:
    with Kproxy(spec=fake.SPEC) as k:
        yield k


def test_listen_sends_the_socket_target_and_options(kp, kernel) -> None:
    li = kp.listen(7, "[::1]:80", max_proxies=5, connect_timeout=1.5, parser=11, verdict=12,
                   source=("::1", 0))
    (cmd, attrs), = kernel.requests
    assert cmd == "listener-new"
    assert attrs == {
        "fd": 7,
        "target": {"family": socket.AF_INET6, "addr": socket.inet_pton(socket.AF_INET6, "::1"),
                   "port": 80},
        "source": {"family": socket.AF_INET6, "addr": socket.inet_pton(socket.AF_INET6, "::1"),
                   "port": 0},
        "max-proxies": 5, "connect-timeout-ms": 1500, "parser-fd": 11, "verdict-fd": 12,
    }
    assert (li.id, str(li.listen), str(li.target), li.max_proxies) == (1, "127.0.0.1:8080", "[::1]:80", 5)


def test_listeners_get_and_close(kp, kernel) -> None:
    a = kp.listen(7, "127.0.0.1:80")
    b = kp.listen(8, Endpoint("::1", 443))
    assert [x.id for x in kp.listeners()] == [a.id, b.id]
    got = kp.get_listener(b.id)
    assert (got.accepted, got.created, got.failed, got.refused_limit, got.active, got.pending) == (
        12, 9, 2, 1, 3, 1)
    kp.close_listener(a.id, end_proxies=True)
    assert kernel.requests[-1] == ("listener-del", {"id": a.id, "end-proxies": True})
    kp.close_listener(b.id)
    assert kernel.requests[-1] == ("listener-del", {"id": b.id})
    assert kp.listeners() == []
    with pytest.raises(KproxyError) as ei:
        kp.get_listener(a.id)
    assert ei.value.errno == errno.ENOENT and "no such listener" in ei.value.message


def test_bad_targets_refused_before_sending(kp, kernel) -> None:
    for bad in ("nohost", "1.2.3.4", "[::1]:99999"):
        with pytest.raises(KproxyError) as ei:
            kp.listen(7, bad)
        assert ei.value.errno == errno.EINVAL
    assert kernel.requests == []
    with pytest.raises(KproxyError) as ei:
        kp.request("listener-new", {"fd": 7, "target": {"family": 1, "addr": b"\0" * 4, "port": 1}})
    assert ei.value.errno == errno.EAFNOSUPPORT and "AF_INET" in ei.value.message


def test_listener_json_shape() -> None:
    from kpctl.decode import listener_from_attrs
    d = listener_from_attrs(listener_attrs(4, source={"family": socket.AF_INET,
                                                      "addr": b"\x7f\0\0\x09", "port": 0})).to_dict()
    assert d == {
        "id": 4, "listen": "127.0.0.1:8080", "target": "[::1]:80", "source": "127.0.0.9:0",
        "max_proxies": 0, "connect_timeout_ms": 10000, "parser_id": None, "verdict_id": None,
        "created_ns": 1_700_000_000_000_000_000,
        "counters": {"accepted": 12, "created": 9, "failed_refused": 1, "failed_unreachable": 0,
                     "failed_timeout": 1, "failed_other": 0, "refused_limit": 1, "active": 3,
                     "pending": 1, "ended": 6, "ended_bytes_a_to_b": 6144,
                     "ended_bytes_b_to_a": 12288},
    }


def test_listener_events_only_for_a_monitor_that_asks() -> None:
    spec = fake.SPEC
    ev = listener_event_from_attrs(spec.cmd("listener-del-ntf"), listener_attrs(3), spec, 5.0)
    assert ev is not None and ev.kind == "listener-del" and ev.listener.created == 9
    assert ev.to_dict()["listener"]["id"] == 3
    assert listener_event_from_attrs(spec.cmd("proxy-new-ntf"), {}, spec) is None
    from kpctl.client import Monitor
    for listeners, want in ((False, []), (True, ["listener-new"])):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        mon = Monitor(a, fake.FAMILY_ID, spec, listeners)
        b.send(fake.message("listener-new-ntf", listener_attrs(2), 0))
        got = mon.get(1)
        assert [e.kind for e in ([got] if got else [])] == want
        mon.close()
        b.close()


def test_a_listeners_proxy_carries_its_id() -> None:
    from kpctl.decode import proxy_from_attrs
    p = proxy_from_attrs(dict(fake.proxy_attrs(5), **{"listener-id": 2}), fake.SPEC)
    assert p.listener_id == 2 and p.to_dict()["listener_id"] == 2
    assert proxy_from_attrs(fake.proxy_attrs(6), fake.SPEC).listener_id is None


def test_list_path_reads_the_listener_id(kp, kernel) -> None:
    kernel.proxies = {1: fake.proxy_attrs(1), 2: dict(fake.proxy_attrs(2), **{"listener-id": 7})}
    assert [(p.id, p.listener_id) for p in kp.list()] == [(1, None), (2, 7)]
    assert kp.list()[1].a_to_b.bytes == 2000


PROC_HEADER = ("id state a_local a_remote b_local b_remote ab_bytes ab_skbs ab_msgs ab_drops "
               "ab_queued ba_bytes ba_skbs ba_msgs ba_drops ba_queued created ab_parser "
               "ab_verdict ba_parser ba_verdict a_tls b_tls listener")


def test_proc_listener_column() -> None:
    row = "1.1.1.1:1 2.2.2.2:2 3.3.3.3:3 4.4.4.4:4 10 1 1 0 0 20 2 2 0 0 99 0 0 0 0 - -"
    text = f"{PROC_HEADER}\n5 active {row} 3\n6 active {row} -\n"
    assert [(p.id, p.listener_id) for p in parse_proxies(text)] == [(5, 3), (6, None)]
    # An older module's file, without the column, still parses.
    old = PROC_HEADER.rsplit(" ", 1)[0]
    assert parse_proxies(f"{old}\n7 active {row}\n")[0].listener_id is None


def test_proc_listeners_file() -> None:
    text = ("id listen target source max_proxies connect_timeout_ms parser verdict accepted "
            "created failed_refused failed_unreachable failed_timeout failed_other "
            "refused_limit active pending created_ns ended ended_bytes_a_to_b ended_bytes_b_to_a\n"
            "3 127.0.0.1:8080 [::1]:80 - 0 10000 0 0 12 9 1 0 1 0 1 3 1 1700000000000000000 6 10 20\n"
            "4 [::]:443 10.0.0.2:443 10.0.0.1:0 100 500 17 0 5 5 0 0 0 0 0 5 0 1700000000000000001"
            " 0 0 0\n")
    a, b = parse_listeners(text)
    assert a == Listener(3, Endpoint("127.0.0.1", 8080), Endpoint("::1", 80), None, 0, 10000,
                         None, None, 1700000000000000000, 12, 9, 1, 0, 1, 0, 1, 3, 1, 6, 10, 20)
    assert (str(b.source), b.max_proxies, b.parser_id, b.active) == ("10.0.0.1:0", 100, 17, 5)
    assert parse_listeners("") == []
    # An older module's file, without the ended columns, still parses.
    old = text.split("\n")[0].rsplit(" ", 3)[0] + "\n" + \
        "3 127.0.0.1:8080 [::1]:80 - 0 10000 0 0 12 9 1 0 1 0 1 3 1 1700000000000000000\n"
    assert parse_listeners(old)[0].ended == 0


# --- the commands ---------------------------------------------------------------------


class ListeningFake(FakeKproxy):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.listeners_: dict[int, Listener] = {}

    def listen(self, sock, target, **kw):
        self.calls.append(("listen", str(target), {k: v for k, v in kw.items() if v is not None}))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        li = Listener(len(self.listeners_) + 1, Endpoint(*sock.getsockname()[:2]),
                      Endpoint.parse(target), None, kw.get("max_proxies") or 0, 10000, None,
                      None, 0)
        self.listeners_[li.id] = li
        return li

    def listeners(self):
        return list(self.listeners_.values())

    def get_listener(self, lid):
        try:
            return self.listeners_[lid]
        except KeyError:
            raise KproxyError(errno.ENOENT, "no such listener in this network namespace") from None

    def close_listener(self, lid, end_proxies=False):
        self.calls.append(("close_listener", lid, end_proxies))
        self.get_listener(lid)
        del self.listeners_[lid]


def test_cli_listen_list_show_unlisten() -> None:
    h = Harness(ListeningFake())
    assert h.run("listen", "127.0.0.1:0", "127.0.0.1:80", "--max-proxies", "9",
                 "--connect-timeout", "2") == 0, h.err
    assert h.out.strip() == "1"
    assert h.client.calls[-1] == ("listen", "127.0.0.1:80", {"max_proxies": 9, "connect_timeout": 2.0})
    assert h.run("-j", "list", "listeners") == 0
    (d,) = json.loads(h.out)
    assert d["id"] == 1 and d["target"] == "127.0.0.1:80" and d["max_proxies"] == 9
    assert h.run("list", "listeners") == 0
    header, line = h.out.splitlines()
    assert header.split()[:3] == ["ID", "LISTEN", "TARGET"] and line.split()[2] == "127.0.0.1:80"
    assert h.run("show", "--listener", "1") == 0 and "connect_timeout_ms  10000" in h.out
    assert h.run("-j", "show", "-l", "1") == 0 and json.loads(h.out)["id"] == 1
    assert h.run("unlisten", "1", "--kill") == 0 and "listener 1 deleted" in h.out
    assert h.client.calls[-1] == ("close_listener", 1, True)
    assert h.run("-j", "unlisten", "1") == 2
    assert json.loads(h.out)["error"]["errno_name"] == "ENOENT"


def test_cli_listen_refuses_a_verdict_without_a_parser() -> None:
    h = Harness(ListeningFake())
    assert h.run("listen", ":0", "127.0.0.1:80", "--verdict", "drop-prefix") == 1
    assert "--verdict needs --parser" in h.err
    assert not [c for c in h.client.calls if c[0] == "listen"]


def test_struct_sizes_are_what_the_kernel_reads() -> None:
    # connect-timeout-ms is a u32 of milliseconds; a port a u16.
    a = fake.SPEC.attr("listener", "connect-timeout-ms")
    e = fake.SPEC.attr("endpoint", "port")
    assert (a.type, e.type) == ("u32", "u16")
    assert struct.calcsize("=I") == 4


def test_completion_of_listener_ids() -> None:
    from prompt_toolkit.document import Document

    from kpctl.shell.completer import KpctlCompleter
    c = KpctlCompleter(ids=lambda: {3: "proxy"}, listeners=lambda: {7: "a > b", 12: "c > d"})

    def texts(line: str) -> list[str]:
        return [x.text for x in c.get_completions(Document(line, len(line)), None)]

    assert texts("unlisten ") == ["7", "12"]
    assert texts("unlisten 1") == ["12"]
    assert texts("show --listener ") == ["7", "12"]
    assert texts("show ") == ["3"]


# --- serve on a kernel listener ---------------------------------------------------------


def waiter(events: list):
    """wait(pred): until pred() holds, 10 s at most (the events tell why not)."""
    import time as _time

    def wait(pred) -> None:
        deadline = _time.monotonic() + 10
        while not pred():
            assert _time.monotonic() < deadline, events
            _time.sleep(0.02)
    return wait


class ListenerClient:
    """What ListenerServer asks of a Kproxy: listen, the news of its
    proxies on fileno(), the listener's counters, close_listener."""

    def __init__(self) -> None:
        import threading
        self.r, self.w = socket.socketpair()
        self.lock = threading.Lock()
        self.news: list[Any] = []
        self.counters: dict[str, int] = {}
        self.calls: list[tuple] = []

    def fileno(self) -> int:
        return self.r.fileno()

    def listen(self, sock, target, **kw):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        self.calls.append(("listen", target, kw))
        return Listener(5, Endpoint(*sock.getsockname()[:2]), Endpoint(*target), None,
                        kw.get("max_proxies") or 0, 1000, None, None, 0)

    def push(self, kind: str, pid: int, **attrs: Any) -> None:
        from kpctl.decode import proxy_from_attrs
        from kpctl.model import Event
        p = proxy_from_attrs(dict(fake.proxy_attrs(pid), **{"listener-id": 5}), fake.SPEC)
        with self.lock:
            self.news.append(Event(kind, p, attrs.get("reason"), 0.0))
        self.w.send(b"x")

    def ended(self, timeout=0.0, *, with_new=False):
        assert with_new
        try:
            self.r.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        with self.lock:
            out, self.news = self.news, []
        return out

    def get_listener(self, lid):
        assert lid == 5
        return Listener(5, Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 2), None, 0, 1000,
                        None, None, 0, **self.counters)

    def close_listener(self, lid, end_proxies=False):
        self.calls.append(("close_listener", lid, end_proxies))

    def destroy(self, pid):
        self.calls.append(("destroy", pid))
        self.push("del", pid, reason="user")

    def list(self):
        return []


def test_serve_on_a_kernel_listener_reports_what_the_kernel_tells() -> None:
    import threading

    from kpctl.address import Address
    from kpctl.serve import ServeOptions
    from kpctl.serve_listener import ListenerServer, make_server
    client = ListenerClient()
    events: list[tuple[str, dict]] = []
    opts = ServeOptions(max_conns=3, connect_timeout=1.0, on_stop="kill")
    server = make_server(client, Address("127.0.0.1", 0, socket.AF_INET),
                         Address("127.0.0.1", 9, socket.AF_INET), opts,
                         on_event=lambda k, d: events.append((k, d)))
    assert isinstance(server, ListenerServer)
    server.open()
    assert client.calls[0] == ("listen", ("127.0.0.1", 9),
                               {"max_proxies": 3, "connect_timeout": 1.0, "parser": None,
                                "verdict": None, "notify": True})
    t = threading.Thread(target=server.run, kwargs={"install_signals": False})
    t.start()
    wait = waiter(events)

    client.push("new", 1)
    client.push("new", 2)
    client.push("del", 1, reason="closed")
    client.counters = {"accepted": 5, "created": 2, "failed_refused": 2, "refused_limit": 1}
    wait(lambda: len([e for e in events if e[0] == "failed"]) == 2
         and any(e[0] == "refused" for e in events))
    # What the kernel counted after the last tick is in the summary too.
    client.counters = dict(client.counters, accepted=7, failed_timeout=1)
    server.stop("kill")
    t.join(10)
    assert not t.is_alive()
    kinds = [k for k, _ in events]
    assert kinds[0] == "listening" and kinds[-1] == "stopped"
    proxies = [d for k, d in events if k == "proxy"]
    assert [p["id"] for p in proxies] == [1, 2] and proxies[0]["client"] == "127.0.0.1:10001"
    failed = [d for k, d in events if k == "failed"][0]
    assert failed["client"] is None and failed["stage"] == "connect"
    assert failed["error"]["errno_name"] == "ECONNREFUSED"
    summary = events[-1][1]
    assert (summary["accepted"], summary["created"], summary["failed"], summary["refused"]) == (7, 2, 3, 1)
    assert summary["failures"] == {"ECONNREFUSED": 2, "ETIMEDOUT": 1} and summary["ended"] == 2
    assert ("close_listener", 5, False) in client.calls and ("destroy", 2) in client.calls


class CountingClient(ListenerClient):
    """A kernel listener that notifies nobody: counters and dumps only."""

    def __init__(self) -> None:
        super().__init__()
        self.alive: list[int] = []
        self.shut_seen = False

    def ended(self, timeout=0.0, *, with_new=False):
        raise AssertionError("an unnotified listener has no news to read")

    def list(self):
        from types import SimpleNamespace
        self.calls.append(("list",))
        return [SimpleNamespace(id=pid, listener_id=5) for pid in self.alive] + \
            [SimpleNamespace(id=99, listener_id=6)]  # another listener's

    def destroy(self, pid):
        self.calls.append(("destroy", pid))


def test_serve_without_connection_events_counts_from_the_listener() -> None:
    """Text output needs no event per connection: the listener notifies
    nobody, the counters (ended bytes included) come from listener-get,
    and a drain keeps the listener (shut, counting) until its proxies are
    gone, then deletes it."""
    import threading

    from kpctl.address import Address
    from kpctl.serve import ServeOptions
    from kpctl.serve_listener import make_server
    client = CountingClient()
    events: list[tuple[str, dict]] = []
    opts = ServeOptions(on_stop="drain", connection_events=False)
    server = make_server(client, Address("127.0.0.1", 0, socket.AF_INET),
                         Address("127.0.0.1", 9, socket.AF_INET), opts,
                         on_event=lambda k, d: events.append((k, d)))
    addr = server.open()
    assert client.calls[0][2]["notify"] is False
    t = threading.Thread(target=server.run, kwargs={"install_signals": False})
    t.start()
    wait = waiter(events)

    client.counters = {"accepted": 3, "created": 3, "active": 2, "ended": 1,
                       "ended_bytes_a_to_b": 100, "ended_bytes_b_to_a": 200}
    wait(lambda: server.snapshot().get("active") == 2)
    assert server.snapshot()["created"] == 3 and server.snapshot()["bytes_b_to_a"] == 200
    client.alive = [7, 8]
    server.stop()  # drain
    wait(lambda: any(e[0] == "stopping" for e in events))
    # Shut: a new client is refused, while the listener still counts.
    with pytest.raises(OSError):
        socket.create_connection((addr.host, addr.port), timeout=2).close()
    assert not any(c[0] == "close_listener" for c in client.calls)
    client.counters = dict(client.counters, active=0, ended=3, ended_bytes_a_to_b=300,
                           ended_bytes_b_to_a=600)
    client.alive = []
    t.join(10)
    assert not t.is_alive()
    assert client.calls[-1] == ("close_listener", 5, False)
    summary = events[-1][1]
    assert (summary["created"], summary["ended"], summary["active"]) == (3, 3, 0)
    assert (summary["bytes_a_to_b"], summary["bytes_b_to_a"]) == (300, 600)
    assert not [e for e in events if e[0] in ("proxy", "ended")]


def test_serve_keeps_the_userspace_path_when_asked_or_needed() -> None:
    from kpctl.address import Address
    from kpctl.serve import Server, ServeOptions
    from kpctl.serve_listener import ListenerServer, make_server
    a = Address("127.0.0.1", 0, socket.AF_INET)
    b = Address("127.0.0.1", 9, socket.AF_INET)
    assert type(make_server(ListenerClient(), a, b, ServeOptions(userspace=True))) is Server
    assert type(make_server(object(), a, b, ServeOptions())) is Server  # no listen()
    assert type(make_server(None, a, b, ServeOptions())) is ListenerServer


def test_monitor_prints_listener_events() -> None:
    from kpctl.decode import listener_from_attrs
    from kpctl.model import ListenerEvent

    class MonitoringFake(ListeningFake):
        def monitor(self, listeners=False):
            assert listeners
            li = listener_from_attrs(listener_attrs(3))
            return iter([ListenerEvent("listener-new", li, 1.0), ListenerEvent("listener-del", li, 2.0)])

    h = Harness(MonitoringFake())
    assert h.run("monitor") == 0
    first, second = h.out.splitlines()
    assert "[LISTEN] listener 3 127.0.0.1:8080 > [::1]:80" in first
    assert "[UNLISTEN]" in second and "accepted 12 created 9 failed 2 refused 1" in second
    assert h.run("-j", "monitor") == 0
    assert [json.loads(x)["kind"] for x in h.out.splitlines()] == ["listener-new", "listener-del"]
