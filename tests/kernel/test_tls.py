"""kproxy with kTLS sides: the record layer runs in the kernel, userspace
does only the handshake (kpctl.tls).

The TLS peers are ordinary TLS stacks (Python's ssl in threads, over real
TCP on 127.0.0.1), so a byte the kernel did not protect with the right keys
and sequence numbers could not be read. Where a test needs a peer that sends
records Python's ssl never sends on demand (alerts, KeyUpdate, tickets), the
peer is itself a kTLS socket and sends them with TLS_SET_RECORD_TYPE. Run on
every kernel: 6.1 reads a kTLS side with recvmsg, 6.12 and 7.2 with the TLS
layer's own read_sock."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Iterator

import pytest

from kpctl import KproxyError, Kproxy, bpf
from kpctl.model import TlsInfo
from kpctl.procfs import read_totals
from kpctl.tls import ClientConfig, ServerConfig, accept_tls, connect_tls
from tlsutil import (HANDSHAKE_TIMEOUT, RECORD_ALERT, RECORD_HANDSHAKE, SOL_TLS, TCP_ULP, TLS_RX,
                     TLS_TX, Peer, RawPeer, dummy_crypto_info, make_pki, peer_client_ctx,
                     peer_server_ctx, send_record)
from util import (IO_TIMEOUT, LIMIT_OK_KB, Receiver, Sender, join_all,  # noqa: F401 - kp: a fixture
                  kp, long_or, measured_trickle, proc_proxies, recv_exact, tcp_pair, wait_for)

TOTAL = long_or(16 << 20, 1 << 20)
MATRIX = [(v, c) for v in ("TLSv1.2", "TLSv1.3")
          for c in ("AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305")]
PROC_CIPHER = {"AES-128-GCM": "aes-128-gcm", "AES-256-GCM": "aes-256-gcm",
               "CHACHA20-POLY1305": "chacha20-poly1305"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server_cfg(pki: dict[str, str]) -> Iterator[ServerConfig]:
    cfg = ServerConfig(pki["server_cert"], pki["server_key"])
    yield cfg
    cfg.close()


def connected() -> tuple[socket.socket, socket.socket]:
    """(client, server) of one TCP connection; both blocking with a timeout."""
    c, s = tcp_pair()
    s.settimeout(IO_TIMEOUT)
    return c, s


@dataclass
class Terminated:
    """peer ==TLS== [A: kTLS | proxy | B: plain] -- app."""

    peer: socket.socket     # the TLS client (an ssl.SSLSocket, kTLS, or a RawPeer's socket)
    ktls: socket.socket     # our kTLS side (A), our fd of it
    app: socket.socket      # the plain far end, behind B
    proxy_id: int
    raw: RawPeer | None = None  # the peer's SSLObject, when peer_tls is "raw"

    def close(self) -> None:
        for s in (self.peer, self.ktls, self.app):
            with contextlib.suppress(OSError):
                s.close()


def terminate(kp: Kproxy, cfg: ServerConfig, peer_tls: str = "ssl", pki: dict | None = None,
              version: str | None = None, notify_end: bool = False) -> Terminated:
    """A TLS client handshakes with accept_tls on A; A is joined to B, whose
    far end is app. The client is Python's ssl ("ssl"), a kTLS socket
    ("ktls"), or an SSLObject over the raw socket, keeping every byte it
    receives ("raw")."""
    c, s = connected()
    raw = None
    if peer_tls == "ssl":
        t = Peer(lambda: peer_client_ctx(pki, version).wrap_socket(c, server_hostname="localhost"))
    elif peer_tls == "ktls":
        t = Peer(lambda: ktls_client(c, pki))
    else:
        raw = RawPeer(c, peer_client_ctx(pki, version), server_side=False)
        t = Peer(lambda: raw.handshake() or c)
    accept_tls(s, cfg, timeout=HANDSHAKE_TIMEOUT)
    peer = t.outcome(HANDSHAKE_TIMEOUT)
    b, app = tcp_pair()
    p = kp.create(s, b, notify_end=notify_end)
    b.close()
    return Terminated(peer, s, app, p.id, raw)


def ktls_client(c: socket.socket, pki: dict[str, str]) -> socket.socket:
    """c after a client handshake, with kTLS both ways."""
    cfg = ClientConfig(ca=pki["server_cert"], server_name="localhost")
    try:
        connect_tls(c, cfg, timeout=HANDSHAKE_TIMEOUT)
    finally:
        cfg.close()
    return c


def exchange(one: socket.socket, other: socket.socket, total: int = TOTAL) -> None:
    """total random bytes one way, then the other; sha256 equal on arrival.
    One way at a time: an ssl.SSLSocket must not be read and written by two
    threads at once (OpenSSL's SSL objects are not thread-safe)."""
    for seed, (src, dst) in enumerate(((one, other), (other, one)), start=1):
        threads = [Sender(src, total, seed), Receiver(dst, total)]
        for t in threads:
            t.start()
        join_all(threads, timeout=600)
        assert threads[1].digest == threads[0].digest


def ended(kp: Kproxy, pid: int):
    evs = [e for e in kp.ended(timeout=IO_TIMEOUT) if e.proxy.id == pid]
    assert evs, f"no end of proxy {pid} within {IO_TIMEOUT}s"
    return evs[0]


def proc_line(pid: int):
    (line,) = [p for p in proc_proxies() if p.id == pid]
    return line


# --- bytes through, both ways ----------------------------------------------------


@pytest.mark.parametrize("version,cipher", MATRIX, ids=[f"{v}-{c}" for v, c in MATRIX])
def test_terminated_tls_both_ways(kp, pki, version, cipher, dmesg):
    """A Python ssl client talks through a proxy whose A side is kTLS to a
    plain app: TOTAL bytes each way, sha256 equal; /proc and netlink name
    A's version and cipher and count its records."""
    cfg = ServerConfig(pki["server_cert"], pki["server_key"], versions=[version], ciphers=[cipher])
    before = read_totals()
    t = terminate(kp, cfg, pki=pki, notify_end=True)
    try:
        try:
            exchange(t.peer, t.app)
        except AssertionError as e:
            ends = [(ev.reason, ev.tls_alert, ev.proxy.a_to_b, ev.proxy.b_to_a)
                    for ev in kp.ended(timeout=5)]
            raise AssertionError(f"{e}; the proxy's end: {ends or 'none'}") from None
        want = TlsInfo(version[-3:], PROC_CIPHER[cipher])
        assert proc_line(t.proxy_id).a.tls == want and proc_line(t.proxy_id).b.tls is None
        p = kp.get(t.proxy_id)
        assert p.a.tls == want and p.b.tls is None
        assert p.a_to_b.bytes == TOTAL and p.b_to_a.bytes == TOTAL
        # TLS records of at most 16 KiB carry TOTAL bytes each way.
        assert p.a_to_b.tls_records_in >= TOTAL // 16384
        assert p.b_to_a.tls_records_out >= TOTAL // 16384
        assert p.a_to_b.tls_records_out is None and p.b_to_a.tls_records_in is None
        after = read_totals()
        assert after.tls_records_in - before.tls_records_in >= TOTAL // 16384
        assert after.tls_records_out - before.tls_records_out >= TOTAL // 16384
    finally:
        t.close()
        cfg.close()
    assert dmesg.bad() == []


def test_reencrypt_between_two_ktls_sides(kp, pki, server_cfg, dmesg):
    """TLS on both sides: a client's TLS is terminated on A and re-encrypted
    on B towards a TLS server (Python ssl, sending two session tickets after
    its handshake, which the proxy consumes and counts)."""
    before = read_totals()
    t_client, a = connected()
    cl = Peer(lambda: peer_client_ctx(pki).wrap_socket(t_client, server_hostname="localhost"))
    accept_tls(a, server_cfg, timeout=HANDSHAKE_TIMEOUT)
    client = cl.outcome(HANDSHAKE_TIMEOUT)
    b, t_server = connected()
    sv = Peer(lambda: peer_server_ctx(pki, tickets=2).wrap_socket(t_server, server_side=True))
    ccfg = ClientConfig(ca=pki["server_cert"], server_name="localhost")
    connect_tls(b, ccfg, timeout=HANDSHAKE_TIMEOUT)
    server = sv.outcome(HANDSHAKE_TIMEOUT)
    try:
        p = kp.create(a, b)
        exchange(client, server)
        got = kp.get(p.id)
        assert got.a.tls is not None and got.b.tls is not None
        wait_for(lambda: read_totals().tls_control - before.tls_control >= 2, timeout=IO_TIMEOUT,
                 what="the server's two tickets consumed")
    finally:
        for s in (client, server, a, b):
            s.close()
        ccfg.close()
    assert dmesg.bad() == []


# --- what is on the wire ---------------------------------------------------------


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_no_plaintext_on_the_wire(kp, pki, version, dmesg):
    """The peer records every raw byte it gets: the app's marker reaches it
    only encrypted (TCP's own send would have put it there in the clear),
    and the peer's marker reaches the app decrypted."""
    ours, theirs = b"APP-PLAINTEXT-MARKER." * 400, b"PEER-PLAINTEXT-MARKER." * 400
    cfg = ServerConfig(pki["server_cert"], pki["server_key"], versions=[version])
    t = terminate(kp, cfg, peer_tls="raw", pki=pki)
    try:
        t.app.sendall(ours)
        assert t.raw.recv_exact(len(ours)) == ours
        t.raw.send(theirs)
        assert recv_exact(t.app, len(theirs)) == theirs
        assert t.raw.obj.version() == version
        assert b"PLAINTEXT" not in t.raw.raw and b"MARKER" not in t.raw.raw
    finally:
        t.close()
        cfg.close()
    assert dmesg.bad() == []


# --- what is refused -------------------------------------------------------------


@pytest.mark.parametrize("keys,missing", [((), "TLS_RX"), ((TLS_TX,), "TLS_RX"), ((TLS_RX,), "TLS_TX")],
                         ids=["no-key", "tx-only", "rx-only"])
@pytest.mark.parametrize("side", ["fd-a", "fd-b"])
def test_ktls_socket_without_both_keys_is_refused(kp, keys, missing, side, dmesg):
    """Each direction reads one side and sends on the other, so a kTLS side
    needs both keys: one short of that is refused with ENOKEY and an extack
    naming the key, and nothing is joined."""
    c1, s1 = tcp_pair()
    c2, s2 = tcp_pair()
    tls = s1 if side == "fd-a" else c2
    tls.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
    for key in keys:
        tls.setsockopt(SOL_TLS, key, dummy_crypto_info())
    try:
        with pytest.raises(KproxyError) as ei:
            kp.create(s1, c2)
        assert ei.value.errno == errno.ENOKEY
        assert ei.value.message.startswith(f"{side} is a kTLS socket without its {missing} key")
        assert kp.list() == []
    finally:
        for s in (c1, s1, c2, s2):
            s.close()
    assert dmesg.bad() == []


# --- control records -------------------------------------------------------------


def test_close_notify_is_a_fin_and_a_fin_is_a_close_notify(kp, pki, server_cfg, dmesg):
    """The peer ends its TLS properly: its close_notify reaches the app as a
    FIN; the app's FIN reaches the peer as a close_notify (so its TLS close
    completes cleanly, without an 'unexpected EOF'), and the proxy ends
    with reason closed."""
    t = terminate(kp, server_cfg, pki=pki, notify_end=True)
    try:
        t.peer.sendall(b"last words")
        assert recv_exact(t.app, 10) == b"last words"
        t.app.sendall(b"reply")
        assert recv_exact(t.peer, 5) == b"reply"
        closing = Peer(t.peer.unwrap)  # sends close_notify, waits for ours
        assert t.app.recv(1) == b""    # the peer's close_notify, as a FIN
        t.app.shutdown(socket.SHUT_WR)
        closing.outcome()              # our close_notify arrived: a clean close
        assert ended(kp, t.proxy_id).reason == "closed"
    finally:
        t.close()
    assert dmesg.bad() == []


@pytest.mark.parametrize("record,body,reason,alert", [
    (RECORD_ALERT, bytes([2, 40]), "tls-alert", 40),     # fatal handshake_failure
    (RECORD_ALERT, bytes([2, 20]), "tls-alert", 20),     # fatal bad_record_mac
    # A TLS 1.3 KeyUpdate (update_not_requested): the next records would be
    # under keys only userspace could derive, so the proxy ends at once
    # rather than hang.
    (RECORD_HANDSHAKE, bytes([24, 0, 0, 1, 0]), "tls-rekey", None),
], ids=["alert-handshake_failure", "alert-bad_record_mac", "key-update"])
def test_control_record_ends_the_proxy_with_its_reason(kp, pki, server_cfg, record, body, reason,
                                                         alert, dmesg):
    t = terminate(kp, server_cfg, peer_tls="ktls", pki=pki, notify_end=True)
    try:
        assert_flows(t)
        send_record(t.peer, record, body)
        ev = ended(kp, t.proxy_id)
        assert (ev.reason, ev.tls_alert) == (reason, alert)
        assert getattr(read_totals(), "ended_" + reason.replace("-", "_")) >= 1
        # The app's connection was aborted, not closed as if all was well.
        with pytest.raises(ConnectionResetError):
            t.app.recv(1)
    finally:
        t.close()
    assert dmesg.bad() == []


def test_session_ticket_is_consumed_and_the_stream_goes_on(kp, pki, server_cfg, dmesg):
    t = terminate(kp, server_cfg, peer_tls="ktls", pki=pki)
    before = read_totals().tls_control
    try:
        ticket = bytes([4]) + struct.pack(">I", 9)[1:] + b"T" * 9
        t.peer.sendall(b"before")
        send_record(t.peer, RECORD_HANDSHAKE, ticket)
        t.peer.sendall(b"after")
        assert recv_exact(t.app, 11) == b"beforeafter"
        assert read_totals().tls_control == before + 1
        assert_flows(t)
    finally:
        t.close()
    assert dmesg.bad() == []


def test_corrupted_record_ends_the_proxy_and_passes_nothing(kp, pki, server_cfg, dmesg):
    """A record whose ciphertext was changed in flight fails authentication:
    the proxy ends with reason error and not one byte of it reaches the app."""
    t = terminate(kp, server_cfg, peer_tls="raw", pki=pki, notify_end=True)
    try:
        t.raw.send(b"GOOD")
        assert recv_exact(t.app, 4) == b"GOOD"
        bad = bytearray(t.raw.record(b"EVIL-PAYLOAD"))
        bad[-20] ^= 0x01  # a byte of the ciphertext, before the tag
        t.peer.sendall(bytes(bad))
        assert ended(kp, t.proxy_id).reason == "error"
        with pytest.raises(ConnectionResetError):
            t.app.recv(64)
    finally:
        t.close()
    assert dmesg.bad() == []


# --- BPF on plaintext ------------------------------------------------------------


def test_verdict_drops_a_prefix_of_decrypted_messages(kp, pki, server_cfg, dmesg):
    """lenprefix and drop-prefix on the decrypted direction: the firewall
    sees plaintext, drops exactly the marked message."""
    t = terminate(kp, server_cfg, pki=pki)
    lp, dp = bpf.load("lenprefix"), bpf.load("drop-prefix")
    dp.set_prefix(b"DROP", 4)
    try:
        kp.attach(t.proxy_id, "parser", lp, "a-to-b")
        kp.attach(t.proxy_id, "verdict", dp, "a-to-b")
        msgs = [b"KEEP one", b"DROP two", b"KEEP three"]
        t.peer.sendall(b"".join(struct.pack(">I", len(m)) + m for m in msgs))
        kept = [m for m in msgs if not m.startswith(b"DROP")]
        want = b"".join(struct.pack(">I", len(m)) + m for m in kept)
        assert recv_exact(t.app, len(want)) == want
        p = wait_for(lambda: (q := kp.get(t.proxy_id)).a_to_b.drops == 1 and q, timeout=IO_TIMEOUT,
                     what="one drop")
        assert p.a_to_b.msgs == 2
    finally:
        t.close()
        lp.close()
        dp.close()
    assert dmesg.bad() == []


def test_messages_across_records_reach_the_parser_whole(kp, pki, server_cfg, dmesg):
    """Messages many records long, framed by a parser on the decrypted
    direction, arrive byte for byte: a record's skb from the TLS layer
    goes on past its plaintext (content type, padding), and those bytes
    once landed inside the message (same length, other bytes)."""
    t = terminate(kp, server_cfg, pki=pki)
    lp = bpf.load("lenprefix")
    try:
        kp.attach(t.proxy_id, "parser", lp, "a-to-b")
        msgs = [os.urandom(n) for n in (100_000, 1, 65_537, 300_000)]
        want = b"".join(struct.pack(">I", len(m)) + m for m in msgs)
        t.peer.sendall(want)
        got = recv_exact(t.app, len(want))
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()
        assert kp.get(t.proxy_id).a_to_b.msgs == len(msgs)
    finally:
        t.close()
        lp.close()
    assert dmesg.bad() == []


# --- a hostile peer --------------------------------------------------------------


def test_one_byte_records_toward_an_app_that_never_reads_hold_bounded_memory(kp, pki, server_cfg,
                                                                              dmesg, say):
    """A kTLS peer sends one-byte records (each a record of its own: ~22
    bytes of ciphertext for one of plaintext) toward an app that does not
    read. What the TLS layer and the proxy hold stays bounded by memory:
    the kernel's Slab + Percpu grow by at most 32 MiB (the sender stops
    early past 64 MiB); then the app reads every byte, in order."""
    t = terminate(kp, server_cfg, peer_tls="ktls", pki=pki)
    try:
        t.app.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        data = bytes(range(251)) * ((4 << 20) // 251)
        sent, took, mem = measured_trickle(t.peer, data, 0, long_or(60, 20))
        say(f"one-byte TLS records: {sent} in {took:.1f}s, kernel memory (Slab+Percpu) peak "
            f"+{mem.peak / 1024:.1f} MiB")
        assert not mem.over.is_set(), f"kernel memory grew past 64 MiB after {sent} records"
        assert mem.peak <= LIMIT_OK_KB, f"kernel memory grew by {mem.peak / 1024:.1f} MiB (at most 32)"
        assert recv_exact(t.app, sent) == data[:sent]
    finally:
        t.close()
    assert dmesg.bad() == []


def test_full_records_toward_an_app_that_reads_late_lose_nothing(kp, pki, server_cfg, dmesg):
    """Full 16 KiB records toward an app that does not read at first: the
    direction's queue reaches its bound, so reads of the TLS layer stop
    short, in the middle of a record. When the app reads, every byte
    arrives, in order (sha256): a record read in part is read on later,
    never skipped."""
    t = terminate(kp, server_cfg, pki=pki)
    try:
        t.app.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        total = 4 << 20
        tx = Sender(t.peer, total, 7)
        tx.start()
        # Until nothing moves: the app's buffers and the direction's queue
        # are full, and the proxy has stopped reading.
        wait_for(lambda: queue_stalled(t.proxy_id), timeout=IO_TIMEOUT,
                 what="the direction to stall")
        t.app.settimeout(IO_TIMEOUT)
        rx = Receiver(t.app, total)
        rx.start()
        join_all([tx, rx], timeout=600)
        assert rx.digest == tx.digest, "bytes lost or reordered"
    finally:
        t.close()
    assert dmesg.bad() == []


def queue_stalled(pid: int) -> bool:
    """The a-to-b direction has sent something, then nothing for a second."""
    first = proc_line(pid).a_to_b.bytes
    time.sleep(1.0)
    return first > 0 and proc_line(pid).a_to_b.bytes == first


# --- a hostile co-owner, hand-back -----------------------------------------------


def test_coowner_cannot_change_a_joined_ktls_socket_and_gets_it_back(kp, pki, server_cfg, dmesg):
    """Whoever keeps the kTLS fd cannot put another ULP on it, and a second
    key either is refused (before 6.14) or rekeys its own stream; the kernel
    stays clean either way. Deleting a proxy that is intact hands the kTLS
    socket back working: the owner's send reaches the peer decrypted."""
    t = terminate(kp, server_cfg, pki=pki)
    try:
        with pytest.raises(OSError) as ei:
            t.ktls.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
        assert ei.value.errno == errno.EEXIST
        assert_flows(t)
        kp.destroy(t.proxy_id)
        t.ktls.sendall(b"handed back")
        assert recv_exact(t.peer, 11) == b"handed back"
        t.peer.sendall(b"still TLS")
        assert recv_exact(t.ktls, 9) == b"still TLS"
    finally:
        t.close()
    t = terminate(kp, server_cfg, pki=pki)
    try:
        with contextlib.suppress(OSError):  # EBUSY, or a rekey on 6.14 and later
            t.ktls.setsockopt(SOL_TLS, TLS_TX, dummy_crypto_info())
        t.app.sendall(b"x" * 1000)
    finally:
        t.close()
    assert dmesg.bad() == []


def assert_flows(t: Terminated) -> None:
    t.peer.sendall(b"ping")
    assert recv_exact(t.app, 4) == b"ping"
    t.app.sendall(b"pong")
    assert recv_exact(t.peer, 4) == b"pong"

