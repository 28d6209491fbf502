"""`kpctl serve`: an L4 proxy service whose data path is the kernel.

The process listens, accepts, connects to the target without blocking,
hands both connected sockets to kproxy (`create`, with notify_end) and
closes its own fds at once: from then on the kernel carries every byte and
the process only counts.  One thread, one `selectors` loop:

    listener readable  -> accept (a batch), refuse beyond --max-conns,
                          start a non-blocking connect to the target
    upstream writable  -> SO_ERROR: failed -> reset the client, count it;
                          connected -> create the proxy, attach the BPF
                          parser and verdict (when given), close both fds
    client readable    -> the kernel's proxy-del of our own proxies, sent to
                          our netlink socket alone (notify_end): final
                          counters, reason, the slot freed
    every second       -> a tick for the status line (counters we keep:
                          nothing is asked of the kernel)
    stop(), signals    -> through a wakeup socket, handled in the loop
    a handshake done   -> through the same wakeup socket (TLS, below)

TLS (kpctl.serve_tls): with --tls-cert/--tls-key serve terminates TLS, with
--target-tls it originates it, with both it re-encrypts; the kernel then
joins kTLS sockets and carries plaintext between them (so --parser and
--verdict see plaintext).  The configs are built once, by open().  A
handshake blocks, so it runs in a bounded thread pool, never in the loop:

    accepted -> [terminate: accept_tls in the pool] -> connect to the target
             -> [originate: connect_tls in the pool] -> create the proxy

A connection in a handshake holds a --max-conns slot.  A handshake that
fails or outlasts --handshake-timeout resets that client (a "failed" event,
stage "tls"); stopping cuts the handshakes in flight short (their sockets
shut down) and waits for the pool's threads before run() returns.

The work per second does not grow with the number of proxies: no dump, no
multicast group carrying every process's notifications. Bytes are counted
when a proxy ends (its final counters); live proxies are not polled. Only
when the kernel had to drop some of our ends (ENOBUFS on the socket) does
one dump tell which of our proxies are gone ("gone"; their bytes are lost,
and counted in `lost`).

Failures never stop the loop: a refused or timed-out target resets that one
client; accept errors such as EMFILE pause accepting with a growing back-off
(the pending connections stay in the kernel's backlog).

BPF programs (--parser, --verdict) are loaded once (kpctl.bpf.load_configured),
before listening, and stay open for the service's lifetime: every proxy gets
the same programs (the parser on both directions, then the verdict on both).
A program the kernel refuses on one proxy fails that connection (stage
"attach"; the proxy is destroyed and the client reset); the service goes on.

With a network namespace (-n NETNS) the thread that runs the loop enters it
once (kpctl.netns.enter), before it makes its sockets and, when none was
given, its kproxy client; it returns to its own namespace when the loop ends.

This module is library code: it reports through an `on_event(kind, data)`
callback and never imports the shell (kpctl/shell/serve_view.py draws).
Server.run() may run in any thread; stop() and snapshot() are safe from any
other (the shell runs services as background jobs).

Events (kind, data):
    listening    listen, target, options, pid, programs (kind -> id, name, source;
                 only with BPF programs)
    proxy        id, client, upstream (the local address towards the target),
                 tls: {client, target}, each {version, cipher} or None (plain)
    failed       client, reason, error (kpctl's error shape, or None),
                 stage (socket|connect|timeout|tls|create|attach|shutdown);
                 stage "tls" also has side (client|target)
    refused      client, reason ("max-conns"), limit
    ended        id, reason, a_to_b, b_to_a (bytes; client->target, target->client),
                 tls_alert (reason tls-alert: the alert's description number)
    accept-error errno, message, backoff (seconds)
    signal       signal, action
    warning      message
    tick         the counters (every second)
    stopping     mode (leave|drain|kill), active
    stopped      the counters
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .address import Address, Resolver, ServeError
from .errors import KproxyError
from .serve_tls import (DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HANDSHAKE_WORKERS, Handshake,
                        HandshakePool, TlsConfigs, handshake_error, session_info)
from .serve_tls import check_options as check_tls_options

STOP_MODES = ("leave", "drain", "kill")
PROGRAM_KINDS = ("parser", "verdict")  # attached in this order, each on both directions
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_BACKLOG = 1024
TICK = 1.0
# Accepted in one wakeup before their connects and creates go out together
# (a bound, so that a flood still lets the loop read ends and ticks).
ACCEPT_BATCH = 256
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
# How long "kill" waits for the ends of the proxies it destroyed: the kernel
# sends each before proxy-del returns, but a proxy that was already ending
# by itself (ENOENT) reports from its own teardown, a moment later.
KILL_WAIT = 5.0
# struct tcp_info's first byte, tcpi_state (<net/tcp_states.h>)
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
# accept(2) errors that mean "out of a resource": stop accepting for a while
# (the connections wait in the listen backlog) instead of spinning on them.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept(2) errors that concern one connection only: skip it and go on.
TRANSIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM,
                              errno.EINTR, errno.ENETDOWN, errno.ENOPROTOOPT,
                              errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
                              errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ETIMEDOUT})


# --------------------------------------------------------------------------
# Options and counters


@dataclass(frozen=True)
class ServeOptions:
    max_conns: int | None = None          # live proxies + connects in progress
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    backlog: int = DEFAULT_BACKLOG
    reuseport: bool = False
    on_stop: str = "leave"                # leave | drain | kill
    parser: str | None = None             # BPF program specs (kpctl.bpf.load): the
    verdict: str | None = None            # parser on both directions, then the verdict
    prefix: str | None = None             # drop-prefix verdict: what it drops
    offset: int | None = None             # where the payload starts (default 4)
    # TLS (kpctl.serve_tls): terminated with the client when tls_cert/tls_key
    # are given, originated to the target with target_tls; both: re-encrypted.
    tls_cert: str | None = None           # PEM certificate chain shown to clients
    tls_key: str | None = None            # its private key (PEM)
    target_tls: bool = False              # speak TLS to the target
    target_ca: str | None = None          # trusted CAs for the target (None: system store)
    target_sni: str | None = None         # SNI / name checked (None: TARGET's host name)
    target_insecure: bool = False         # accept any target certificate
    tls_versions: tuple[str, ...] | None = None  # ("1.2", "1.3"); None: both
    tls_ciphers: tuple[str, ...] | None = None   # families or suites (kpctl.tls); None: all
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT  # from accept to the end of both
    handshake_workers: int = DEFAULT_HANDSHAKE_WORKERS    # threads running handshakes
    # Accept and connect here, not in a kernel listener (kpctl.serve_listener);
    # TLS always does.
    userspace: bool = False
    # Processes serving LISTEN together (kpctl.serve_workers), userspace path.
    workers: int = 1
    # A "proxy" and an "ended" event for every connection. A kernel listener
    # without them costs no Python per connection: the counters come from
    # the listener's own (kpctl.serve_listener); the userspace path then
    # skips their per-connection work too (the upstream's address).
    connection_events: bool = True
    # HTTP (kpctl.http): the http parser on both directions and the
    # http-filter verdict on requests (a-to-b), with these rules (an
    # HttpRules; None: none, only malformed and smuggled requests refused).
    http: bool = False
    http_rules: Any = None

    @property
    def terminates_tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def originates_tls(self) -> bool:
        return self.target_tls

    @property
    def uses_tls(self) -> bool:
        return self.terminates_tls or self.originates_tls

    @staticmethod
    def stop_mode(drain: bool, kill: bool) -> str:
        """on_stop from the CLI's --drain/--kill (exclusive)."""
        if drain and kill:
            raise ServeError("--drain and --kill are exclusive (what happens to running "
                             "proxies on stop)")
        return "drain" if drain else "kill" if kill else "leave"

    def check(self) -> None:
        """The one check of serve's options: ServeError with the message the
        user sees (the CLI prefixes "serve: ")."""
        for kind in PROGRAM_KINDS:
            if getattr(self, kind) == "":
                raise ServeError(f"--{kind} must name a program")
        if self.http and (self.parser is not None or self.verdict is not None):
            raise ServeError("--http attaches the http parser and filter: no --parser or "
                             "--verdict with it")
        if self.http_rules is not None and not self.http:
            raise ServeError("HTTP rules (--rules, --deny-path ...) go with --http")
        if self.verdict is not None and self.parser is None:
            raise ServeError("--verdict: a verdict needs a parser (give --parser too)")
        if self.offset is not None and self.prefix is None:
            raise ServeError("--offset goes with --prefix")
        if self.prefix is not None:
            from .bpf import PREFIX_MAX
            if self.verdict is None:
                raise ServeError("--prefix configures a verdict (drop-prefix), give --verdict")
            if not self.prefix:
                raise ServeError("--prefix must not be empty")
            if len(self.prefix.encode()) > PREFIX_MAX:
                raise ServeError(f"--prefix is at most {PREFIX_MAX} bytes")
        if self.offset is not None and not 0 <= self.offset <= 1 << 20:
            raise ServeError("--offset must be a byte offset (0..1048576)")
        if self.max_conns is not None and self.max_conns < 1:
            raise ServeError("--max-conns must be 1 or more")
        if not (self.connect_timeout > 0 and self.connect_timeout < float("inf")):
            raise ServeError("--connect-timeout must be a positive number of seconds")
        if self.backlog < 1:
            raise ServeError("--backlog must be 1 or more")
        if self.workers < 1:
            raise ServeError("--workers must be 1 or more")
        if self.workers > 1 and not (self.userspace or self.uses_tls):
            raise ServeError("--workers: a kernel listener needs no workers (the kernel "
                             "accepts); give --userspace to serve from N processes")
        if self.on_stop not in STOP_MODES:
            raise ServeError(f"on_stop must be one of {', '.join(STOP_MODES)}")
        check_tls_options(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.http_rules is not None:
            from .http import to_dict as rules_dict
            d["http_rules"] = rules_dict(self.http_rules)
        return d

    @property
    def frames_messages(self) -> bool:
        """A parser cuts the stream into messages, each sent on its own:
        the sockets get TCP_NODELAY, or a response's body, framed apart
        from its header block, waits for the client's delayed ACK of the
        header (Nagle): 40 ms a request on a keep-alive connection."""
        return self.http or self.parser is not None

    def attach_plan(self, kind: str) -> tuple[str, list[bytes] | None]:
        """Where a program of `kind` goes on every proxy, and the replies a
        verdict answers with: the http-filter judges requests (a-to-b) and
        answers with kpctl.http's canned replies; other programs go on both
        directions."""
        if self.http and kind == "verdict":
            from .http import CANNED_REPLIES
            return "a-to-b", CANNED_REPLIES
        return "both", None


def _no_delay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (a test's socketpair): nothing to delay


@dataclass
class Counters:
    accepted: int = 0        # connections accept() returned
    created: int = 0         # proxies made
    active: int = 0          # our proxies alive in the kernel now
    pending: int = 0         # connects to the target in progress
    handshaking: int = 0     # TLS handshakes in progress (either side)
    handshakes: int = 0      # TLS handshakes done (a re-encrypting proxy: two)
    handshakes_failed: int = 0  # connections failed in a handshake (stage "tls")
    failed: int = 0          # target refused / timed out / kernel refused
    refused: int = 0         # over --max-conns
    accept_errors: int = 0   # accept() errors (EMFILE, ...)
    ended: int = 0           # our proxies that ended
    lost: int = 0            # of those, ended unreported (ENOBUFS): bytes not counted
    bytes_a_to_b: int = 0    # client -> target, final counters of ended proxies
    bytes_b_to_a: int = 0    # target -> client, likewise
    failures: dict[str, int] = field(default_factory=dict)  # by reason
    started: float = 0.0     # time.time() when the loop started
    elapsed: float = 0.0     # seconds it ran

    def to_dict(self) -> dict[str, Any]:
        # Every round of the loop publishes one: a flat copy, not asdict()'s
        # recursive one (its cost showed per connection).
        out = dict(self.__dict__)
        out["failures"] = dict(self.failures)
        return out


def emit_guarded(on_event: Callable[[str, dict], None], kind: str, data: dict) -> None:
    """on_event(kind, data), whose failure must not end the service (a
    drawing bug); a closed output (BrokenPipeError) still stops it."""
    try:
        on_event(kind, data)
    except BrokenPipeError:
        raise
    except Exception:  # noqa: BLE001 - a drawing bug must not kill the service
        pass


def load_programs(options: ServeOptions,
                  loader: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Load the programs `options` names, once: {"parser": Program, ...},
    each through kpctl.bpf.load_configured (`loader(spec)` defaults to
    kpctl.bpf.load; a drop-prefix verdict gets options.prefix at
    options.offset). Raises what loading raises (a BpfError: a KproxyError)
    after closing the programs already loaded. The caller closes them
    (close_programs) once the service has stopped: the kernel keeps its own
    reference on every proxy they are attached to.
    """
    from .bpf import load_configured
    if options.http:
        from .http import HttpRules, load_http
        loaded = load_http(rules=options.http_rules or HttpRules(), loader=loader)
        return {"parser": loaded.parser, "verdict": loaded.filter}
    progs: dict[str, Any] = {}
    try:
        for kind in PROGRAM_KINDS:
            spec = getattr(options, kind)
            if spec is None:
                continue
            prefix = options.prefix.encode() if kind == "verdict" and options.prefix is not None \
                else None
            progs[kind] = load_configured(spec, prefix=prefix, offset=options.offset,
                                          loader=loader)
    except BaseException:
        close_programs(progs)
        raise
    return progs


def close_programs(progs: dict[str, Any] | None) -> None:
    for prog in (progs or {}).values():
        try:
            prog.close()
        except Exception:  # noqa: BLE001
            pass


def describe_programs(progs: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """kind -> {id, name, source} (the "listening" event)."""
    out = {}
    for kind, prog in (progs or {}).items():
        out[kind] = {"id": getattr(prog, "id", None), "name": getattr(prog, "name", None),
                     "source": str(getattr(prog, "source", ""))}
    return out


class _Pending:
    __slots__ = ("client", "peer", "up", "deadline", "client_tls", "waiting")

    def __init__(self, client: socket.socket, peer: str, up: socket.socket,
                 deadline: float, client_tls: dict[str, str] | None) -> None:
        self.client, self.peer, self.up, self.deadline = client, peer, up, deadline
        self.client_tls = client_tls  # the client side's TLS, when serve terminates it
        self.waiting = False  # in the selector (a connect not done when first polled)


def _fmt_peer(addr: Any) -> str:
    try:
        host, port = addr[0], addr[1]
    except (TypeError, IndexError):
        return str(addr)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _errname(num: int | None) -> str | None:
    if not num:
        return None
    return errno.errorcode.get(num, f"E{num}")


def _error(num: int | None, message: str) -> dict[str, Any] | None:
    """An event's error in kpctl's one JSON shape of an error (as `kpctl -j`
    prints a refused command); None when no system call failed."""
    return KproxyError(num, message).to_dict() if num else None


def _reset_close(s: socket.socket) -> None:
    """Close with a RST: the client learns at once that it was not served."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def _close(s: socket.socket | None) -> None:
    if s is not None:
        try:
            s.close()
        except OSError:
            pass


def _lost_ends(e: BaseException) -> bool:
    """The kernel dropped notifications for our socket (its buffer was full)."""
    return getattr(e, "errno", None) == errno.ENOBUFS


# --------------------------------------------------------------------------
# The service


class Server:
    """One listening socket, one target, one kproxy client.

    `client`: a kpctl.Kproxy (create(a, b, notify_end=True), fileno(),
    ended(0), destroy(), list(), attach()), or None: run() opens one in the
    loop's thread (in `netns`) and closes it when it returns.
    `programs`: {"parser": prog, "verdict": prog}, loaded programs (or fds)
    attached to every proxy; the caller keeps them open while the service
    runs and closes them.  None: the programs `options` names are loaded
    by open() (`loader`, default kpctl.bpf.load) and closed when run() ends.
    `create` and `attach`: override client.create and client.attach (tests);
    `accept`: overrides listener.accept (tests inject EMFILE);
    `socket_factory(family)` makes the upstream sockets.
    TLS (tests): `tls_configs(options, target)` builds the configs
    (default TlsConfigs.build), `tls_accept(sock, config, timeout)` and
    `tls_connect(...)` replace kpctl.tls's accept_tls and connect_tls.

    Threads: run() in one thread; stop(), snapshot() and address from any.
    """

    def __init__(self, client: Any, listen: Address, target: Address,
                 options: ServeOptions | None = None, *,
                 on_event: Callable[[str, dict], None] | None = None,
                 programs: dict[str, Any] | None = None,
                 loader: Callable[[str], Any] | None = None,
                 create: Callable[[Any, Any], Any] | None = None,
                 attach: Callable[..., Any] | None = None,
                 accept: Callable[[socket.socket], tuple] | None = None,
                 socket_factory: Callable[[int], socket.socket] | None = None,
                 netns: str | None = None,
                 tls_configs: Callable[[ServeOptions, Address], TlsConfigs] | None = None,
                 tls_accept: Callable[[socket.socket, Any, float], Any] | None = None,
                 tls_connect: Callable[[socket.socket, Any, float], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options or ServeOptions()
        self.options.check()
        self.client = client
        self.listen_addr = listen
        self.target = target
        self.on_event = on_event or (lambda kind, data: None)
        self._create_override = create
        if programs is not None:
            unknown = set(programs) - set(PROGRAM_KINDS)
            if unknown:
                raise ServeError(f"programs: unknown kind {', '.join(sorted(unknown))} "
                                 f"(parser, verdict)")
            programs = {k: v for k, v in programs.items() if v is not None}
            if "verdict" in programs and "parser" not in programs:
                raise ServeError("a verdict needs a parser")
        self._programs = programs
        self._own_programs = False
        self._loader = loader
        self._attach_override = attach
        self._accept = accept or (lambda ls: ls.accept())
        self._netns = netns
        self._in_netns = False  # the loop's thread has entered netns
        self._socket_factory = socket_factory or self._upstream_socket
        self._clock = clock
        self._tls_build = tls_configs or TlsConfigs.build
        self._tls_accept, self._tls_connect = tls_accept, tls_connect
        self._tls: TlsConfigs | None = None        # built by open(), closed when run() ends
        self._handshakes: HandshakePool | None = None
        self.counters = Counters()
        self._listener: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._pending: dict[int, _Pending] = {}
        self._fresh: list[_Pending] = []      # connects started this round (_settle_connects)
        self._joins: list[tuple[Any, ...]] = []  # connected pairs to join this round
        self._live: set[int] = set()          # our proxies alive in the kernel
        self._own_client = False
        self._kill_deadline: float | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # ("stop", mode or None) from stop(), ("signal", name) from handlers
        self._requests: list[tuple[str, str | None]] = []
        self._req_lock = threading.Lock()
        self._stopping = False
        self._backoff = BACKOFF_MIN
        self._backoff_until: float | None = None
        self._listening = False
        # What snapshot() returns: replaced (never changed) by the loop's
        # thread after each round, so that another thread reads a whole one.
        self._published: dict[str, Any] = self.counters.to_dict()

    # -- setup ---------------------------------------------------------------

    def _new_socket(self, family: int) -> socket.socket:
        if self._netns and not self._in_netns:
            # open() before run(), from a thread outside the namespace: once.
            from .netns import socket_in_netns
            return socket_in_netns(self._netns, family, socket.SOCK_STREAM)
        return socket.socket(family, socket.SOCK_STREAM)

    @staticmethod
    def _upstream_socket(family: int) -> socket.socket:
        # Made in the loop's thread, in its netns: non-blocking from the
        # start (a syscall less per connection than setblocking()).
        return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)

    def open(self) -> Address:
        """Bind and listen; returns the bound address (port 0 -> the real one).

        Raises OSError (EADDRINUSE, EACCES, ...) for the caller to report,
        and, when the programs are ours to load, what loading raises
        (a BpfError: no such file, the verifier's refusal...), and a
        TlsError when a certificate, key or CA cannot be loaded.
        """
        self.load_programs()
        try:
            self._open_tls()
            ls = self._new_socket(self.listen_addr.family)
        except BaseException:
            self._close_tls()
            self._close_own_programs()
            raise
        try:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.options.reuseport:
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.listen_addr.family == socket.AF_INET6 and self.listen_addr.host == "::":
                ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if self.options.frames_messages:
                _no_delay(ls)  # accepted sockets inherit it (Linux)
            ls.bind(self.listen_addr.sockaddr())
            ls.listen(self.options.backlog)
            ls.setblocking(False)
        except BaseException:
            ls.close()
            self._close_tls()
            self._close_own_programs()
            raise
        self._listener = ls
        host, port = ls.getsockname()[:2]
        self.listen_addr = Address(host, port, self.listen_addr.family, self.listen_addr.name)
        return self.listen_addr

    @property
    def address(self) -> Address:
        return self.listen_addr

    def load_programs(self) -> dict[str, Any]:
        """The programs attached to every proxy; loaded here, once, when the
        caller gave none and the options name some."""
        if self._programs is None:
            if self.options.parser is None and self.options.verdict is None \
                    and not self.options.http:
                self._programs = {}
            else:
                self._programs = load_programs(self.options, self._loader)
                self._own_programs = True
        return self._programs

    def _open_tls(self) -> None:
        """The TLS configs, built once for every handshake, and the pool
        that runs the handshakes (its threads start with the first one)."""
        if not self.options.uses_tls or self._tls is not None:
            return
        self._tls = self._tls_build(self.options, self.target)
        o = self.options
        if (o.terminates_tls and self._tls_accept is None) or \
                (o.originates_tls and self._tls_connect is None):
            from .tls import TlsError, kernel_has_ktls
            if not kernel_has_ktls():  # else every connection would fail, one by one
                raise TlsError(errno.ENOENT, "this kernel has no kTLS (CONFIG_TLS, module "
                                             "tls): serve cannot terminate or originate TLS")
        self._handshakes = HandshakePool(self._tls, self.options.handshake_workers,
                                         self.options.handshake_timeout, self._wake,
                                         accept=self._tls_accept, connect=self._tls_connect,
                                         clock=self._clock)

    def _close_tls(self) -> None:
        """After the pool is closed (no handshake uses the configs)."""
        if self._handshakes is not None:
            self._fail_handshakes(self._handshakes.close())
            self._handshakes = None
        if self._tls is not None:
            self._tls.close()
            self._tls = None

    def _close_own_programs(self) -> None:
        if self._own_programs:
            close_programs(self._programs)
            self._programs = None
            self._own_programs = False

    def _create(self, conn: socket.socket, up: socket.socket) -> Any:
        progs = self._programs_at_create()
        if self._create_override is not None:
            return self._create_override(conn, up, **progs)
        return self.client.create(conn, up, notify_end=True, **progs)

    def _programs_at_create(self) -> dict[str, Any]:
        """--http's programs go with proxy-new, in place before the first
        byte: a filter attached after it could let a client's first request
        (sent at once, or right after a TLS handshake) pass unjudged.
        Other programs are attached after (_attach_programs)."""
        if not self.options.http or not self._programs:
            return {}
        direction, replies = self.options.attach_plan("verdict")
        return {"parser": self._programs["parser"], "verdict": self._programs["verdict"],
                "replies": replies, "verdict_direction": direction}

    def _attach(self, pid: int, kind: str, prog: Any) -> None:
        direction, replies = self.options.attach_plan(kind)
        extra = {"replies": replies} if replies else {}
        if self._attach_override is not None:
            self._attach_override(pid, kind, prog, direction, **extra)
        else:
            self.client.attach(pid, kind, prog, direction, **extra)

    # -- control from other threads ------------------------------------------

    def stop(self, mode: str | None = None) -> None:
        """Stop accepting, then leave, drain or kill the live proxies
        (None: options.on_stop). Thread-safe; returns at once, run()
        returns when the mode is done. While draining, "kill" ends the
        proxies and "leave" stops waiting; a second stop(None), like a
        second signal, stops waiting."""
        if mode is not None and mode not in STOP_MODES:
            raise ValueError(f"stop mode must be one of {', '.join(STOP_MODES)}")
        self._request(("stop", mode))

    def signal(self, name: str) -> None:
        """Act as on receiving the signal `name` ("SIGINT", "SIGTERM",
        "SIGHUP"): the worker pool passes its own signals on. Thread-safe."""
        self._request(("signal", name))

    def snapshot(self) -> dict[str, Any]:
        """The counters as of the loop's last round (thread-safe)."""
        return dict(self._published)

    def _request(self, req: tuple[str, str | None]) -> None:
        with self._req_lock:
            self._requests.append(req)
            self._wake_locked()

    def _wake(self) -> None:
        """Wake the loop (a handshake finished): from any thread."""
        with self._req_lock:
            self._wake_locked()

    def _wake_locked(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (a wakeup is pending anyway) or closed (stopped)
            pass

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Runs between bytecodes of the main thread: only record it; the
        # wakeup fd (set_wakeup_fd) interrupts select().
        with self._req_lock:
            self._requests.append(("signal", signal.Signals(signum).name))

    # -- the loop ------------------------------------------------------------

    def run(self, *, install_signals: bool = True) -> Counters:
        """Serve until stopped (stop() or a signal); returns the counters.

        Signals are taken only when install_signals and this is the main
        thread. With a netns, this thread enters it for the loop and
        returns to its own namespace afterwards."""
        home = self._enter_netns()
        try:
            return self._run(install_signals)
        finally:
            self._leave_netns(home)

    def _enter_netns(self) -> int | None:
        if not self._netns:
            return None
        from .netns import enter
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            enter(self._netns)
        except BaseException:
            os.close(home)
            raise
        self._in_netns = True
        return home

    def _leave_netns(self, home: int | None) -> None:
        if home is None:
            return
        from .netns import enter
        try:
            enter(f"/proc/self/fd/{home}")
        except KproxyError as e:
            self._emit("warning", {"message": f"cannot return to this thread's own network "
                                              f"namespace: {e.message}"})
        finally:
            os.close(home)
            self._in_netns = False

    def _run(self, install_signals: bool) -> Counters:
        if self.client is None:
            from .client import Kproxy
            self.client = Kproxy()  # in netns: this thread is there now
            self._own_client = True
        try:
            if self._listener is None:
                self.open()
            if self._programs and self._attach_override is None \
                    and not hasattr(self.client, "attach"):
                raise ServeError("BPF programs need a client with attach()")
        except BaseException:
            self._close_own_client()
            raise
        c = self.counters
        c.started = time.time()
        t0 = self._clock()
        self._sel = sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        sel.register(self.client.fileno(), selectors.EVENT_READ, "ends")
        self._listen_on()
        saved: dict[int, Any] = {}
        old_wakeup = None
        if install_signals and threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                saved[s] = signal.signal(s, self._on_signal)
            old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        listening = {"listen": str(self.listen_addr), "target": self.target.describe(),
                     "options": self.options.to_dict(), "pid": os.getpid()}
        if self._programs:
            listening["programs"] = describe_programs(self._programs)
        self._emit("listening", listening)
        next_tick = self._clock() + TICK
        try:
            while True:
                now = self._clock()
                wait = next_tick - now
                if self._pending:
                    wait = min(wait, min(p.deadline for p in self._pending.values()) - now)
                for deadline in (self._backoff_until, self._kill_deadline):
                    if deadline is not None:
                        wait = min(wait, deadline - now)
                for key, _mask in sel.select(max(0.0, wait)):
                    if key.data == "listen":
                        self._on_accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    elif key.data != "ends":
                        self._on_connected(key.data)
                self._take_handshakes()
                self._settle_connects()
                self._flush_joins()
                # Every round, not only when the socket is readable: the
                # client keeps the ends that arrive while it waits for an
                # answer (a proxy may end before its create is answered).
                self._on_ends()
                if self._handle_requests():
                    break
                now = self._clock()
                self._expire(now)
                if self._backoff_until is not None and now >= self._backoff_until:
                    self._backoff_until = None
                    if not self._stopping:
                        self._listen_on()
                if self._kill_deadline is not None and now >= self._kill_deadline:
                    self._give_up_waiting("killed proxies did not report their end")
                snap = self._publish()
                if now >= next_tick:
                    next_tick = now + TICK
                    self._emit("tick", snap)
                if self._stopping and not self._live and not self._pending \
                        and not self._handshaking():
                    break  # drained, killed (or nothing was left)
        finally:
            if saved:
                signal.set_wakeup_fd(old_wakeup if old_wakeup is not None else -1)
                for s, h in saved.items():
                    signal.signal(s, h)
            self._finish()
            self._close_own_programs()
            c.elapsed = self._clock() - t0
        self._emit("stopped", self._publish())
        return c

    def _finish(self) -> None:
        for p in list(self._pending.values()):
            self._fail(p, "shutting down", None, "shutdown")
        self._close_tls()  # waits for the handshakes' threads
        if self._listener is not None:
            self._listen_off()
            _close(self._listener)
            self._listener = None
        if self._live:
            self._on_ends()
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        self._close_own_client()
        with self._req_lock:  # a stop() from now on finds the wakeup closed
            _close(self._wake_r)
            _close(self._wake_w)

    def _close_own_client(self) -> None:
        if self._own_client:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001
                pass
            self.client = None
            self._own_client = False

    def _emit(self, kind: str, data: dict) -> None:
        emit_guarded(self.on_event, kind, data)

    def _publish(self) -> dict[str, Any]:
        c = self.counters
        c.active = len(self._live)
        c.pending = len(self._pending)
        c.handshaking = self._handshaking()
        self._published = snap = c.to_dict()
        return snap

    # -- listener --------------------------------------------------------------

    def _listen_on(self) -> None:
        if self._listener is not None and not self._listening and self._sel is not None:
            self._sel.register(self._listener, selectors.EVENT_READ, "listen")
            self._listening = True

    def _listen_off(self) -> None:
        if self._listening and self._sel is not None and self._listener is not None:
            self._sel.unregister(self._listener)
            self._listening = False

    def _on_accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if self._listener is None or self._stopping:
                return
            try:
                conn, addr = self._accept(self._listener)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.counters.accept_errors += 1
                num = e.errno or errno.EIO
                if num in TRANSIENT_ERRNOS:
                    continue
                # Out of fds (or memory) or something unknown: stop accepting
                # for a while; the connections wait in the backlog.
                delay = self._backoff
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                self._backoff_until = self._clock() + delay
                self._listen_off()
                self._emit("accept-error", {"error": _error(num, e.strerror or os.strerror(num)),
                                            "backoff": delay})
                return
            self._backoff = BACKOFF_MIN
            self.counters.accepted += 1
            self._start(conn, _fmt_peer(addr))

    # -- one connection --------------------------------------------------------

    def _start(self, conn: socket.socket, peer: str) -> None:
        limit = self.options.max_conns
        if limit is not None and \
                len(self._live) + len(self._pending) + self._handshaking() >= limit:
            self.counters.refused += 1
            _reset_close(conn)
            self._emit("refused", {"client": peer, "reason": "max-conns", "limit": limit})
            return
        if self.options.terminates_tls:
            self._handshake(Handshake("client", conn, peer, None, self._hs_deadline()))
            return
        self._connect(conn, peer, None)

    def _connect(self, conn: socket.socket, peer: str, client_tls: dict[str, str] | None) -> None:
        """Start the connect to the target (the client's TLS, if any, done)."""
        try:
            up = self._socket_factory(self.target.family)
        except (OSError, KproxyError) as e:
            self._fail_sockets(conn, None, peer, f"cannot open a socket to the target: "
                               f"{getattr(e, 'strerror', None) or e}", getattr(e, "errno", None),
                               "socket")
            return
        if up.gettimeout() != 0.0:
            up.setblocking(False)
        if self.options.frames_messages:
            _no_delay(up)
        rc = up.connect_ex(self.target.sockaddr())
        if rc == 0:
            self._connected(conn, peer, up, client_tls)
            return
        if rc not in (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN):
            self._fail_sockets(conn, up, peer, f"connect to {self.target}: {os.strerror(rc)}",
                               rc, "connect")
            return
        p = _Pending(conn, peer, up, self._clock() + self.options.connect_timeout, client_tls)
        self._pending[up.fileno()] = p
        self._fresh.append(p)

    def _settle_connects(self) -> None:
        """The connects started this round: those done already (on
        loopback, nearly all: the handshake ran in connect()) go on at
        once, told by the socket's TCP state (one getsockopt); only those
        still in SYN-SENT wait in the selector."""
        fresh, self._fresh = self._fresh, []
        for p in fresh:
            if self._pending.get(p.up.fileno()) is not p:
                continue  # failed or expired meanwhile
            try:
                state = p.up.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
            except OSError:
                state = None
            if state == TCP_ESTABLISHED:
                self._unpend(p)
                self._connected(p.client, p.peer, p.up, p.client_tls)
            elif state == TCP_SYN_SENT:
                assert self._sel is not None
                self._sel.register(p.up, selectors.EVENT_WRITE, p)
                p.waiting = True
            else:
                self._on_connected(p)  # refused, reset...: SO_ERROR says which

    def _unpend(self, p: _Pending) -> None:
        self._pending.pop(p.up.fileno(), None)
        if p.waiting and self._sel is not None:
            p.waiting = False
            try:
                self._sel.unregister(p.up)
            except (KeyError, ValueError):
                pass

    def _on_connected(self, p: _Pending) -> None:
        self._unpend(p)
        err = p.up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail_sockets(p.client, p.up, p.peer,
                               f"connect to {self.target}: {os.strerror(err)}", err, "connect")
            return
        self._connected(p.client, p.peer, p.up, p.client_tls)

    def _connected(self, conn: socket.socket, peer: str, up: socket.socket,
                   client_tls: dict[str, str] | None) -> None:
        """The target accepted: join now, or after our TLS handshake with it."""
        if self.options.originates_tls:
            self._handshake(Handshake("target", conn, peer, up, self._hs_deadline(), client_tls))
            return
        self._join(conn, peer, up, client_tls, None)

    # -- TLS handshakes (kpctl.serve_tls: run in its pool, finished ones here) --

    def _handshaking(self) -> int:
        return len(self._handshakes) if self._handshakes is not None else 0

    def _hs_deadline(self) -> float:
        return self._clock() + self.options.handshake_timeout

    def _handshake(self, hs: Handshake) -> None:
        assert self._handshakes is not None
        self._handshakes.submit(hs)

    def _take_handshakes(self) -> None:
        if self._handshakes is None:
            return
        for hs in self._handshakes.take_done():
            if self._stopping or hs.cancelled:
                self._fail_handshakes([hs])
            elif hs.error is not None:
                num, message = handshake_error(hs.error)
                self.counters.handshakes_failed += 1
                who = "the client" if hs.side == "client" else f"the target {self.target}"
                self._fail_sockets(hs.conn, hs.up, hs.peer, f"TLS with {who}: {message}", num,
                                   "tls", side=hs.side)
            else:
                self.counters.handshakes += 1
                info = session_info(hs.session)
                if hs.side == "client":
                    self._connect(hs.conn, hs.peer, info)
                else:
                    assert hs.up is not None
                    self._join(hs.conn, hs.peer, hs.up, hs.client_tls, info)

    def _fail_handshakes(self, done: list[Handshake]) -> None:
        """Handshakes the service's stop cut short (or that finished as it
        stopped): failed at stage "shutdown", like pending connects."""
        for hs in done:
            self._fail_sockets(hs.conn, hs.up, hs.peer, "shutting down", None, "shutdown")

    def _expire(self, now: float) -> None:
        for p in [p for p in self._pending.values() if now >= p.deadline]:
            self._unpend(p)
            self._fail_sockets(p.client, p.up, p.peer,
                               f"connect to {self.target}: timed out after "
                               f"{self.options.connect_timeout:g}s", errno.ETIMEDOUT, "timeout")

    def _fail(self, p: _Pending, reason: str, num: int | None, stage: str) -> None:
        self._unpend(p)
        self._fail_sockets(p.client, p.up, p.peer, reason, num, stage)

    def _fail_sockets(self, conn: socket.socket, up: socket.socket | None, peer: str,
                      reason: str, num: int | None, stage: str, *,
                      side: str | None = None) -> None:
        _reset_close(conn)
        _close(up)
        c = self.counters
        c.failed += 1
        key = _errname(num) or stage
        c.failures[key] = c.failures.get(key, 0) + 1
        event = {"client": peer, "reason": reason, "stage": stage, "error": _error(num, reason)}
        if side is not None:
            event["side"] = side  # stage "tls": whose handshake failed (client, target)
        self._emit("failed", event)

    def _join(self, conn: socket.socket, peer: str, up: socket.socket,
              client_tls: dict[str, str] | None, target_tls: dict[str, str] | None) -> None:
        """Both sides ready: the proxy is made with the round's others
        (_flush_joins), in one request to the kernel."""
        self._joins.append((conn, peer, up, client_tls, target_tls))

    def _flush_joins(self) -> None:
        joins, self._joins = self._joins, []
        if not joins:
            return
        if self._programs:
            # Each proxy's programs right after its create: the bytes the
            # kernel reads before the attach pass unparsed.
            for j in joins:
                self._finish_joins([j], self._create_all([(j[0], j[2])]))
        else:
            self._finish_joins(joins, self._create_all([(j[0], j[2]) for j in joins]))

    def _finish_joins(self, joins: list[tuple[Any, ...]],
                      results: list[int | OSError | KproxyError]) -> None:
        for (conn, peer, up, client_tls, target_tls), res in zip(joins, results):
            if isinstance(res, KproxyError):
                self._fail_sockets(conn, up, peer, f"kernel refused the proxy: {res}", res.errno,
                                   "create")
            elif isinstance(res, OSError):
                self._fail_sockets(conn, up, peer, f"kernel refused the proxy: "
                                   f"{res.strerror or res}", res.errno, "create")
            else:
                self._joined(conn, peer, up, client_tls, target_tls, res)

    def _create_all(self, pairs: list[tuple[socket.socket, socket.socket]]
                    ) -> list[int | OSError | KproxyError]:
        """A proxy id, or the refusal, for each pair.  A client with
        send_creates() (kpctl.Kproxy) gets them all in one send, without
        ack round trips; any other client (a test's, an override) one
        create() each."""
        # --http's programs go with each proxy-new (_create): not batched.
        fast = (self._create_override is None and hasattr(self.client, "send_creates")
                and not self._programs_at_create())
        if not fast:
            out: list[int | OSError | KproxyError] = []
            for conn, up in pairs:
                try:
                    out.append(int(getattr(self._create(conn, up), "id", 0)))
                except (KproxyError, OSError) as e:
                    out.append(e)
            return out
        try:
            seqs = self.client.send_creates(pairs)
            got = self.client.read_created(seqs)
        except KproxyError as e:
            return [e] * len(pairs)
        return [got[seq] for seq in seqs]

    def _joined(self, conn: socket.socket, peer: str, up: socket.socket,
                client_tls: dict[str, str] | None, target_tls: dict[str, str] | None,
                pid: int) -> None:
        events = self.options.connection_events
        local = "?"
        if events:
            try:
                local = _fmt_peer(up.getsockname())
            except OSError:
                pass
        if self._programs and not self.options.http \
                and not self._attach_programs(pid, conn, up, peer):
            return
        # The proxy holds its own references: our fds go now.
        _close(conn)
        _close(up)
        self.counters.created += 1
        self._live.add(pid)
        if events:
            self._emit("proxy", {"id": pid, "client": peer, "upstream": local,
                                 "tls": {"client": client_tls, "target": target_tls}})

    def _attach_programs(self, pid: int, conn: socket.socket, up: socket.socket,
                         peer: str) -> bool:
        """The parser on both directions, then the verdict.  On a refusal the
        proxy goes (its sockets come back to us), the client is reset and
        the connection counted as failed (stage "attach"): False."""
        assert self._programs is not None
        for kind in PROGRAM_KINDS:
            prog = self._programs.get(kind)
            if prog is None:
                continue
            try:
                self._attach(pid, kind, prog)
            except (KproxyError, OSError) as e:
                if isinstance(e, KproxyError):
                    text, num = str(e), e.errno
                else:
                    text, num = e.strerror or str(e), e.errno
                self._destroy_failed(pid)
                self._fail_sockets(conn, up, peer, f"kernel refused the {kind}: {text}",
                                   num, "attach")
                return False
        return True

    def _destroy_failed(self, pid: int) -> None:
        try:
            self.client.destroy(pid)
        except KproxyError as e:
            if e.errno != errno.ENOENT:  # ENOENT: it ended by itself already
                self._emit("warning", {"message": f"proxy {pid}: cannot destroy it after a "
                                                  f"failed attach: {e}"})
        except Exception as e:  # noqa: BLE001
            self._emit("warning", {"message": f"proxy {pid}: cannot destroy it after a "
                                              f"failed attach: {e}"})

    # -- ends of our proxies -----------------------------------------------------

    def _on_ends(self) -> None:
        """Take the ends the kernel sent us (notify_end); an id we do not
        hold (a proxy whose attach failed) is not ours to count.  A client
        with ended_brief() (kpctl.Kproxy) parses each end for what is
        counted here alone."""
        brief = getattr(self.client, "ended_brief", None)
        try:
            if brief is not None:
                ends = brief()
            else:
                ends = [(ev.proxy.id, ev.reason or "?", ev.proxy.a_to_b.bytes,
                         ev.proxy.b_to_a.bytes, getattr(ev, "tls_alert", None))
                        for ev in self.client.ended(0) if ev.kind == "del"]
        except (KproxyError, OSError) as e:
            if _lost_ends(e):
                self._reconcile()
            else:
                self._emit("warning", {"message": f"cannot read the ends of proxies: "
                                                  f"{getattr(e, 'message', None) or e}"})
            return
        for pid, reason, ab, ba, alert in ends:
            if pid in self._live:
                self._ended(pid, reason, ab, ba, tls_alert=alert)

    def _reconcile(self) -> None:
        """The kernel dropped some of our ends (our socket's buffer was
        full): first the ends still queued, then one dump says which of our
        proxies are gone. Their bytes are lost (counted in `lost`)."""
        self._on_ends()
        try:
            alive = {p.id for p in self.client.list()}
        except Exception as e:  # noqa: BLE001 - the loop goes on
            msg = getattr(e, "message", None) or str(e)
            self._emit("warning", {"message": f"ends of proxies were lost and the kernel's "
                                              f"list cannot be read: {msg}"})
            return
        gone = sorted(self._live - alive)
        if gone:
            self._emit("warning", {"message": f"the kernel dropped the ends of {len(gone)} "
                                              f"proxies (ENOBUFS): their bytes are not counted"})
        for pid in gone:
            self._ended(pid, "gone", 0, 0, lost=True)

    def _ended(self, pid: int, reason: str, ab: int, ba: int, *, lost: bool = False,
               tls_alert: int | None = None) -> None:
        if pid not in self._live:
            return
        self._live.discard(pid)
        c = self.counters
        c.ended += 1
        c.lost += int(lost)
        c.bytes_a_to_b += ab
        c.bytes_b_to_a += ba
        if not self.options.connection_events:
            return
        event: dict[str, Any] = {"id": pid, "reason": reason, "a_to_b": ab, "b_to_a": ba}
        if tls_alert is not None:
            event["tls_alert"] = tls_alert  # reason tls-alert: the alert's description
        self._emit("ended", event)

    # -- stopping --------------------------------------------------------------

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass

    def _handle_requests(self) -> bool:
        """stop() and signals: True when the loop must end now."""
        with self._req_lock:
            reqs, self._requests = self._requests, []
        for what, arg in reqs:
            if what == "signal" and arg == "SIGHUP":
                self._emit("signal", {"signal": arg, "action":
                                      "ignored: reloading is not supported; restart the "
                                      "service to change its configuration"})
                continue
            if not self._stopping:
                if what == "signal":
                    self._emit("signal", {"signal": arg, "action": "stop accepting"})
                if self._begin_stop(arg if what == "stop" and arg else self.options.on_stop):
                    return True
            elif what == "stop" and arg == "kill":
                self._emit("stopping", {"mode": "kill", "active": len(self._live)})
                self._kill_all()
            elif what == "stop" and arg == "drain":
                continue  # waiting already
            elif what == "stop" and arg == "leave":
                self._emit("stopping", {"mode": "leave", "active": len(self._live)})
                return True
            else:
                # A second signal or stop(): stop waiting.
                self._emit("signal", {"signal": arg if what == "signal" else "stop",
                                      "action": f"stop waiting; {len(self._live)} proxies "
                                                f"go on in the kernel"})
                return True
        return False

    def _begin_stop(self, mode: str) -> bool:
        """Stop accepting; True when nothing remains to wait for."""
        self._stopping = True
        self._listen_off()
        _close(self._listener)
        self._listener = None
        self._backoff_until = None
        for p in list(self._pending.values()):
            self._fail(p, "shutting down", None, "shutdown")
        if self._handshakes is not None:
            self._handshakes.cancel_all()  # they come back failed, at once
        self._emit("stopping", {"mode": mode, "active": len(self._live)})
        if mode == "kill":
            self._kill_all()
        elif mode == "leave":
            return True
        return not self._live  # drain and kill wait for the ends

    def _kill_all(self) -> None:
        """proxy-del every live proxy; their ends (final counters) come on
        our socket, read by the loop, which waits for them KILL_WAIT."""
        for pid in sorted(self._live):
            try:
                self.client.destroy(pid)
            except KproxyError as e:
                if e.errno != errno.ENOENT:  # ENOENT: ending by itself
                    self._emit("warning", {"message": f"proxy {pid}: {e}"})
            except Exception as e:  # noqa: BLE001
                self._emit("warning", {"message": f"proxy {pid}: {e}"})
        self._kill_deadline = self._clock() + KILL_WAIT
        self._on_ends()

    def _give_up_waiting(self, why: str) -> None:
        """After KILL_WAIT: a proxy whose end never came is counted as lost."""
        self._kill_deadline = None
        if not self._live:
            return
        self._emit("warning", {"message": f"{why}: {len(self._live)} counted as gone"})
        for pid in sorted(self._live):
            self._ended(pid, "gone", 0, 0, lost=True)


def serve(listen: str, target: str, options: ServeOptions | None = None, *,
          client: Any = None, on_event: Callable[[str, dict], None] | None = None,
          resolver: Resolver | None = None, netns: str | None = None,
          install_signals: bool = True,
          loader: Callable[[str], Any] | None = None) -> Counters:
    """The library call behind `kpctl serve LISTEN TARGET`: resolve both
    addresses once, load the BPF programs the options name (once), serve
    until a signal; returns the counters. Without a client, the loop opens
    its own kproxy client, in netns."""
    from .address import check_distinct, resolve
    options = options or ServeOptions()
    options.check()
    laddr = resolve(listen, listen=True, resolver=resolver)
    taddr = resolve(target, resolver=resolver)
    check_distinct(laddr, taddr)
    if options.workers > 1:
        from .serve_workers import WorkerPool
        pool = WorkerPool(laddr, taddr, options, options.workers, on_event=on_event,
                          netns=netns, loader=loader)
        pool.open()
        return pool.run(install_signals=install_signals)
    from .serve_listener import make_server
    server = make_server(client, laddr, taddr, options, on_event=on_event, netns=netns,
                         loader=loader)
    return server.run(install_signals=install_signals)
