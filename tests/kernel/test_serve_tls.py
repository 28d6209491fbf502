"""`kpctl serve` with TLS against the real module: it terminates TLS
(--tls-cert/--tls-key), originates it (--target-tls) and re-encrypts (both);
the handshakes run in serve's thread pool, the records in the kernel (kTLS).

serve runs as a subprocess (`python -m kpctl.cli serve -j ...`, test_serve's
Serve), its JSON lines read back. Clients are curl (HTTPS with a chosen
version and cipher), `openssl s_client` (a GET, and its `k` command: a
KeyUpdate), Python's ssl, and kTLS sockets of kpctl.tls where a test sends
records no TLS stack sends on demand (alerts). The HTTP backend is Debian's
nginx (nginxutil), plain and HTTPS (its TLS 1.3 sends session tickets: the
kernel consumes them on serve's side); uploads are PUTs whose stored file is
hashed. The echo backend is test_serve's framed echo. Certificates from
tlsutil.make_pki (EC P-256, for "localhost").

Sizes: 64 MiB each way, the issue's size, in every HTTPS transfer. Every
test checks the kernel log; the tests with failures also that serve's fd
count is back where it was.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest

from kpctl.procfs import read_totals
from kpctl.tls import ClientConfig, connect_tls
from nginxutil import Nginx
from test_serve import CURL, FramedEchoServer, Serve, fd_count, free_port, serving
from tlsutil import (HANDSHAKE_TIMEOUT, RECORD_ALERT, RECORD_HANDSHAKE, RawPeer, make_pki,
                     peer_client_ctx, send_record)
from util import IO_TIMEOUT, recv_exact, wait_for

# (curl's version flags, curl's cipher flag, what serve's proxy event says)
CURL_MATRIX = {
    "1.2-aes-128-gcm": (["--tlsv1.2", "--tls-max", "1.2"],
                        ["--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"], ("1.2", "aes-128-gcm")),
    "1.2-aes-256-gcm": (["--tlsv1.2", "--tls-max", "1.2"],
                        ["--ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384"], ("1.2", "aes-256-gcm")),
    "1.3-aes-128-gcm": (["--tlsv1.3"], ["--tls13-ciphers", "TLS_AES_128_GCM_SHA256"],
                        ("1.3", "aes-128-gcm")),
    "1.3-aes-256-gcm": (["--tlsv1.3"], ["--tls13-ciphers", "TLS_AES_256_GCM_SHA384"],
                        ("1.3", "aes-256-gcm")),
}
CURL_TIMEOUT = 900
# The size, each way, in every HTTPS transfer test (about 10 s at the
# 5-10 MiB/s TLS goes through serve under TCG).
BIG = 64 << 20
SMALL = b"hello through kTLS\n"
# Under TCG the default --handshake-timeout (10 s) is ample for a handshake
# (50-300 ms, 1.5 s for the very first); the timeout test waits it out.
HS_TIMEOUT_DEFAULT = 10.0

# -- fixtures --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    """The backends' directory: big.bin (BIG random bytes) and small.txt."""
    d = tmp_path_factory.mktemp("www")
    h = hashlib.sha256()
    with open(d / "big.bin", "wb") as f:
        for _ in range(BIG >> 20):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            f.write(chunk)
    (d / "small.txt").write_bytes(SMALL)
    return d, h.hexdigest()


@pytest.fixture(scope="module")
def nginx(www, pki, tmp_path_factory):
    """One nginx for the module: HTTP (the plain backend) and HTTPS (the TLS
    backend, which sends TLS 1.3 session tickets) over the same files."""
    server = Nginx(tmp_path_factory.mktemp("nginx"), www[0], http_port=free_port(),
                   https_port=free_port(), cert=pki["server_cert"], key=pki["server_key"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain_backend(nginx):
    return nginx.http_port


@pytest.fixture(scope="module")
def tls_backend(nginx):
    return nginx.https_port


@pytest.fixture(scope="module")
def terminating(pki, plain_backend):
    """One serve for the HTTPS tests: TLS from clients, plain to the backend."""
    with serving("127.0.0.1:0", f"127.0.0.1:{plain_backend}", "--tls-cert", pki["server_cert"],
                 "--tls-key", pki["server_key"]) as s:
        yield s
        summary = s.stop()
    assert summary["handshakes"] >= 1


def _curl(s: Serve, path: str, pki, *extra: str, scheme: str = "https") -> list[str]:
    """curl's argv for s's port as https://localhost (the certificate's name)."""
    return [CURL, "-sS", "--fail", "--max-time", str(CURL_TIMEOUT), "--cacert",
            pki["server_cert"], "--resolve", f"localhost:{s.port}:127.0.0.1", *extra,
            f"{scheme}://localhost:{s.port}/{path}"]


def download(argv: list[str]) -> tuple[str, float]:
    """sha256 of what curl fetched (hashed as it arrives: the VM's tmpfs is
    small) and the seconds it took."""
    t0 = time.monotonic()
    r = subprocess.run(["bash", "-o", "pipefail", "-c",
                        f"{shlex.join(argv)} | sha256sum -b | cut -d' ' -f1"],
                       capture_output=True, text=True, timeout=CURL_TIMEOUT + 60)
    took = time.monotonic() - t0
    assert r.returncode == 0 and not r.stderr, r.stderr
    return r.stdout.strip(), took


def upload(argv: list[str], path: Path, backend: Nginx) -> tuple[str, int]:
    """PUTs path as /upload/<its name> (argv's URL path is replaced) and
    returns the sha256 and size of what the backend stored."""
    url = argv[-1].rsplit("/", 1)[0] + f"/upload/{path.name}"
    r = subprocess.run(argv[:-1] + ["-T", str(path), url],
                       capture_output=True, text=True, timeout=CURL_TIMEOUT + 60)
    assert r.returncode == 0, r.stderr
    return backend.stored(path.name)


def download_and_upload(s: Serve, pki, www, backend: Nginx, *curl_args: str,
                        scheme: str = "https") -> float:
    """big.bin down and up through serve with curl (one connection each),
    sha256 equal both ways; the download's MiB/s."""
    directory, digest = www
    got, took = download(_curl(s, "big.bin", pki, *curl_args, scheme=scheme))
    assert got == digest
    assert upload(_curl(s, "", pki, *curl_args, scheme=scheme), directory / "big.bin",
                  backend) == (digest, BIG)
    return BIG / took / (1 << 20)


def new_events(s: Serve, kind: str, seen: int) -> list[dict]:
    return s.kinds(kind)[seen:]


def wait_idle(s: Serve, timeout: float = 60.0) -> None:
    """Every connection serve took has ended or failed (serve's own view)."""
    def idle() -> bool:
        return len(s.kinds("proxy")) == len(s.kinds("ended"))
    wait_for(idle, timeout=timeout, what="serve's proxies all ended")


def tls_client(s: Serve, pki, version: str | None = None) -> ssl.SSLSocket:
    c = s.connect()
    c.settimeout(IO_TIMEOUT)
    return peer_client_ctx(pki, version).wrap_socket(c, server_hostname="localhost")


def small_get_works(s: Serve, pki) -> None:
    """The next client is served: curl GETs small.txt."""
    r = subprocess.run(_curl(s, "small.txt", pki), capture_output=True, timeout=CURL_TIMEOUT)
    assert r.returncode == 0 and r.stdout == SMALL, r.stderr


# -- termination: curl and s_client over HTTPS to a plain backend ----------------------

@pytest.mark.parametrize("combo", list(CURL_MATRIX))
def test_https_download_and_upload_through_termination(terminating, pki, www, nginx, combo, dmesg,
                                                       say):
    versions, cipher, (want_version, want_cipher) = CURL_MATRIX[combo]
    s = terminating
    seen = len(s.kinds("proxy"))
    rate = download_and_upload(s, pki, www, nginx, *versions, *cipher)
    say(f"serve --tls-cert, curl TLS {want_version} {want_cipher}: download {rate:.1f} MiB/s")
    events = new_events(s, "proxy", seen)
    assert [e["tls"] for e in events] == [
        {"client": {"version": want_version, "cipher": want_cipher}, "target": None}] * 2
    wait_idle(s)
    ends = {e["id"]: e for e in s.kinds("ended")}
    down, up = (ends[e["id"]] for e in events)
    assert down["b_to_a"] >= BIG and up["a_to_b"] >= BIG  # plaintext bytes, kernel counted
    assert dmesg.bad() == []


def test_openssl_s_client_get(terminating, pki, dmesg):
    s = terminating
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{s.port}", "-CAfile",
                        pki["server_cert"], "-servername", "localhost", "-verify_return_error",
                        "-quiet"],
                       input=b"GET /small.txt HTTP/1.0\r\nHost: localhost\r\n\r\n",
                       capture_output=True, timeout=IO_TIMEOUT)
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), (r.stdout, r.stderr)
    assert body == SMALL
    assert b"Content-Length: %d" % len(SMALL) in head
    assert dmesg.bad() == []


# -- origination and re-encryption to a TLS backend -----------------------------------

def test_origination_plain_curl_to_a_tls_backend(pki, www, nginx, tls_backend, dmesg, say):
    """nginx's TLS 1.3 sends two session tickets after each handshake: they
    reach the kernel, which consumes and counts them (tls_control)."""
    tickets = read_totals().tls_control
    with serving("127.0.0.1:0", f"127.0.0.1:{tls_backend}", "--target-tls", "--target-ca",
                 pki["server_cert"], "--target-sni", "localhost") as s:
        rate = download_and_upload(s, pki, www, nginx, scheme="http")
        say(f"serve --target-tls: download {rate:.1f} MiB/s")
        # serve prints an event after the kernel took the connection: wait for it
        wait_for(lambda: len(s.kinds("proxy")) == 2, timeout=IO_TIMEOUT, what="two proxy events")
        tls = [e["tls"] for e in s.kinds("proxy")]
        assert all(t["client"] is None and t["target"]["version"] == "1.3" for t in tls)
        wait_idle(s)
        summary = s.stop()
    assert (summary["handshakes"], summary["handshakes_failed"], summary["failed"]) == (2, 0, 0)
    assert read_totals().tls_control - tickets == 2 * 2
    assert dmesg.bad() == []


def test_origination_checks_the_target_certificate(pki, tls_backend, dmesg):
    """The "other" CA does not sign the backend's certificate: that client
    is reset, a failed event at stage tls, side target."""
    with serving("127.0.0.1:0", f"127.0.0.1:{tls_backend}", "--target-tls", "--target-ca",
                 pki["other_cert"], "--target-sni", "localhost") as s:
        r = subprocess.run([CURL, "-sS", "--max-time", "60", f"http://127.0.0.1:{s.port}/"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0
        ev = s.wait_event(lambda e: e["event"] == "failed", IO_TIMEOUT)
        assert (ev["stage"], ev["side"], ev["error"]["errno_name"]) == ("tls", "target", "EPROTO")
        assert "certificate verify failed" in ev["reason"]
        summary = s.stop()
    assert (summary["handshakes_failed"], summary["created"]) == (1, 0)
    assert dmesg.bad() == []


@pytest.mark.parametrize("combo", ["1.2-aes-256-gcm", "1.3-aes-128-gcm"])
def test_reencryption_curl_https_to_a_tls_backend(pki, www, nginx, tls_backend, combo, dmesg,
                                                  say):
    versions, cipher, (want_version, want_cipher) = CURL_MATRIX[combo]
    with serving("127.0.0.1:0", f"127.0.0.1:{tls_backend}", "--tls-cert", pki["server_cert"],
                 "--tls-key", pki["server_key"], "--target-tls", "--target-ca",
                 pki["server_cert"], "--target-sni", "localhost") as s:
        rate = download_and_upload(s, pki, www, nginx, *versions, *cipher)
        say(f"serve re-encrypting, client TLS {want_version} {want_cipher}: download "
            f"{rate:.1f} MiB/s")
        for e in s.kinds("proxy"):
            assert e["tls"]["client"] == {"version": want_version, "cipher": want_cipher}
            assert e["tls"]["target"]["version"] == "1.3"  # the backend's choice
        wait_idle(s)
        summary = s.stop()
    assert (summary["created"], summary["handshakes"], summary["failed"]) == (2, 4, 0)
    assert dmesg.bad() == []


# -- bad input: each ends only its own connection ---------------------------------------

def _ended_by_serve(c: socket.socket, timeout: float = IO_TIMEOUT) -> bool:
    c.settimeout(timeout)
    try:
        while c.recv(4096):
            pass  # an alert serve wrote before closing
        return True
    except ConnectionResetError:
        return True


def test_garbage_instead_of_a_client_hello(terminating, pki, nginx, dmesg):
    """Plain HTTP to the TLS port fails the handshake; the request never
    reaches the backend."""
    s = terminating
    fds = fd_count(s.pid)
    seen = len(s.kinds("failed"))
    requests = nginx.requests()
    with s.connect() as c:
        c.sendall(b"GET /garbage HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert _ended_by_serve(c)
    wait_for(lambda: new_events(s, "failed", seen), timeout=IO_TIMEOUT, what="failed event")
    [ev] = new_events(s, "failed", seen)
    assert (ev["stage"], ev["side"], ev["error"]["errno_name"]) == ("tls", "client", "EPROTO")
    assert ev["reason"].startswith("TLS with the client: TLS handshake failed: the peer sent no "
                                   "TLS record")
    assert nginx.requests() == requests
    small_get_works(s, pki)
    wait_idle(s)
    assert fd_count(s.pid) == fds
    assert dmesg.bad() == []


def test_a_handshake_that_never_completes_times_out(terminating, pki, dmesg):
    """A client that connects and says nothing holds one handshake worker,
    not the loop: another client is served meanwhile; after the default
    --handshake-timeout (10 s) it is reset, at stage tls."""
    s = terminating
    fds = fd_count(s.pid)
    seen = len(s.kinds("failed"))
    t0 = time.monotonic()
    silent = s.connect()
    try:
        small_get_works(s, pki)
        assert not new_events(s, "failed", seen)
        assert _ended_by_serve(silent, HS_TIMEOUT_DEFAULT + IO_TIMEOUT)
        took = time.monotonic() - t0
    finally:
        silent.close()
    # the reset can reach the client before serve's line reaches us
    wait_for(lambda: new_events(s, "failed", seen), timeout=IO_TIMEOUT, what="failed event")
    [ev] = new_events(s, "failed", seen)
    assert ev["reason"] == "TLS with the client: TLS handshake timed out after 10 s"
    assert (ev["stage"], ev["error"]["errno_name"]) == ("tls", "ETIMEDOUT")
    assert HS_TIMEOUT_DEFAULT - 0.5 <= took < HS_TIMEOUT_DEFAULT + 30, took
    small_get_works(s, pki)
    wait_idle(s)
    assert fd_count(s.pid) == fds
    assert dmesg.bad() == []


@pytest.fixture(scope="module")
def echo_backend():
    """Framed echo (4-byte length, payload): whole messages back."""
    echo = FramedEchoServer()
    yield echo
    echo.close()


def frame(p: bytes) -> bytes:
    return struct.pack(">I", len(p)) + p


@pytest.fixture(scope="module")
def echoing(pki, echo_backend):
    with serving("127.0.0.1:0", f"127.0.0.1:{echo_backend.port}", "--tls-cert",
                 pki["server_cert"], "--tls-key", pki["server_key"]) as s:
        yield s
        s.stop()


def ktls_client(s: Serve, pki) -> socket.socket:
    """A client whose TLS the kernel runs (kpctl.tls): it can send any
    record type."""
    c = s.connect()
    cfg = ClientConfig(ca=pki["server_cert"], server_name="localhost", versions=("TLSv1.3",))
    try:
        connect_tls(c, cfg, timeout=HANDSHAKE_TIMEOUT)
    finally:
        cfg.close()
    c.settimeout(IO_TIMEOUT)
    return c


def echo_works(s: Serve, pki) -> None:
    with tls_client(s, pki) as c:
        c.sendall(frame(b"still serving"))
        assert recv_exact(c, 4 + 13) == frame(b"still serving")


def _proxy_of(s: Serve, client: str) -> dict:
    """The "proxy" event of the connection from `client` ("host:port").
    Not "the next event": serve prints an event after the kernel took the
    connection, so the previous connection's may still be on its way."""
    return s.wait_event(lambda e: e["event"] == "proxy" and e["client"] == client, IO_TIMEOUT)


def _proxy_of_socket(s: Serve, c: socket.socket) -> dict:
    host, port = c.getsockname()[:2]
    return _proxy_of(s, f"{host}:{port}")


def _proxy_of_process(s: Serve, pid: int) -> dict:
    """The proxy of the connection that process `pid` (a client we did not
    write, holding its own socket) made to serve."""
    def client_address() -> str | None:
        out = subprocess.run(["ss", "-Htnp", "state", "established", "dport", "=", f":{s.port}"],
                             capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if f"pid={pid}," in line:
                return line.split()[2]
        return None
    return _proxy_of(s, wait_for(client_address, timeout=IO_TIMEOUT,
                                 what=f"process {pid}'s connection to serve"))


def _ended_event(s: Serve, pid: int) -> dict:
    return s.wait_event(lambda e: e["event"] == "ended" and e["id"] == pid, IO_TIMEOUT)


def test_corrupted_record_after_the_handshake_ends_with_error(echoing, pki, dmesg):
    s = echoing
    echo_works(s, pki)  # serve's steady state: what its first proxy opens once is open
    fds = fd_count(s.pid)
    c = s.connect()
    c.settimeout(IO_TIMEOUT)
    try:
        peer = RawPeer(c, peer_client_ctx(pki), server_side=False)
        peer.handshake()
        proxy = _proxy_of_socket(s, c)
        peer.send(frame(b"GOOD"))
        assert peer.recv_exact(8) == frame(b"GOOD")
        bad = bytearray(peer.record(frame(b"EVIL-PAYLOAD")))
        bad[-20] ^= 0x01  # a byte of the ciphertext, before the tag
        c.sendall(bytes(bad))
        assert _ended_event(s, proxy["id"])["reason"] == "error"
        assert _ended_by_serve(c)
    finally:
        c.close()
    echo_works(s, pki)
    wait_idle(s)
    assert fd_count(s.pid) == fds
    assert dmesg.bad() == []


def test_alert_ends_the_proxy_with_tls_alert(echoing, pki, dmesg):
    s = echoing
    with ktls_client(s, pki) as c:
        proxy = _proxy_of_socket(s, c)
        assert proxy["tls"]["client"]["version"] == "1.3"
        c.sendall(frame(b"before"))
        assert recv_exact(c, 10) == frame(b"before")
        send_record(c, RECORD_ALERT, bytes([2, 40]))  # fatal handshake_failure
        ev = _ended_event(s, proxy["id"])
        assert (ev["reason"], ev["tls_alert"]) == ("tls-alert", 40)
    echo_works(s, pki)
    assert dmesg.bad() == []


def test_key_update_ends_the_proxy_with_tls_rekey(echoing, pki, dmesg):
    """A TLS 1.3 KeyUpdate from the client: the kernel cannot follow it, the
    proxy ends with tls-rekey (never a hang), serve goes on."""
    s = echoing
    with ktls_client(s, pki) as c:
        proxy = _proxy_of_socket(s, c)
        c.sendall(frame(b"before"))
        assert recv_exact(c, 10) == frame(b"before")
        send_record(c, RECORD_HANDSHAKE, bytes([24, 0, 0, 1, 0]))  # update_not_requested
        assert _ended_event(s, proxy["id"])["reason"] == "tls-rekey"
    echo_works(s, pki)
    assert dmesg.bad() == []


def test_openssl_s_client_key_update_ends_the_proxy_with_tls_rekey(terminating, pki, dmesg):
    """`openssl s_client`'s `k` command sends a KeyUpdate: the proxy ends
    with tls-rekey, s_client sees its connection end, serve goes on."""
    s = terminating
    client = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{s.port}",
                               "-CAfile", pki["server_cert"], "-servername", "localhost",
                               "-verify_return_error", "-tls1_3"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        proxy = _proxy_of_process(s, client.pid)
        client.stdin.write(b"k\n")
        client.stdin.flush()
        assert _ended_event(s, proxy["id"])["reason"] == "tls-rekey"
        client.wait(timeout=IO_TIMEOUT)  # the connection's end ends it: its stdin is open
        out = client.stdout.read()
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert b"KEYUPDATE" in out, out
    small_get_works(s, pki)
    assert dmesg.bad() == []


# -- a verdict on the decrypted direction ----------------------------------------------

def test_verdict_drops_marked_messages_of_decrypted_traffic(pki, dmesg):
    missing = [n for n in ("lenprefix", "drop-prefix")
               if not (Path(__file__).resolve().parents[2] / "build" / "bpf" / f"{n}.o").is_file()]
    if missing:
        pytest.fail(f"build/bpf/{{{','.join(missing)}}}.o missing: `make` builds the BPF programs")
    drop = {1, 4}
    payloads = [(b"DROP" if i in drop else b"KEEP") + b" message %d" % i for i in range(6)]
    kept = [p for i, p in enumerate(payloads) if i not in drop]
    echo = FramedEchoServer()
    try:
        with serving("127.0.0.1:0", f"127.0.0.1:{echo.port}", "--tls-cert", pki["server_cert"],
                     "--tls-key", pki["server_key"], "--parser", "lenprefix", "--verdict",
                     "drop-prefix", "--prefix", "DROP") as s:
            with tls_client(s, pki) as c:
                # The programs are attached before serve reports the proxy.
                ev = s.wait_event(lambda e: e["event"] in ("proxy", "failed"), IO_TIMEOUT)
                assert ev["event"] == "proxy" and ev["tls"]["client"] is not None, ev
                c.sendall(b"".join(frame(p) for p in payloads))
                want = b"".join(frame(p) for p in kept)
                try:
                    got = recv_exact(c, len(want))
                except AssertionError as e:  # say how the proxy ended, and what passed
                    ended = s.wait_event(lambda x: x["event"] == "ended", IO_TIMEOUT)
                    raise AssertionError(f"{e}; serve: {ended}; the target got "
                                         f"{echo.received}") from None
                assert got == want
                assert echo.received == kept
            wait_idle(s)
            summary = s.stop()
        assert summary["created"] == 1 and summary["failed"] == 0
    finally:
        echo.close()
    assert dmesg.bad() == []


# -- how fast, and stopping with handshakes in flight ------------------------------------

def test_handshakes_per_second_and_stop_with_handshakes_pending(pki, echo_backend, dmesg, say,
                                                                  record_property):
    """Sequential TLS 1.3 clients through serve (handshake, one echo, close):
    handshakes per second. Then clients that never finish their handshake
    are pending when SIGTERM comes: serve ends them (failed, stage shutdown)
    and exits at once, without waiting for --handshake-timeout."""
    n = 20
    with serving("127.0.0.1:0", f"127.0.0.1:{echo_backend.port}", "--tls-cert",
                 pki["server_cert"], "--tls-key", pki["server_key"], "--handshake-timeout",
                 "300") as s:
        t0 = time.monotonic()
        for _ in range(n):
            echo_works(s, pki)
        rate = n / (time.monotonic() - t0)
        say(f"serve --tls-cert: {rate:.1f} handshakes/s (sequential TLS 1.3 clients, "
            f"one echo each)")
        record_property("handshakes_per_s", round(rate, 2))
        wait_idle(s)
        fds = fd_count(s.pid)
        silent = [s.connect() for _ in range(3)]
        # serve holds them (accepted, in its workers' handshakes)
        wait_for(lambda: fd_count(s.pid) == fds + 3, timeout=IO_TIMEOUT, what="3 accepted")
        t0 = time.monotonic()
        summary = s.stop()  # SIGTERM
        took = time.monotonic() - t0
        for c in silent:
            assert _ended_by_serve(c)
            c.close()
    assert took < 60, took
    shut = [e for e in s.kinds("failed") if e["stage"] == "shutdown"]
    assert len(shut) == 3 and summary["handshaking"] == 0
    assert summary["handshakes"] == n and summary["handshakes_failed"] == 0
    assert dmesg.bad() == []
