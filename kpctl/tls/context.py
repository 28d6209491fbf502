"""SSLContexts for kTLS: only offloadable suites, no tickets, no
renegotiation, and a key log in memory that the handshake reads back.

OpenSSL 3.0 cannot hand over both directions' keys, so each context logs its
secrets (SSLContext.keylog_filename) to /proc/self/fd/N of a memfd: keys
never touch a disk. One log serves every handshake on the context; lines are
found by client random. The log is emptied whenever no handshake is in
flight on it, and a context whose log grew past LOG_LIMIT while busy is
replaced by a fresh one for new handshakes (and closed when its last
handshake ends), so a long-running server's memory stays bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import ssl
import threading
from typing import Callable, Iterator

import _ssl

from kpctl.tls.errors import TlsError
from kpctl.tls.keys import TLS12, TLS13, Suite

LOG_LIMIT = 1 << 20

_VERSIONS = {TLS12: ssl.TLSVersion.TLSv1_2, TLS13: ssl.TLSVersion.TLSv1_3}


def restrict(ctx: ssl.SSLContext, versions: tuple[str, ...], suites: tuple[Suite, ...]) -> None:
    """Offer only `suites` and `versions` (both already checked non-empty)."""
    offered = [v for v in (TLS12, TLS13) if v in versions and any(s.version == v for s in suites)]
    if not offered:
        raise TlsError(errno.EOPNOTSUPP, f"no chosen cipher suite is for {' or '.join(versions)}")
    ctx.minimum_version = _VERSIONS[offered[0]]
    ctx.maximum_version = _VERSIONS[offered[-1]]
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    tls12 = [s.openssl for s in suites if s.version == TLS12]
    if tls12:
        ctx.set_ciphers(":".join(tls12))
    tls13 = [s.openssl for s in suites if s.version == TLS13]
    if tls13 and _tls13_suites(ctx) != set(tls13):
        _set_tls13_suites(ctx, tls13)


def _tls13_suites(ctx: ssl.SSLContext) -> set[str]:
    return {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"}


def _set_tls13_suites(ctx: ssl.SSLContext, names: list[str]) -> None:
    """Python 3.11 has no SSL_CTX_set_ciphersuites(): call OpenSSL's, found
    through _ssl's own libssl, on the SSL_CTX * that is the first field of
    CPython's PySSLContext after the object header. The result is checked
    through get_ciphers(), so a layout that ever differs fails loudly."""
    lib = ctypes.CDLL(_ssl.__file__)
    lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ssl_ctx or lib.SSL_CTX_set_ciphersuites(ssl_ctx, ":".join(names).encode()) != 1:
        raise TlsError(errno.EOPNOTSUPP, "cannot choose the TLS 1.3 cipher suites")
    if _tls13_suites(ctx) != set(names):
        raise TlsError(errno.EOPNOTSUPP, "cannot choose the TLS 1.3 cipher suites (OpenSSL kept others)")


class KeyLoggedContext:
    """An SSLContext with its in-memory key log, and the SNI names its
    server side received (by id of the SSLObject, taken once read)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.fd = os.memfd_create("kpctl-tls-keylog", os.MFD_CLOEXEC)
        try:
            ctx.keylog_filename = f"/proc/self/fd/{self.fd}"
        except OSError as e:
            os.close(self.fd)
            raise TlsError(e.errno or errno.EIO, f"cannot keep the TLS key log in memory: {e.strerror}") from None
        self.inflight = 0
        self.retired = False
        self.sni: dict[int, str] = {}
        if ctx.protocol == ssl.PROTOCOL_TLS_SERVER:
            ctx.sni_callback = self._on_sni

    def _on_sni(self, sslobj: object, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name is not None:
            self.sni[id(sslobj)] = name

    def log(self) -> str:
        size = os.fstat(self.fd).st_size
        return os.pread(self.fd, size, 0).decode("ascii", "replace")

    def log_size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        # The context's own BIO holds a second open file of the memfd; it is
        # released with the context.
        self.ctx.keylog_filename = None  # type: ignore[assignment]
        os.close(self.fd)
        self.fd = -1


class ContextSource:
    """Hands out the current KeyLoggedContext for one handshake at a time."""

    def __init__(self, build: Callable[[], ssl.SSLContext]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._current = KeyLoggedContext(build())

    @contextlib.contextmanager
    def lease(self) -> Iterator[KeyLoggedContext]:
        with self._lock:
            cur = self._current
            if cur.log_size() > LOG_LIMIT:
                cur.retired = True
                self._close_if_idle(cur)
                self._current = cur = KeyLoggedContext(self._build())
            cur.inflight += 1
        try:
            yield cur
        finally:
            with self._lock:
                cur.inflight -= 1
                self._close_if_idle(cur)

    def _close_if_idle(self, klc: KeyLoggedContext) -> None:
        if klc.inflight:
            return
        if klc.retired and klc.fd >= 0:
            klc.close()
        elif not klc.retired:
            os.ftruncate(klc.fd, 0)

    def close(self) -> None:
        with self._lock:
            self._current.retired = True
            self._close_if_idle(self._current)
