"""`kpctl serve` without a kernel: address parsing, option checks, and the
accept loop against real loopback sockets with a fake `create` that relays
in userspace (so bytes really flow and fds really change hands)."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import threading
import time

import pytest

from cli_fakes import FakeKproxy, Harness
from kpctl.errors import KproxyError
from kpctl.model import DirStats, Endpoint, Event, Proxy, SockInfo
from kpctl.address import Address, ServeError, check_distinct, resolve, split_hostport
from kpctl.serve import TICK, Server, ServeOptions
from kpctl.shell.serve_view import ServeView, status_text, summary_text

T = 10.0  # every wait in these tests is bounded


# -- addresses -------------------------------------------------------------------

@pytest.mark.parametrize("text,listen,want", [
    ("127.0.0.1:80", False, ("127.0.0.1", "80")),
    ("[::1]:80", False, ("::1", "80")),
    ("[fe80::1%lo]:22", False, ("fe80::1%lo", "22")),
    ("example.org:443", False, ("example.org", "443")),
    ("db:postgresql", False, ("db", "postgresql")),
    (":8080", True, ("", "8080")),
    ("*:8080", True, ("", "8080")),
    ("8080", True, ("", "8080")),
    ("0.0.0.0:0", True, ("0.0.0.0", "0")),
    ("[::]:80", True, ("::", "80")),
])
def test_split_hostport(text, listen, want):
    assert split_hostport(text, listen=listen) == want


@pytest.mark.parametrize("text,listen,msg", [
    ("::1:80", False, "an IPv6 address goes in brackets, e.g. [::1]:80"),
    ("localhost", False, "missing ':PORT'"),
    ("localhost:", False, "missing port"),
    ("1.2.3.4:70000", False, "port 70000 out of range"),
    ("1.2.3.4:0", False, "port 0 out of range (1-65535)"),
    ("[::1]80", False, "expected [IPV6]:PORT"),
    ("[zz]:80", False, "'zz' is not an IPv6 address"),
    ("[]:80", False, "expected [IPV6]:PORT"),
    (":80", False, "missing host"),
    ("8080", False, "missing ':PORT'"),
    ("h:8 0", False, "'8 0' is not a port"),
    ("", True, "LISTEN is empty"),
])
def test_split_hostport_errors(text, listen, msg):
    with pytest.raises(ServeError) as ei:
        split_hostport(text, listen=listen)
    assert msg in ei.value.message


_REAL_GETADDRINFO = socket.getaddrinfo


class CountingResolver:
    """Names of `table` (counted); numeric addresses go to the real one."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        self.calls.append((host, port))
        if flags & socket.AI_NUMERICHOST or host in ("127.0.0.1", "::1"):
            return _REAL_GETADDRINFO(host, port, family, type, proto, flags)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        fam, ip = self.table[host]
        sa = (ip, int(port)) if fam == socket.AF_INET else (ip, int(port), 0, 0)
        return [(fam, socket.SOCK_STREAM, 6, "", sa)]


def test_resolve_numeric_and_names():
    a = resolve("[::1]:80")
    assert a == Address("::1", 80, socket.AF_INET6) and str(a) == "[::1]:80"
    assert a.sockaddr() == ("::1", 80, 0, 0)
    assert str(resolve("127.0.0.1:9")) == "127.0.0.1:9"
    assert resolve(":8080", listen=True) == Address("0.0.0.0", 8080, socket.AF_INET)
    r = CountingResolver({"backend.test": (socket.AF_INET6, "2001:db8::7")})
    b = resolve("backend.test:443", resolver=r)
    assert (b.host, b.port, b.family) == ("2001:db8::7", 443, socket.AF_INET6)
    assert b.describe() == "backend.test:443 ([2001:db8::7]:443)"
    assert r.calls == [("backend.test", "443")]
    with pytest.raises(ServeError, match="cannot resolve TARGET 'nope.test:1'"):
        resolve("nope.test:1", resolver=r)


def test_same_address_refused():
    with pytest.raises(ServeError, match="same address"):
        check_distinct(resolve(":8080", listen=True), resolve("127.0.0.1:8080"))
    check_distinct(resolve(":8080", listen=True), resolve("127.0.0.1:8081"))
    check_distinct(resolve(":0", listen=True), resolve("127.0.0.1:8080"))


# -- options through the CLI ------------------------------------------------------

@pytest.mark.parametrize("args,msg", [
    (["serve", ":8080"], "serve: missing TARGET"),
    (["serve", ":8080", "127.0.0.1:80", "--max-conns", "0"], "'0' is not a count"),
    (["serve", ":8080", "127.0.0.1:80", "--connect-timeout", "-1"], "not a positive number"),
    (["serve", ":8080", "127.0.0.1:80", "--connect-timeout", "x"], "not a number of seconds"),
    (["serve", ":8080", "127.0.0.1:80", "--backlog", "many"], "is not a count"),
    (["serve", ":8080", "127.0.0.1:80", "--drain", "--kill"], "--drain and --kill are exclusive"),
    (["serve", ":8080", "127.0.0.1:80", "--verdict", "pass"], "a verdict needs a parser"),
    (["serve", ":8080", "127.0.0.1:80", "--parser", ""], "--parser must name a program"),
    (["serve", ":8080", "127.0.0.1:80", "--parser", "lenprefix", "--prefix", "X"],
     "--prefix configures a verdict (drop-prefix), give --verdict"),
    (["serve", ":8080", "127.0.0.1:80", "--parser", "lenprefix", "--verdict", "drop-prefix",
      "--offset", "2"], "--offset goes with --prefix"),
    (["serve", ":8080", "127.0.0.1:80", "--parser", "lenprefix", "--verdict", "drop-prefix",
      "--prefix", ""], "--prefix must not be empty"),
    (["serve", ":8080", "127.0.0.1:80", "--parser", "lenprefix", "--verdict", "drop-prefix",
      "--prefix", "x" * 65], "--prefix is at most 64 bytes"),
    (["serve", ":8080", "127.0.0.1:80", "--parser", "lenprefix", "--verdict", "drop-prefix",
      "--prefix", "x", "--offset", "-1"], "not a byte offset"),
    # a PROG that names nothing is a usage error too (loaded before listening)
    (["serve", ":8080", "127.0.0.1:80", "--parser", "p.o"], "serve: --parser: p.o: no such file"),
    (["serve", ":8080", "127.0.0.1:80", "--parser", "lenprefix", "--verdict", "v.o"],
     "serve: --verdict: v.o: no such file"),
    (["serve", ":8080", "127.0.0.1:80", "--workers", "0"], "'0' is not a count"),
    (["serve", ":8080", "127.0.0.1:80", "--workers", "2"],
     "serve: --workers: a kernel listener needs no workers (the kernel accepts); give "
     "--userspace to serve from N processes"),
    (["serve", ":8080", "127.0.0.1:80", "--workers", "2", "--userspace", "--background"],
     "serve: --workers runs processes of their own: serve in the foreground"),
    (["serve", ":8080", "127.0.0.1:80", "--workers", "2", "--userspace", "--parser", "p.o"],
     "serve: --parser: p.o: no such file"),
    (["serve", "::1:8080", "127.0.0.1:80"], "an IPv6 address goes in brackets"),
    (["serve", ":8080", "127.0.0.1"], "missing ':PORT'"),
    (["serve", ":8080", "127.0.0.1:8080"], "the service would connect to itself"),
    (["serve", ":8080", "no-such-host.invalid:80"], "cannot resolve TARGET"),
])
def test_serve_usage_errors(args, msg):
    h = Harness(FakeKproxy())
    assert h.run(*args) == 1
    assert msg in h.err, h.err
    assert "Traceback" not in h.err
    assert h.client.calls == []  # nothing reached the kernel
    assert all(p.closed for p in h.loaded)  # a parser loaded before a bad verdict: closed


def test_serve_usage_error_json():
    h = Harness(FakeKproxy())
    assert h.run("-j", "serve", ":8080", "127.0.0.1:80", "--verdict", "pass") == 1
    assert "a verdict needs a parser" in json.loads(h.out)["error"]["message"]


def test_serve_program_refused_by_the_verifier_exits_2():
    from kpctl.bpf import BpfError
    from kpctl.cli import main

    h = Harness(FakeKproxy())

    def loader(spec):
        if spec == "bad.o":
            raise BpfError(errno.EACCES, "bad.o: the verifier refused program 'bad' "
                                         "(Permission denied):\n  R0 !read_ok", log="R0 !read_ok")
        return h.load_prog(spec)

    out, err = io.StringIO(), io.StringIO()
    rc = main(["serve", "127.0.0.1:0", "127.0.0.1:9", "--parser", "lenprefix",
               "--verdict", "bad.o"], client_factory=h.factory, stdout=out, stderr=err,
              env={}, prog_loader=loader)
    assert rc == 2
    assert "Error: bad.o: the verifier refused program 'bad'" in err.getvalue()
    assert "(EACCES)" in err.getvalue() and "usage:" not in err.getvalue()
    assert [p.source for p in h.loaded] == ["lenprefix"] and h.loaded[0].closed
    assert h.client.calls == []


@pytest.mark.parametrize("kw,msg", [
    ({"verdict": "pass"}, "a verdict needs a parser"),
    ({"parser": ""}, "--parser must name a program"),
    ({"parser": "lenprefix", "prefix": "X"},
     "--prefix configures a verdict (drop-prefix), give --verdict"),
    ({"max_conns": 0}, "--max-conns must be 1 or more"),
    ({"connect_timeout": 0}, "--connect-timeout must be a positive number of seconds"),
    ({"backlog": 0}, "--backlog must be 1 or more"),
    ({"on_stop": "vanish"}, "on_stop must be one of leave, drain, kill"),
    ({"parser": "lenprefix", "verdict": "drop-prefix", "offset": 0}, "--offset goes with --prefix"),
    ({"parser": "lenprefix", "verdict": "drop-prefix", "prefix": ""}, "must not be empty"),
    ({"parser": "lenprefix", "verdict": "drop-prefix", "prefix": "x" * 65}, "at most 64 bytes"),
])
def test_options_check_programs(kw, msg):
    with pytest.raises(ServeError) as ei:
        ServeOptions(**kw).check()
    assert msg in ei.value.message
    ServeOptions(parser="lenprefix").check()
    ServeOptions(parser="lenprefix", verdict="drop-prefix", prefix="DROP", offset=0).check()


def test_stop_mode_from_the_cli_flags():
    assert [ServeOptions.stop_mode(d, k) for d, k in ((False, False), (True, False),
                                                       (False, True))] == ["leave", "drain", "kill"]
    with pytest.raises(ServeError) as ei:
        ServeOptions.stop_mode(True, True)
    assert ei.value.message == ("--drain and --kill are exclusive (what happens to running "
                                "proxies on stop)")


def test_programs_verdict_without_parser_refused():
    with pytest.raises(ServeError, match="a verdict needs a parser"):
        Server(FakeKproxy(), resolve("127.0.0.1:0", listen=True), resolve("127.0.0.1:9"),
               programs={"verdict": 7})


def test_serve_without_module_exits_2():
    def factory(netns):
        raise KproxyError(errno.ENOENT, "kproxy module not loaded (family 'kproxy' not found)")
    from kpctl.cli import main
    out, err = io.StringIO(), io.StringIO()
    rc = main(["serve", "127.0.0.1:0", "127.0.0.1:9"], client_factory=factory, stdout=out,
              stderr=err, env={})
    assert rc == 2
    assert err.getvalue() == "Error: kproxy module not loaded (family 'kproxy' not found) (ENOENT)\n"


def test_serve_listen_in_use_exits_2():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        h = Harness(FakeKproxy())
        assert h.run("serve", "127.0.0.1:%d" % busy.getsockname()[1], "127.0.0.1:9") == 2
        assert "Address already in use (EADDRINUSE)" in h.err
    finally:
        busy.close()


# -- a fake kernel: create() relays in userspace ----------------------------------

def _sockinfo(s):
    fam = s.family
    return SockInfo(fam, Endpoint(*s.getsockname()[:2]), Endpoint(*s.getpeername()[:2]), 1)


class RelayKproxy:
    """create(a, b) dups both fds (the proxy's own references) and pumps
    bytes both ways in threads; the proxy disappears from list() when both
    directions are done, like a kernel proxy that ended. Ends of proxies
    made with notify_end come back through fileno()/ended(), as the kernel
    sends them to the creator's socket; `lose_ends` of them are dropped
    (the next ended() raises ENOBUFS, as a full netlink socket does).
    send_creates()/read_created() answer as kpctl.Kproxy's: serve makes a
    round's proxies with one send (`batches`: the pairs of each);
    ended_brief() gives the ends as kpctl.Kproxy's does."""

    def __init__(self, fail=None, attach_fail=None, lose_ends=0):
        self.fail = fail
        self.attach_fail = attach_fail  # (pid, kind) -> an exception to raise, or None
        self.attached = []  # (pid, kind, prog, direction)
        self.lock = threading.Lock()
        self.proxies = {}
        self.bytes = {}
        self.notify = set()
        self.next_id = 1
        self.created = []
        self.destroyed = []
        self.calls = []
        self.lose_ends = lose_ends
        self.overrun = False
        self.ends = []
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.closed = False
        self.tls_end = None  # (reason, alert): how every proxy ends, as a kTLS one may
        self.batches = []  # len(pairs) of each send_creates()
        self.answers = {}  # seq -> proxy id or KproxyError, until read_created()
        self.seq = 0
        self.refuse_every = 0  # N: every Nth create of a batch is refused (ENOTCONN)

    def create(self, a, b, *, notify_end=False):
        self.calls.append("create")
        assert isinstance(a, socket.socket) and isinstance(b, socket.socket)
        if self.fail:
            raise self.fail
        a2 = socket.socket(fileno=os.dup(a.fileno()))
        b2 = socket.socket(fileno=os.dup(b.fileno()))
        a2.setblocking(True)
        b2.setblocking(True)
        with self.lock:
            pid = self.next_id
            self.next_id += 1
            p = Proxy(pid, "active", time.time_ns(), _sockinfo(a2), _sockinfo(b2),
                      DirStats(), DirStats())
            self.proxies[pid] = (p, a2, b2)
            self.bytes[pid] = [0, 0]
            self.created.append(p)
            if notify_end:
                self.notify.add(pid)
        done = []

        def pump(src, dst, idx):
            try:
                while True:
                    d = src.recv(65536)
                    if not d:
                        break
                    dst.sendall(d)
                    with self.lock:
                        self.bytes[pid][idx] += len(d)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            with self.lock:
                done.append(idx)
                if len(done) == 2 and pid in self.proxies:
                    self._end(pid, "closed")

        for args in ((a2, b2, 0), (b2, a2, 1)):
            threading.Thread(target=pump, args=args, daemon=True).start()
        return p

    def send_creates(self, pairs):
        self.batches.append(len(pairs))
        seqs = []
        for n, (a, b) in enumerate(pairs, 1):
            self.seq += 1
            try:
                if self.refuse_every and n % self.refuse_every == 0:
                    raise KproxyError(errno.ENOTCONN, "not a connected TCP socket (attribute fd-a)")
                self.answers[self.seq] = self.create(a, b, notify_end=True).id
            except KproxyError as e:
                self.answers[self.seq] = e
            seqs.append(self.seq)
        return seqs

    def read_created(self, seqs):
        return {seq: self.answers.pop(seq) for seq in seqs}

    def _end(self, pid, reason):
        """Under self.lock."""
        p, a2, b2 = self.proxies.pop(pid)
        for s in (a2, b2):
            try:
                s.close()
            except OSError:
                pass
        if pid not in self.notify:
            return
        if self.lose_ends:
            self.lose_ends -= 1
            self.overrun = True
        else:
            ab, ba = self.bytes[pid]
            alert = None
            if self.tls_end is not None:
                reason, alert = self.tls_end
            self.ends.append(Event("del", Proxy(pid, "closing", p.created_ns, p.a, p.b,
                                                DirStats(bytes=ab), DirStats(bytes=ba)),
                                   reason, time.time(), alert))
        try:
            self.w.send(b"x")
        except OSError:
            pass

    def fileno(self):
        return self.r.fileno()

    def ended(self, timeout=0.0):
        assert timeout == 0, "serve reads ends without blocking"
        try:
            self.r.recv(4096)
        except BlockingIOError:
            pass
        with self.lock:
            if self.overrun:
                self.overrun = False
                raise KproxyError(errno.ENOBUFS, "No buffer space available")
            out, self.ends = self.ends, []
            return out

    def ended_brief(self):
        return [(e.proxy.id, e.reason, e.proxy.a_to_b.bytes, e.proxy.b_to_a.bytes, e.tls_alert)
                for e in self.ended(0)]

    def list(self):
        self.calls.append("list")
        with self.lock:
            out = []
            for pid, (p, _, _) in self.proxies.items():
                ab, ba = self.bytes[pid]
                out.append(Proxy(pid, p.state, p.created_ns, p.a, p.b, DirStats(bytes=ab),
                                 DirStats(bytes=ba)))
            return out

    def destroy(self, pid):
        self.calls.append(("destroy", pid))
        with self.lock:
            if pid not in self.proxies:
                raise KproxyError(errno.ENOENT, "no proxy with this id")
            p, a2, b2 = self.proxies[pid]
            for s in (a2, b2):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.destroyed.append(pid)
            self._end(pid, "user")

    def attach(self, pid, kind, prog, direction="both"):
        # Any proxy made so far: bytes flow at once here, so a short
        # connection may already have ended when serve attaches.
        self.calls.append(("attach", pid, kind))
        if not 1 <= pid < self.next_id:
            raise KproxyError(errno.ENOENT, "no proxy with this id")
        exc = self.attach_fail(pid, kind) if self.attach_fail else None
        if exc is not None:
            raise exc
        self.attached.append((pid, kind, prog, direction))

    def close(self):
        self.closed = True


class EchoServer:
    def __init__(self, family=socket.AF_INET, host="127.0.0.1", backlog=64):
        self.ls = socket.socket(family)
        self.ls.bind((host, 0))
        self.ls.listen(backlog)
        self.port = self.ls.getsockname()[1]
        self.addr = Address(host, self.port, family)
        self.stopped = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stopped:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        with c:
            while True:
                try:
                    d = c.recv(65536)
                except OSError:
                    return
                if not d:
                    return
                c.sendall(d)

    def close(self):
        self.stopped = True
        self.ls.close()


class Running:
    """A Server in a thread; events recorded; stop() and join bounded."""

    def __init__(self, client, target, listen="127.0.0.1:0", **kw):
        self.events = []
        self.ev_lock = threading.Lock()
        opts = ServeOptions(**kw.pop("options", {}))
        self.server = Server(client, resolve(listen, listen=True), target, opts,
                             on_event=self._on, **kw)
        self.addr = self.server.open()
        self.result = None
        self.error = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _on(self, kind, data):
        with self.ev_lock:
            self.events.append((kind, data))

    def _run(self):
        try:
            self.result = self.server.run(install_signals=False)
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def kinds(self, kind):
        with self.ev_lock:
            return [d for k, d in self.events if k == kind]

    def connect(self):
        return socket.create_connection(self.addr.sockaddr()[:2], timeout=T)

    def connect_refused(self):
        """Connect and see the server end it (EOF or RST, possibly already
        during connect(): on loopback the RST may beat connect's return)."""
        try:
            c = self.connect()
        except ConnectionResetError:
            return True
        with c:
            return ended_by_server(c)

    def stop(self):
        self.server.stop()
        self.t.join(T)
        assert not self.t.is_alive(), "serve did not stop"
        assert self.error is None, self.error
        return self.result


def wait_for(pred, timeout=T, what=""):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        time.sleep(0.01)


def ended_by_server(c):
    """True when the server ended the connection (EOF or RST), within T."""
    c.settimeout(T)
    try:
        return c.recv(1) == b""
    except ConnectionResetError:
        return True


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def fd_count():
    return len(os.listdir("/proc/self/fd"))


# -- the accept loop ----------------------------------------------------------------

def test_bytes_flow_and_fds_are_handed_over():
    echo = EchoServer()
    kp = RelayKproxy()
    r = Running(kp, echo.addr)
    try:
        with r.connect() as c:
            c.sendall(b"x" * 1024)
            got = b""
            while len(got) < 1024:
                got += c.recv(4096)
            assert got == b"x" * 1024
        wait_for(lambda: r.server.snapshot()["ended"] == 1, what="proxy ended")
        c = r.stop()
        assert (c.accepted, c.created, c.failed, c.refused, c.active) == (1, 1, 0, 0, 0)
        assert c.bytes_a_to_b == 1024 and c.bytes_b_to_a == 1024
        p = kp.created[0]
        # A is the client's connection, B the one to the target
        assert p.a.local.port == r.addr.port and p.b.remote.port == echo.port
        [ev] = r.kinds("proxy")
        assert ev["id"] == 1 and ev["upstream"] == str(p.b.local)
    finally:
        echo.close()


def test_ipv6_listen_and_target():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        echo = EchoServer(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no ::1")
    r = Running(RelayKproxy(), resolve("[::1]:%d" % echo.port), listen="[::1]:0")
    try:
        assert str(r.addr).startswith("[::1]:")
        with socket.create_connection(("::1", r.addr.port), timeout=T) as c:
            c.sendall(b"six")
            assert c.recv(3) == b"six"
        assert r.stop().created == 1
    finally:
        echo.close()


def test_target_refused_resets_client_at_once_and_goes_on():
    r = Running(RelayKproxy(), resolve("127.0.0.1:%d" % free_port()))
    try:
        for _ in range(3):
            t0 = time.monotonic()
            assert r.connect_refused()
            assert time.monotonic() - t0 < 1.0
        wait_for(lambda: r.server.snapshot()["failed"] == 3)
        c = r.stop()
        assert c.accepted == 3 and c.created == 0 and c.failures == {"ECONNREFUSED": 3}
        f = r.kinds("failed")[0]
        assert f["stage"] == "connect" and "Connection refused" in f["reason"]
    finally:
        pass


def test_connect_timeout():
    # A listener whose accept queue is full drops SYNs: connect() hangs.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(full.getsockname())
        fillers.append(f)
    time.sleep(0.1)
    r = Running(RelayKproxy(), Address("127.0.0.1", full.getsockname()[1], socket.AF_INET),
                options={"connect_timeout": 0.3})
    try:
        t0 = time.monotonic()
        assert r.connect_refused()
        assert 0.25 < time.monotonic() - t0 < 3.0
        c = r.stop()
        assert c.failed == 1 and c.failures == {"ETIMEDOUT": 1}
        assert "timed out after 0.3s" in r.kinds("failed")[0]["reason"]
    finally:
        for f in fillers:
            f.close()
        full.close()


def test_kernel_refusal_is_a_failure():
    echo = EchoServer()
    kp = RelayKproxy(fail=KproxyError(errno.EPERM, "need CAP_NET_ADMIN"))
    r = Running(kp, echo.addr)
    try:
        assert r.connect_refused()
        wait_for(lambda: r.server.snapshot()["failed"] == 1)
        c = r.stop()
        assert c.failures == {"EPERM": 1} and c.created == 0
        assert r.kinds("failed")[0]["reason"] == "kernel refused the proxy: need CAP_NET_ADMIN (EPERM)"
    finally:
        echo.close()


def test_without_connection_events_the_counts_stay():
    """connection_events=False (text output): no "proxy" or "ended" event,
    the same counters and bytes."""
    echo = EchoServer()
    r = Running(RelayKproxy(), echo.addr, options={"connection_events": False})
    try:
        for _ in range(3):
            with r.connect() as c:
                c.sendall(b"x" * 100)
                assert recv_all(c, 100) == b"x" * 100
        wait_for(lambda: r.server.snapshot()["ended"] == 3)
        c = r.stop()
        assert (c.accepted, c.created, c.ended, c.bytes_a_to_b, c.bytes_b_to_a) == \
            (3, 3, 3, 300, 300)
        assert r.kinds("proxy") == [] and r.kinds("ended") == []
        assert [k for k, _ in r.events][0] == "listening"
    finally:
        echo.close()


def recv_all(c, n):
    got = b""
    while len(got) < n:
        d = c.recv(65536)
        assert d, "EOF"
        got += d
    return got


def test_a_wakeup_makes_its_proxies_in_one_send():
    """Connections waiting together are accepted, connected and joined
    together (one send_creates); a refusal among them fails that client
    alone, in the kernel's words."""
    echo = EchoServer()
    kp = RelayKproxy()
    kp.refuse_every = 3
    server = Server(kp, resolve("127.0.0.1:0", listen=True), echo.addr)
    addr = server.open()
    clients = [socket.create_connection(addr.sockaddr()[:2], timeout=T) for _ in range(6)]
    events = []
    t = threading.Thread(target=server.run, kwargs={"install_signals": False},
                         daemon=True)
    server.on_event = lambda kind, data: events.append((kind, data))
    t.start()
    try:
        wait_for(lambda: server.snapshot()["created"] + server.snapshot()["failed"] == 6)
        assert kp.batches == [6]
        served, refused = [], []
        for c in clients:
            try:
                c.sendall(b"ping")
                (served if c.recv(4) == b"ping" else refused).append(c)
            except ConnectionResetError:
                refused.append(c)
        assert (len(served), len(refused)) == (4, 2)
        failed = [d for k, d in events if k == "failed"]
        assert [(d["stage"], d["error"]["errno_name"], d["reason"]) for d in failed] == \
            [("create", "ENOTCONN", "kernel refused the proxy: not a connected TCP socket "
                                    "(attribute fd-a) (ENOTCONN)")] * 2
    finally:
        for c in clients:
            c.close()
        server.stop()
        t.join(T)
        echo.close()


def test_max_conns_refuses_beyond_and_frees_slots():
    echo = EchoServer()
    r = Running(RelayKproxy(), echo.addr, options={"max_conns": 2})
    try:
        held = [r.connect() for _ in range(2)]
        for c in held:  # both served
            c.sendall(b"hi")
            assert c.recv(2) == b"hi"
        for _ in range(3):
            assert r.connect_refused()
        wait_for(lambda: r.server.snapshot()["refused"] == 3)
        held.pop().close()  # a slot frees once the proxy is seen gone (dump each second)
        wait_for(lambda: r.server.snapshot()["active"] == 1, what="slot freed")
        with r.connect() as c:
            c.sendall(b"again")
            assert c.recv(5) == b"again"
        for c in held:
            c.close()
        c = r.stop()
        assert (c.accepted, c.created, c.refused) == (6, 3, 3)
        assert r.kinds("refused")[0] == {"client": r.kinds("refused")[0]["client"],
                                          "reason": "max-conns", "limit": 2}
    finally:
        echo.close()


def _echo_and_close(r, payload):
    with r.connect() as c:
        c.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += c.recv(len(payload))
        c.shutdown(socket.SHUT_WR)
        assert c.recv(1) == b""


def test_ends_free_slots_at_once_with_final_counters():
    echo = EchoServer()
    kp = RelayKproxy()
    r = Running(kp, echo.addr, options={"max_conns": 1})
    try:
        for i in range(5):  # one at a time, back to back: never refused
            _echo_and_close(r, b"z" * 100)
            wait_for(lambda: r.server.snapshot()["ended"] == i + 1)
        c = r.stop()
        assert c.refused == 0 and c.created == 5 and c.lost == 0
        assert c.bytes_a_to_b == 500 and c.bytes_b_to_a == 500
        assert [e["reason"] for e in r.kinds("ended")] == ["closed"] * 5
        assert [e["a_to_b"] for e in r.kinds("ended")] == [100] * 5
        assert "list" not in kp.calls and kp.notify == {1, 2, 3, 4, 5}
    finally:
        echo.close()


def test_no_work_per_second_on_live_proxies():
    """Live proxies cost the loop nothing each second: no dump, no
    notification of anyone else's proxy; the ticks count what ended."""
    echo = EchoServer()
    kp = RelayKproxy()
    r = Running(kp, echo.addr)
    try:
        held = [r.connect() for _ in range(3)]
        for h in held:
            h.sendall(b"12345")
            assert recv_all(h, 5) == b"12345"
        _echo_and_close(r, b"e" * 7)
        wait_for(lambda: len(r.kinds("tick")) >= 3, timeout=3 * TICK + T, what="3 ticks")
        assert "list" not in kp.calls
        tick = r.kinds("tick")[-1]
        assert (tick["active"], tick["ended"], tick["bytes_a_to_b"]) == (3, 1, 7)
        for h in held:
            h.close()
        wait_for(lambda: r.server.snapshot()["ended"] == 4)
        c = r.stop()
        assert (c.bytes_a_to_b, c.bytes_b_to_a) == (22, 22) and "list" not in kp.calls
    finally:
        echo.close()


def test_lost_ends_are_reconciled_by_one_dump():
    """ENOBUFS on the socket: one dump says which proxies are gone; the
    others stay live and end with their own counters later."""
    echo = EchoServer()
    kp = RelayKproxy(lose_ends=1)
    r = Running(kp, echo.addr, options={"max_conns": 2})
    try:
        held = r.connect()
        held.sendall(b"h")
        assert held.recv(1) == b"h"
        _echo_and_close(r, b"L" * 9)  # its end is lost
        wait_for(lambda: r.server.snapshot()["ended"] == 1, what="the lost end reconciled")
        assert kp.calls.count("list") == 1
        assert r.server.snapshot()["active"] == 1  # the held one is still live
        [gone] = r.kinds("ended")
        assert (gone["id"], gone["reason"], gone["a_to_b"]) == (2, "gone", 0)
        assert "dropped the ends of 1 proxies" in r.kinds("warning")[0]["message"]
        held.close()
        wait_for(lambda: r.server.snapshot()["ended"] == 2)
        c = r.stop()
        assert (c.lost, c.bytes_a_to_b, c.bytes_b_to_a) == (1, 1, 1)
        assert kp.calls.count("list") == 1
    finally:
        echo.close()


def test_emfile_backs_off_and_recovers():
    echo = EchoServer()
    calls = []

    def accept(ls):
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise OSError(errno.EMFILE, "Too many open files")
        return ls.accept()

    r = Running(RelayKproxy(), echo.addr, accept=accept)
    try:
        with r.connect() as c:  # waits in the backlog during the back-off
            c.sendall(b"ok")
            assert c.recv(2) == b"ok"
        c = r.stop()
        assert c.accept_errors == 3 and c.created == 1
        errs = r.kinds("accept-error")
        assert [e["error"]["errno_name"] for e in errs] == ["EMFILE"] * 3
        assert [e["backoff"] for e in errs] == [0.05, 0.1, 0.2]
        # it paused: no busy loop on the failing accept()
        assert calls[3] - calls[0] >= 0.3
        assert len(calls) <= 6
    finally:
        echo.close()


def test_no_fd_leak_over_many_connections():
    echo = EchoServer()
    dead = resolve("127.0.0.1:%d" % free_port())
    kp = RelayKproxy()
    r = Running(kp, echo.addr)
    r2 = Running(RelayKproxy(), dead)
    try:
        with r.connect() as c:
            c.sendall(b"w")
            c.recv(1)
        wait_for(lambda: r.server.snapshot()["active"] == 0)
        before = fd_count()
        for _ in range(50):
            with r.connect() as c:
                c.sendall(b"a" * 1024)
                got = b""
                while len(got) < 1024:
                    got += c.recv(4096)
            assert r2.connect_refused()
        wait_for(lambda: r.server.snapshot()["active"] == 0 and not kp.proxies,
                 what="all proxies ended")
        wait_for(lambda: r2.server.snapshot()["failed"] == 50)
        assert fd_count() <= before
        assert r.stop().created == 51
        assert r2.stop().failed == 50
    finally:
        echo.close()


@pytest.mark.parametrize("mode", ["leave", "kill", "drain"])
def test_stop_modes(mode):
    echo = EchoServer()
    kp = RelayKproxy()
    r = Running(kp, echo.addr, options={"on_stop": mode})
    try:
        held = [r.connect() for _ in range(2)]
        for c in held:
            c.sendall(b"1")
            assert c.recv(1) == b"1"
        r.server.stop()
        if mode == "drain":
            time.sleep(0.5)
            assert r.t.is_alive()  # waiting for the two proxies
            with pytest.raises(OSError):  # but no longer accepting
                socket.create_connection(r.addr.sockaddr()[:2], timeout=1)
            for c in held:
                c.close()
        r.t.join(T)
        assert not r.t.is_alive() and r.error is None
        c = r.result
        [stopping] = r.kinds("stopping")
        assert stopping == {"mode": mode, "active": 2}
        assert not [w for w in r.kinds("warning") if w["message"].startswith("proxy")]
        if mode == "leave":
            assert c.active == 2 and len(kp.proxies) == 2 and not kp.destroyed
        elif mode == "kill":
            assert sorted(kp.destroyed) == [1, 2] and c.active == 0 and not kp.proxies
            for h in held:
                assert ended_by_server(h)
        else:
            assert c.active == 0 and c.ended == 2
        assert r.kinds("stopped")
        for h in held:
            h.close()
    finally:
        echo.close()


def test_second_signal_stops_draining():
    echo = EchoServer()
    r = Running(RelayKproxy(), echo.addr, options={"on_stop": "drain"})
    try:
        held = r.connect()
        held.sendall(b"1")
        held.recv(1)
        r.server.stop()
        time.sleep(0.3)
        assert r.t.is_alive()
        r.server.stop()
        r.t.join(T)
        assert not r.t.is_alive()
        assert "stop waiting" in r.kinds("signal")[-1]["action"]
        assert r.result.active == 1
        held.close()
    finally:
        echo.close()


def _full_listener():
    """A listener whose accept queue is full: it drops SYNs, connect() hangs."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(full.getsockname())
        fillers.append(f)
    time.sleep(0.1)
    return full, fillers


def _stopped_within(r, seconds=1.0):
    r.t.join(seconds)
    assert not r.t.is_alive(), f"run() still running {seconds}s after stop()"
    assert r.error is None, r.error
    return r.result


@pytest.mark.parametrize("mode", ["leave", "drain", "kill"])
def test_stop_from_another_thread_while_accepting(mode):
    r = Running(RelayKproxy(), resolve("127.0.0.1:9"))
    time.sleep(0.1)
    r.server.stop(mode)
    c = _stopped_within(r)
    assert r.kinds("stopping") == [{"mode": mode, "active": 0}] and c.accepted == 0
    with pytest.raises(OSError):
        socket.create_connection(r.addr.sockaddr()[:2], timeout=1)


def test_stop_with_pending_connects_fails_them_at_once():
    full, fillers = _full_listener()
    r = Running(RelayKproxy(), Address("127.0.0.1", full.getsockname()[1], socket.AF_INET),
                options={"connect_timeout": 60})
    try:
        clients = [r.connect() for _ in range(2)]
        wait_for(lambda: r.server.snapshot()["pending"] == 2, what="2 connects pending")
        r.server.stop("drain")
        c = _stopped_within(r)
        assert (c.failed, c.pending, c.failures) == (2, 0, {"shutdown": 2})
        for h in clients:
            assert ended_by_server(h)
            h.close()
    finally:
        for f in fillers:
            f.close()
        full.close()


def test_stop_leave_or_kill_while_draining():
    echo = EchoServer()
    kp = RelayKproxy()
    r = Running(kp, echo.addr, options={"on_stop": "drain"})
    r2 = Running(kp, echo.addr, options={"on_stop": "drain"})
    try:
        held = [r.connect(), r2.connect()]
        for h in held:
            h.sendall(b"d")
            assert h.recv(1) == b"d"
        wait_for(lambda: r.server.snapshot()["active"] == 1 and r2.server.snapshot()["active"] == 1)
        r.server.stop()
        r2.server.stop()
        time.sleep(0.3)
        assert r.t.is_alive() and r2.t.is_alive()  # both draining
        r.server.stop("drain")  # already draining: goes on waiting
        time.sleep(0.2)
        assert r.t.is_alive()
        r.server.stop("leave")
        c = _stopped_within(r)
        assert c.active == 1 and not kp.destroyed
        assert r.kinds("stopping")[-1] == {"mode": "leave", "active": 1}
        r2.server.stop("kill")
        c2 = _stopped_within(r2)
        assert kp.destroyed == [r2.kinds("proxy")[0]["id"]] and (c2.active, c2.ended) == (0, 1)
        assert r2.kinds("ended")[0]["reason"] == "user"
        assert ended_by_server(held[1])
        for h in held:
            h.close()
    finally:
        echo.close()


def test_stop_before_run_and_after_it():
    server = Server(RelayKproxy(), resolve("127.0.0.1:0", listen=True), resolve("127.0.0.1:9"))
    server.open()
    server.stop("kill")
    t0 = time.monotonic()
    c = server.run(install_signals=False)
    assert time.monotonic() - t0 < 1.0 and c.accepted == 0
    server.stop()  # nothing left to stop: harmless
    assert server.snapshot()["elapsed"] >= 0


def test_snapshot_from_another_thread_while_serving():
    echo = EchoServer()
    r = Running(RelayKproxy(), echo.addr)
    seen = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(r.server.snapshot())

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(20):
            _echo_and_close(r, b"s")
        wait_for(lambda: r.server.snapshot()["ended"] == 20)
    finally:
        stop.set()
        t.join(T)
        r.stop()
        echo.close()
    assert seen and all(set(d) >= {"accepted", "active", "ended", "failed", "bytes_a_to_b",
                                    "bytes_b_to_a"} for d in seen)
    assert [d["ended"] for d in seen] == sorted(d["ended"] for d in seen)


@pytest.mark.parametrize("open_first", [True, False])
def test_netns_is_entered_once_by_the_loop_thread(monkeypatch, open_first):
    """-n NETNS: no thread per connection. The loop's thread enters the
    namespace once and goes back at the end; only a listener opened before
    run(), from another thread, is made through socket_in_netns."""
    import kpctl.netns as netns_mod
    entered, made_by = [], []
    monkeypatch.setattr(netns_mod, "enter",
                        lambda name: entered.append((threading.get_ident(), name)))

    def socket_in_netns(name, family, type, proto=0):
        made_by.append((threading.get_ident(), name))
        return socket.socket(family, type, proto)

    monkeypatch.setattr(netns_mod, "socket_in_netns", socket_in_netns)
    echo = EchoServer()
    kp = RelayKproxy()
    server = Server(kp, resolve("127.0.0.1:0", listen=True), echo.addr, netns="blue")
    if open_first:
        addr = server.open()
    result = []
    t = threading.Thread(target=lambda: result.append(server.run(install_signals=False)))
    t.start()
    try:
        if not open_first:
            wait_for(lambda: server.address.port != 0, what="listening")
            addr = server.address
        for _ in range(3):
            with socket.create_connection(addr.sockaddr()[:2], timeout=T) as c:
                c.sendall(b"n")
                assert c.recv(1) == b"n"
        wait_for(lambda: server.snapshot()["created"] == 3)
    finally:
        server.stop()
        t.join(T)
        echo.close()
    assert not t.is_alive() and result[0].created == 3
    assert made_by == ([(threading.get_ident(), "blue")] if open_first else [])
    assert [who for who, _ in entered] == [t.ident, t.ident]
    assert entered[0][1] == "blue" and entered[1][1].startswith("/proc/self/fd/")


# -- BPF programs on every proxy ----------------------------------------------------

class Prog:
    """A loaded program as far as serve uses it (kpctl.bpf.Program)."""

    def __init__(self, source, id):
        self.source, self.id, self.name = source, id, source.replace("-", "_")
        self.prefix = None
        self.closed = False

    def fileno(self):
        return 100 + self.id

    def set_prefix(self, prefix, offset=4):
        self.prefix = (prefix, offset)

    def close(self):
        self.closed = True


def _echo_once(r, payload=b"ping"):
    with r.connect() as c:
        c.sendall(payload)
        assert recv_all(c, len(payload)) == payload


def recv_all(c, n):
    got = b""
    while len(got) < n:
        d = c.recv(n - len(got))
        if not d:
            break
        got += d
    return got


def test_parser_then_verdict_attached_to_every_proxy_before_bytes_flow():
    echo = EchoServer()
    kp = RelayKproxy()
    parser, verdict = Prog("lenprefix", 1), Prog("drop-prefix", 2)
    r = Running(kp, echo.addr, programs={"parser": parser, "verdict": verdict},
                options={"parser": "lenprefix", "verdict": "drop-prefix", "prefix": "DROP"})
    try:
        for _ in range(3):
            _echo_once(r)
        wait_for(lambda: r.server.snapshot()["created"] == 3)
        c = r.stop()
        assert (c.created, c.failed) == (3, 0)
        # per proxy: the parser on both directions, then the verdict; the same
        # programs every time (loaded once)
        assert kp.attached == [(pid, kind, prog, "both") for pid in (1, 2, 3)
                               for kind, prog in (("parser", parser), ("verdict", verdict))]
        # each attach came right after its create, before the proxy was reported
        assert kp.calls[:3] == ["create", ("attach", 1, "parser"), ("attach", 1, "verdict")]
        assert [e["id"] for e in r.kinds("proxy")] == [1, 2, 3]
        [listening] = r.kinds("listening")
        assert listening["programs"] == {
            "parser": {"id": 1, "name": "lenprefix", "source": "lenprefix"},
            "verdict": {"id": 2, "name": "drop_prefix", "source": "drop-prefix"}}
        assert listening["options"]["prefix"] == "DROP"
        assert not parser.closed and not verdict.closed  # the caller's to close
    finally:
        echo.close()


def test_parser_only():
    echo = EchoServer()
    kp = RelayKproxy()
    r = Running(kp, echo.addr, programs={"parser": 5, "verdict": None})
    try:
        _echo_once(r)
        r.stop()
        assert kp.attached == [(1, "parser", 5, "both")]
    finally:
        echo.close()


def test_attach_refused_fails_that_connection_and_serving_goes_on():
    echo = EchoServer()
    refuse = {1}  # the first proxy's verdict is refused, the next ones are fine

    def attach_fail(pid, kind):
        if kind == "verdict" and pid in refuse:
            return KproxyError(errno.EINVAL, "a verdict needs a parser on its direction")
        return None

    kp = RelayKproxy(attach_fail=attach_fail)
    r = Running(kp, echo.addr, programs={"parser": Prog("lenprefix", 1),
                                          "verdict": Prog("pass", 2)})
    try:
        assert r.connect_refused()  # reset: not served
        wait_for(lambda: r.server.snapshot()["failed"] == 1)
        assert kp.destroyed == [1]  # the proxy went; its sockets came back and were reset
        _echo_once(r, b"served")  # the next connection is served
        wait_for(lambda: r.server.snapshot()["created"] == 1)
        c = r.stop()
        assert (c.accepted, c.created, c.failed) == (2, 1, 1)
        assert c.failures == {"EINVAL": 1}
        [f] = r.kinds("failed")
        assert f["stage"] == "attach" and f["error"]["errno_name"] == "EINVAL"
        assert f["reason"] == ("kernel refused the verdict: a verdict needs a parser on its "
                               "direction (EINVAL)")
        assert [e["id"] for e in r.kinds("proxy")] == [2]  # the failed one never reported
        assert [a[:2] for a in kp.attached] == [(1, "parser"), (2, "parser"), (2, "verdict")]
    finally:
        echo.close()


def test_attach_refused_and_proxy_already_gone():
    echo = EchoServer()
    kp = RelayKproxy(attach_fail=lambda pid, kind: KproxyError(errno.EPERM, "no"))
    orig_destroy = kp.destroy

    def destroy(pid):  # it ended by itself in between: ENOENT, no warning
        orig_destroy(pid)
        raise KproxyError(errno.ENOENT, "no proxy with this id")

    kp.destroy = destroy
    r = Running(kp, echo.addr, programs={"parser": 3})
    try:
        assert r.connect_refused()
        wait_for(lambda: r.server.snapshot()["failed"] == 1)
        c = r.stop()
        assert c.failures == {"EPERM": 1} and c.created == 0
        assert not [w for w in r.kinds("warning") if "destroy" in w["message"]]
        assert r.kinds("failed")[0]["reason"] == "kernel refused the parser: no (EPERM)"
    finally:
        echo.close()


def test_server_loads_named_programs_once_and_closes_them():
    echo = EchoServer()
    kp = RelayKproxy()
    loaded = []

    def loader(spec):
        loaded.append(Prog(spec, 10 + len(loaded)))
        return loaded[-1]

    r = Running(kp, echo.addr, loader=loader,
                options={"parser": "lenprefix", "verdict": "drop-prefix", "prefix": "BAD",
                         "offset": 0})
    try:
        assert [p.source for p in loaded] == ["lenprefix", "drop-prefix"]  # at open()
        for _ in range(2):
            _echo_once(r)
        r.stop()
        assert len(loaded) == 2 and all(p.closed for p in loaded)
        assert loaded[1].prefix == (b"BAD", 0)
        assert [(a[0], a[1], a[2].source) for a in kp.attached] == [
            (1, "parser", "lenprefix"), (1, "verdict", "drop-prefix"),
            (2, "parser", "lenprefix"), (2, "verdict", "drop-prefix")]
    finally:
        echo.close()


def test_server_closes_what_it_loaded_when_the_next_load_fails():
    from kpctl.bpf import BpfError
    loaded = []

    def loader(spec):
        if spec == "nope":
            raise BpfError(errno.ENOENT, "'nope': no such file, nor a shipped program")
        loaded.append(Prog(spec, 1))
        return loaded[-1]

    server = Server(RelayKproxy(), resolve("127.0.0.1:0", listen=True), resolve("127.0.0.1:9"),
                    ServeOptions(parser="lenprefix", verdict="nope"), loader=loader)
    with pytest.raises(BpfError, match="nope"):
        server.open()
    assert loaded[0].closed and server._listener is None


# -- the CLI, signals and what it prints --------------------------------------------

def _serve_in_main_thread(argv, client, on_ready, resolver=None, monkeypatch=None,
                          prog_loader=None):
    """main() in this (the main) thread; on_ready runs in a helper thread once
    a first connection went through, then sends us the signals it wants."""
    from kpctl.cli import main
    out, err = io.StringIO(), io.StringIO()
    helper_error = []

    def helper():
        try:
            on_ready(out)
        except BaseException as e:  # noqa: BLE001
            helper_error.append(e)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    # A SIGTERM that comes when serve is not running must not kill pytest.
    old = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        t = threading.Thread(target=helper, daemon=True)
        t.start()
        rc = main(argv, client_factory=lambda netns: client, stdout=out, stderr=err, env={},
                  prog_loader=prog_loader)
        t.join(T)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert not helper_error, helper_error
    return rc, out.getvalue(), err.getvalue()


def _connect_retry(port, host="127.0.0.1"):
    deadline = time.monotonic() + T
    while True:
        try:
            return socket.create_connection((host, port), timeout=T)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_cli_json_log_lines_sighup_and_summary(monkeypatch):
    echo = EchoServer()
    port = free_port()
    kp = RelayKproxy()
    resolver = CountingResolver({"echo.test": (socket.AF_INET, "127.0.0.1")})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)

    def ready(out):
        for _ in range(3):
            with _connect_retry(port) as c:
                c.sendall(b"ping")
                assert c.recv(4) == b"ping"
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: "SIGHUP" in out.getvalue())

    try:
        rc, out, err = _serve_in_main_thread(
            ["serve", "-j", "127.0.0.1:%d" % port, "echo.test:%d" % echo.port], kp, ready)
    finally:
        echo.close()
    assert rc == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    kinds = [x["event"] for x in lines]
    assert kinds[0] == "listening" and kinds[-1] == "summary"
    assert kinds.count("proxy") == 3
    assert lines[0]["target"] == "echo.test:%d (127.0.0.1:%d)" % (echo.port, echo.port)
    hup = [x for x in lines if x["event"] == "signal" and x["signal"] == "SIGHUP"][0]
    assert "reloading is not supported" in hup["action"]
    summary = lines[-1]
    assert summary["accepted"] == 3 and summary["created"] == 3
    assert summary["bytes_a_to_b"] >= 0 and "elapsed" in summary
    # the name was resolved once, at start, not per connection
    assert [c for c in resolver.calls if c[0] == "echo.test"] == [("echo.test", str(echo.port))]


def test_cli_parser_verdict_prefix_loaded_once_attached_per_proxy():
    echo = EchoServer()
    port = free_port()
    kp = RelayKproxy()
    h = Harness()

    def ready(out):
        for _ in range(3):
            with _connect_retry(port) as c:
                c.sendall(b"ping")
                assert recv_all(c, 4) == b"ping"
        wait_for(lambda: out.getvalue().count('"event":"proxy"') == 3)

    try:
        rc, out, err = _serve_in_main_thread(
            ["serve", "-j", "127.0.0.1:%d" % port, "127.0.0.1:%d" % echo.port,
             "--parser", "lenprefix", "--verdict", "drop-prefix", "--prefix", "DROP"],
            kp, ready, prog_loader=h.load_prog)
    finally:
        echo.close()
    assert rc == 0, err
    # loaded once at start, kept open while serving, closed on exit
    assert [p.source for p in h.loaded] == ["lenprefix", "drop-prefix"]
    assert all(p.closed for p in h.loaded)
    assert h.loaded[1].prefix == (b"DROP", 4)
    parser, verdict = h.loaded
    assert kp.attached == [(pid, kind, prog, "both") for pid in (1, 2, 3)
                           for kind, prog in (("parser", parser), ("verdict", verdict))]
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["programs"]["parser"] == {"id": 40, "name": "lenprefix",
                                              "source": "lenprefix"}
    assert lines[0]["options"]["verdict"] == "drop-prefix"
    assert lines[-1]["created"] == 3 and lines[-1]["failed"] == 0


def test_cli_text_summary_off_a_terminal():
    echo = EchoServer()
    port = free_port()
    dead = free_port()

    def ready(out):
        try:
            with _connect_retry(port) as c:
                assert ended_by_server(c)
        except ConnectionResetError:
            pass
        wait_for(lambda: "not served" in out.getvalue())

    try:
        rc, out, err = _serve_in_main_thread(
            ["serve", "127.0.0.1:%d" % port, "127.0.0.1:%d" % dead], RelayKproxy(), ready)
    finally:
        echo.close()
    assert rc == 0, err
    assert "listening on 127.0.0.1:%d, forwarding to 127.0.0.1:%d" % (port, dead) in out
    assert "not served: connect to 127.0.0.1:%d: Connection refused" % dead in out
    assert "SIGTERM: stop accepting" in out
    assert "1 accepted, 0 proxied, 1 failed, 0 refused" in out
    assert "failures: ECONNREFUSED 1" in out
    assert "\r" not in out  # no status line off a terminal


# -- rendering ------------------------------------------------------------------------

COUNTERS = dict(accepted=10, created=8, active=3, pending=1, failed=2, refused=0,
                accept_errors=0, ended=5, bytes_a_to_b=2048, bytes_b_to_a=3 << 20,
                failures={"ECONNREFUSED": 2}, started=0.0, elapsed=75.0)


def test_status_line():
    s = status_text(COUNTERS, ":8080", "127.0.0.1:80")
    assert s == (":8080 → 127.0.0.1:80  accepted 10  active 3  connecting 1  failed 2  "
                 "refused 0  ended 5: ↑ 2.0 KiB ↓ 3.0 MiB")


def test_summary_says_how_many_ends_were_lost():
    s = summary_text(dict(COUNTERS, lost=2, active=0), ":8080", "127.0.0.1:80")
    assert s.splitlines()[2] == ("2 of them ended unreported (the kernel dropped their ends: "
                                 "ENOBUFS): their bytes are not counted")


def test_summary():
    s = summary_text(COUNTERS, ":8080", "127.0.0.1:80")
    assert s.splitlines() == [
        "served :8080 → 127.0.0.1:80 for 1m15s: 10 accepted, 8 proxied, 2 failed, 0 refused",
        "bytes of the 5 ended: client→target 2.0 KiB (2048), target→client 3.0 MiB (3145728)",
        "failures: ECONNREFUSED 2",
        "3 proxies go on in the kernel ('kpctl list' shows them, 'kpctl destroy ID' ends one)",
    ]


def test_status_and_summary_count_tls_handshakes():
    tls = dict(COUNTERS, handshaking=4, handshakes=7, handshakes_failed=1)
    assert status_text(tls).startswith("accepted 10  handshaking 4  active 3  ")
    assert "TLS handshakes: 7 done, 1 failed" in summary_text(tls, ":443", "127.0.0.1:80").splitlines()
    assert "handshak" not in status_text(COUNTERS) + summary_text(COUNTERS)


class _Ctx:
    def __init__(self, json_mode=False):
        self.stdout = io.StringIO()
        self.json = json_mode


def test_view_on_a_terminal_redraws_one_line():
    ctx = _Ctx()
    v = ServeView(ctx, tty=True, clock=lambda: 0.0)
    v("listening", {"listen": ":8080", "target": "127.0.0.1:80", "options": {}})
    v("tick", COUNTERS)
    v("failed", {"client": "10.0.0.1:5", "reason": "connect to 127.0.0.1:80: Connection refused"})
    v("tick", COUNTERS)
    v("stopped", COUNTERS)
    out = ctx.stdout.getvalue()
    assert out.count("\r\x1b[2K:8080 → 127.0.0.1:80  accepted 10") == 2  # 2 ticks
    assert out.count(":8080 → 127.0.0.1:80  accepted 10") == 3  # + the redraw after a log line
    assert "\r\x1b[2K00:00:00 10.0.0.1:5: not served" in out or "10.0.0.1:5: not served" in out
    assert out.rstrip().endswith("('kpctl list' shows them, 'kpctl destroy ID' ends one)")


def test_view_quiet_and_json():
    ctx = _Ctx()
    v = ServeView(ctx, quiet=True, tty=True)
    for kind, d in (("listening", {"listen": "a", "target": "b", "options": {}}),
                    ("tick", COUNTERS), ("proxy", {"id": 1, "client": "c", "upstream": "u"}),
                    ("stopped", COUNTERS)):
        v(kind, d)
    assert ctx.stdout.getvalue() == ""
    v("accept-error", {"error": {"errno": 24, "errno_name": "EMFILE",
                                 "message": "Too many open files"}, "backoff": 0.1})
    assert "accept: Too many open files (EMFILE); pausing 100 ms" in ctx.stdout.getvalue()
    ctx = _Ctx(json_mode=True)
    v = ServeView(ctx, tty=True, clock=lambda: 1.5)
    v("tick", COUNTERS)
    v("proxy", {"id": 1, "client": "c", "upstream": "u"})
    assert json.loads(ctx.stdout.getvalue()) == {"ts": 1.5, "event": "proxy", "id": 1,
                                                 "client": "c", "upstream": "u"}


def test_view_listening_line_names_the_programs():
    ctx = _Ctx()
    v = ServeView(ctx, tty=False, clock=lambda: 0.0)
    v("listening", {"listen": ":9000", "target": "127.0.0.1:9001",
                    "options": {"prefix": "DROP"},
                    "programs": {"parser": {"id": 7, "name": "lenprefix", "source": "lenprefix"},
                                 "verdict": {"id": 8, "name": "drop_prefix",
                                             "source": "drop-prefix"}}})
    assert ctx.stdout.getvalue() == (
        "kpctl serve: listening on :9000, forwarding to 127.0.0.1:9001 (parser lenprefix "
        "(id 7), verdict drop-prefix (id 8) dropping 'DROP') through kproxy\n")


# -- TLS: options, configs, the handshake pool (fakes: no kTLS on the host) -----------

def _pem_pair(tmp_path):
    """A real certificate and key (openssl), for the option checks' files."""
    import subprocess
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True,
                   timeout=60)
    return str(cert), str(key)


@pytest.fixture
def pem(tmp_path):
    return _pem_pair(tmp_path)


@pytest.mark.parametrize("extra,msg", [
    (["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
    (["--tls-key", "{key}"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "/nonexistent/c.pem", "--tls-key", "{key}"],
     "serve: --tls-cert: cannot read /nonexistent/c.pem: No such file or directory"),
    (["--tls-cert", "{cert}", "--tls-key", "{dir}"], "serve: --tls-key: cannot read"),
    (["--target-ca", "{cert}"], "serve: --target-ca goes with --target-tls"),
    (["--target-sni", "db.internal"], "serve: --target-sni goes with --target-tls"),
    (["--target-insecure"], "serve: --target-insecure goes with --target-tls"),
    (["--target-tls", "--target-ca", "/nonexistent/ca.pem"],
     "serve: --target-ca: cannot read /nonexistent/ca.pem"),
    (["--target-tls", "--target-insecure", "--target-ca", "{cert}"],
     "--target-insecure and --target-ca are exclusive"),
    (["--target-tls", "--target-sni", ""], "--target-sni must not be empty"),
    (["--tls-versions", "1.3"], "serve: --tls-versions goes with --tls-cert or --target-tls"),
    (["--tls-ciphers", "AES-128-GCM"], "--tls-ciphers goes with --tls-cert or --target-tls"),
    (["--target-tls", "--tls-versions", "1.1,1.3"],
     "serve: --tls-versions: 1.1 cannot be offloaded to kTLS (choose from 1.2, 1.3)"),
    (["--target-tls", "--tls-versions", ","], "--tls-versions must name a version"),
    (["--target-tls", "--tls-ciphers", "RC4"], "--tls-ciphers: RC4 cannot be offloaded to kTLS"),
    (["--target-tls", "--tls-versions", "1.2", "--tls-ciphers", "TLS_AES_128_GCM_SHA256"],
     "--tls-ciphers: none of TLS_AES_128_GCM_SHA256 is a TLS 1.2 suite"),
    (["--target-tls", "--handshake-timeout", "0"], "not a positive number of seconds"),
    (["--target-tls", "--handshake-workers", "0"], "'0' is not a count"),
])
def test_serve_tls_usage_errors(extra, msg, pem, tmp_path):
    cert, key = pem
    args = [a.format(cert=cert, key=key, dir=tmp_path) for a in extra]
    port = free_port()
    h = Harness(FakeKproxy())
    assert h.run("serve", f"127.0.0.1:{port}", "127.0.0.1:9", *args) == 1
    assert msg in h.err, h.err
    assert "Traceback" not in h.err and "usage: kpctl serve" in h.err
    assert h.client.calls == []
    with pytest.raises(ConnectionRefusedError):  # nothing listened
        socket.create_connection(("127.0.0.1", port), timeout=T).close()


def test_serve_tls_usage_error_json(pem):
    h = Harness(FakeKproxy())
    assert h.run("-j", "serve", ":8080", "127.0.0.1:80", "--tls-cert", pem[0]) == 1
    assert json.loads(h.out) == {"error": {"errno": 22, "errno_name": "EINVAL", "message":
                                           "serve: --tls-cert and --tls-key go together (the "
                                           "certificate and its private key)"}}


@pytest.mark.parametrize("kw,msg", [
    ({"handshake_workers": 2000}, "--handshake-workers must be 1 to 1024"),
    ({"handshake_timeout": float("inf")}, "--handshake-timeout must be a positive number"),
    ({"target_tls": True, "tls_versions": ()}, "--tls-versions must name a version"),
    ({"target_tls": True, "tls_ciphers": ()}, "--tls-ciphers must name a cipher"),
])
def test_options_check_tls(kw, msg):
    with pytest.raises(ServeError) as ei:
        ServeOptions(**kw).check()
    assert msg in ei.value.message


def test_bad_certificate_exits_2_before_listening(pem, tmp_path):
    """The files are readable but not a certificate and key: open() builds
    the config and kpctl.tls's TlsError is the one line (exit 2)."""
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    port = free_port()
    h = Harness(FakeKproxy())
    rc = h.run("serve", f"127.0.0.1:{port}", "127.0.0.1:9", "--tls-cert", str(junk),
               "--tls-key", pem[1])
    assert rc == 2, h.err
    assert h.err.startswith(f"Error: cannot load certificate {junk} / key {pem[1]}: ")
    assert h.err.endswith("(EINVAL)\n") and h.err.count("\n") == 1 and "usage:" not in h.err
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=T).close()
    # a key that is not the certificate's: the same
    (tmp_path / "other").mkdir()
    other_cert, _ = _pem_pair(tmp_path / "other")
    h = Harness(FakeKproxy())
    assert h.run("serve", f"127.0.0.1:{port}", "127.0.0.1:9", "--tls-cert", other_cert,
                 "--tls-key", pem[1]) == 2
    assert "Error: cannot load certificate" in h.err and "key values mismatch" in h.err


def test_real_configs_built_once_from_the_options(pem):
    """TlsConfigs.build: the real kpctl.tls configs (no handshake here)."""
    from kpctl.serve_tls import TlsConfigs, target_server_name
    from kpctl.tls import ClientConfig, ServerConfig
    cert, key = pem
    target = resolve("127.0.0.1:443")
    o = ServeOptions(tls_cert=cert, tls_key=key, target_tls=True, target_ca=cert,
                     tls_versions=("1.3",), tls_ciphers=("AES-256-GCM",))
    cfg = TlsConfigs.build(o, target)
    try:
        assert isinstance(cfg.server, ServerConfig) and isinstance(cfg.client, ClientConfig)
        assert tuple(cfg.server.versions) == ("TLSv1.3",) and cfg.client.ca == cert
        assert cfg.client.server_name == "127.0.0.1" and cfg.client.verify
    finally:
        cfg.close()
    assert cfg.server is None and cfg.client is None
    named = Address("10.0.0.7", 443, socket.AF_INET, "api.internal:443")
    assert target_server_name(ServeOptions(target_tls=True), named) == "api.internal"
    assert target_server_name(ServeOptions(target_tls=True, target_sni="x.test"), named) \
        == "x.test"
    v6 = Address("::1", 443, socket.AF_INET6, "[::1]:https")
    assert target_server_name(ServeOptions(target_tls=True), v6) == "::1"
    insecure = TlsConfigs.build(ServeOptions(target_tls=True, target_insecure=True), target)
    assert insecure.server is None and insecure.client.verify is False
    insecure.close()


class FakeSession:
    def __init__(self, version="TLSv1.3", cipher_type=51):
        self.version, self.cipher_type = version, cipher_type


class FakeTls:
    """Stands for kpctl.tls: a "handshake" is b"HELLO" one way and an
    answer the other, on the real sockets, under the real timeout; what
    the config was and which thread ran it are recorded."""

    def __init__(self, session=None):
        self.session = session or FakeSession()
        self.threads = set()
        self.configs = []
        self.lock = threading.Lock()

    def _record(self, config):
        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.configs.append(config)

    def accept(self, sock, config, timeout):
        from kpctl.tls import TlsError
        self._record(config)
        sock.settimeout(timeout)
        try:
            hello = recv_all(sock, 5)
        except TimeoutError:
            raise TlsError(errno.ETIMEDOUT, f"TLS handshake timed out after {timeout:g} s") \
                from None
        if hello != b"HELLO":
            raise TlsError(errno.EPROTO, f"TLS handshake failed: the peer sent no TLS record "
                                         f"(it began with {hello!r})")
        sock.sendall(b"WELCOME")
        return self.session

    def connect(self, sock, config, timeout):
        from kpctl.tls import TlsError
        self._record(config)
        sock.settimeout(timeout)
        try:
            sock.sendall(b"HELLO")
            answer = recv_all(sock, 5)
        except OSError as e:  # a target that resets: told as kpctl.tls tells it
            raise TlsError(e.errno or errno.EIO, f"TLS handshake failed: {e.strerror or e}") \
                from None
        if answer != b"HELLO":  # the echo target answers in kind
            raise TlsError(errno.ECONNRESET, "TLS handshake failed: the peer closed the "
                                             "connection")
        return FakeSession("TLSv1.2", 52)


class FakeConfigs:
    built = []

    def __init__(self, options, target):
        self.server = ("server-config", options.tls_cert) if options.terminates_tls else None
        self.client = ("client-config", str(target)) if options.originates_tls else None
        self.closed = 0
        FakeConfigs.built.append(self)

    def close(self):
        self.closed += 1


def _tls_running(kp, target, fake, **options):
    FakeConfigs.built = []
    return Running(kp, target, options=options, tls_configs=FakeConfigs,
                   tls_accept=fake.accept, tls_connect=fake.connect)


def _hello(r):
    c = r.connect()
    c.sendall(b"HELLO")
    assert recv_all(c, 7) == b"WELCOME"
    return c


def _echo(c, data=b"ping"):
    c.sendall(data)
    assert recv_all(c, len(data)) == data


def _tls_threads():
    return [t for t in threading.enumerate() if t.name.startswith("kpctl-serve-tls")]


@pytest.mark.parametrize("sides", ["terminate", "originate", "both"])
def test_tls_sides_handshake_then_join_with_the_proxy_event(sides):
    echo = EchoServer()
    kp = RelayKproxy()
    fake = FakeTls()
    opts = {"tls_cert": "c.pem" if sides != "originate" else None,
            "tls_key": "k.pem" if sides != "originate" else None,
            "target_tls": sides != "terminate"}
    r = _TlsServe(kp, echo.addr, fake, **opts)
    try:
        for _ in range(3):
            c = _hello(r) if sides != "originate" else r.connect()
            with c:
                _echo(c)
        wait_for(lambda: r.server.snapshot()["ended"] == 3, what="3 proxies ended")
        counters = r.stop()
    finally:
        echo.close()
    per_conn = 2 if sides == "both" else 1
    assert (counters.created, counters.handshakes, counters.handshakes_failed,
            counters.failed) == (3, 3 * per_conn, 0, 0)
    want = {"client": {"version": "1.3", "cipher": "aes-128-gcm"} if sides != "originate"
            else None,
            "target": {"version": "1.2", "cipher": "aes-256-gcm"} if sides != "terminate"
            else None}
    assert [e["tls"] for e in r.kinds("proxy")] == [want] * 3
    # one config per side, built once and shared by every handshake, closed at the end
    [cfg] = FakeConfigs.built
    assert set(map(id, fake.configs)) == {id(x) for x in (cfg.server, cfg.client) if x}
    assert len(fake.configs) == 3 * per_conn and cfg.closed == 1
    # the handshakes ran in the pool, never in the loop's thread; none is left
    assert fake.threads and all(n.startswith("kpctl-serve-tls") for n in fake.threads)
    assert not _tls_threads()


def _unchecked(**kw):
    """ServeOptions whose files need not exist (the configs are fakes)."""
    return ServeOptions(**{k: v for k, v in kw.items() if v is not None})


class _TlsServe(Running):
    """Running with fake TLS configs and handshakes, options not checked
    for files (tls_cert names none)."""

    def __init__(self, client, target, fake, **options):
        self.events, self.ev_lock = [], threading.Lock()
        FakeConfigs.built = []
        self.server = Server(client, resolve("127.0.0.1:0", listen=True), target, None,
                             on_event=self._on, tls_configs=FakeConfigs,
                             tls_accept=fake.accept, tls_connect=fake.connect)
        self.server.options = _unchecked(**options)  # set before open(), as the loop reads it
        self.addr = self.server.open()
        self.result = self.error = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()


TERMINATE = {"tls_cert": "c.pem", "tls_key": "k.pem"}


def test_plain_proxy_event_says_no_tls():
    echo = EchoServer()
    r = Running(RelayKproxy(), echo.addr)
    try:
        with r.connect() as c:
            _echo(c)
        wait_for(lambda: r.kinds("proxy"))
        assert r.kinds("proxy")[0]["tls"] == {"client": None, "target": None}
        c = r.stop()
        assert (c.handshakes, c.handshakes_failed, c.handshaking) == (0, 0, 0)
    finally:
        echo.close()


def test_slow_handshake_does_not_stall_the_loop_and_times_out():
    """A client that never says hello holds one worker, not the loop: others
    are served meanwhile; it fails at stage tls after --handshake-timeout."""
    echo = EchoServer()
    r = _TlsServe(RelayKproxy(), echo.addr, FakeTls(), **TERMINATE, handshake_timeout=1.5)
    try:
        t0 = time.monotonic()
        silent = r.connect()
        wait_for(lambda: r.server.snapshot()["handshaking"] == 1, what="one handshake running")
        for _ in range(3):
            with _hello(r) as c:
                _echo(c)
        assert time.monotonic() - t0 < 1.5, "the others waited for the silent one"
        wait_for(lambda: r.kinds("failed"), what="the silent client failed")
        [ev] = r.kinds("failed")
        took = time.monotonic() - t0
        assert 1.4 <= took < 1.5 + 2, took
        assert ev == {"client": ev["client"], "stage": "tls", "side": "client",
                      "reason": "TLS with the client: TLS handshake timed out after 1.5 s",
                      "error": {"errno": errno.ETIMEDOUT, "errno_name": "ETIMEDOUT",
                                "message": "TLS with the client: TLS handshake timed out "
                                           "after 1.5 s"}}
        assert ended_by_server(silent)
        silent.close()
        with _hello(r) as c:  # and it goes on
            _echo(c)
        wait_for(lambda: r.server.snapshot()["ended"] == 4)
        c = r.stop()
        assert (c.accepted, c.created, c.handshakes, c.handshakes_failed, c.failed) == \
            (5, 4, 4, 1, 1)
        assert c.failures == {"ETIMEDOUT": 1}
    finally:
        echo.close()


def test_garbage_instead_of_a_hello_fails_that_client_only():
    echo = EchoServer()
    r = _TlsServe(RelayKproxy(), echo.addr, FakeTls(), **TERMINATE)
    try:
        with r.connect() as bad:
            bad.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert ended_by_server(bad)
        wait_for(lambda: r.kinds("failed"))
        [ev] = r.kinds("failed")
        assert ev["stage"] == "tls" and ev["side"] == "client"
        assert ev["error"]["errno_name"] == "EPROTO"
        assert ev["reason"] == ("TLS with the client: TLS handshake failed: the peer sent no "
                                "TLS record (it began with b'GET /')")
        with _hello(r) as c:
            _echo(c)
        wait_for(lambda: r.server.snapshot()["ended"] == 1)
        c = r.stop()
        assert (c.created, c.handshakes, c.handshakes_failed) == (1, 1, 1)
    finally:
        echo.close()


def test_target_handshake_failure_resets_the_client():
    """--target-tls against a target that closes at once: side target."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    closer_stop = threading.Event()

    def closer():
        while not closer_stop.is_set():
            try:
                s, _ = ls.accept()
            except OSError:
                return
            s.close()
    threading.Thread(target=closer, daemon=True).start()
    target = resolve("127.0.0.1:%d" % ls.getsockname()[1])
    kp = RelayKproxy()
    r = _TlsServe(kp, target, FakeTls(), target_tls=True)
    try:
        with r.connect() as c:
            assert ended_by_server(c)
        wait_for(lambda: r.kinds("failed"))
        [ev] = r.kinds("failed")
        assert (ev["stage"], ev["side"], ev["error"]["errno_name"]) == \
            ("tls", "target", "ECONNRESET")
        assert ev["reason"].startswith(f"TLS with the target {target}: TLS handshake failed")
        c = r.stop()
        assert (c.created, c.handshakes_failed) == (0, 1) and kp.calls == []
    finally:
        closer_stop.set()
        ls.close()


def test_max_conns_counts_connections_in_a_handshake():
    echo = EchoServer()
    r = _TlsServe(RelayKproxy(), echo.addr, FakeTls(), **TERMINATE, max_conns=1,
                  handshake_timeout=30)
    try:
        silent = r.connect()
        wait_for(lambda: r.server.snapshot()["handshaking"] == 1)
        assert r.connect_refused()
        wait_for(lambda: r.kinds("refused"))
        assert r.kinds("refused")[0]["limit"] == 1
        silent.close()  # its handshake fails (EOF): the slot is free again
        wait_for(lambda: r.server.snapshot()["handshaking"] == 0)
        with _hello(r) as c:
            _echo(c)
        r.stop()
    finally:
        echo.close()


def test_workers_bound_the_handshakes_and_a_queued_one_keeps_its_deadline():
    """--handshake-workers 1: a second client waits for the one worker, busy
    with a handshake slower than --handshake-timeout; the second's deadline
    runs from its accept, so it fails without a handshake."""
    from kpctl.tls import TlsError
    echo = EchoServer()
    workers = set()

    def slow_accept(sock, config, timeout):
        workers.add(threading.current_thread().name)
        time.sleep(1.5)  # e.g. a slow key exchange, past the 1 s
        raise TlsError(errno.ETIMEDOUT, f"TLS handshake timed out after {timeout:g} s")

    fake = FakeTls()
    fake.accept = slow_accept
    r = _TlsServe(RelayKproxy(), echo.addr, fake, **TERMINATE, handshake_workers=1,
                  handshake_timeout=1.0)
    try:
        first = r.connect()
        wait_for(lambda: workers, what="the first handshake running")
        second = r.connect()
        second.sendall(b"HELLO")  # ready, but no worker is free for it
        wait_for(lambda: len(r.kinds("failed")) == 2, what="both failed")
        assert [e["reason"] for e in r.kinds("failed")] == [
            "TLS with the client: TLS handshake timed out after 1 s",
            "TLS with the client: TLS handshake timed out after 1 s (waiting for a free "
            "handshake worker)"]
        assert len(workers) == 1 and len(_tls_threads()) == 1
        for c in (first, second):
            assert ended_by_server(c)
            c.close()
        r.stop()
        assert not _tls_threads()
    finally:
        echo.close()


def test_finished_handshakes_continue_in_the_loop_thread():
    """The pool posts completions back: connect and create run in the loop's
    thread (the kproxy client is not shared with the workers)."""
    echo = EchoServer()
    kp = RelayKproxy()
    seen = []
    real_create = kp.create

    def create(a, b):
        seen.append(threading.current_thread())
        return real_create(a, b, notify_end=True)

    fake = FakeTls()
    FakeConfigs.built = []
    events = []
    server = Server(kp, resolve("127.0.0.1:0", listen=True), echo.addr, None,
                    on_event=lambda k, d: events.append(k), tls_configs=FakeConfigs,
                    tls_accept=fake.accept, tls_connect=fake.connect, create=create)
    server.options = _unchecked(**TERMINATE, target_tls=True)
    addr = server.open()
    t = threading.Thread(target=server.run, kwargs={"install_signals": False}, daemon=True)
    t.start()
    try:
        c = socket.create_connection(addr.sockaddr()[:2], timeout=T)
        c.sendall(b"HELLO")
        assert recv_all(c, 7) == b"WELCOME"
        _echo(c)
        c.close()
        assert seen == [t]
    finally:
        server.stop()
        t.join(T)
        echo.close()
    assert not t.is_alive()


@pytest.mark.parametrize("mode", ["leave", "drain", "kill"])
def test_stop_ends_pending_handshakes_at_once(mode):
    """Handshakes in flight (workers blocked in recv, others queued) end
    when serve stops, in every mode: sockets closed, threads joined, no fd
    left."""
    echo = EchoServer()
    before = fd_count()
    r = _TlsServe(RelayKproxy(), echo.addr, FakeTls(), **TERMINATE, on_stop=mode,
                  handshake_timeout=60, handshake_workers=2)
    try:
        held = [_hello(r) for _ in range(1)]
        _echo(held[0])
        silent = [r.connect() for _ in range(4)]  # 2 in workers, 2 queued
        wait_for(lambda: r.server.snapshot()["handshaking"] == 4)
        t0 = time.monotonic()
        r.server.stop()
        if mode == "drain":
            held[0].close()
        c = _stopped_within(r, 5.0)
        assert time.monotonic() - t0 < 5.0
        shut = [e for e in r.kinds("failed") if e["stage"] == "shutdown"]
        assert len(shut) == 4 and all(e["reason"] == "shutting down" for e in shut)
        assert c.handshakes_failed == 0 and c.handshaking == 0
        for s in silent:
            assert ended_by_server(s)
            s.close()
        assert not _tls_threads()
        assert FakeConfigs.built[0].closed == 1
        for h in held:
            h.close()
        wait_for(lambda: fd_count() <= before + 2, what="fds back")  # echo's listener + r's wake
    finally:
        echo.close()


def test_status_counts_handshakes_in_the_snapshot():
    echo = EchoServer()
    r = _TlsServe(RelayKproxy(), echo.addr, FakeTls(), **TERMINATE)
    try:
        with _hello(r) as c:
            _echo(c)
        wait_for(lambda: r.server.snapshot()["handshakes"] == 1)
        snap = r.server.snapshot()
        assert {k: snap[k] for k in ("handshaking", "handshakes", "handshakes_failed")} == \
            {"handshaking": 0, "handshakes": 1, "handshakes_failed": 0}
        r.stop()
    finally:
        echo.close()


def test_kernel_without_ktls_exits_2_before_listening(pem, monkeypatch):
    import kpctl.tls
    monkeypatch.setattr(kpctl.tls, "kernel_has_ktls", lambda: False)
    port = free_port()
    h = Harness(FakeKproxy())
    assert h.run("serve", f"127.0.0.1:{port}", "127.0.0.1:9", "--tls-cert", pem[0],
                 "--tls-key", pem[1]) == 2
    assert h.err == ("Error: this kernel has no kTLS (CONFIG_TLS, module tls): serve cannot "
                     "terminate or originate TLS (ENOENT)\n")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=T).close()


def test_ended_event_names_the_alert():
    """An end with reason tls-alert carries the alert's description."""
    echo = EchoServer()
    kp = RelayKproxy()
    r = Running(kp, echo.addr)
    try:
        with r.connect() as c:
            _echo(c)
        wait_for(lambda: r.kinds("ended"))
        kp.tls_end = ("tls-alert", 40)
        with r.connect() as c:
            _echo(c)
        wait_for(lambda: len(r.kinds("ended")) == 2)
        assert [(e["reason"], e.get("tls_alert", "absent")) for e in r.kinds("ended")] == \
            [("closed", "absent"), ("tls-alert", 40)]
        r.stop()
    finally:
        echo.close()
