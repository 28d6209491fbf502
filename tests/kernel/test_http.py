"""HTTP through a proxy: the `http` parser on both directions and the
`http-filter` verdict on a-to-b, in front of nginx, as a client sees it.

Each connection is made by the test itself: it accepts the client's
connection, connects to nginx, joins the two (Kproxy.create) and attaches
the programs before the client sends a byte, so the parser sees the
stream from its first byte (a client that writes at once, such as curl,
could have its first bytes forwarded before the attach; serve --http and
listeners attach before the proxy runs). Requests are written and
responses read by hand, so every byte is checked: status, body (sha256),
and the close that follows a denial.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import random
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from kpctl import Kproxy, bpf, http
from nginxutil import Nginx
from util import IO_TIMEOUT, kp, recv_until_eof, wait_for  # noqa: F401 - kp is a fixture

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
BIG = 16 * MiB
REPLY = {status: body for status, body in zip(http.REPLY_STATUSES, http.CANNED_REPLIES)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def nginx(tmp_path_factory) -> Iterator[Nginx]:
    work = tmp_path_factory.mktemp("nginx-http")
    www = work / "www"
    (www / "upload").mkdir(parents=True)
    (www / "admin").mkdir()
    (www / "small.txt").write_bytes(b"small file\n")
    (www / "admin" / "x.txt").write_bytes(b"secret\n")
    (www / "big.bin").write_bytes(random.Random(22).randbytes(BIG))
    n = Nginx(work, www, http_port=free_port())
    yield n
    n.stop()


class Front:
    """Joins each client connection to a backend port through a proxy with
    the http parser both ways and http-filter (with `rules`) on a-to-b."""

    def __init__(self, kp: Kproxy, port: int, rules: http.HttpRules | None = None) -> None:
        self.kp, self.port = kp, port
        self.progs = http.load_http(rules=rules or http.HttpRules())
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)

    def connect(self) -> tuple[socket.socket, int]:
        """A client socket whose proxy is ready, and the proxy's id."""
        client = socket.create_connection(self.listener.getsockname(), timeout=IO_TIMEOUT)
        side_a, _ = self.listener.accept()
        side_b = socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT)
        try:
            p = self.kp.create(side_a, side_b, notify_end=True)
            self.kp.attach(p.id, "parser", self.progs.parser, "both")
            self.kp.attach(p.id, "verdict", self.progs.filter, "a-to-b",
                           replies=http.CANNED_REPLIES)
        finally:
            side_a.close()
            side_b.close()
        return client, p.id

    def close(self) -> None:
        self.listener.close()
        self.progs.close()


@pytest.fixture
def front(kp, nginx) -> Iterator[Front]:
    f = Front(kp, nginx.http_port)
    yield f
    f.close()


# --- reading responses by hand --------------------------------------------------


class Reader:
    """Responses from a socket, one after another (pipelining keeps bytes
    of the next one in the buffer)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        self.buf += data
        return bool(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            assert self._fill(), f"EOF inside a line: {self.buf[:200]!r}"
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            assert self._fill(), f"EOF after {len(self.buf)} of {n} body bytes"
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        status = int(self.line().split()[1])
        headers: dict[str, str] = {}
        while line := self.line():
            name, value = line.decode().split(":", 1)
            headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self.line().split(b";")[0], 16):
                body += self.exact(size)
                assert self.exact(2) == b"\r\n"
            while self.line():
                pass
            return status, headers, body
        return status, headers, self.exact(int(headers.get("content-length", "0")))

    def eof(self) -> bytes:
        """What remains up to the peer's FIN (which must come)."""
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunked(data: bytes, rng: random.Random) -> Iterator[bytes]:
    at = 0
    while at < len(data):
        n = min(len(data) - at, rng.choice([1, 7, 100, 4096, 65536, 300000]))
        yield f"{n:x}\r\n".encode() + data[at:at + n] + b"\r\n"
        at += n
    yield b"0\r\nX-Trailer: done\r\n\r\n"


def wait_ended(kp: Kproxy, proxy_id: int) -> str:
    """The reason the proxy ended with (its notify_end event)."""
    found: list[str] = []

    def ended() -> bool:
        found.extend(e.reason for e in kp.ended(timeout=0.2) if e.proxy.id == proxy_id)
        return bool(found)

    wait_for(ended, timeout=30, what=f"proxy {proxy_id} to end")
    return found[0]


# --- the reply verdict, with a trivial program -------------------------------------


def proc_row(proxy_id: int) -> dict[str, str]:
    lines = Path("/proc/net/kproxy").read_text().splitlines()
    header = lines[0].split()
    for line in lines[1:]:
        row = dict(zip(header, line.split()))
        if row["id"] == str(proxy_id):
            return row
    raise AssertionError(f"proxy {proxy_id} not in /proc/net/kproxy")


def _two_connections() -> tuple[socket.socket, ...]:
    """(client, side_a, side_b, backend): a proxy joins side_a and side_b."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(2)
    client = socket.create_connection(lst.getsockname(), timeout=IO_TIMEOUT)
    side_a, _ = lst.accept()
    side_b = socket.create_connection(lst.getsockname(), timeout=IO_TIMEOUT)
    backend, _ = lst.accept()
    lst.close()
    backend.settimeout(IO_TIMEOUT)
    return client, side_a, side_b, backend


def test_reply_verdict_sends_reply_after_backend_fin_then_ends_denied(kp):
    client, side_a, side_b, backend = _two_connections()
    with bpf.load("lines") as parser, \
            bpf.load_insns("socket_filter", bpf.insn_return(-0x7FFFFFFF)) as verdict:  # 0x80000001
        p = kp.create(side_a, side_b, notify_end=True)
        kp.attach(p.id, "parser", parser, "a-to-b")
        kp.attach(p.id, "verdict", verdict, "a-to-b", replies=[b"zero\n", b"DENIED one\n"])
    side_a.close()
    side_b.close()

    client.sendall(b"first line\nsecond line\n")
    # The backend gets a FIN and not a byte of the denied message.
    assert recv_until_eof(backend) == b""
    row = proc_row(p.id)
    assert (row["ab_denied"], row["ba_denied"], row["ab_msgs"]) == ("1", "0", "0")
    # What the backend still sends comes first, then the reply, then a FIN.
    backend.sendall(b"owed response\n")
    backend.shutdown(socket.SHUT_WR)
    assert recv_until_eof(client) == b"owed response\nDENIED one\n"
    assert wait_ended(kp, p.id) == "denied"
    stat = Path("/proc/net/kproxy_stat").read_text()
    assert any(line.startswith("ended_denied ") and int(line.split()[1]) >= 1
               for line in stat.splitlines())
    client.close()
    backend.close()


def test_reply_without_such_reply_closes_without_bytes(kp):
    client, side_a, side_b, backend = _two_connections()
    with bpf.load("lines") as parser, \
            bpf.load_insns("socket_filter", bpf.insn_return(-0x7FFFFFFB)) as verdict:  # 0x80000005
        p = kp.create(side_a, side_b, notify_end=True)
        kp.attach(p.id, "parser", parser, "a-to-b")
        kp.attach(p.id, "verdict", verdict, "a-to-b", replies=[b"only reply 0\n"])
    side_a.close()
    side_b.close()
    client.sendall(b"x\n")
    assert recv_until_eof(backend) == b""
    backend.close()
    assert recv_until_eof(client) == b""
    assert wait_ended(kp, p.id) == "denied"
    client.close()


# --- HTTP in front of nginx ----------------------------------------------------------


def test_keepalive_get_head_put_204_304_and_16mib_bodies(front, nginx):
    c, pid = front.connect()
    r = Reader(c)
    big = (nginx.www / "big.bin").read_bytes()
    rng = random.Random(1)

    c.sendall(get("/small.txt"))
    status, headers, body = r.response()
    assert (status, body) == (200, b"small file\n")
    modified = headers["last-modified"]

    c.sendall(get("/big.bin", "HEAD"))
    status, headers, body = r.response("HEAD")
    assert (status, headers["content-length"], body) == (200, str(BIG), b"")
    # The request after a HEAD is answered: the HEAD response had no body.
    c.sendall(get("/status/204"))
    assert r.response()[0] == 204
    c.sendall(get("/small.txt", extra=f"If-Modified-Since: {modified}\r\n"))
    assert r.response()[0] == 304

    c.sendall(get("/big.bin"))
    status, _, body = r.response()
    assert status == 200 and sha(body) == sha(big)

    c.sendall(get("/upload/cl.bin", "PUT", f"Content-Length: {BIG}\r\n") + big)
    assert r.response()[0] == 201
    assert nginx.stored("cl.bin") == (sha(big), BIG)

    c.sendall(get("/upload/chunked.bin", "PUT", "Transfer-Encoding: chunked\r\n"))
    for piece in chunked(big, rng):
        c.sendall(piece)
    assert r.response()[0] == 201
    assert nginx.stored("chunked.bin") == (sha(big), BIG)

    c.sendall(get("/small.txt", extra="Connection: close\r\n"))
    assert r.response()[2] == b"small file\n"
    assert r.eof() == b""
    c.close()
    assert wait_ended(front.kp, pid) == "closed"


def test_pipelined_requests_get_their_responses_in_order(front, nginx):
    c, _ = front.connect()
    r = Reader(c)
    c.sendall(get("/small.txt") + get("/big.bin", "HEAD") + get("/status/204")
              + get("/admin/x.txt") + get("/small.txt"))
    assert r.response()[2] == b"small file\n"
    assert r.response("HEAD")[1]["content-length"] == str(BIG)
    assert r.response()[0] == 204
    assert r.response()[2] == b"secret\n"
    assert r.response()[2] == b"small file\n"
    c.close()


def upgrade_backend() -> tuple[socket.socket, threading.Thread]:
    """A backend that answers one request with 101, then echoes raw bytes."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)

    def serve() -> None:
        conn, _ = lst.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\n"
                         b"Connection: Upgrade\r\n\r\n" + b"\x00server raw\n\r\x01")
            while data := conn.recv(65536):
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return lst, t


def test_upgrade_101_then_raw_bytes_both_ways(kp):
    lst, t = upgrade_backend()
    f = Front(kp, lst.getsockname()[1])
    try:
        c, _ = f.connect()
        c.sendall(get("/ws", extra="Upgrade: raw\r\nConnection: Upgrade\r\n"))
        r = Reader(c)
        assert r.response()[0] == 101
        assert r.exact(14) == b"\x00server raw\n\r\x01"
        raw = bytes(range(256)) * 64 + b"GET / HTTP/1.1\r\n\n\n"
        c.sendall(raw)
        assert r.exact(len(raw)) == raw
        c.close()
        t.join(IO_TIMEOUT)
    finally:
        f.close()
        lst.close()


# (rules, request, status). A chunked body over the limit is refused at
# the chunk that crosses it: its head has reached nginx, not its body.
CHUNKED_OVER = get("/upload/f.bin", "PUT", "Transfer-Encoding: chunked\r\n")
DENIALS = [
    ("deny-path /admin", get("/admin/x.txt"), 403),
    ("allow-path /pub", get("/small.txt"), 403),
    ("allow-methods GET,HEAD", get("/upload/d.bin", "PUT", "Content-Length: 1\r\n") + b"x", 405),
    ("deny-host evil.example", b"GET /small.txt HTTP/1.1\r\nHost: EVIL.example:80\r\n\r\n", 403),
    ("deny-host evil.example", b"GET http://evil.example/small.txt HTTP/1.1\r\nHost: ok\r\n\r\n",
     403),
    ("max-body-bytes 100", get("/upload/e.bin", "PUT", "Content-Length: 101\r\n") + b"x" * 101,
     413),
    ("max-body-bytes 100", CHUNKED_OVER + b"64\r\n" + b"x" * 100 + b"\r\n1\r\nx\r\n0\r\n\r\n",
     413),
    ("max-request-line 40", get("/small.txt?" + "q" * 40), 414),
    ("max-header-bytes 200", get("/small.txt", extra="X-Pad: " + "p" * 200 + "\r\n"), 431),
    ("max-headers 3", get("/small.txt", extra="A: 1\r\nB: 2\r\nC: 3\r\n"), 431),
    ("deny-path /admin", get("/%61dmin/x.txt"), 400),
    ("deny-path /admin", get("//admin/x.txt"), 400),
]


@pytest.mark.parametrize("rule,request_bytes,status", DENIALS,
                         ids=[f"{d[0]}-{d[2]}-{i}" for i, d in enumerate(DENIALS)])
def test_each_rule_answers_its_status_and_closes(kp, nginx, rule, request_bytes, status):
    f = Front(kp, nginx.http_port, http.parse_rules_file(rule + "\n"))
    try:
        seen = len(nginx.requests())
        c, pid = f.connect()
        c.sendall(request_bytes)
        assert Reader(c).eof() == REPLY[status]
        c.close()
        assert wait_ended(kp, pid) == "denied"
        if request_bytes.startswith(CHUNKED_OVER):
            assert nginx.requests()[seen:] == ["PUT /upload/f.bin HTTP/1.1"]
            assert not (nginx.www / "upload" / "f.bin").exists()
        else:
            assert nginx.requests()[seen:] == []
    finally:
        f.close()


def test_rules_change_on_a_running_proxy(front, nginx):
    c, _ = front.connect()
    r = Reader(c)
    c.sendall(get("/admin/x.txt"))
    assert r.response()[2] == b"secret\n"
    http.apply(front.progs.filter, http.parse_rules_file("deny-path /admin\n"))
    c.sendall(get("/small.txt") + get("/admin/x.txt"))
    assert r.response()[2] == b"small file\n"
    assert r.eof() == REPLY[403]
    c.close()


def _dribble(c: socket.socket, data: bytes) -> None:
    """One byte per segment (TCP_NODELAY, a pause between sends)."""
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        c.send(data[i:i + 1])
        time.sleep(0.002)


def test_a_peer_that_dribbles_bytes_is_judged_as_one_that_does_not(kp, nginx):
    """A request in one-byte segments is framed and judged whole: the
    allowed one answered, the denied one refused before nginx, on the same
    connection, and the bytes held meanwhile stay bounded by the limit."""
    f = Front(kp, nginx.http_port, http.parse_rules_file("deny-path /admin\n"))
    try:
        seen = len(nginx.requests())
        c, pid = f.connect()
        r = Reader(c)
        _dribble(c, get("/small.txt", extra="X-Pad: " + "p" * 300 + "\r\n"))
        assert r.response()[:3:2] == (200, b"small file\n")
        _dribble(c, get("/admin/x.txt"))
        assert r.eof() == REPLY[403]
        c.close()
        assert wait_ended(kp, pid) == "denied"
        assert nginx.requests()[seen:] == ["GET /small.txt HTTP/1.1"]
    finally:
        f.close()


def test_urgent_data_is_an_ordinary_byte_of_the_request(front, nginx):
    """A joined socket reads urgent data inline: the byte sent with MSG_OOB
    is part of the stream the parser frames, so a request carrying one in
    a header value gets its answer and the next request its own."""
    c, _ = front.connect()
    r = Reader(c)
    head = get("/small.txt", extra="X-Urgent: a\r\n")
    cut = head.index(b"X-Urgent: a") + len(b"X-Urgent: ")
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(head[:cut])
    c.send(b"!", socket.MSG_OOB)
    c.sendall(head[cut:])
    assert r.response()[:3:2] == (200, b"small file\n")
    c.sendall(get("/small.txt"))
    assert r.response()[:3:2] == (200, b"small file\n")
    c.close()


def _state_map_fd(f: Front) -> int:
    return http.parser_state_map(f.progs.parser.id)


def test_state_lost_mid_stream_is_refused_not_guessed(kp, nginx):
    """The parser's per-proxy state lives in an LRU map: with more than
    HTTP_PROXIES_MAX proxies about, one proxy's can be evicted between two
    pieces of a body (deleted here, as the LRU would). A fresh guess would
    take the body's last piece, a request with its own Content-Length, for
    a request, and the request after the body, which nginx reads as one,
    for that one's body: /admin smuggled past the filter. The proxy ends
    instead, and nginx never sees /admin."""
    f = Front(kp, nginx.http_port, http.parse_rules_file("deny-path /admin\n"))
    try:
        seen = len(nginx.requests())
        c, pid = f.connect()
        smuggled = get("/admin/x.txt")
        decoy = get("/small.txt", extra=f"Content-Length: {len(smuggled)}\r\n")
        piece = 64 * 1024  # the parser's body pieces (HTTP_PIECE_MAX)
        head = get("/upload/lost.bin", "PUT", f"Content-Length: {piece + len(decoy)}\r\n")
        c.sendall(head + b"A" * piece)
        wait_for(lambda: kp.get(pid).a_to_b.bytes == len(head) + piece,
                 what="the header block and the body's first piece to be forwarded")
        fd = _state_map_fd(f)
        try:
            key = ctypes.create_string_buffer(struct.pack("I", pid), 4)
            assert bpf.libbpf().bpf_map_delete_elem(fd, key) == 0
        finally:
            os.close(fd)
        c.sendall(decoy + smuggled)
        with contextlib.suppress(ConnectionResetError):
            Reader(c).eof()
        c.close()
        ended = wait_ended(kp, pid)
        assert not [x for x in nginx.requests()[seen:] if "/admin" in x]
        assert ended == "error"
    finally:
        f.close()


def test_an_earlier_proxys_state_under_the_same_id_is_not_taken(kp, nginx):
    """Ids start again at 1 when the module is reloaded, and the programs'
    maps may outlive it. An entry left by an earlier proxy with this id, in
    the middle of a body, would have this proxy's first request framed as
    body bytes, unjudged. Its stamp (cb[3]) is not this proxy's: the
    request is judged."""
    f = Front(kp, nginx.http_port, http.parse_rules_file("deny-path /admin\n"))
    try:
        seen = len(nginx.requests())
        a, aid = f.connect()
        piece = 64 * 1024  # the parser's body pieces (HTTP_PIECE_MAX): one more to come
        head = get("/upload/early.bin", "PUT", f"Content-Length: {piece + 1000}\r\n")
        a.sendall(head + b"x" * piece)
        wait_for(lambda: kp.get(aid).a_to_b.bytes == len(head) + piece,
                 what="the earlier proxy's first body piece to be forwarded")
        fd = _state_map_fd(f)
        try:
            earlier = http._map_lookup(fd, struct.pack("I", aid), http.STATE_SIZE)
            assert earlier is not None
            b, bid = f.connect()
            http._map_update(fd, struct.pack("I", bid), earlier)
        finally:
            os.close(fd)
        b.sendall(get("/admin/x.txt"))
        assert Reader(b).eof() == REPLY[403]
        b.close()
        a.close()
        assert wait_ended(kp, bid) == "denied"
        assert not [x for x in nginx.requests()[seen:] if "/admin" in x]
    finally:
        f.close()


# Refused at the header block: nginx sees nothing.
SMUGGLING = [
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
    b"0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -4\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chu nked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n",
]
# Refused at a chunk-size line: nginx has had the head (and may have
# answered it), never the rest nor the request smuggled behind it.
PUT_CHUNKED = b"PUT /upload/sm.bin HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
SMUGGLING_BODY = [
    PUT_CHUNKED + b"fffffffffffffffff\r\n",  # over 15 hex digits
    PUT_CHUNKED + b"5x\r\nabcde\r\n0\r\n\r\n",
    PUT_CHUNKED + b"-1\r\n",
    PUT_CHUNKED + b"3\r\nabcXX0\r\n\r\n",  # no CRLF after the data
]


@pytest.mark.parametrize("attack", SMUGGLING, ids=[f"case{i}" for i in range(len(SMUGGLING))])
def test_smuggling_is_answered_400_and_closed_before_nginx(front, nginx, attack):
    seen = len(nginx.requests())
    c, pid = front.connect()
    # A smuggled second request rides behind each attack.
    c.sendall(attack + get("/smuggled"))
    assert Reader(c).eof() == REPLY[400]
    c.close()
    assert wait_ended(front.kp, pid) == "denied"
    assert len(nginx.requests()) == seen, nginx.requests()[seen:]


@pytest.mark.parametrize("attack", SMUGGLING_BODY,
                         ids=[f"body{i}" for i in range(len(SMUGGLING_BODY))])
def test_bad_chunks_are_answered_400_and_closed(front, nginx, attack):
    seen = len(nginx.requests())
    c, pid = front.connect()
    c.sendall(attack + get("/smuggled"))
    got = Reader(c).eof()
    # After what nginx answered to the head, if anything.
    assert got.endswith(REPLY[400]), got[-200:]
    c.close()
    assert wait_ended(front.kp, pid) == "denied"
    assert nginx.requests()[seen:] in ([], ["PUT /upload/sm.bin HTTP/1.1"])
    assert not (nginx.www / "upload" / "sm.bin").exists()


def test_without_a_filter_a_bad_request_ends_the_proxy(kp, nginx):
    seen = len(nginx.requests())
    with http.load_http(filter=False) as progs:
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        c = socket.create_connection(lst.getsockname(), timeout=IO_TIMEOUT)
        a, _ = lst.accept()
        lst.close()
        b = socket.create_connection(("127.0.0.1", nginx.http_port), timeout=IO_TIMEOUT)
        p = kp.create(a, b, notify_end=True)
        kp.attach(p.id, "parser", progs.parser, "both")
        a.close()
        b.close()
    c.sendall(SMUGGLING[0] + get("/smuggled"))
    with contextlib.suppress(ConnectionResetError):
        assert recv_until_eof(c) == b""
    assert wait_ended(kp, p.id) == "error"
    assert len(nginx.requests()) == seen
    c.close()


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(at, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            b[at:at] = rng.choice([b"\r", b"\n", b"\0", b" ", b"\t", b":", b",", b"\r\n"])
        elif op == 2 and b:
            del b[at:at + rng.randint(1, 8)]
        elif op == 3:
            b[at:at] = rng.choice([b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
                                   b"Host: x\r\n", b"0\r\n\r\n", b"GET / HTTP/1.1\r\n"])
        else:
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(b)


SEEDS = [
    get("/small.txt"),
    get("/upload/fz.bin", "PUT", "Content-Length: 5\r\n") + b"hello",
    get("/upload/fz.bin", "PUT", "Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n",
    get("/big.bin", "HEAD") + get("/small.txt"),
]


def test_fuzzed_requests_end_or_continue_cleanly(front, nginx, dmesg, say):
    seed = int(os.environ.get("KPROXY_TEST_SEED", random.randrange(1 << 30)))
    say(f"http fuzz seed {seed}")
    rng = random.Random(seed)
    for _ in range(int(os.environ.get("KPROXY_TEST_HTTP_FUZZ", "120"))):
        c, _ = front.connect()
        c.settimeout(5)
        c.sendall(mutate(rng, rng.choice(SEEDS)))
        c.shutdown(socket.SHUT_WR)
        got = b""
        with contextlib.suppress(ConnectionResetError):
            got = Reader(c).eof()
        # Each answer is HTTP (nginx's or a canned reply), or nothing.
        assert got == b"" or got.startswith(b"HTTP/1.1 "), got[:100]
        c.close()
    wait_for(lambda: not front.kp.list(), timeout=60, what="every fuzzed proxy to end")
    assert dmesg.bad() == []
