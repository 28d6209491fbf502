"""`kpctl serve --http` in front of nginx, as curl and a raw client see
it: the http parser on both directions and http-filter on requests of
every proxy, on the kernel listener (the default), on --userspace, and
with --tls-cert (a WAF on decrypted traffic).

Every transfer is checked by its bytes: status, sha256 of 16 MiB bodies
both ways (Content-Length and chunked uploads, stored by nginx's PUT),
keep-alive by curl's own count of connections (num_connects 0: reused).
A denied request gets the canned reply and a close, and never reaches
nginx's access log.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import subprocess

import pytest

from kpctl.procfs import read_totals
from nginxutil import Nginx
from test_http import REPLY, Reader, get
from test_serve import CURL, free_port, kpctl_json, serving
from tlsutil import make_pki
from util import IO_TIMEOUT, wait_for

BIG = 16 << 20
CURL_TIMEOUT = 600
RULES = ("--deny-path", "/admin", "--allow-methods", "GET,HEAD,POST,PUT")
MODES = {"listener": (), "userspace": ("--userspace",),
         "workers": ("--userspace", "--workers", "2")}


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    d = tmp_path_factory.mktemp("www")
    (d / "upload").mkdir()
    (d / "admin").mkdir()
    (d / "admin" / "x.txt").write_bytes(b"secret\n")
    (d / "small.txt").write_bytes(b"small file\n")
    data = os.urandom(BIG)
    (d / "big.bin").write_bytes(data)
    return d, hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def nginx(www, tmp_path_factory):
    n = Nginx(tmp_path_factory.mktemp("nginx"), www[0], http_port=free_port())
    yield n
    n.stop()


def curl(*args: str, stdin: str | None = None) -> list[str]:
    """curl's -w lines (argv must give -w); a failure fails the test."""
    cmd = [CURL, "-sS", "--max-time", str(CURL_TIMEOUT), *args]
    if stdin is not None:
        cmd = ["bash", "-c", f"{shlex.join(cmd)} < {shlex.quote(stdin)}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=CURL_TIMEOUT + 60)
    assert r.returncode == 0 and not r.stderr, (r.returncode, r.stderr)
    return r.stdout.split()


W = "%{http_code} %{num_connects}\\n"


def sha_of_download(url: str, *extra: str) -> str:
    r = subprocess.run(["bash", "-o", "pipefail", "-c",
                        f"{shlex.join([CURL, '-sS', '--fail', *extra, url])} | sha256sum -b"],
                       capture_output=True, text=True, timeout=CURL_TIMEOUT + 60)
    assert r.returncode == 0 and not r.stderr, r.stderr
    return r.stdout.split()[0]


def check_transfers(base: str, www, nginx: Nginx, *tls: str) -> None:
    """GET, HEAD, POST and PUT (Content-Length and chunked, 16 MiB each
    way) on keep-alive connections; the deny rules answered with their
    status; nginx never sees a denied request."""
    d, digest = www
    seen = len(nginx.requests())
    # Three requests on one connection (the second and third reuse it).
    assert curl(*tls, "-o", "/dev/null", "-w", W, f"{base}/small.txt",
                "-o", "/dev/null", "-w", W, f"{base}/status/204",
                "-o", "/dev/null", "-w", W, f"{base}/small.txt") == \
        ["200", "1", "204", "0", "200", "0"]
    # HEAD of a 16 MiB file (no body follows), then a GET on the same connection.
    out = curl(*tls, "-I", "-o", "/dev/null", "-w", W, f"{base}/big.bin", "--next", *tls,
               "-sS", "-w", "%{http_code} %{num_connects} %{size_download}\\n",
               "-o", "/dev/null", f"{base}/small.txt")
    assert out == ["200", "1", "200", "0", "11"]
    assert sha_of_download(f"{base}/big.bin", *tls) == digest
    # Uploads: Content-Length (-T file), chunked (-T - from stdin).
    assert curl(*tls, "-T", str(d / "big.bin"), "-o", "/dev/null", "-w", W,
                f"{base}/upload/cl.bin") == ["201", "1"]
    assert nginx.stored("cl.bin") == (digest, BIG)
    assert curl(*tls, "-T", "-", "-o", "/dev/null", "-w", W, f"{base}/upload/ch.bin",
                stdin=str(d / "big.bin")) == ["201", "1"]
    assert nginx.stored("ch.bin") == (digest, BIG)
    # A 16 MiB POST body, then a GET on the same connection.
    assert curl(*tls, "-H", "Expect:", "--data-binary", f"@{d / 'big.bin'}", "-o", "/dev/null",
                "-w", W,
                f"{base}/status/204", "--next", *tls, "-sS", "-o", "/dev/null", "-w", W,
                f"{base}/small.txt") == ["204", "1", "200", "0"]
    # The rules: 403 for /admin, 405 for DELETE; the body is the canned reply.
    for method, path, status in (("GET", "/admin/x.txt", 403), ("DELETE", "/small.txt", 405)):
        r = subprocess.run([CURL, "-sS", "-i", "-X", method, *tls, f"{base}{path}"],
                           capture_output=True, timeout=CURL_TIMEOUT)
        assert r.returncode == 0, r.stderr
        assert r.stdout == REPLY[status]
    lines = nginx.requests()[seen:]
    assert lines.count("GET /small.txt HTTP/1.1") == 4
    assert "PUT /upload/ch.bin HTTP/1.1" in lines and "POST /status/204 HTTP/1.1" in lines
    assert not [x for x in lines if "/admin" in x or x.startswith("DELETE")], lines


@pytest.mark.parametrize("mode", MODES)
def test_curl_through_serve_http(mode, www, nginx, dmesg):
    with serving("127.0.0.1:0", f"127.0.0.1:{nginx.http_port}", "--http", *RULES,
                 *MODES[mode]) as s:
        check_transfers(f"http://127.0.0.1:{s.port}", www, nginx)
        summary = s.stop()
    assert summary["failed"] == 0
    assert dmesg.bad() == []


def test_a_request_sent_at_once_is_judged_too(www, nginx, dmesg):
    """On --userspace the programs come with proxy-new: a request already
    in the socket when the proxy is made is judged like any other."""
    denied = read_totals().ended_denied
    with serving("127.0.0.1:0", f"127.0.0.1:{nginx.http_port}", "--http", "--userspace",
                 *RULES) as s:
        seen = len(nginx.requests())
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", s.port), timeout=IO_TIMEOUT) as c:
                c.sendall(get("/admin/x.txt"))
                assert Reader(c).eof() == REPLY[403]
        s.stop()
    assert nginx.requests()[seen:] == []
    wait_for(lambda: read_totals().ended_denied >= denied + 5, what="5 denied ends")
    assert dmesg.bad() == []


def _listener_of(port: int) -> int:
    [li] = [x for x in kpctl_json("list", "listeners") if x["listen"].endswith(f":{port}")]
    return li["id"]


def test_http_rules_on_a_live_listener_and_show_counts(www, nginx, dmesg):
    with serving("127.0.0.1:0", f"127.0.0.1:{nginx.http_port}", "--http") as s:
        lid = _listener_of(s.port)
        with socket.create_connection(("127.0.0.1", s.port), timeout=IO_TIMEOUT) as c:
            r = Reader(c)
            for _ in range(3):
                c.sendall(get("/small.txt"))
                status, _, body = r.response()
                assert (status, body) == (200, b"small file\n")
            [p] = [x for x in kpctl_json("list") if x.get("listener_id") == lid]
            shown = kpctl_json("show", str(p["id"]))
            assert shown["http"] == {"requests": 3, "responses": 3, "denied": 0}
            rules = kpctl_json("http-rules", str(p["id"]))
            assert rules["rules"]["deny_paths"] == []
            # New rules for every proxy of the listener, this one included.
            kpctl_json("http-rules", "--listener", str(lid), "--deny-path", "/small")
            assert kpctl_json("http-rules", str(p["id"]))["rules"]["deny_paths"] == ["/small"]
            seen = len(nginx.requests())
            c.sendall(get("/small.txt"))
            assert r.eof() == REPLY[403]
        assert nginx.requests()[seen:] == []
        wait_for(lambda: not [x for x in kpctl_json("list") if x["id"] == p["id"]],
                 what="the denied proxy to end")
        s.stop()
    assert dmesg.bad() == []


def test_workers_share_one_set_of_rules(www, nginx, dmesg):
    """--workers' processes attach the programs their parent loaded: new
    rules given through any one proxy hold on every worker's."""
    with serving("127.0.0.1:0", f"127.0.0.1:{nginx.http_port}", "--http", "--userspace",
                 "--workers", "2") as s:
        conns = [socket.create_connection(("127.0.0.1", s.port), timeout=IO_TIMEOUT)
                 for _ in range(8)]
        try:
            readers = [Reader(c) for c in conns]
            for c, r in zip(conns, readers):
                c.sendall(get("/small.txt"))
                assert r.response()[0] == 200
            proxies = kpctl_json("list")
            assert len(proxies) == 8
            kpctl_json("http-rules", str(proxies[0]["id"]), "--deny-path", "/small")
            seen = len(nginx.requests())
            for c, r in zip(conns, readers):
                c.sendall(get("/small.txt"))
                assert r.eof() == REPLY[403]
        finally:
            for c in conns:
                c.close()
        assert nginx.requests()[seen:] == []
        s.stop()
    assert dmesg.bad() == []


def test_serve_http_with_tls_filters_decrypted_requests(www, nginx, tmp_path, dmesg):
    pki = make_pki(tmp_path)
    with serving("127.0.0.1:0", f"127.0.0.1:{nginx.http_port}", "--http", *RULES,
                 "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"]) as s:
        tls = ("--cacert", pki["server_cert"], "--resolve", f"localhost:{s.port}:127.0.0.1")
        check_transfers(f"https://localhost:{s.port}", www, nginx, *tls)
        summary = s.stop()
    assert summary["failed"] == 0 and summary["handshakes"] >= 1
    assert dmesg.bad() == []
