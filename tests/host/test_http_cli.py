"""kpctl's HTTP commands: attach http-filter with rule options (real
programs loaded on the host, a fake netlink client), http-rules on a
running filter, serve --http's options and attach plan, show's counts,
and the `denied` counters from /proc and netlink."""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from cli_fakes import FakeKproxy, Harness, make_proxy

from kpctl import bpf, http
from kpctl.bpf import BpfError
from kpctl.errors import KproxyError
from kpctl.model import Endpoint, Listener

REPO = Path(__file__).resolve().parents[2]


def _why_no_bpf() -> str | None:
    try:
        bpf.libbpf()
    except BpfError as e:
        return str(e)
    return bpf.available()


needs_bpf = pytest.mark.skipif(_why_no_bpf() is not None, reason=f"bpf: {_why_no_bpf()}")


@pytest.fixture(scope="module")
def objs(tmp_path_factory) -> Path:
    """The shipped programs, built as `make` does."""
    if shutil.which("clang") is None:
        pytest.skip("clang not installed")
    out = tmp_path_factory.mktemp("bpf")
    r = subprocess.run(["make", "-s", "-C", str(REPO / "kmod" / "bpf"), f"OUT={out}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture
def parser(objs, monkeypatch):
    """A real http parser, as if attached to proxy 3 on both directions."""
    monkeypatch.setenv("KPROXY_BPF_DIR", str(objs))
    prog = bpf.load("http")
    yield prog
    prog.close()


def _proxy_with(parser_id=None, verdict_id=None, pid=3):
    p = make_proxy(pid)
    dirs = {d: dataclasses.replace(getattr(p, d), parser_id=parser_id) for d in ("a_to_b",
                                                                                "b_to_a")}
    dirs["a_to_b"] = dataclasses.replace(dirs["a_to_b"], verdict_id=verdict_id)
    return dataclasses.replace(p, **dirs)


class HoldingKproxy(FakeKproxy):
    """A fake client that keeps what it attaches loaded, as the kernel does."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.held = []

    def attach(self, pid, kind, prog, direction="both", *, replies=None):
        super().attach(pid, kind, prog, direction, replies=replies)
        self.held.append(bpf.from_fd(prog.fileno()))  # closed with the test's objects


def _attached_filter(h: Harness) -> int:
    """The id of the program the fake client was asked to attach as a verdict."""
    return h.client.progs[(3, "verdict")]


@needs_bpf
def test_attach_http_filter_loads_it_on_the_parsers_state_with_the_rules(parser):
    h = Harness(HoldingKproxy([_proxy_with(parser.id)]))
    h.client.progs[(3, "parser")] = parser.id
    rc = h.run("-j", "attach", "3", "verdict", "http-filter", "--dir", "a-to-b",
               "--deny-path", "/admin", "--deny-path", "/debug",
               "--allow-methods", "get,head,POST", "--max-header-bytes", "16384")
    assert rc == 0, h.err
    fid = _attached_filter(h)
    assert h.client.calls[-1][-1] == "a-to-b"
    assert h.client.replies[3] == http.CANNED_REPLIES
    # The kernel's view of the loaded filter: its rules, and the parser's map.
    assert http.rules_attached(fid) == http.HttpRules(
        allow_methods=frozenset({"GET", "HEAD", "POST"}), deny_paths=("/admin", "/debug"),
        max_header_bytes=16384)
    out = json.loads(h.out)
    assert out["rules"]["deny_paths"] == ["/admin", "/debug"]
    assert out["rules"]["allow_methods"] == ["GET", "HEAD", "POST"]
    state_ids = {m for m in _map_ids(parser.id)} & {m for m in _map_ids(fid)}
    assert len(state_ids) == 1, "the filter shares the parser's http_state"


def _map_ids(prog_id: int) -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"bpftool: {out.stderr.strip()}")
    return set(json.loads(out.stdout).get("map_ids", []))


@needs_bpf
def test_attach_reads_a_rules_file_and_options_add_to_it(parser, tmp_path):
    rules = tmp_path / "waf.rules"
    rules.write_text("# site rules\ndeny-path /admin\nmax-body-bytes 1024\n")
    h = Harness(HoldingKproxy([_proxy_with(parser.id)]))
    h.client.progs[(3, "parser")] = parser.id
    assert h.run("attach", "3", "verdict", "http-filter", "--rules", str(rules),
                 "--deny-path", "/x", "--max-body-bytes", "2048") == 0, h.err
    assert http.rules_attached(_attached_filter(h)) == http.HttpRules(
        deny_paths=("/admin", "/x"), max_body_bytes=2048)
    assert "verdict http_filter" in h.out


def test_attach_http_filter_without_a_parser_says_what_to_do():
    h = Harness(FakeKproxy([_proxy_with(None)]))
    assert h.run("attach", "3", "verdict", "http-filter") == 2
    assert "proxy 3 has no parser: attach the http parser first" in h.err


@pytest.mark.parametrize("argv, message", [
    (("attach", "3", "parser", "http", "--deny-path", "/a"),
     "the rule options (--rules, --deny-path ...) configure the http-filter verdict"),
    (("attach", "3", "verdict", "http-filter", "--allow-methods", "GET,FETCH"),
     "--allow-methods: unknown method FETCH"),
    (("attach", "3", "verdict", "http-filter", "--deny-path", "/has space"),
     "1 to 64 bytes without spaces or controls"),
    (("attach", "3", "verdict", "http-filter", "--rules", "/nonexistent/waf.rules"),
     "cannot read /nonexistent/waf.rules"),
    (("serve", ":8080", "127.0.0.1:80", "--deny-path", "/a"),
     "HTTP rules (--rules, --deny-path ...) go with --http"),
    (("serve", ":8080", "127.0.0.1:80", "--http", "--parser", "lines"),
     "--http attaches the http parser and filter: no --parser or --verdict with it"),
])
def test_rule_option_mistakes_are_usage_errors(argv, message):
    h = Harness(FakeKproxy([_proxy_with(7)]))
    assert h.run(*argv) == 1
    assert message in h.err


def test_rules_file_mistake_names_its_line(tmp_path):
    rules = tmp_path / "waf.rules"
    rules.write_text("deny-path /a\nmax-headers lots\n")
    h = Harness(FakeKproxy([_proxy_with(7)]))
    assert h.run("attach", "3", "verdict", "http-filter", "--rules", str(rules)) == 1
    assert f"{rules}: line 2: max-headers needs a number" in h.err


@needs_bpf
def test_http_rules_prints_then_replaces_the_rules_in_force(parser):
    progs = http.load_http(parser=False, parser_prog_id=parser.id,
                           rules=http.HttpRules(deny_paths=("/admin",)))
    try:
        fid = progs.filter.id
        h = Harness(FakeKproxy([_proxy_with(parser.id, fid)]))
        assert h.run("http-rules", "3") == 0, h.err
        assert h.out == f"proxy 3: http-filter (id {fid}) rules in force:\n  deny-path /admin\n"
        assert h.run("http-rules", "3", "--allow-methods", "GET", "--deny-host",
                     "evil.example") == 0, h.err
        assert http.rules_attached(fid) == http.HttpRules(
            allow_methods=frozenset({"GET"}), deny_hosts=("evil.example",))
        assert "rules set:\n  allow-methods GET\n  deny-host evil.example\n" in h.out
        assert h.run("-j", "http-rules", "3") == 0
        assert json.loads(h.out)["rules"]["deny_hosts"] == ["evil.example"]
    finally:
        progs.close()


@needs_bpf
def test_http_rules_on_a_listener_changes_its_filter(parser):
    progs = http.load_http(parser=False, parser_prog_id=parser.id)
    try:
        client = FakeKproxy()
        client.listener_table[1] = Listener(1, Endpoint("0.0.0.0", 8080), Endpoint("127.0.0.1", 80),
                                       None, 0, 10000, parser.id, progs.filter.id, 0,
                                       verdict_direction="a-to-b")
        h = Harness(client)
        assert h.run("http-rules", "--listener", "1", "--max-headers", "50") == 0, h.err
        assert http.rules_attached(progs.filter.id) == http.HttpRules(max_headers=50)
        assert h.out.startswith(f"listener 1: http-filter (id {progs.filter.id}) rules set")
        assert h.run("http-rules", "1") == 2  # proxy 1 does not exist
        assert "no proxy with this id" in h.err
    finally:
        progs.close()


def test_http_rules_on_a_proxy_without_verdict_is_enoent():
    h = Harness(FakeKproxy([_proxy_with(5)]))
    assert h.run("-j", "http-rules", "3") == 2
    err = json.loads(h.out)["error"]
    assert err["errno_name"] == "ENOENT"
    assert err["message"] == "proxy 3 has no verdict (attach http-filter first)"


@needs_bpf
def test_http_rules_refuses_a_verdict_that_is_not_http_filter(parser, objs):
    other = bpf.load("pass")
    try:
        h = Harness(FakeKproxy([_proxy_with(parser.id, other.id)]))
        assert h.run("http-rules", "3", "--deny-path", "/a") == 2
        assert f"program {other.id} has no http_rules map: is it the http-filter?" in h.err
    finally:
        other.close()


@needs_bpf
def test_show_counts_the_requests_responses_and_denials(parser, monkeypatch):
    p = _proxy_with(parser.id)
    p = dataclasses.replace(p, a_to_b=dataclasses.replace(p.a_to_b, denied=1))
    monkeypatch.setattr(http, "counts", lambda pid, xid, created_ns: http.HttpCounts(12, 11)
                        if (pid, xid, created_ns) == (parser.id, 3, p.created_ns) else None)
    h = Harness(FakeKproxy([p]))
    assert h.run("-j", "show", "3") == 0, h.err
    d = json.loads(h.out)
    assert d["http"] == {"requests": 12, "responses": 11, "denied": 1}
    assert d["a_to_b"]["denied"] == 1
    assert h.run("show", "3") == 0
    assert "12 requests, 11 responses, 1 denied" in h.out
    assert "DENIED" in h.out


@needs_bpf
def test_counts_of_a_proxy_the_parser_never_saw_are_none(parser):
    assert http.counts(parser.id, 123456) is None


@needs_bpf
def test_counts_of_an_earlier_proxy_with_the_same_id_are_not_this_ones(parser):
    """An entry's stamp is the low 32 bits of its proxy's created_ns: an
    earlier proxy's (ids start again at a module reload) is not shown."""
    created_ns = (7 << 32) | 0xABCDEF
    state = bytearray(http.STATE_SIZE)
    struct.pack_into("I", state, http._HEADS_AT, 5)  # a-to-b: 5 requests
    struct.pack_into("I", state, http._STAMP_AT, created_ns & 0xFFFFFFFF)
    fd = http.parser_state_map(parser.id)
    try:
        http._map_update(fd, struct.pack("I", 42), bytes(state))
    finally:
        os.close(fd)
    assert http.counts(parser.id, 42, created_ns) == http.HttpCounts(5, 0)
    assert http.counts(parser.id, 42, created_ns + 1) is None
    assert http.counts(parser.id, 42) == http.HttpCounts(5, 0)


def test_show_of_a_proxy_without_parser_has_no_http_line():
    h = Harness(FakeKproxy([_proxy_with(None)]))
    assert h.run("-j", "show", "3") == 0
    assert "http" not in json.loads(h.out)


def test_top_shows_messages_and_denials_when_a_parser_is_attached():
    p = _proxy_with(7)
    p = dataclasses.replace(p, a_to_b=dataclasses.replace(p.a_to_b, msgs=9, denied=2),
                            b_to_a=dataclasses.replace(p.b_to_a, msgs=8))
    h = Harness(FakeKproxy([p, make_proxy(4)]))
    assert h.run("top", "-c", "1") == 0, h.err
    assert "MSGS A→B" in h.out and "DENIED" in h.out
    row = next(line for line in h.out.splitlines() if line.strip().startswith("3 "))
    assert row.split()[-3:] == ["9", "8", "2"]
    h = Harness(FakeKproxy([make_proxy(4)]))
    assert h.run("top", "-c", "1") == 0
    assert "DENIED" not in h.out


# --- serve --http ---------------------------------------------------------------


def test_serve_http_options_and_attach_plan(tmp_path):
    from kpctl.serve import ServeOptions
    from kpctl.shell.args import parse_args
    from kpctl.shell.service import serve_options
    from kpctl.shell.table import find_command

    rules = tmp_path / "r"
    rules.write_text("deny-path /admin\n")
    ns = parse_args(find_command("serve"), [":8080", "127.0.0.1:80", "--http", "--rules",
                                            str(rules), "--allow-methods", "GET"])
    o = serve_options(ns)
    assert o.http and o.http_rules == http.HttpRules(allow_methods=frozenset({"GET"}),
                                                     deny_paths=("/admin",))
    assert o.attach_plan("parser") == ("both", None)
    assert o.attach_plan("verdict") == ("a-to-b", http.CANNED_REPLIES)
    assert ServeOptions(parser="lines", verdict="pass").attach_plan("verdict") == ("both", None)
    assert o.to_dict()["http_rules"]["allow_methods"] == ["GET"]
    json.dumps(o.to_dict())  # serve's JSON start line carries it


def test_serve_http_loads_parser_and_filter_sharing_state(monkeypatch):
    from kpctl import serve

    seen = {}

    def load_http(**kw):
        seen.update(kw)
        return http.HttpPrograms("P", "F")

    monkeypatch.setattr(http, "load_http", load_http)
    opts = serve.ServeOptions(http=True)
    assert serve.load_programs(opts) == {"parser": "P", "verdict": "F"}
    assert seen["rules"] == http.HttpRules()


def test_serve_http_on_a_kernel_listener_gives_the_replies_and_direction():
    from kpctl.address import Address
    from kpctl.serve import ServeOptions
    from kpctl.serve_listener import ListenerServer

    calls = []

    class Client:
        def listen(self, sock, target, **kw):
            calls.append(kw)
            return Listener(9, Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 80), None, 0,
                            5000, 1, 2, 0)

    srv = ListenerServer(Client(), Address("127.0.0.1", 0, socket.AF_INET),
                         Address("127.0.0.1", 80, socket.AF_INET), ServeOptions(http=True),
                         programs={"parser": 11, "verdict": 12})
    try:
        srv.open()
        assert calls[0]["replies"] == http.CANNED_REPLIES
        assert calls[0]["verdict_direction"] == "a-to-b"
        assert (calls[0]["parser"], calls[0]["verdict"]) == (11, 12)
    finally:
        srv._listener.close()


def test_userspace_serve_attaches_the_filter_to_requests_with_replies():
    from kpctl.address import Address
    from kpctl.serve import Server, ServeOptions

    attached = []
    srv = Server(None, Address("127.0.0.1", 0, socket.AF_INET),
                 Address("127.0.0.1", 80, socket.AF_INET), ServeOptions(http=True),
                 programs={"parser": 11, "verdict": 12},
                 attach=lambda *a, **kw: attached.append((a, kw)))
    srv._attach(5, "parser", 11)
    srv._attach(5, "verdict", 12)
    assert attached == [((5, "parser", 11, "both"), {}),
                        ((5, "verdict", 12, "a-to-b"), {"replies": http.CANNED_REPLIES})]


def test_userspace_serve_http_creates_each_proxy_with_its_programs():
    """Programs given with proxy-new are in place before the first byte: a
    request the client sent at once is judged too."""
    from kpctl.address import Address
    from kpctl.serve import Server, ServeOptions

    created, attached = [], []
    srv = Server(None, Address("127.0.0.1", 0, socket.AF_INET),
                 Address("127.0.0.1", 80, socket.AF_INET), ServeOptions(http=True),
                 programs={"parser": 11, "verdict": 12},
                 create=lambda a, b, **kw: created.append(kw) or make_proxy(7),
                 attach=lambda *a, **kw: attached.append(a))
    srv._live = set()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        srv._join(a, "1.2.3.4:5", c, None, None)
        srv._flush_joins()  # the round's proxies are made together
    finally:
        for s in (a, b, c, d):
            s.close()
    assert created == [{"parser": 11, "verdict": 12, "replies": http.CANNED_REPLIES,
                        "verdict_direction": "a-to-b"}]
    assert attached == []


# --- the denied counters ---------------------------------------------------------


def test_proc_denied_columns_are_read_and_optional():
    from kpctl.procfs import parse_proxies

    head = ("id state a_local a_remote b_local b_remote ab_bytes ab_skbs ab_msgs ab_drops "
            "ab_queued ba_bytes ba_skbs ba_msgs ba_drops ba_queued created")
    line = "3 active 1.1.1.1:1 2.2.2.2:2 3.3.3.3:3 4.4.4.4:4 1 1 1 0 0 2 2 2 0 0 5"
    p = parse_proxies(f"{head} listener ab_denied ba_denied\n{line} - 4 1\n")[0]
    assert (p.a_to_b.denied, p.b_to_a.denied) == (4, 1)
    p = parse_proxies(f"{head}\n{line}\n")[0]  # an older module
    assert (p.a_to_b.denied, p.b_to_a.denied) == (0, 0)


def test_netlink_denied_and_listener_verdict_direction_are_decoded():
    from kpctl import spec as spec_mod
    from kpctl.decode import listener_from_attrs, proxy_from_attrs

    spec = spec_mod.load()
    p = proxy_from_attrs({"id": 3, "a-to-b": {"bytes": 5, "denied": 2}, "b-to-a": {}}, spec)
    assert (p.a_to_b.denied, p.b_to_a.denied) == (2, 0)
    base = {"id": 1, "parser-id": 4, "verdict-id": 5}
    assert listener_from_attrs({**base, "verdict-direction": 0}).verdict_direction == "a-to-b"
    assert listener_from_attrs(base).verdict_direction == "both"  # an older module
    assert listener_from_attrs({"id": 1}).verdict_direction is None


def test_decode_reads_back_what_encode_wrote():
    r = http.HttpRules(allow_methods=frozenset({"GET", "PATCH"}), deny_hosts=("a.b",),
                       deny_paths=("/x",), allow_paths=("/", "/y"), max_request_line=100,
                       max_header_bytes=2000, max_headers=30, max_body_bytes=1 << 40)
    assert http.decode(http.encode(r)) == r
    assert http.parse_rules_file("\n".join(http.to_lines(r))) == r
    assert http.decode(http.encode(http.HttpRules())) == http.HttpRules()
    assert http.to_lines(http.HttpRules()) == []


def test_kept_prefix_h_is_still_help():
    h = Harness()
    assert h.run("h") == 0
    assert "Commands" in h.out
    assert h.run("ht", "3") == 2  # http-rules, now unique: proxy 3 is not there
    assert "no proxy with this id" in h.err


def test_create_and_listen_carry_the_programs_replies_and_direction():
    from test_bpf import _fake_kproxy

    from kpctl import wire

    kp, rec = _fake_kproxy()
    spec = kp._spec
    kp._proxy_reply = lambda cmd, attrs: rec.sent.append((cmd, attrs)) or \
        wire.encode_attrs(spec, attrs)
    a, b = socket.socketpair()
    try:
        kp.create(a, b, parser=5, verdict=6, replies=[b"no"], verdict_direction="a-to-b")
        kp._do = lambda cmd, attrs: rec.sent.append((cmd, attrs)) or \
            wire.encode_attrs(spec, attrs, "listener") and None
        with pytest.raises(KproxyError):  # no reply from the fake
            kp.listen(a, "127.0.0.1:80", parser=5, verdict=6, replies=[b"no"],
                      verdict_direction="a-to-b")
    finally:
        a.close()
        b.close()
    a_to_b = spec.enums["direction"].value("a-to-b")
    cmd, attrs = rec.sent[0]
    assert cmd == "proxy-new"
    assert (attrs["parser-fd"], attrs["verdict-fd"], attrs["verdict-replies"],
            attrs["verdict-direction"]) == (5, 6, [b"no"], a_to_b)
    cmd, attrs = rec.sent[1]
    assert cmd == "listener-new"
    assert (attrs["parser-fd"], attrs["verdict-fd"], attrs["verdict-replies"],
            attrs["verdict-direction"]) == (5, 6, [b"no"], a_to_b)


def test_sockets_of_message_framing_services_have_no_nagle_delay():
    """serve --http (or --parser) sets TCP_NODELAY on the listening socket
    (accepted sockets inherit it) and on each upstream socket: a body framed
    apart from its header block must not wait for a delayed ACK."""
    from kpctl.address import Address
    from kpctl.serve import Server, ServeOptions

    def nodelay(s):
        return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    assert ServeOptions(http=True).frames_messages
    assert ServeOptions(parser="lines").frames_messages
    assert not ServeOptions().frames_messages
    for options, want in ((ServeOptions(http=True), 1), (ServeOptions(), 0)):
        made = []

        def factory(family):
            made.append(socket.socket(family, socket.SOCK_STREAM))
            return made[-1]

        srv = Server(None, Address("127.0.0.1", 0, socket.AF_INET),
                     Address("127.0.0.1", 9, socket.AF_INET), options, programs={},
                     socket_factory=factory)
        srv.open()
        try:
            assert nodelay(srv._listener) == want
            with socket.create_connection(srv._listener.getsockname()[:2]):
                srv._listener.setblocking(True)
                accepted, _ = srv._listener.accept()  # what the kernel listener takes
                with accepted:
                    assert nodelay(accepted) == want
            a, b = socket.socketpair()
            srv._sel = selectors.DefaultSelector()  # where run() waits for the connect
            srv._connect(a, "1.2.3.4:5", None)
            assert made and nodelay(made[-1]) == want
        finally:
            srv._sel.close()
            srv._listener.close()
            for s in made:
                s.close()
            a.close()
            b.close()
