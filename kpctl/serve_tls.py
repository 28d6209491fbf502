"""TLS for `kpctl serve`: the checks of its TLS options, the configs built
once from them, and the handshakes run off the accept loop.

A handshake blocks (kpctl.tls does it on a blocking socket, then installs
kTLS), so the loop hands it to a bounded thread pool and goes on accepting.
A worker's result is posted back to the loop (`notify`, the loop's wakeup
socket: the same way stop() from another thread wakes it); the loop takes
the finished handshakes every round and carries on with the connection.

Ownership of a connection's sockets: while its handshake runs, the worker
uses them and the loop only ever shuts them down (cancel: a blocked recv
returns at once, the handshake fails); once the future is done they are the
loop's again, to join, reset or close.

Deadlines: --handshake-timeout counts from the moment the connection is
handed to the pool, so a connection that waited for a free worker has only
the rest of it (none left: it fails without a handshake).
"""

from __future__ import annotations

import concurrent.futures
import errno
import ipaddress
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .address import Address, ServeError, split_hostport

if TYPE_CHECKING:  # kpctl.tls imports ssl: only when a service speaks TLS
    from .serve import ServeOptions

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_HANDSHAKE_WORKERS = 16
MAX_HANDSHAKE_WORKERS = 1024
# --tls-versions as the user writes them -> kpctl.tls's names.
VERSIONS = {"1.2": "TLSv1.2", "1.3": "TLSv1.3"}
SIDES = ("client", "target")


# --------------------------------------------------------------------------
# Options


def check_options(o: "ServeOptions") -> None:
    """The TLS part of ServeOptions.check(): ServeError with the message the
    user sees. Files are checked for reading here, before anything listens;
    their content when the configs are built (open(): a TlsError)."""
    if (o.tls_cert is None) != (o.tls_key is None):
        raise ServeError("--tls-cert and --tls-key go together (the certificate and its "
                         "private key)")
    for flag, value in (("--tls-cert", o.tls_cert), ("--tls-key", o.tls_key),
                        ("--target-ca", o.target_ca)):
        if value is not None:
            _check_readable(flag, value)
    if not o.target_tls:
        for flag, given in (("--target-ca", o.target_ca is not None),
                            ("--target-sni", o.target_sni is not None),
                            ("--target-insecure", o.target_insecure)):
            if given:
                raise ServeError(f"{flag} goes with --target-tls")
    if o.target_insecure and o.target_ca is not None:
        raise ServeError("--target-insecure and --target-ca are exclusive (no check, or a "
                         "check against that CA)")
    if o.target_sni == "":
        raise ServeError("--target-sni must not be empty")
    terminates = o.tls_cert is not None
    if not (terminates or o.target_tls):
        for flag, given in (("--tls-versions", o.tls_versions is not None),
                            ("--tls-ciphers", o.tls_ciphers is not None)):
            if given:
                raise ServeError(f"{flag} goes with --tls-cert or --target-tls")
    versions = _check_versions(o.tls_versions)
    _check_ciphers(o.tls_ciphers, versions)
    if not (o.handshake_timeout > 0 and o.handshake_timeout < float("inf")):
        raise ServeError("--handshake-timeout must be a positive number of seconds")
    if not 1 <= o.handshake_workers <= MAX_HANDSHAKE_WORKERS:
        raise ServeError(f"--handshake-workers must be 1 to {MAX_HANDSHAKE_WORKERS}")


def _check_readable(flag: str, path: str) -> None:
    if not path:
        raise ServeError(f"{flag} must name a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ServeError(f"{flag}: cannot read {path}: {e.strerror}") from None


def _check_versions(versions: tuple[str, ...] | None) -> tuple[str, ...]:
    if versions is None:
        return tuple(VERSIONS.values())
    if not versions:
        raise ServeError("--tls-versions must name a version (1.2, 1.3)")
    bad = [v for v in versions if v not in VERSIONS]
    if bad:
        raise ServeError(f"--tls-versions: {', '.join(bad)} cannot be offloaded to kTLS "
                         f"(choose from 1.2, 1.3)")
    return tuple(VERSIONS[v] for v in versions)


def _check_ciphers(ciphers: tuple[str, ...] | None, versions: tuple[str, ...]) -> None:
    from .tls.keys import select_suites  # pure Python, no ssl
    if ciphers is None:
        return
    if not ciphers:
        raise ServeError("--tls-ciphers must name a cipher")
    try:
        suites = select_suites(ciphers)
    except ValueError as e:
        raise ServeError(f"--tls-ciphers: {e} cannot be offloaded to kTLS (choose from "
                         f"AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305 or a suite name)") \
            from None
    if not any(s.version in versions for s in suites):
        wanted = " or ".join(v.replace("TLSv", "") for v in versions)
        raise ServeError(f"--tls-ciphers: none of {', '.join(ciphers)} is a TLS {wanted} suite")


def split_list(text: str) -> tuple[str, ...]:
    """'1.2, 1.3' -> ('1.2', '1.3'): the comma lists of --tls-versions and
    --tls-ciphers."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def target_server_name(options: "ServeOptions", target: Address) -> str:
    """The name the target's certificate must carry (and SNI, when a name):
    --target-sni, else TARGET's host name as written, else its address
    (checked against the certificate's IP addresses; Python sends no SNI
    for an address)."""
    if options.target_sni:
        return options.target_sni
    if target.name:
        host = split_hostport(target.name)[0]
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return host
    return target.host


# --------------------------------------------------------------------------
# Configs: built once, shared by every handshake (kpctl.tls's are thread-safe)


class TlsConfigs:
    """`server`: a kpctl.tls.ServerConfig when the service terminates TLS;
    `client`: a ClientConfig when it originates TLS. Building them loads the
    certificate, key and CA: a TlsError (exit 2) names what is wrong."""

    def __init__(self, server: Any = None, client: Any = None) -> None:
        self.server = server
        self.client = client

    @classmethod
    def build(cls, options: "ServeOptions", target: Address) -> "TlsConfigs":
        from .tls import ClientConfig, ServerConfig
        versions = _check_versions(options.tls_versions)
        ciphers = options.tls_ciphers
        configs = cls()
        try:
            if options.tls_cert is not None:
                assert options.tls_key is not None
                configs.server = ServerConfig(options.tls_cert, options.tls_key,
                                              versions=versions, ciphers=ciphers)
            if options.target_tls:
                configs.client = ClientConfig(
                    ca=options.target_ca, server_name=target_server_name(options, target),
                    verify=not options.target_insecure, versions=versions, ciphers=ciphers)
        except BaseException:
            configs.close()
            raise
        return configs

    def close(self) -> None:
        for cfg in (self.server, self.client):
            if cfg is not None:
                try:
                    cfg.close()
                except Exception:  # noqa: BLE001 - closing must not fail the stop
                    pass
        self.server = self.client = None


def session_info(session: Any) -> dict[str, str]:
    """A kpctl.tls.Session as serve's events show a side: {"version": "1.3",
    "cipher": "aes-128-gcm"}, the names of /proc/net/kproxy and kpctl show."""
    from .model import TLS_CIPHERS
    version = str(session.version).replace("TLSv", "")
    cipher = TLS_CIPHERS.get(session.cipher_type, f"cipher-{session.cipher_type}")
    return {"version": version, "cipher": cipher}


# --------------------------------------------------------------------------
# The pool


class Handshake:
    """One handshake of one connection. side "client": accept_tls on
    `conn` (serve terminates); "target": connect_tls on `up` (serve
    originates). `client_tls`: the client side's info, when that side is
    TLS and already done. After the future: `session` or `error`."""

    __slots__ = ("side", "conn", "peer", "up", "client_tls", "deadline", "cancelled",
                 "session", "error")

    def __init__(self, side: str, conn: socket.socket, peer: str, up: socket.socket | None,
                 deadline: float, client_tls: dict[str, str] | None = None) -> None:
        self.side, self.conn, self.peer, self.up = side, conn, peer, up
        self.client_tls = client_tls
        self.deadline = deadline
        self.cancelled = False
        self.session: Any = None
        self.error: BaseException | None = None

    @property
    def sock(self) -> socket.socket:
        """The socket the handshake runs on."""
        return self.conn if self.side == "client" or self.up is None else self.up


HandshakeFn = Callable[[socket.socket, Any, float], Any]


class HandshakePool:
    """Runs handshakes in at most `workers` threads; `notify()` is called
    (from the worker) whenever one finished; take_done() hands the finished
    ones to the loop. accept/connect default to kpctl.tls's."""

    def __init__(self, configs: TlsConfigs, workers: int, timeout: float,
                 notify: Callable[[], None], *, accept: HandshakeFn | None = None,
                 connect: HandshakeFn | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.configs = configs
        self.timeout = timeout
        self._notify = notify
        self._accept = accept
        self._connect = connect
        self._clock = clock
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="kpctl-serve-tls")
        self._lock = threading.Lock()
        self._inflight: set[Handshake] = set()
        self._done: list[Handshake] = []

    def __len__(self) -> int:
        """Handshakes handed out and not yet taken back by the loop."""
        with self._lock:
            return len(self._inflight)

    def submit(self, hs: Handshake) -> None:
        with self._lock:
            self._inflight.add(hs)
        future = self._executor.submit(self._run, hs)
        future.add_done_callback(lambda f, hs=hs: self._finished(hs, f))

    def _run(self, hs: Handshake) -> Any:
        if hs.cancelled:
            raise _cancelled()
        left = hs.deadline - self._clock()
        if left <= 0:
            raise _timed_out(self.timeout, "waiting for a free handshake worker")
        try:
            if hs.side == "client":
                return self._accept_fn()(hs.conn, self.configs.server, left)
            assert hs.up is not None
            return self._connect_fn()(hs.up, self.configs.client, left)
        except Exception as e:
            if getattr(e, "errno", None) == errno.ETIMEDOUT:
                # kpctl.tls counts from the start of this call: say the
                # user's number, which counts from the accept.
                raise _timed_out(self.timeout) from None
            raise

    def _accept_fn(self) -> HandshakeFn:
        if self._accept is None:
            from .tls import accept_tls
            self._accept = accept_tls
        return self._accept

    def _connect_fn(self) -> HandshakeFn:
        if self._connect is None:
            from .tls import connect_tls
            self._connect = connect_tls
        return self._connect

    def _finished(self, hs: Handshake, future: concurrent.futures.Future) -> None:
        if future.cancelled():
            hs.error = _cancelled()
        else:
            hs.error = future.exception()
            if hs.error is None:
                hs.session = future.result()
        with self._lock:
            self._done.append(hs)
        self._notify()

    def take_done(self) -> list[Handshake]:
        """The finished handshakes, each once; their sockets are the loop's."""
        with self._lock:
            done, self._done = self._done, []
            self._inflight.difference_update(done)
        return done

    def cancel_all(self) -> None:
        """Make every handshake in flight end now: one not started never
        starts; a running one sees its socket shut down (recv returns,
        send fails) and fails. They come back through take_done()."""
        with self._lock:
            pending = [hs for hs in self._inflight if hs not in self._done]
        for hs in pending:
            hs.cancelled = True
            for s in (hs.conn, hs.up):
                if s is not None:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def close(self) -> list[Handshake]:
        """Cancel everything, wait for the workers to return (no thread
        outlives the service) and hand back what finished."""
        self.cancel_all()
        self._executor.shutdown(wait=True, cancel_futures=True)
        return self.take_done()


def _cancelled() -> Exception:
    from .errors import KproxyError
    return KproxyError(errno.ECANCELED, "the service is stopping")


def _timed_out(timeout: float, why: str = "") -> Exception:
    from .errors import KproxyError
    return KproxyError(errno.ETIMEDOUT, f"TLS handshake timed out after {timeout:g} s"
                                        + (f" ({why})" if why else ""))


def handshake_error(e: BaseException) -> tuple[int, str]:
    """(errno, message) of a failed handshake, for the `failed` event."""
    num = getattr(e, "errno", None) or errno.EIO
    message = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e) \
        or os.strerror(num)
    return num, message
