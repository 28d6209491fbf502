"""kpctl.tls on a real kernel: a handshake in userspace, then the kernel's
TLS on the same socket, against peers that are ordinary TLS stacks (Python's
ssl, Debian's openssl binary): if the kernel did not really speak TLS with
the right keys and sequence numbers, they could not read a byte.

The peers run in threads over real TCP on 127.0.0.1. Under TCG everything is
10-50x slower: timeouts are generous, sizes are 4 MiB."""

from __future__ import annotations

import errno
import hashlib
import select
import socket
import ssl
import subprocess
import time
from typing import Callable, Iterator

import pytest

from kpctl.tls import (
    ClientConfig,
    KtlsDirection,
    ServerConfig,
    Session,
    TlsError,
    accept_tls,
    connect_tls,
    kernel_has_ktls,
    ktls_info,
)
from tlsutil import (HANDSHAKE_TIMEOUT, SOL_TLS, TLS_GET_RECORD_TYPE, Peer, RawPeer, make_pki, open_fds,
                     peer_client_ctx, peer_server_ctx)
from util import IO_TIMEOUT, recv_exact, stream_chunks

TOTAL = 4 << 20

MATRIX = [
    (version, cipher)
    for version in ("TLSv1.2", "TLSv1.3")
    for cipher in ("AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305")
]
SUITE_NAMES = {
    ("TLSv1.2", "AES-128-GCM"): ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", 51),
    ("TLSv1.2", "AES-256-GCM"): ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", 52),
    ("TLSv1.2", "CHACHA20-POLY1305"): ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", 54),
    ("TLSv1.3", "AES-128-GCM"): ("TLS_AES_128_GCM_SHA256", 51),
    ("TLSv1.3", "AES-256-GCM"): ("TLS_AES_256_GCM_SHA384", 52),
    ("TLSv1.3", "CHACHA20-POLY1305"): ("TLS_CHACHA20_POLY1305_SHA256", 54),
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", autouse=True)
def ktls_present() -> None:
    # Every kernel we test has kTLS (tls.ko on Debian's, built in on 7.2);
    # its absence is a failure here, not a skip.
    assert kernel_has_ktls(), "this kernel has no kTLS"


def listener() -> socket.socket:
    lsn = socket.create_server(("127.0.0.1", 0))
    lsn.settimeout(IO_TIMEOUT)
    return lsn


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with listener() as lsn:
        c = socket.create_connection(lsn.getsockname(), timeout=IO_TIMEOUT)
        s, _ = lsn.accept()
    s.settimeout(None)
    c.settimeout(IO_TIMEOUT)
    return c, s


def digest_of(seed: int) -> str:
    h = hashlib.sha256()
    for chunk in stream_chunks(TOTAL, seed):
        h.update(chunk)
    return h.hexdigest()


def send_stream(s: socket.socket, seed: int) -> None:
    for chunk in stream_chunks(TOTAL, seed):
        s.sendall(chunk)


def recv_digest(s: socket.socket, total: int = TOTAL) -> str:
    h = hashlib.sha256()
    got = 0
    while got < total:
        chunk = s.recv(min(1 << 20, total - got))
        assert chunk, f"EOF after {got} of {total} bytes"
        h.update(chunk)
        got += len(chunk)
    return h.hexdigest()


def peer_io(tls: ssl.SSLSocket) -> str:
    """The peer's half: send seed 1, then receive (seed 2) and hash it."""
    send_stream(tls, 1)
    got = recv_digest(tls)
    tls.close()
    return got


def our_io(sock: socket.socket, say: Callable[[str], None], what: str) -> None:
    """Our kTLS socket's half: receive seed 1, then send seed 2, through the
    socket's plain recv/send."""
    t0 = time.monotonic()
    got = recv_digest(sock)
    t1 = time.monotonic()
    send_stream(sock, 2)
    t2 = time.monotonic()
    assert got == digest_of(1)
    say(f"{what}: kTLS recv {TOTAL / (1 << 20) / (t1 - t0):.1f} MiB/s, send {TOTAL / (1 << 20) / (t2 - t1):.1f} MiB/s")


@pytest.mark.parametrize("version,cipher", MATRIX, ids=[f"{v}-{c}" for v, c in MATRIX])
def test_accept_tls_against_python_client(pki: dict[str, str], version: str, cipher: str, say) -> None:
    cfg = ServerConfig(pki["server_cert"], pki["server_key"], versions=[version], ciphers=[cipher])
    c, s = tcp_pair()
    peer = Peer(lambda: peer_io(peer_client_ctx(pki).wrap_socket(c, server_hostname="localhost")))
    session = accept_tls(s, cfg, timeout=HANDSHAKE_TIMEOUT)
    iana, cipher_type = SUITE_NAMES[(version, cipher)]
    assert (session.version, session.cipher, session.cipher_type) == (version, iana, cipher_type)
    assert (session.server_name, session.peer_subject) == ("localhost", None)
    assert ktls_info(s) == {"tx": KtlsDirection(version, cipher_type), "rx": KtlsDirection(version, cipher_type)}
    say(f"accept_tls {version} {cipher}: handshake {session.handshake_s * 1000:.0f} ms")
    our_io(s, say, f"accept_tls {version} {cipher}")
    assert peer.outcome() == digest_of(2)
    s.close()
    cfg.close()


@pytest.mark.parametrize("version,cipher", MATRIX, ids=[f"{v}-{c}" for v, c in MATRIX])
def test_connect_tls_against_python_server(pki: dict[str, str], version: str, cipher: str, say) -> None:
    cfg = ClientConfig(ca=pki["server_cert"], server_name="localhost", versions=[version], ciphers=[cipher])
    c, s = tcp_pair()
    ctx = peer_server_ctx(pki)
    peer = Peer(lambda: peer_io(ctx.wrap_socket(s, server_side=True)))
    session = connect_tls(c, cfg, timeout=HANDSHAKE_TIMEOUT)
    iana, cipher_type = SUITE_NAMES[(version, cipher)]
    assert (session.version, session.cipher, session.cipher_type) == (version, iana, cipher_type)
    assert (session.server_name, session.peer_subject) == ("localhost", "CN=server")
    say(f"connect_tls {version} {cipher}: handshake {session.handshake_s * 1000:.0f} ms")
    our_io(c, say, f"connect_tls {version} {cipher}")
    assert peer.outcome() == digest_of(2)
    c.close()
    cfg.close()


def test_ktls_info_of_a_plain_socket() -> None:
    c, s = tcp_pair()
    assert ktls_info(c) == {"tx": None, "rx": None}
    c.close()
    s.close()


# --- openssl's own binary as the peer ------------------------------------------------


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


LINES = [(f"{i:04d}-" + "kproxy-tls-interop-" * 4)[:63] for i in range(64)]  # 64 lines of 63 + "\n"


def test_connect_tls_against_openssl_s_server(pki: dict[str, str]) -> None:
    """s_server -rev answers each line reversed: 4 KiB each way."""
    port = free_port()
    srv = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", pki["server_cert"], "-key", pki["server_key"],
         "-rev", "-naccept", "1", "-num_tickets", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert srv.stdout is not None
        deadline = time.monotonic() + IO_TIMEOUT
        line = b""
        while b"ACCEPT" not in line:  # after "Using default temp DH parameters"
            ready, _, _ = select.select([srv.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "s_server did not start"
            line = srv.stdout.readline()
            assert line, "s_server exited"
        c = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        session = connect_tls(c, ClientConfig(ca=pki["server_cert"], server_name="localhost"), timeout=HANDSHAKE_TIMEOUT)
        assert session.version == "TLSv1.3"
        c.sendall("".join(line + "\n" for line in LINES).encode())
        got = recv_exact(c, 64 * 64).decode()
        assert got == "".join(line[::-1] + "\n" for line in LINES)
        c.close()
    finally:
        srv.kill()
        srv.wait(IO_TIMEOUT)


def test_accept_tls_against_openssl_s_client(pki: dict[str, str]) -> None:
    """s_client sends its stdin and prints what it receives: 4 KiB each way."""
    with listener() as lsn:
        port = lsn.getsockname()[1]
        cli = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", pki["server_cert"],
             "-servername", "localhost", "-verify_return_error", "-quiet"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            s, _ = lsn.accept()
            session = accept_tls(s, ServerConfig(pki["server_cert"], pki["server_key"]), timeout=HANDSHAKE_TIMEOUT)
            assert (session.version, session.server_name) == ("TLSv1.3", "localhost")
            assert cli.stdin is not None
            cli.stdin.write("".join(line + "\n" for line in LINES).encode())
            cli.stdin.flush()
            got = recv_exact(s, 64 * 64).decode()
            assert got.splitlines() == LINES
            answer = "".join(line[::-1] + "\n" for line in LINES).encode()
            s.sendall(answer)
            s.close()  # s_client sees the end of the connection and exits
            out, err = cli.communicate(timeout=IO_TIMEOUT)
            assert out == answer, err
        finally:
            cli.kill()
            cli.wait(IO_TIMEOUT)


# --- what is on the wire ----------------------------------------------------------


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_ciphertext_on_the_wire(pki: dict[str, str], version: str) -> None:
    ours_marker, peers_marker = b"OURS-PLAINTEXT-MARKER." * 50, b"PEERS-PLAINTEXT-MARKER." * 50
    cfg = ServerConfig(pki["server_cert"], pki["server_key"], versions=[version])
    c, s = tcp_pair()
    peer = RawPeer(c, peer_client_ctx(pki), server_side=False)

    def peer_side() -> bytes:
        peer.handshake()
        peer.send(peers_marker)
        return peer.recv_exact(len(ours_marker))

    t = Peer(peer_side)
    accept_tls(s, cfg, timeout=HANDSHAKE_TIMEOUT)
    s.sendall(ours_marker)
    assert recv_exact(s, len(peers_marker)) == peers_marker  # decrypted by the kernel
    assert t.outcome() == ours_marker  # decrypted by the peer
    assert peer.obj.version() == version
    assert b"OURS-PLAINTEXT" not in peer.raw and b"MARKER" not in peer.raw
    c.close()
    s.close()
    cfg.close()


def test_pipelined_data_after_client_finished_is_not_lost(pki: dict[str, str]) -> None:
    """TLS 1.3: the client's Finished and its first data leave in one write;
    accept_tls stops reading at the Finished, the kernel decrypts the rest."""
    first = b"first bytes right behind the Finished"
    cfg = ServerConfig(pki["server_cert"], pki["server_key"], versions=["TLSv1.3"])
    c, s = tcp_pair()
    peer = RawPeer(c, peer_client_ctx(pki), server_side=False)
    t = Peer(lambda: peer.handshake(then_send=first))
    accept_tls(s, cfg, timeout=HANDSHAKE_TIMEOUT)
    t.outcome()
    assert recv_exact(s, len(first)) == first
    c.close()
    s.close()
    cfg.close()


def test_pipelined_data_after_server_finished_is_not_lost(pki: dict[str, str]) -> None:
    """TLS 1.2: the server finishes last; its Finished and first data leave in
    one write; connect_tls stops reading at the Finished."""
    first = b"first bytes right behind the server's Finished"
    cfg = ClientConfig(ca=pki["server_cert"], server_name="localhost", versions=["TLSv1.2"])
    c, s = tcp_pair()
    peer = RawPeer(s, peer_server_ctx(pki), server_side=True)
    t = Peer(lambda: peer.handshake(then_send=first))
    session = connect_tls(c, cfg, timeout=HANDSHAKE_TIMEOUT)
    t.outcome()
    assert session.version == "TLSv1.2"
    assert recv_exact(c, len(first)) == first
    c.sendall(b"and back")
    assert peer.recv_exact(8) == b"and back"
    c.close()
    s.close()
    cfg.close()


def test_tls13_tickets_reach_the_kernel_as_control_records(pki: dict[str, str]) -> None:
    """A TLS 1.3 server that sends session tickets (Python's default: 2)
    after the handshake: they arrive on the kTLS socket as handshake records
    (type 22). recv() without a cmsg buffer fails with EIO; recvmsg() with
    one returns each record with its type, after which data flows."""
    cfg = ClientConfig(ca=pki["server_cert"], server_name="localhost", versions=["TLSv1.3"])
    c, s = tcp_pair()
    ctx = peer_server_ctx(pki, tickets=2)

    def serve() -> None:
        tls = ctx.wrap_socket(s, server_side=True)
        tls.sendall(b"hello after tickets")
        assert tls.recv(5) == b"thanks"[:5]

    t = Peer(serve)
    connect_tls(c, cfg, timeout=HANDSHAKE_TIMEOUT)
    with pytest.raises(OSError) as e:
        c.recv(100)
    assert e.value.errno == errno.EIO
    records = []  # (content type, bytes) per recvmsg, up to the first data
    while not records or records[-1][0] != 23:
        data, anc, _flags, _addr = c.recvmsg(1 << 16, socket.CMSG_SPACE(1))
        kinds = [d[0] for level, kind, d in anc if level == SOL_TLS and kind == TLS_GET_RECORD_TYPE]
        assert len(kinds) == 1, anc
        records.append((kinds[0], data))
    assert [k for k, _ in records[:-1]] == [22] * (len(records) - 1)
    handshake = b"".join(d for _, d in records[:-1])
    messages = []
    while handshake:
        messages.append(handshake[0])
        handshake = handshake[4 + int.from_bytes(handshake[1:4], "big") :]
    assert messages == [4, 4]  # two NewSessionTicket messages
    assert records[-1][1] == b"hello after tickets"
    c.sendall(b"thanks")
    t.outcome()
    c.close()
    cfg.close()


# --- errors ---------------------------------------------------------------------------


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    before = open_fds()
    yield
    assert open_fds() == before


def test_wrong_ca(pki: dict[str, str], no_fd_leak: None) -> None:
    cfg = ClientConfig(ca=pki["other_cert"], server_name="localhost")
    c, s = tcp_pair()
    ctx = peer_server_ctx(pki)
    t = Peer(lambda: ctx.wrap_socket(s, server_side=True))
    with pytest.raises(TlsError) as e:
        connect_tls(c, cfg, timeout=HANDSHAKE_TIMEOUT)
    assert e.value.errno == errno.EPROTO
    assert str(e.value).startswith("TLS handshake failed: certificate verify failed: ")
    assert c.fileno() >= 0 and ktls_info(c) == {"tx": None, "rx": None}  # open, never kTLS
    with pytest.raises(ssl.SSLError, match="(?i)unknown.ca"):
        t.outcome()  # the peer got our alert
    c.close()
    s.close()
    cfg.close()


def test_sni_reaches_the_server_both_ways(pki: dict[str, str]) -> None:
    seen: list[str | None] = []
    ctx = peer_server_ctx(pki)
    ctx.sni_callback = lambda _obj, name, _ctx: seen.append(name)  # type: ignore[assignment,misc,func-returns-value]
    cfg = ClientConfig(ca=pki["server_cert"], server_name="localhost")
    c, s = tcp_pair()
    # Peers keep their end open: kTLS can only be installed on an
    # established socket.
    t = Peer(lambda: ctx.wrap_socket(s, server_side=True))
    session = connect_tls(c, cfg, timeout=HANDSHAKE_TIMEOUT)
    t.outcome().close()  # type: ignore[attr-defined]
    assert seen == ["localhost"] and session.server_name == "localhost"
    c.close()
    cfg.close()
    # ... and accept_tls reports what a client sent.
    scfg = ServerConfig(pki["server_cert"], pki["server_key"])
    c, s = tcp_pair()
    t = Peer(lambda: peer_client_ctx(pki).wrap_socket(c, server_hostname="localhost"))
    assert accept_tls(s, scfg, timeout=HANDSHAKE_TIMEOUT).server_name == "localhost"
    t.outcome().close()  # type: ignore[attr-defined]
    s.close()
    scfg.close()


def test_garbage_instead_of_server_hello(pki: dict[str, str], no_fd_leak: None) -> None:
    cfg = ClientConfig(ca=pki["server_cert"], server_name="localhost")
    c, s = tcp_pair()

    def answer() -> None:
        s.recv(65536)
        s.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    t = Peer(answer)
    with pytest.raises(TlsError) as e:
        connect_tls(c, cfg, timeout=HANDSHAKE_TIMEOUT)
    t.outcome()
    assert str(e.value) == "TLS handshake failed: the peer sent no TLS record (it began with b'HTTP/') (EPROTO)"
    c.close()
    s.close()
    cfg.close()


def test_garbage_inside_a_record_instead_of_client_hello(pki: dict[str, str], no_fd_leak: None) -> None:
    cfg = ServerConfig(pki["server_cert"], pki["server_key"])
    c, s = tcp_pair()
    c.sendall(b"\x16\x03\x01\x00\x20" + bytes(range(32)))  # a handshake record of nonsense
    with pytest.raises(TlsError) as e:
        accept_tls(s, cfg, timeout=HANDSHAKE_TIMEOUT)
    assert e.value.errno == errno.EPROTO and str(e.value).startswith("TLS handshake failed: ")
    assert c.recv(2)[:1] == b"\x15"  # the peer got an alert record
    c.close()
    s.close()
    cfg.close()


def test_peer_closed_during_handshake(pki: dict[str, str], no_fd_leak: None) -> None:
    cfg = ClientConfig(ca=pki["server_cert"], server_name="localhost")
    c, s = tcp_pair()
    t = Peer(lambda: (s.recv(65536), s.close()))
    with pytest.raises(TlsError) as e:
        connect_tls(c, cfg, timeout=HANDSHAKE_TIMEOUT)
    t.outcome()
    assert str(e.value) in (
        "TLS handshake failed: the peer closed the connection (ECONNRESET)",
        "TLS handshake failed: Connection reset by peer (ECONNRESET)",
    )
    c.close()
    cfg.close()


@pytest.mark.parametrize("side", ["connect", "accept"])
def test_peer_that_never_answers_times_out(pki: dict[str, str], side: str, no_fd_leak: None) -> None:
    timeout = 3.0
    if side == "connect":
        cfg: ClientConfig | ServerConfig = ClientConfig(ca=pki["server_cert"], server_name="localhost")
    else:
        cfg = ServerConfig(pki["server_cert"], pki["server_key"])
    c, s = tcp_pair()
    ours = c if side == "connect" else s
    t0 = time.monotonic()
    with pytest.raises(TlsError) as e:
        if isinstance(cfg, ClientConfig):
            connect_tls(ours, cfg, timeout=timeout)
        else:
            accept_tls(ours, cfg, timeout=timeout)
    took = time.monotonic() - t0
    assert str(e.value) == "TLS handshake timed out after 3 s (ETIMEDOUT)"
    assert timeout <= took < timeout + 10  # slack for TCG
    assert ours.gettimeout() == (IO_TIMEOUT if side == "connect" else None)  # as the caller had it
    c.close()
    s.close()
    cfg.close()


def test_session_to_dict(pki: dict[str, str]) -> None:
    cfg = ServerConfig(pki["server_cert"], pki["server_key"], versions=["TLSv1.2"], ciphers=["AES-256-GCM"])
    c, s = tcp_pair()
    t = Peer(lambda: peer_client_ctx(pki).wrap_socket(c, server_hostname="localhost"))
    session = accept_tls(s, cfg, timeout=HANDSHAKE_TIMEOUT)
    t.outcome().close()  # type: ignore[attr-defined]
    d = session.to_dict()
    assert isinstance(session, Session)
    assert {k: d[k] for k in ("version", "cipher", "cipher_type", "server_name", "peer_subject")} == {
        "version": "TLSv1.2",
        "cipher": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "cipher_type": 52,
        "server_name": "localhost",
        "peer_subject": None,
    }
    assert 0 < d["handshake_s"] < HANDSHAKE_TIMEOUT
    s.close()
    c.close()
    cfg.close()


def test_concurrent_handshakes_share_one_config(pki: dict[str, str]) -> None:
    """One ServerConfig (one key log) serves parallel handshakes: each
    connection finds its own secrets by client random."""
    cfg = ServerConfig(pki["server_cert"], pki["server_key"])
    pairs = [tcp_pair() for _ in range(8)]

    def client(i: int, c: socket.socket) -> bytes:
        tls = peer_client_ctx(pki).wrap_socket(c, server_hostname="localhost")
        tls.sendall(b"client %d" % i)
        got = tls.recv(100)
        tls.close()
        return got

    def server(s: socket.socket) -> None:
        accept_tls(s, cfg, timeout=HANDSHAKE_TIMEOUT)
        s.sendall(b"echo " + recv_exact(s, 8))

    clients = [Peer(lambda i=i, c=c: client(i, c)) for i, (c, _) in enumerate(pairs)]
    servers = [Peer(lambda s=s: server(s)) for _, s in pairs]
    for t in servers:
        t.outcome()
    assert [t.outcome() for t in clients] == [b"echo client %d" % i for i in range(8)]
    for c, s in pairs:
        c.close()
        s.close()
    cfg.close()


def test_ktls_on_both_ends(pki: dict[str, str], say) -> None:
    """connect_tls to accept_tls: the kernel encrypts and decrypts both
    ends (a figure for the record: MiB/s through two kTLS sockets)."""
    scfg = ServerConfig(pki["server_cert"], pki["server_key"], versions=["TLSv1.3"], ciphers=["AES-128-GCM"])
    ccfg = ClientConfig(ca=pki["server_cert"], server_name="localhost")
    c, s = tcp_pair()
    t = Peer(lambda: accept_tls(s, scfg, timeout=HANDSHAKE_TIMEOUT))
    connect_tls(c, ccfg, timeout=HANDSHAKE_TIMEOUT)
    t.outcome()
    total = 4 * TOTAL
    receiver = Peer(lambda: recv_digest(s, total))
    t0 = time.monotonic()
    h = hashlib.sha256()
    for chunk in stream_chunks(total, 3):
        h.update(chunk)
        c.sendall(chunk)
    assert receiver.outcome() == h.hexdigest()
    took = time.monotonic() - t0
    say(f"kTLS to kTLS, TLS 1.3 AES-128-GCM: {total / (1 << 20) / took:.1f} MiB/s ({total >> 20} MiB)")
    c.close()
    s.close()
    scfg.close()
    ccfg.close()

