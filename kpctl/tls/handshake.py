"""The handshake in userspace, then kTLS on the same socket.

The handshake runs in an ssl.SSLObject over two MemoryBIOs. Records are
taken from the socket one whole record at a time (the 5-byte header, then
exactly its length) and the reading stops the moment the handshake is done,
so every byte after it (the peer's first application data, a TLS 1.3
server's tickets) stays in the socket for the kernel, and the record
sequence numbers handed to kTLS are exact.
"""

from __future__ import annotations

import errno
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from kpctl.tls import keys as K
from kpctl.tls.context import ContextSource, KeyLoggedContext, restrict
from kpctl.tls.errors import TlsError
from kpctl.tls.ktls import install

DEFAULT_TIMEOUT = 30.0
VERSIONS = (K.TLS12, K.TLS13)

# RFC 8446 5.1: a TLSCiphertext is at most 2^14 + 256 bytes; TLS 1.2 allows
# 2^14 + 2048 (RFC 5246 6.2.3).
MAX_RECORD = (1 << 14) + 2048


def _check_versions(versions: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(versions)
    bad = [v for v in chosen if v not in VERSIONS]
    if bad or not chosen:
        raise TlsError(errno.EOPNOTSUPP, f"TLS version {', '.join(bad) or '(none)'} cannot be offloaded to kTLS (choose from TLSv1.2, TLSv1.3)")
    return chosen


def _check_suites(ciphers: Sequence[str] | None) -> tuple[K.Suite, ...]:
    try:
        return K.select_suites(None if ciphers is None else tuple(ciphers))
    except ValueError as e:
        choices = ", ".join(["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"] + [s.iana for s in K.SUITES])
        raise TlsError(errno.EOPNOTSUPP, f"cipher {e} cannot be offloaded to kTLS (choose from {choices})") from None


def _load_error(what: str, e: OSError | ssl.SSLError) -> TlsError:
    reason = getattr(e, "reason", None) or e.strerror or str(e)
    code = e.errno if isinstance(e.errno, int) and e.errno > 0 and not isinstance(e, ssl.SSLError) else errno.EINVAL
    return TlsError(code, f"cannot load {what}: {str(reason).lower().replace('_', ' ')}")


@dataclass
class ServerConfig:
    """The server side: our certificate chain and key (PEM files). Built once
    and shared by any number of handshakes (thread-safe)."""

    cert: str
    key: str
    versions: Sequence[str] = VERSIONS
    ciphers: Sequence[str] | None = None  # suite names or cipher families; None: all offloadable
    _source: ContextSource = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        versions, suites = _check_versions(self.versions), _check_suites(self.ciphers)

        def build() -> ssl.SSLContext:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            restrict(ctx, versions, suites)
            # A ticket would go out under the traffic key and shift the
            # sequence number kTLS starts from.
            ctx.num_tickets = 0
            try:
                ctx.load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError) as e:
                raise _load_error(f"certificate {self.cert} / key {self.key}", e) from None
            return ctx

        self._source = ContextSource(build)

    def close(self) -> None:
        """Release the key log (the config is unusable afterwards)."""
        self._source.close()


@dataclass
class ClientConfig:
    """The client side. ca: a PEM file of trusted CAs, None for the system
    store; server_name: sent as SNI and checked against the certificate;
    verify=False accepts any certificate (and checks no name)."""

    ca: str | None = None
    server_name: str | None = None
    verify: bool = True
    check_hostname: bool = True
    versions: Sequence[str] = VERSIONS
    ciphers: Sequence[str] | None = None
    _source: ContextSource = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        versions, suites = _check_versions(self.versions), _check_suites(self.ciphers)
        if self.verify and self.check_hostname and not self.server_name:
            raise TlsError(errno.EINVAL, "checking the server's certificate needs its name (server_name), or check_hostname=False")

        def build() -> ssl.SSLContext:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            restrict(ctx, versions, suites)
            if not self.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                ctx.check_hostname = self.check_hostname
                try:
                    if self.ca is None:
                        ctx.load_default_certs()
                    else:
                        ctx.load_verify_locations(cafile=self.ca)
                except (OSError, ssl.SSLError) as e:
                    raise _load_error(f"CA file {self.ca}", e) from None
            return ctx

        self._source = ContextSource(build)

    def close(self) -> None:
        self._source.close()


@dataclass(frozen=True)
class Session:
    """A socket whose TLS the kernel now runs (TX and RX keys installed)."""

    version: str  # "TLSv1.2" / "TLSv1.3"
    cipher: str  # IANA suite name, e.g. "TLS_AES_128_GCM_SHA256"
    cipher_type: int  # the kernel's TLS_CIPHER_* (51, 52, 54)
    server_name: str | None  # SNI: sent (client) or received (server)
    peer_subject: str | None  # "CN=...,O=..." of a verified peer certificate, else None
    handshake_s: float  # wall time of the handshake and install

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cipher": self.cipher,
            "cipher_type": self.cipher_type,
            "server_name": self.server_name,
            "peer_subject": self.peer_subject,
            "handshake_s": round(self.handshake_s, 6),
        }


def accept_tls(sock: socket.socket, config: ServerConfig, timeout: float = DEFAULT_TIMEOUT) -> Session:
    """Run the server side of a handshake on a connected TCP socket, then
    install kTLS both ways. On TlsError the socket stays open and the
    caller's (it has no usable TLS state: close it)."""
    return _handshake(sock, config._source, True, None, timeout)


def connect_tls(sock: socket.socket, config: ClientConfig, timeout: float = DEFAULT_TIMEOUT) -> Session:
    """The client side of accept_tls()."""
    return _handshake(sock, config._source, False, config.server_name, timeout)


def _check_socket(sock: socket.socket) -> None:
    if sock.fileno() < 0:
        raise TlsError(errno.EBADF, "not a connected TCP socket: the socket is closed")
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        raise TlsError(errno.EINVAL, "not a connected TCP socket")
    try:
        sock.getpeername()
    except OSError as e:
        raise TlsError(e.errno or errno.ENOTCONN, f"not a connected TCP socket: {e.strerror}") from None


def _handshake(
    sock: socket.socket, source: ContextSource, server_side: bool, server_name: str | None, timeout: float
) -> Session:
    _check_socket(sock)
    start = time.monotonic()
    saved_timeout = sock.gettimeout()
    try:
        with source.lease() as klc:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            sslobj = klc.ctx.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=server_name)
            try:
                wire = _Wire(sock, start + timeout, timeout)
                _drive(sslobj, incoming, outgoing, wire)
                name = klc.sni.get(id(sslobj)) if server_side else server_name
                version, suite, tx, rx = _keys(sslobj, klc, wire, server_side)
                subject = _subject(sslobj)
            finally:
                klc.sni.pop(id(sslobj), None)
        install(sock, version, suite, tx, rx)
    finally:
        if sock.fileno() >= 0:
            sock.settimeout(saved_timeout)
    return Session(version, suite.iana, suite.cipher_type, name, subject, time.monotonic() - start)


class _Direction:
    """One direction's records as seen on the wire: the plaintext handshake
    bytes before its ChangeCipherSpec, and how many records followed it."""

    def __init__(self) -> None:
        self.pending = b""
        self.handshake = bytearray()
        self.ccs = False
        self.after_ccs = 0
        self.protected = 0  # application_data records (TLS 1.3: all encrypted ones)

    def feed(self, data: bytes) -> None:
        self.pending += data
        while len(self.pending) >= 5:
            length = int.from_bytes(self.pending[3:5], "big")
            if len(self.pending) < 5 + length:
                return
            kind, body = self.pending[0], self.pending[5 : 5 + length]
            self.pending = self.pending[5 + length :]
            if kind == K.CHANGE_CIPHER_SPEC:
                self.ccs = True
            elif self.ccs:
                self.after_ccs += 1
            elif kind == K.HANDSHAKE:
                self.handshake += body
            if kind == K.APPLICATION_DATA:
                self.protected += 1


class _Wire:
    """The socket under a deadline, with what went each way."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        self.sock, self.deadline, self.timeout = sock, deadline, timeout
        self.sent, self.received = _Direction(), _Direction()
        self.sent_in_last_flush = 0  # protected records in the last write

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)

    def send(self, data: bytes) -> None:
        before = self.sent.protected
        self.sent.feed(data)
        self.sent_in_last_flush = self.sent.protected - before
        self._arm()
        self.sock.sendall(data)

    def recv_record(self) -> bytes:
        header = self._recv_exact(5)
        kind, major, length = header[0], header[1], int.from_bytes(header[3:5], "big")
        if not (K.CHANGE_CIPHER_SPEC <= kind <= K.APPLICATION_DATA) or major != 3 or length > MAX_RECORD:
            raise TlsError(errno.EPROTO, f"TLS handshake failed: the peer sent no TLS record (it began with {header!r})")
        record = header + self._recv_exact(length)
        self.received.feed(record)
        return record

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self._arm()
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise TlsError(errno.ECONNRESET, "TLS handshake failed: the peer closed the connection")
            buf += chunk
        return bytes(buf)


def _drive(sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, wire: _Wire) -> None:
    try:
        while True:
            try:
                sslobj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            out = outgoing.read()
            if out:
                wire.send(out)
            elif done:
                wire.sent_in_last_flush = 0
            if done:
                return
            incoming.write(wire.recv_record())
    except ssl.SSLError as e:
        _send_alert(outgoing, wire)
        raise _ssl_error(e) from None
    except socket.timeout:
        raise TlsError(errno.ETIMEDOUT, f"TLS handshake timed out after {wire.timeout:g} s") from None
    except TlsError:
        raise
    except OSError as e:
        raise TlsError(e.errno or errno.EIO, f"TLS handshake failed: {e.strerror or e}") from None


def _send_alert(outgoing: ssl.MemoryBIO, wire: _Wire) -> None:
    """Tell the peer why (the alert OpenSSL wrote), if the socket takes it now."""
    alert = outgoing.read()
    if alert:
        try:
            wire.sock.settimeout(0.0)
            wire.sock.send(alert)
        except OSError:
            pass


def _ssl_error(e: ssl.SSLError) -> TlsError:
    if isinstance(e, ssl.SSLCertVerificationError):
        return TlsError(errno.EPROTO, f"TLS handshake failed: certificate verify failed: {e.verify_message}")
    if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return TlsError(errno.ECONNRESET, "TLS handshake failed: the peer closed the connection")
    reason = (e.reason or str(e)).lower().replace("_", " ")
    # An alert from the peer: it gave up (our certificate, our offer); else
    # what it sent made no sense to OpenSSL.
    code = errno.ECONNABORTED if "alert" in reason else errno.EPROTO
    return TlsError(code, f"TLS handshake failed: {reason}")


def _keys(
    sslobj: ssl.SSLObject, klc: KeyLoggedContext, wire: _Wire, server_side: bool
) -> tuple[str, K.Suite, K.DirectionKeys, K.DirectionKeys]:
    version = sslobj.version() or ""
    name = (sslobj.cipher() or ("",))[0]
    suite = K.BY_OPENSSL_NAME.get(name)
    if suite is None or suite.version != version:
        raise TlsError(errno.EOPNOTSUPP, f"negotiated {version} {name} cannot be offloaded to kTLS")
    hello_side = wire.sent if not server_side else wire.received
    try:
        client_random = K.hello_random(bytes(hello_side.handshake), K.CLIENT_HELLO)
    except ValueError:
        raise TlsError(errno.EPROTO, "TLS handshake failed: no ClientHello seen") from None
    secrets = K.keylog_secrets(klc.log(), client_random)
    if version == K.TLS13:
        client_secret = secrets.get("CLIENT_TRAFFIC_SECRET_0")
        server_secret = secrets.get("SERVER_TRAFFIC_SECRET_0")
        if client_secret is None or server_secret is None:
            raise TlsError(errno.EIO, "OpenSSL logged no traffic secrets for this handshake")
        # Nothing was read past the handshake; a server sends under its
        # traffic key only what it wrote as it finished (tickets: none here).
        server_seq = wire.sent_in_last_flush if server_side else 0
        client_keys = K.tls13_traffic_keys(suite, client_secret, 0)
        server_keys = K.tls13_traffic_keys(suite, server_secret, server_seq)
    else:
        master = secrets.get("CLIENT_RANDOM")
        if master is None:
            raise TlsError(errno.EIO, "OpenSSL logged no master secret for this handshake")
        sh_side = wire.received if not server_side else wire.sent
        try:
            srv_random = K.server_random(bytes(sh_side.handshake))
        except ValueError:
            raise TlsError(errno.EPROTO, "TLS handshake failed: no ServerHello seen") from None
        # Each direction's Finished is its record 0 under the new keys.
        client_seq = (wire.sent if not server_side else wire.received).after_ccs
        server_seq = (wire.received if not server_side else wire.sent).after_ccs
        client_keys, server_keys = K.tls12_traffic_keys(suite, master, client_random, srv_random, client_seq, server_seq)
    if server_side:
        return version, suite, server_keys, client_keys
    return version, suite, client_keys, server_keys


# The short attribute names of RFC 4514 for the names Python's ssl spells out.
_RDN_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
}


def _subject(sslobj: ssl.SSLObject) -> str | None:
    """The verified peer certificate's subject as "CN=...,O=..." (Python's
    ssl shows a certificate only once it verified it)."""
    cert = sslobj.getpeercert()
    if not cert:
        return None
    parts = [f"{_RDN_SHORT.get(k, k)}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
    return ",".join(parts) or None
