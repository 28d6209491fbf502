"""What the kTLS tests share: throwaway certificates, TLS peers that are
ordinary TLS stacks (Python's ssl), and a peer that sees the raw bytes.
Standalone (the host tests import it too)."""

from __future__ import annotations

import gc
import os
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path
from typing import Callable

# Under TCG (10-50x slower than a real CPU) a handshake takes seconds.
HANDSHAKE_TIMEOUT = 120.0
PEER_TIMEOUT = 120.0

# Constants Python's socket module lacks (linux/tls.h, linux/tcp.h).
SOL_TLS = 282
TCP_ULP = 31
TLS_TX = 1
TLS_RX = 2
TLS_SET_RECORD_TYPE = 1
TLS_GET_RECORD_TYPE = 2
TLS_1_3_VERSION = 0x0304
TLS_CIPHER_AES_GCM_128 = 51
RECORD_ALERT = 21
RECORD_HANDSHAKE = 22


def make_pki(d: Path) -> dict[str, str]:
    """Self-signed EC P-256 certificates (fast under emulation): "server"
    (for localhost) and "other", an unrelated one standing for a wrong CA.
    Keys: {name}_cert, {name}_key."""
    out = {}
    for name in ("server", "other"):
        key, cert = d / f"{name}.key", d / f"{name}.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
             "-addext", "subjectAltName=DNS:localhost"],
            check=True, capture_output=True, timeout=PEER_TIMEOUT,
        )  # fmt: skip
        out[f"{name}_key"], out[f"{name}_cert"] = str(key), str(cert)
    return out


class Peer(threading.Thread):
    """Runs fn in a thread; outcome() joins it and returns or raises."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: object = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def outcome(self, timeout: float = PEER_TIMEOUT) -> object:
        self.join(timeout)
        assert not self.is_alive(), "peer still running"
        if self.error is not None:
            raise self.error
        return self.result


def open_fds() -> int:
    """Open fds once sockets an earlier test dropped are really closed (a
    socket object left to the garbage collector keeps its fd until then)."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def peer_server_ctx(pki: dict[str, str], tickets: int = 0) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    ctx.num_tickets = tickets
    return ctx


def peer_client_ctx(pki: dict[str, str], version: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki["server_cert"])
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion[version.replace(".", "_")]
    return ctx


class RawPeer:
    """A TLS peer in an ssl.SSLObject over a raw socket: it keeps every raw
    byte it received, and can put application data in the same write as its
    last handshake flight, or hand out a record instead of sending it."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_side: bool) -> None:
        self.sock = sock
        self.inb, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inb, self.outb, server_side=server_side,
                                server_hostname=None if server_side else "localhost")  # fmt: skip
        self.raw = bytearray()

    def _pump(self) -> None:
        data = self.sock.recv(65536)
        assert data, "EOF"
        self.raw += data
        self.inb.write(data)

    def handshake(self, then_send: bytes = b"") -> None:
        while True:
            try:
                self.obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            if done and then_send:
                self.obj.write(then_send)
            out = self.outb.read()
            if out:
                self.sock.sendall(out)  # the last flight and then_send: one write
            if done:
                return
            self._pump()

    def record(self, data: bytes) -> bytes:
        """The bytes of the records carrying data, not sent."""
        self.obj.write(data)
        return self.outb.read()

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.record(data))

    def recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            try:
                buf += self.obj.read(n - len(buf))
            except ssl.SSLWantReadError:
                self._pump()
        return buf


def send_record(s: socket.socket, record_type: int, body: bytes) -> None:
    """A record of another type than data on a kTLS socket (the kernel
    protects it like any other)."""
    s.sendmsg([body], [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes([record_type]))])


def dummy_crypto_info() -> bytes:
    """A well-formed tls12_crypto_info_aes_gcm_128 for TLS 1.3 with all-zero
    iv, key, salt and sequence number: enough to install a key."""
    return struct.pack("=HH8s16s4s8s", TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128,
                       bytes(8), bytes(16), bytes(4), bytes(8))
