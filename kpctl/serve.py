"""`kpctl serve`: an L4 proxy service whose data path is the kernel.

The process listens, accepts, connects to the target without blocking,
hands both connected sockets to kproxy (`create`) and closes its own fds at
once: from then on the kernel carries every byte and the process only
counts.  One thread, one `selectors` loop:

    listener readable  -> accept (a batch), refuse beyond --max-conns,
                          start a non-blocking connect to the target
    upstream writable  -> SO_ERROR: failed -> reset the client, count it;
                          connected -> create the proxy, attach the BPF
                          parser and verdict (when given), close both fds
    monitor readable   -> proxy-del notifications: final counters, slot freed
    every second       -> kernel counters of our live proxies (one dump)
    signals            -> through set_wakeup_fd, handled in the loop

Failures never stop the loop: a refused or timed-out target resets that one
client; accept errors such as EMFILE pause accepting with a growing back-off
(the pending connections stay in the kernel's backlog).

BPF programs (--parser, --verdict) are loaded once, before listening, and
stay open for the service's lifetime: every proxy gets the same programs
(the parser on both directions, then the verdict on both).  A program the
kernel refuses on one proxy fails that connection (stage "attach"; the
proxy is destroyed and the client reset); the service goes on.

This module is library code: it reports through an `on_event(kind, data)`
callback and never imports the shell (kpctl/shell/serve_view.py draws).

Events (kind, data):
    listening    listen, target, options, pid, programs (kind -> id, name, source;
                 only with BPF programs)
    proxy        id, client, upstream (the local address towards the target)
    failed       client, reason, errno (name or None),
                 stage (socket|connect|timeout|create|attach|shutdown)
    refused      client, reason ("max-conns"), limit
    ended        id, reason, a_to_b, b_to_a (bytes; client->target, target->client)
    accept-error errno, message, backoff (seconds)
    signal       signal, action
    warning      message
    tick         the counters (every second)
    stopping     mode (leave|drain|kill), active
    stopped      the counters
"""

from __future__ import annotations

import errno
import ipaddress
import os
import selectors
import signal
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .errors import KproxyError

STOP_MODES = ("leave", "drain", "kill")
PROGRAM_KINDS = ("parser", "verdict")  # attached in this order, each on both directions
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_BACKLOG = 1024
TICK = 1.0
ACCEPT_BATCH = 64
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
# accept(2) errors that mean "out of a resource": stop accepting for a while
# (the connections wait in the listen backlog) instead of spinning on them.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept(2) errors that concern one connection only: skip it and go on.
TRANSIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM,
                              errno.EINTR, errno.ENETDOWN, errno.ENOPROTOOPT,
                              errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
                              errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ETIMEDOUT})


class ServeError(Exception):
    """A bad LISTEN/TARGET or option (the CLI turns it into a usage error)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------
# Addresses


@dataclass(frozen=True)
class Address:
    """A resolved, numeric address: what the service binds or connects to."""

    host: str
    port: int
    family: int
    name: str = ""  # what the user wrote, when it was resolved from a name

    def sockaddr(self) -> tuple:
        if self.family == socket.AF_INET6:
            return (self.host, self.port, 0, 0)
        return (self.host, self.port)

    def __str__(self) -> str:
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        """`name -> address` when a name was resolved, else the address."""
        return f"{self.name} ({self})" if self.name and self.name != str(self) else str(self)


def split_hostport(text: str, *, listen: bool = False) -> tuple[str, str]:
    """'host:port', '1.2.3.4:80', '[::1]:80' -> (host, port) as text.

    For LISTEN also ':80', '*:80' and '80' (every IPv4 address).
    Raises ServeError with a message naming what is wrong.
    """
    t = text.strip()
    what = "LISTEN" if listen else "TARGET"
    form = "HOST:PORT, IPV4:PORT or [IPV6]:PORT"
    if not t:
        raise ServeError(f"{what} is empty: expected {form}")
    if t.startswith("["):
        host, sep, port = t[1:].partition("]")
        if not sep or not port.startswith(":") or not host:
            raise ServeError(f"bad {what} '{text}': expected [IPV6]:PORT, e.g. [::1]:80")
        port = port[1:]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ServeError(f"bad {what} '{text}': '{host}' is not an IPv6 address") from None
    elif listen and t.isdigit():
        host, port = "", t
    else:
        host, sep, port = t.rpartition(":")
        if not sep:
            raise ServeError(f"bad {what} '{text}': missing ':PORT' (expected {form})")
        if ":" in host:
            raise ServeError(f"bad {what} '{text}': an IPv6 address goes in brackets, "
                             f"e.g. [{host}]:{port}")
        if host == "*":
            host = ""
        if not host and not listen:
            raise ServeError(f"bad {what} '{text}': missing host")
    if not port:
        raise ServeError(f"bad {what} '{text}': missing port")
    if port.isdigit():
        n = int(port)
        if not 0 <= n <= 65535 or (n == 0 and not listen):
            raise ServeError(f"bad {what} '{text}': port {port} out of range "
                             f"({0 if listen else 1}-65535)")
    elif not all(c.isalnum() or c in "-_" for c in port):
        raise ServeError(f"bad {what} '{text}': '{port}' is not a port")
    return host, port


Resolver = Callable[..., list]


def resolve(text: str, *, listen: bool = False,
            resolver: Resolver | None = None) -> Address:
    """Parse and resolve LISTEN or TARGET once: the first address returned.

    Numeric addresses are not looked up.  ':PORT' (LISTEN) is 0.0.0.0 and
    '[::]:PORT' is every IPv4 and IPv6 address (a dual-stack socket).
    """
    host, port = split_hostport(text, listen=listen)
    what = "LISTEN" if listen else "TARGET"
    resolver = resolver or socket.getaddrinfo
    if not host:
        host = "0.0.0.0"
    flags = socket.AI_PASSIVE if listen else 0
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        ip = None
    if ip is not None:
        flags |= socket.AI_NUMERICHOST
    if port.isdigit():
        flags |= socket.AI_NUMERICSERV
    try:
        infos = resolver(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP, flags)
    except socket.gaierror as e:
        raise ServeError(f"cannot resolve {what} '{text}': {e.strerror}") from None
    except UnicodeError:
        raise ServeError(f"cannot resolve {what} '{text}': bad host name") from None
    for fam, _type, _proto, _canon, sa in infos:
        if fam in (socket.AF_INET, socket.AF_INET6):
            addr = Address(sa[0], int(sa[1]), fam, name="" if ip is not None and port.isdigit()
                           else text.strip())
            if not listen and addr.port == 0:
                raise ServeError(f"bad {what} '{text}': port 0")
            return addr
    raise ServeError(f"cannot resolve {what} '{text}': no IPv4 or IPv6 address")


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

    def check(self) -> None:
        """Raise ServeError for a value the service cannot run with."""
        for kind in PROGRAM_KINDS:
            if getattr(self, kind) == "":
                raise ServeError(f"--{kind} must name a program")
        if self.verdict is not None and self.parser is None:
            raise ServeError("--verdict: a verdict needs a parser (give --parser too)")
        if self.offset is not None and self.prefix is None:
            raise ServeError("--offset goes with --prefix")
        if self.prefix is not None:
            from .bpf import PREFIX_MAX
            if self.verdict is None:
                raise ServeError("--prefix configures the verdict (drop-prefix): give --verdict")
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
        if self.on_stop not in STOP_MODES:
            raise ServeError(f"on_stop must be one of {', '.join(STOP_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Counters:
    accepted: int = 0        # connections accept() returned
    created: int = 0         # proxies made
    active: int = 0          # our proxies alive in the kernel now
    pending: int = 0         # connects to the target in progress
    failed: int = 0          # target refused / timed out / kernel refused
    refused: int = 0         # over --max-conns
    accept_errors: int = 0   # accept() errors (EMFILE, ...)
    ended: int = 0           # our proxies that ended
    bytes_a_to_b: int = 0    # client -> target (kernel counters)
    bytes_b_to_a: int = 0    # target -> client
    failures: dict[str, int] = field(default_factory=dict)  # by reason
    started: float = 0.0     # time.time() when the loop started
    elapsed: float = 0.0     # seconds it ran

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_programs(options: ServeOptions,
                  loader: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Load the programs `options` names, once: {"parser": Program, ...}.

    `loader(spec)` defaults to kpctl.bpf.load; a drop-prefix verdict gets
    options.prefix at options.offset (default 4, after lenprefix's header).
    Raises what the loader raises (a BpfError: a KproxyError) after closing
    the programs already loaded.  The caller closes them (close_programs)
    once the service has stopped: the kernel keeps its own reference on
    every proxy they are attached to.
    """
    if loader is None:
        from .bpf import load as loader
    progs: dict[str, Any] = {}
    try:
        for kind in PROGRAM_KINDS:
            spec = getattr(options, kind)
            if spec is None:
                continue
            progs[kind] = prog = loader(spec)
            if kind == "verdict" and options.prefix is not None:
                from .bpf import PREFIX_DEFAULT_OFFSET
                offset = PREFIX_DEFAULT_OFFSET if options.offset is None else options.offset
                prog.set_prefix(options.prefix.encode(), offset)
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
    __slots__ = ("client", "peer", "up", "deadline")

    def __init__(self, client: socket.socket, peer: str, up: socket.socket,
                 deadline: float) -> None:
        self.client, self.peer, self.up, self.deadline = client, peer, up, deadline


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


# --------------------------------------------------------------------------
# The service


class Server:
    """One listening socket, one target, one kproxy client.

    `client`: a kpctl.Kproxy (or anything with create/list/destroy, attach
    with BPF programs and, optionally, monitor() returning an object with
    fileno() and get(timeout)).
    `programs`: {"parser": prog, "verdict": prog}, loaded programs (or fds)
    attached to every proxy; the caller keeps them open while the service
    runs and closes them.  None: the programs `options` names are loaded
    by open() (`loader`, default kpctl.bpf.load) and closed when run() ends.
    `create` and `attach`: override client.create and client.attach (tests);
    `accept`: overrides listener.accept (tests inject EMFILE);
    `socket_factory(family)` makes the upstream sockets.
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
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options or ServeOptions()
        self.options.check()
        self.client = client
        self.listen_addr = listen
        self.target = target
        self.on_event = on_event or (lambda kind, data: None)
        self._create = create or client.create
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
        self._attach = attach or getattr(client, "attach", None)
        self._accept = accept or (lambda ls: ls.accept())
        self._netns = netns
        self._socket_factory = socket_factory or self._default_socket
        self._clock = clock
        self.counters = Counters()
        self._listener: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._pending: dict[int, _Pending] = {}
        # our live proxies: id -> (a_to_b bytes, b_to_a bytes) last seen
        self._live: dict[int, tuple[int, int]] = {}
        self._ended_ab = 0
        self._ended_ba = 0
        self._monitor: Any = None
        # Set when the monitor lost notifications (ENOBUFS): the next dump,
        # not a proxy-del, must then end the proxies that are gone.
        self._ntf_lost = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._requests: list[str] = []   # "stop" from stop(), signal names
        self._req_lock = threading.Lock()
        self._stopping = False
        self._drain_abandoned = False
        self._backoff = BACKOFF_MIN
        self._backoff_until: float | None = None
        self._listening = False

    # -- setup ---------------------------------------------------------------

    def _default_socket(self, family: int) -> socket.socket:
        if self._netns:
            from .netns import socket_in_netns
            return socket_in_netns(self._netns, family, socket.SOCK_STREAM)
        return socket.socket(family, socket.SOCK_STREAM)

    def open(self) -> Address:
        """Bind and listen; returns the bound address (port 0 -> the real one).

        Raises OSError (EADDRINUSE, EACCES, ...) for the caller to report,
        and, when the programs are ours to load, what loading raises
        (a BpfError: no such file, the verifier's refusal...).
        """
        self.load_programs()
        try:
            ls = self._default_socket(self.listen_addr.family)
        except BaseException:
            self._close_own_programs()
            raise
        try:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.options.reuseport:
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.listen_addr.family == socket.AF_INET6 and self.listen_addr.host == "::":
                ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            ls.bind(self.listen_addr.sockaddr())
            ls.listen(self.options.backlog)
            ls.setblocking(False)
        except BaseException:
            ls.close()
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
        wanted = self._programs or self.options.parser is not None
        if wanted and self._attach is None:
            raise ServeError("BPF programs need a client with attach()")
        if self._programs is None:
            if self.options.parser is None and self.options.verdict is None:
                self._programs = {}
            else:
                self._programs = load_programs(self.options, self._loader)
                self._own_programs = True
        return self._programs

    def _close_own_programs(self) -> None:
        if self._own_programs:
            close_programs(self._programs)
            self._programs = None
            self._own_programs = False

    # -- control from outside the loop --------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop as SIGTERM would (thread-safe)."""
        self._request("stop")

    def _request(self, what: str) -> None:
        with self._req_lock:
            self._requests.append(what)
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Runs between bytecodes of the loop: only record it; the wakeup fd
        # (set_wakeup_fd) interrupts select().
        with self._req_lock:
            self._requests.append(signal.Signals(signum).name)

    # -- the loop ------------------------------------------------------------

    def run(self, *, install_signals: bool = True) -> Counters:
        """Serve until stopped (a signal or stop()); returns the counters."""
        if self._listener is None:
            self.open()
        c = self.counters
        c.started = time.time()
        t0 = self._clock()
        self._sel = sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
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
        self._open_monitor()
        next_tick = self._clock() + TICK
        try:
            while True:
                now = self._clock()
                wait = next_tick - now
                if self._pending:
                    wait = min(wait, min(p.deadline for p in self._pending.values()) - now)
                if self._backoff_until is not None:
                    wait = min(wait, self._backoff_until - now)
                for key, _mask in sel.select(max(0.0, wait)):
                    kind, obj = key.data
                    if kind == "listen":
                        self._on_accept()
                    elif kind == "connect":
                        self._on_connected(obj)
                    elif kind == "monitor":
                        self._on_monitor()
                    elif kind == "wake":
                        self._drain_wake()
                if self._handle_requests():
                    break
                now = self._clock()
                self._expire(now)
                if self._backoff_until is not None and now >= self._backoff_until:
                    self._backoff_until = None
                    if not self._stopping:
                        self._listen_on()
                if now >= next_tick:
                    next_tick = now + TICK
                    self._refresh()
                    self._emit("tick", self._snapshot())
                if self._stopping and not self._live and not self._pending:
                    break  # drained (or nothing was left)
        finally:
            if install_signals and saved:
                signal.set_wakeup_fd(old_wakeup if old_wakeup is not None else -1)
                for s, h in saved.items():
                    signal.signal(s, h)
            self._finish()
            self._close_own_programs()
            c.elapsed = self._clock() - t0
        self._emit("stopped", self._snapshot())
        return c

    def _finish(self) -> None:
        for p in list(self._pending.values()):
            self._fail(p, "shutting down", None, "shutdown")
        if self._listener is not None:
            self._listen_off()
            _close(self._listener)
            self._listener = None
        if self._live:
            self._on_monitor()
            self._refresh()
        if self._monitor is not None:
            try:
                self._monitor.close()
            except Exception:  # noqa: BLE001
                pass
            self._monitor = None
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        _close(self._wake_r)
        _close(self._wake_w)

    def _emit(self, kind: str, data: dict) -> None:
        try:
            self.on_event(kind, data)
        except BrokenPipeError:
            raise
        except Exception:  # noqa: BLE001 - a drawing bug must not kill the service
            pass

    def _snapshot(self) -> dict[str, Any]:
        c = self.counters
        c.active = len(self._live)
        c.pending = len(self._pending)
        c.bytes_a_to_b = self._ended_ab + sum(ab for ab, _ in self._live.values())
        c.bytes_b_to_a = self._ended_ba + sum(ba for _, ba in self._live.values())
        return c.to_dict()

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot()

    # -- listener --------------------------------------------------------------

    def _listen_on(self) -> None:
        if self._listener is not None and not self._listening and self._sel is not None:
            self._sel.register(self._listener, selectors.EVENT_READ, ("listen", None))
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
                self._emit("accept-error", {"errno": _errname(num),
                                            "message": e.strerror or os.strerror(num),
                                            "backoff": delay})
                return
            self._backoff = BACKOFF_MIN
            self.counters.accepted += 1
            self._start(conn, _fmt_peer(addr))

    # -- one connection --------------------------------------------------------

    def _start(self, conn: socket.socket, peer: str) -> None:
        limit = self.options.max_conns
        if limit is not None and len(self._live) + len(self._pending) >= limit:
            self.counters.refused += 1
            _reset_close(conn)
            self._emit("refused", {"client": peer, "reason": "max-conns", "limit": limit})
            return
        try:
            up = self._socket_factory(self.target.family)
        except (OSError, KproxyError) as e:
            self._fail_sockets(conn, None, peer, f"cannot open a socket to the target: "
                               f"{getattr(e, 'strerror', None) or e}", getattr(e, "errno", None),
                               "socket")
            return
        up.setblocking(False)
        rc = up.connect_ex(self.target.sockaddr())
        if rc == 0:
            self._join(conn, peer, up)
            return
        if rc not in (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN):
            self._fail_sockets(conn, up, peer, f"connect to {self.target}: {os.strerror(rc)}",
                               rc, "connect")
            return
        p = _Pending(conn, peer, up, self._clock() + self.options.connect_timeout)
        self._pending[up.fileno()] = p
        assert self._sel is not None
        self._sel.register(up, selectors.EVENT_WRITE, ("connect", p))

    def _unpend(self, p: _Pending) -> None:
        self._pending.pop(p.up.fileno(), None)
        if self._sel is not None:
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
        self._join(p.client, p.peer, p.up)

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
                      reason: str, num: int | None, stage: str) -> None:
        _reset_close(conn)
        _close(up)
        c = self.counters
        c.failed += 1
        key = _errname(num) or stage
        c.failures[key] = c.failures.get(key, 0) + 1
        self._emit("failed", {"client": peer, "reason": reason, "errno": _errname(num),
                              "stage": stage})

    def _join(self, conn: socket.socket, peer: str, up: socket.socket) -> None:
        try:
            local = _fmt_peer(up.getsockname())
        except OSError:
            local = "?"
        try:
            proxy = self._create(conn, up)
        except KproxyError as e:
            self._fail_sockets(conn, up, peer, f"kernel refused the proxy: {e}", e.errno, "create")
            return
        except OSError as e:
            self._fail_sockets(conn, up, peer, f"kernel refused the proxy: {e.strerror or e}",
                               e.errno, "create")
            return
        pid = int(getattr(proxy, "id", 0))
        if self._programs and not self._attach_programs(pid, conn, up, peer):
            return
        # The proxy holds its own references: our fds go now.
        _close(conn)
        _close(up)
        self.counters.created += 1
        self._live[pid] = (0, 0)
        self._emit("proxy", {"id": pid, "client": peer, "upstream": local})

    def _attach_programs(self, pid: int, conn: socket.socket, up: socket.socket,
                         peer: str) -> bool:
        """The parser on both directions, then the verdict.  On a refusal the
        proxy goes (its sockets come back to us), the client is reset and
        the connection counted as failed (stage "attach"): False."""
        assert self._programs is not None and self._attach is not None
        for kind in PROGRAM_KINDS:
            prog = self._programs.get(kind)
            if prog is None:
                continue
            try:
                self._attach(pid, kind, prog, "both")
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

    # -- kernel state ----------------------------------------------------------

    def _open_monitor(self) -> None:
        """proxy-del notifications free a --max-conns slot at once and give
        the final counters; without them, the per-second dump does both."""
        opener = getattr(self.client, "monitor", None)
        if opener is None:
            return
        try:
            mon = opener()
        except Exception as e:  # noqa: BLE001
            self._emit("warning", {"message": f"no proxy notifications ({e}); "
                                              f"polling once a second"})
            return
        if not hasattr(mon, "fileno") or not hasattr(mon, "get"):
            close = getattr(mon, "close", None)
            if close:
                close()
            return
        self._monitor = mon
        assert self._sel is not None
        self._sel.register(mon.fileno(), selectors.EVENT_READ, ("monitor", None))

    def _on_monitor(self) -> None:
        mon = self._monitor
        while mon is not None:
            try:
                ev = mon.get(0)
            except KproxyError as e:
                # ENOBUFS: notifications lost; the next dump catches up.
                self._emit("warning", {"message": f"monitor: {e.message}"})
                self._ntf_lost = True
                if e.errno != errno.ENOBUFS:
                    self._drop_monitor()
                return
            if ev is None:
                return
            if ev.kind != "del" or ev.proxy.id not in self._live:
                continue
            self._ended(ev.proxy.id, ev.reason or "?", ev.proxy.a_to_b.bytes,
                        ev.proxy.b_to_a.bytes)

    def _drop_monitor(self) -> None:
        if self._monitor is None:
            return
        if self._sel is not None:
            try:
                self._sel.unregister(self._monitor.fileno())
            except (KeyError, ValueError, OSError):
                pass
        try:
            self._monitor.close()
        except Exception:  # noqa: BLE001
            pass
        self._monitor = None

    def _ended(self, pid: int, reason: str, ab: int, ba: int) -> None:
        last = self._live.pop(pid, None)
        if last is None:
            return
        ab, ba = max(ab, last[0]), max(ba, last[1])
        self._ended_ab += ab
        self._ended_ba += ba
        self.counters.ended += 1
        self._emit("ended", {"id": pid, "reason": reason, "a_to_b": ab, "b_to_a": ba})

    def _refresh(self) -> None:
        """One dump: current counters of our live proxies.

        A dump leaves out a proxy as soon as it starts ending, while it
        still delivers its last queued bytes; its proxy-del comes after, with
        the final counters. So with a working monitor a proxy missing from
        the dump stays live until its proxy-del ends it. Without a monitor,
        or after the monitor lost notifications, the dump ends it ("gone"),
        with the counters last seen."""
        if not self._live:
            return
        dump_ends = self._monitor is None or self._ntf_lost
        try:
            proxies = self.client.list()
        except Exception as e:  # noqa: BLE001 - the loop goes on
            msg = getattr(e, "message", None) or str(e)
            self._emit("warning", {"message": f"cannot read the kernel's counters: {msg}"})
            return
        self._ntf_lost = False
        seen = {}
        for p in proxies:
            if p.id in self._live:
                seen[p.id] = (p.a_to_b.bytes, p.b_to_a.bytes)
        for pid in list(self._live):
            if pid in seen:
                self._live[pid] = seen[pid]
            elif dump_ends:
                last = self._live[pid]
                self._ended(pid, "gone", last[0], last[1])

    # -- stopping --------------------------------------------------------------

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass

    def _handle_requests(self) -> bool:
        """Signals and stop(): True when the loop must end now."""
        with self._req_lock:
            reqs, self._requests = self._requests, []
        for r in reqs:
            if r == "SIGHUP":
                self._emit("signal", {"signal": r, "action":
                                      "ignored: reloading is not supported; restart the "
                                      "service to change its configuration"})
                continue
            if self._stopping:
                # A second SIGINT/SIGTERM while draining: stop waiting.
                self._drain_abandoned = True
                self._emit("signal", {"signal": r, "action":
                                      f"stop waiting; {len(self._live)} proxies go on in "
                                      f"the kernel"})
                return True
            self._emit("signal", {"signal": r, "action": "stop accepting"})
            if self._begin_stop():
                return True
        return False

    def _begin_stop(self) -> bool:
        """Stop accepting; True when nothing remains to wait for."""
        self._stopping = True
        self._listen_off()
        _close(self._listener)
        self._listener = None
        self._backoff_until = None
        for p in list(self._pending.values()):
            self._fail(p, "shutting down", None, "shutdown")
        self._refresh()
        mode = self.options.on_stop
        self._emit("stopping", {"mode": mode, "active": len(self._live)})
        if mode == "kill":
            self._kill_all()
            return True
        if mode == "leave":
            return True
        return not self._live  # drain: the loop waits for them

    def _kill_all(self) -> None:
        destroyed = []
        for pid in sorted(self._live):
            try:
                self.client.destroy(pid)
            except KproxyError as e:
                if e.errno != errno.ENOENT:
                    self._emit("warning", {"message": f"proxy {pid}: {e}"})
                    continue
            except Exception as e:  # noqa: BLE001
                self._emit("warning", {"message": f"proxy {pid}: {e}"})
                continue
            destroyed.append(pid)
        # The kernel queued each proxy-del, final counters included, before
        # its destroy returned; the counters last seen are the fallback.
        self._on_monitor()
        for pid in destroyed:
            last = self._live.get(pid, (0, 0))
            self._ended(pid, "user", last[0], last[1])


def serve(listen: str, target: str, options: ServeOptions | None = None, *,
          client: Any = None, on_event: Callable[[str, dict], None] | None = None,
          resolver: Resolver | None = None, netns: str | None = None,
          install_signals: bool = True,
          loader: Callable[[str], Any] | None = None) -> Counters:
    """The library call behind `kpctl serve LISTEN TARGET`: resolve both
    addresses once, open kproxy (unless a client is given), load the BPF
    programs the options name (once), serve until a signal; returns the
    counters."""
    options = options or ServeOptions()
    try:
        options.check()
    except ServeError:
        raise
    laddr = resolve(listen, listen=True, resolver=resolver)
    taddr = resolve(target, resolver=resolver)
    check_distinct(laddr, taddr)
    own = client is None
    if own:
        from .client import Kproxy
        client = Kproxy(netns=netns)
    try:
        server = Server(client, laddr, taddr, options, on_event=on_event, netns=netns,
                        loader=loader)
        server.open()
        return server.run(install_signals=install_signals)
    finally:
        if own:
            client.close()


def check_distinct(listen: Address, target: Address) -> None:
    """Refuse a service that would connect to itself."""
    if listen.port != target.port or listen.port == 0:
        return
    same = listen.host == target.host or (
        listen.host in ("0.0.0.0", "::") and ipaddress.ip_address(target.host).is_loopback)
    if same:
        raise ServeError(f"LISTEN {listen} and TARGET {target} are the same address: "
                         f"the service would connect to itself")
