"""kpctl.tls: a TLS handshake in userspace (Python's ssl), then the kernel's
TLS (kTLS) on the same socket, both directions, so the socket's plain
send()/recv() speak TLS and kproxy can join it to another socket.

    cfg = ServerConfig("cert.pem", "key.pem")
    session = accept_tls(conn, cfg, timeout=10)   # conn: connected TCP socket
    conn.sendall(b"hello")                        # encrypted by the kernel

Limits: no session resumption, tickets or early data (they would shift the
record sequence numbers); a TLS 1.3 peer's post-handshake messages
(NewSessionTicket, KeyUpdate) reach the kernel as control records: recv()
without a cmsg buffer then fails with EIO.
"""

from kpctl.tls.errors import TlsError
from kpctl.tls.handshake import ClientConfig, ServerConfig, Session, accept_tls, connect_tls
from kpctl.tls.keys import CIPHER_AES_GCM_128, CIPHER_AES_GCM_256, CIPHER_CHACHA20_POLY1305, SUITES, Suite
from kpctl.tls.ktls import KtlsDirection, kernel_has_ktls, ktls_info

__all__ = [
    "CIPHER_AES_GCM_128",
    "CIPHER_AES_GCM_256",
    "CIPHER_CHACHA20_POLY1305",
    "SUITES",
    "ClientConfig",
    "KtlsDirection",
    "ServerConfig",
    "Session",
    "Suite",
    "TlsError",
    "accept_tls",
    "connect_tls",
    "kernel_has_ktls",
    "ktls_info",
]
