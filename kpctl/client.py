"""Kproxy: the library's handle on the kproxy generic-netlink family.

Plain AF_NETLINK sockets and struct (kpctl.wire): the family is resolved
with the controller's CTRL_CMD_GETFAMILY, every request and the monitor use
sockets of our own, and a refusal becomes a KproxyError naming the
attribute the kernel points at.  No pyroute2 here: its import alone costs
more than a `kpctl list`, and its message classes cost several times the
kernel's own work per request.

A Kproxy serialises its calls with a lock (one request socket, one receive
buffer); a program that wants parallel requests opens one Kproxy per
thread.  Monitors are separate sockets and may be read in any thread.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from . import spec as spec_mod
from . import wire
from .decode import (
    ProxyReader,
    event_from_attrs,
    listener_event_from_attrs,
    listener_from_attrs,
    proxy_from_attrs,
)
from .errors import KproxyError
from .model import Endpoint, Event, Listener, ListenerEvent, Proxy
from .netns import socket_in_netns

__all__ = ["Kproxy", "Monitor", "proxy_from_attrs", "event_from_attrs", "MONITOR_RCVBUF"]

# How often a dump raced by changes (NLM_F_DUMP_INTR) is restarted before
# giving up: each retry is a full dump, and a steady churn of proxies could
# otherwise keep us looping forever.
DUMP_RETRIES = 8

# A dump's datagrams are at most 32 KiB (netlink_dump's largest skb); the
# kernel answers at once, so a silent socket means something is badly wrong.
RECV_SIZE = 64 << 10
REPLY_TIMEOUT = 60.0

# Notifications come in bursts (an unload or a netns exit ends every proxy
# at once); a large receive buffer keeps a monitor, or a handle receiving
# its proxies' ends, from losing them.
MONITOR_RCVBUF = 8 << 20
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; not exported by the socket module


def _fd(obj: Any) -> int:
    # The kernel resolves fds in the caller's table: a socket object is sent
    # as its fileno(), an int as is.
    if isinstance(obj, int):
        return obj
    fileno = getattr(obj, "fileno", None)
    if fileno is None:
        raise TypeError(f"expected a socket or an fd, got {type(obj).__name__}")
    return int(fileno())


def _prog_fd(prog: Any) -> int:
    """A BPF program as an fd: an int, or an object with fileno() / fd."""
    if isinstance(prog, int) and not isinstance(prog, bool):
        return prog
    fileno = getattr(prog, "fileno", None)
    if fileno is not None:
        return int(fileno())
    fd = getattr(prog, "fd", None)
    if fd is None:
        raise TypeError(f"expected a BPF program or its fd, got {type(prog).__name__}")
    return int(fd)


def _endpoint_attrs(where: Endpoint | str | tuple[str, int]) -> dict[str, Any]:
    """An endpoint nest: from an Endpoint, "HOST:PORT" / "[V6]:PORT", or
    a (host, port) tuple."""
    if isinstance(where, tuple):
        host, port = where[0], where[1]
        where = Endpoint(host, int(port))
    elif isinstance(where, str):
        try:
            where = Endpoint.parse(where)
        except ValueError as e:
            raise KproxyError(errno.EINVAL, str(e)) from None
    try:
        family = where.family
        raw = socket.inet_pton(family, where.host)
    except (OSError, ValueError) as e:
        raise KproxyError(errno.EINVAL, f"bad address {where.host!r}: {e}") from None
    return {"family": int(family), "addr": raw, "port": where.port}


_U32 = struct.Struct("=I")


def _first_u32(buf: bytearray, off: int, end: int, kind: int, nla: Any) -> int | KproxyError:
    """The value of the first u32 attribute of type `kind` in buf[off:end]
    (a reply's id), without decoding the others."""
    while off + 4 <= end:
        length, typ = nla(buf, off)
        if length < 4:
            break
        if typ & wire.NLA_TYPE_MASK == kind and length >= 8:
            return int(_U32.unpack_from(buf, off + 4)[0])
        off += (length + 3) & ~3
    return KproxyError(errno.EPROTO, "proxy-new: the reply has no id")


class EndBrief(NamedTuple):
    """A proxy's end as serve counts it (Kproxy.ended_brief)."""

    id: int
    reason: str             # the reason's label ("closed", "reset", ...)
    a_to_b: int             # bytes, final counters
    b_to_a: int
    tls_alert: int | None   # reason tls-alert: the alert's description


def _os_error(e: OSError) -> KproxyError:
    return KproxyError(e.errno or errno.EIO, e.strerror or str(e))


def _big_rcvbuf(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


# --- the monitor ---------------------------------------------------------


class Monitor:
    """An iterator of Events read from its own socket in the `monitor` group.

    Iteration blocks; close() (from any thread, or Kproxy.close()) ends it
    cleanly.  get(timeout) waits at most `timeout` seconds.
    """

    def __init__(self, sock: socket.socket, family_id: int, spec: spec_mod.Spec,
                 listeners: bool = False) -> None:
        self._sock = sock
        self._listeners = listeners
        self._spec = spec
        self._family_id = family_id
        self._decoder = wire.decoder(spec)
        self._pending: deque[Event | ListenerEvent] = deque()
        self._closed = False
        # A pipe wakes a reader blocked in select() when close() is called.
        self._wake_r, self._wake_w = os.pipe()
        self._read_lock = threading.Lock()

    def __iter__(self) -> "Monitor":
        return self

    def __next__(self) -> Any:
        ev = self.get(None)
        if ev is None:
            raise StopIteration
        return ev

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        """For callers that multiplex the monitor with other fds."""
        return self._sock.fileno()

    def get(self, timeout: float | None = None) -> Any:
        """The next event (an Event, or a ListenerEvent on a monitor opened
        with listeners=True), or None on timeout or once closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._read_lock:
            while not self._pending:
                if self._closed:
                    return None
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select([self._sock, self._wake_r], [], [], left)
                if self._closed or self._wake_r in ready:
                    return None
                if not ready:
                    return None  # timeout
                self._read_one()
            return self._pending.popleft()

    def _read_one(self) -> None:
        try:
            data = self._sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                # The kernel dropped notifications: say so rather than
                # silently showing an incomplete history.
                raise KproxyError(
                    errno.ENOBUFS, "monitor fell behind: notifications were lost"
                ) from None
            raise _os_error(e) from None
        now = time.time()
        for msg in self._decoder.messages(data, self._family_id):
            if msg.attrs is None:
                continue
            ev: Event | ListenerEvent | None = event_from_attrs(msg.cmd, msg.attrs, self._spec, now)
            if ev is None and self._listeners:
                ev = listener_event_from_attrs(msg.cmd, msg.attrs, self._spec, now)
            if ev is not None:
                self._pending.append(ev)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        # Wait for a reader in get() to leave before closing its fds.
        with self._read_lock:
            self._sock.close()
            os.close(self._wake_r)
            os.close(self._wake_w)


# --- the client ----------------------------------------------------------

# What a reply loop does with each message of its request:
# handle(buf, off, length, type, flags) -> None.
Handler = Callable[[bytearray, int, int, int, int], None]


class Kproxy:
    """`with Kproxy() as kp:` -- create, get, list, destroy, monitor proxies.

    `netns`: a name under /var/run/netns (or a path to a netns file); the
    proxies made through this handle belong to that namespace.
    """

    def __init__(self, netns: str | None = None, spec: spec_mod.Spec | None = None) -> None:
        self._spec = spec or spec_mod.default()
        self._netns = netns
        self._lock = threading.RLock()
        self._monitors: "weakref.WeakSet[Monitor]" = weakref.WeakSet()
        self._decoder = wire.decoder(self._spec)
        self._reader = ProxyReader(self._spec)
        self._buf = bytearray(RECV_SIZE)
        self._seq = 0
        self._ends: deque[Event] = deque()
        self._ends_lost = False
        self._ends_rcvbuf = False
        self._create_tmpl: tuple[bytearray, int, int] | None = None  # send_creates()
        self._nowait: Any = None  # the request socket without a timeout (_recv_nowait)
        self._end_parse: Callable[[bytearray, int, int], EndBrief | None] | None = None
        self._sock: socket.socket | None = None
        self._family: wire.FamilyInfo | None = None
        try:
            # Opened now, not on first use: a socket appearing later would
            # take an fd number the caller may have just seen free.
            self._sock = self._netlink_socket()
        except OSError as e:
            raise _os_error(e) from None
        try:
            self._family = self._resolve()
        except BaseException:
            self.close()
            raise

    def _raw_socket(self) -> socket.socket:
        if self._netns is None:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, wire.NETLINK_GENERIC)
        return socket_in_netns(self._netns, socket.AF_NETLINK, socket.SOCK_RAW,
                               wire.NETLINK_GENERIC)

    def _netlink_socket(self) -> socket.socket:
        sock = self._raw_socket()
        try:
            sock.setsockopt(wire.SOL_NETLINK, wire.NETLINK_EXT_ACK, 1)
            sock.settimeout(REPLY_TIMEOUT)
        except OSError:
            sock.close()
            raise
        return sock

    def _dump_socket(self) -> socket.socket:
        self._info()  # refuse on a closed handle before opening anything
        try:
            return self._netlink_socket()
        except OSError as e:
            raise _os_error(e) from None

    def _resolve(self) -> wire.FamilyInfo:
        """The family's id, version and groups (CTRL_CMD_GETFAMILY)."""
        found: list[wire.FamilyInfo] = []

        def on_reply(buf: bytearray, off: int, length: int, mtype: int, flags: int) -> None:
            if mtype == wire.GENL_ID_CTRL:
                found.append(wire.parse_family(buf, off, off + length))

        seq = self._next_seq()
        try:
            self._exchange(self._request_socket(), wire.getfamily_request(self._spec.family, seq),
                           seq, wire.GENL_ID_CTRL, on_reply, dump=False)
        except KproxyError as e:
            if e.errno == errno.ENOENT:
                raise KproxyError(
                    errno.ENOENT,
                    f"kproxy module not loaded (family '{self._spec.family}' not found)",
                ) from None
            raise
        if not found or not found[0].id:
            raise KproxyError(errno.EPROTO, "the controller did not describe the family")
        return found[0]

    # context manager / lifetime

    def __enter__(self) -> "Kproxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for mon in list(self._monitors):
            mon.close()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self._nowait is not None:
                self._nowait.close()
                self._nowait = None
            self._family = None

    @property
    def spec(self) -> spec_mod.Spec:
        return self._spec

    @property
    def netns(self) -> str | None:
        return self._netns

    def _info(self) -> wire.FamilyInfo:
        if self._family is None:
            raise KproxyError(errno.EBADF, "Kproxy handle is closed")
        return self._family

    @property
    def family_id(self) -> int:
        return self._info().id

    @property
    def version(self) -> int:
        """The family version the running module registered."""
        return self._info().version

    @property
    def mcast_groups(self) -> dict[str, int]:
        """The family's multicast groups by name, with their ids."""
        return dict(self._info().mcast_groups)

    def fileno(self) -> int:
        """The request socket, where the ends of proxies made with
        notify_end=True arrive: readable means ended() has news."""
        return self._request_socket().fileno()

    # the exchange of one request

    def _request_socket(self) -> socket.socket:
        if self._sock is None:
            raise KproxyError(errno.EBADF, "Kproxy handle is closed")
        return self._sock

    def _next_seq(self) -> int:
        with self._lock:
            # 0 is what notifications carry: never a request's.
            self._seq = self._seq % 0xFFFFFFFF + 1
            return self._seq

    def _exchange(self, sock: socket.socket, req: bytes, seq: int, msg_type: int,
                  handle: Handler, *, dump: bool) -> None:
        """Send `req` and hand each message of its answer to `handle` until
        the ack (do) or NLMSG_DONE (dump); a refusal raises KproxyError.

        Unicast notifications (seq 0) met on the way are kept for ended();
        messages of another seq were left by a request an exception
        interrupted, and are skipped.
        """
        buf = self._buf
        header = wire.NLMSGHDR.unpack_from
        ends = self._family.id if self._family is not None else None
        with self._lock:
            try:
                sock.send(req)
                while True:
                    try:
                        n = sock.recv_into(buf, 0, socket.MSG_TRUNC)
                    except OSError as e:
                        if e.errno != errno.ENOBUFS:
                            raise
                        self._ends_lost = True  # ends were dropped; the reply was not
                        continue
                    if n > len(buf):
                        raise KproxyError(errno.EMSGSIZE, f"a {n}-byte netlink message")
                    off = 0
                    while off + 16 <= n:
                        length, mtype, flags, mseq, _pid = header(buf, off)
                        if length < 16 or off + length > n:
                            break
                        if mseq == seq:
                            if mtype == msg_type:
                                handle(buf, off, length, mtype, flags)
                            elif mtype == wire.NLMSG_ERROR:
                                m = wire.error_message(buf, off, length, flags, mseq)
                                if m.error:
                                    raise KproxyError(m.error, wire.error_text(self._spec, m, req))
                                if not dump:
                                    return
                            elif mtype == wire.NLMSG_DONE:
                                code = wire.done_errno(buf, off, length)
                                if code:
                                    raise KproxyError(code)
                                return
                        elif mseq == 0 and mtype == ends:
                            self._keep_end(buf, off, length)
                        off += (length + 3) & ~3
            except OSError as e:
                raise _os_error(e) from None

    def _keep_end(self, buf: bytearray, off: int, length: int) -> None:
        cmd = wire.GENLMSGHDR.unpack_from(buf, off + 16)[0]
        attrs = self._decoder.attrs(buf, off + wire.HEADERS, off + length)
        ev = event_from_attrs(cmd, attrs, self._spec)
        # "new" comes only for the proxies of a listener made with notify.
        if ev is not None and ev.kind in ("del", "new"):
            self._ends.append(ev)

    def _messages(self, cmd: str, body: bytes, dump: bool) -> list[wire.Message]:
        """Every message of our family answering one request."""
        out: list[wire.Message] = []
        decode = self._decoder.attrs

        table_of = self._decoder.table_of

        def keep(buf: bytearray, off: int, length: int, mtype: int, flags: int) -> None:
            _len, _t, _f, seq, _pid = wire.NLMSGHDR.unpack_from(buf, off)
            cmd = wire.GENLMSGHDR.unpack_from(buf, off + 16)[0]
            out.append(wire.Message(mtype, flags, seq, cmd,
                                    decode(buf, off + wire.HEADERS, off + length, table_of(cmd))))

        seq = self._next_seq()
        flags = wire.NLM_F_REQUEST | (wire.NLM_F_DUMP if dump else wire.NLM_F_ACK)
        req = wire.request(self.family_id, self._spec.cmd(cmd), self._spec.version, flags, seq, body)
        if dump:
            # A dump on a socket of its own: one abandoned half-way (an
            # exception) would leave the request socket refusing the next
            # dump with EBUSY.
            with self._dump_socket() as sock:
                self._exchange(sock, req, seq, self.family_id, keep, dump=True)
        else:
            self._exchange(self._request_socket(), req, seq, self.family_id, keep, dump=False)
        return out

    def _encode(self, attrs: dict[str, Any] | None, cmd: str | None = None) -> bytes:
        set_name = self._spec.set_of(self._spec.cmd(cmd)) if cmd else None
        try:
            return wire.encode_attrs(self._spec, attrs or {}, set_name)
        except wire.EncodeError as e:
            raise KproxyError(e.errno, str(e)) from None

    # requests

    def request(
        self, cmd: str, attrs: dict[str, Any] | None = None, *, dump: bool = False
    ) -> list[wire.Message]:
        """Send any operation of the spec, attributes by YAML name (nests as
        dicts); the replies of our family, decoded (not the ack).

        For tools and tests that need a message the typed API will not build
        (e.g. a request missing an attribute).
        """
        return self._messages(cmd, self._encode(attrs, cmd), dump)

    def send_raw(self, cmd: str, body: bytes, *, dump: bool = False) -> list[wire.Message]:
        """Send attributes built by the caller (wire.nla(): tests of
        malformed requests).  Errors are translated as for every request."""
        return self._messages(cmd, body, dump)

    def _do(self, cmd: str, attrs: dict[str, Any]) -> dict[str, Any] | None:
        """A do request of the typed API: the reply's attributes, or None
        when the kernel only acked."""
        replies = self._messages(cmd, self._encode(attrs, cmd), dump=False)
        return replies[-1].attrs if replies else None

    def _proxy_reply(self, cmd: str, attrs: dict[str, Any]) -> Proxy:
        reply = self._do(cmd, attrs)
        if reply is None:
            raise KproxyError(errno.EPROTO, f"{cmd}: no reply from the kernel")
        return proxy_from_attrs(reply, self._spec)

    def create(self, sock_a: Any, sock_b: Any, *, notify_end: bool = False,
               parser: Any = None, verdict: Any = None, replies: Sequence[bytes] | None = None,
               verdict_direction: str | None = None) -> Proxy:
        """Join two connected TCP sockets (socket objects or fds of ours).

        The proxy takes its own references: the caller may close its fds.
        notify_end=True: the kernel sends this proxy's end to this handle
        (see fileno() and ended()), whoever ends it.
        parser/verdict (program fds or loaded programs), replies and
        verdict_direction (as attach()'s; default "both"): programs in
        place before the proxy reads its first byte, so none passes
        unparsed or unjudged (an attach() after create() may come after
        the client's first bytes were forwarded).
        """
        attrs: dict[str, Any] = {"fd-a": _fd(sock_a), "fd-b": _fd(sock_b)}
        attrs.update(self._program_attrs(parser, verdict, replies, verdict_direction))
        if notify_end:
            if "notify" not in self._spec.attr_sets[self._spec.root_set]:
                raise KproxyError(errno.EOPNOTSUPP, "this schema has no notify attribute")
            attrs["notify"] = True
            self._big_request_rcvbuf()
        return self._proxy_reply("proxy-new", attrs)

    def _big_request_rcvbuf(self) -> None:
        with self._lock:
            if not self._ends_rcvbuf:
                # A burst of ends must not crowd out a request's reply.
                _big_rcvbuf(self._request_socket(), MONITOR_RCVBUF)
                self._ends_rcvbuf = True

    # a fast create (kpctl serve --userspace): many per send, no ack round trip

    def send_creates(self, pairs: Sequence[tuple[Any, Any]]) -> list[int]:
        """Join several pairs of connected sockets with one send(2): one
        proxy-new each (notify_end, as create(..., notify_end=True)),
        without NLM_F_ACK, patched into a request encoded once (only the
        two fds and the seq differ).  The kernel handles every one of them
        before this returns (the fds are resolved now); their answers wait
        on the request socket for read_created().  Returns their seqs, in
        the order of `pairs`.  The caller keeps its fds until
        read_created() has said which proxies were made.
        """
        if not pairs:
            return []
        template, off_a, off_b = self._create_template()
        size = len(template)
        out = template * len(pairs)
        seqs = []
        pack = _U32.pack_into
        with self._lock:
            sock = self._request_socket()
            for i, (a, b) in enumerate(pairs):
                seq = self._next_seq()
                at = i * size
                pack(out, at + 8, seq)
                pack(out, at + off_a, _fd(a))
                pack(out, at + off_b, _fd(b))
                seqs.append(seq)
            try:
                sock.send(out)
            except OSError as e:
                raise _os_error(e) from None
        return seqs

    def read_created(self, seqs: Iterable[int]) -> dict[int, int | KproxyError]:
        """The answers to send_creates(): seq -> the new proxy's id, or the
        KproxyError of a refusal (errno and extended-ack text, as create()
        raises it).  Only the id is read from a reply (the rest is what
        the caller gave).  Reads the request socket until it is empty,
        without blocking; the ends met on the way are kept for ended().
        An answer the kernel could not queue (the receive buffer was full)
        comes back as ENOBUFS, and the next ended() raises ENOBUFS too:
        whether that proxy was made is unknown.
        """
        want = set(seqs)
        got: dict[int, int | KproxyError] = {}
        if not want:
            return got
        template, _, _ = self._create_template()
        id_type = self._id_attr_type()
        nla = wire.NLAHDR.unpack_from
        buf = self._buf
        with self._lock:
            fid = self.family_id
            for off, length, mtype, flags, mseq in self._messages_nowait():
                if mseq in want:
                    if mtype == fid:
                        got[mseq] = _first_u32(buf, off + wire.HEADERS, off + length,
                                               id_type, nla)
                    elif mtype == wire.NLMSG_ERROR:
                        m = wire.error_message(buf, off, length, flags, mseq)
                        got[mseq] = KproxyError(m.error or errno.EPROTO,
                                                wire.error_text(self._spec, m, template))
                elif mseq == 0 and mtype == fid:
                    self._keep_end(buf, off, length)
        for seq in want - got.keys():
            self._ends_lost = True
            got[seq] = KproxyError(errno.ENOBUFS, "the kernel's answer was lost (receive "
                                                  "buffer full)")
        return got

    def ended_brief(self) -> list[EndBrief]:
        """The ends of the proxies made with notify_end, as ended(0) reads
        them (without blocking; ENOBUFS when some were lost), but each
        parsed for its id, reason and byte counts alone: what serve
        counts, at a fraction of a full decode per connection."""
        with self._lock:
            out = [EndBrief(e.proxy.id, e.reason or "?", e.proxy.a_to_b.bytes,
                            e.proxy.b_to_a.bytes, e.tls_alert)
                   for e in self._ends if e.kind == "del"]
            self._ends.clear()
            parse = self._end_parser()
            buf = self._buf
            fid = self.family_id
            for off, length, mtype, _flags, mseq in self._messages_nowait():
                if mseq == 0 and mtype == fid:
                    end = parse(buf, off, off + length)
                    if end is not None:
                        out.append(end)
            if self._ends_lost:
                self._ends_lost = False
                raise KproxyError(errno.ENOBUFS, "ends of proxies were lost (receive buffer full)")
            return out

    def _messages_nowait(self) -> Iterator[tuple[int, int, int, int, int]]:
        """(offset, length, type, flags, seq) of every message waiting on
        the request socket, each datagram read into self._buf, without
        blocking; a datagram the kernel dropped (ENOBUFS) marks ends lost.
        The caller holds self._lock and reads a message's bytes before the
        next one is asked for."""
        recv = self._recv_nowait()
        buf = self._buf
        header = wire.NLMSGHDR.unpack_from
        while True:
            try:
                n = recv(buf)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self._ends_lost = True
                    continue
                raise _os_error(e) from None
            off = 0
            while off + 16 <= n:
                length, mtype, flags, mseq, _pid = header(buf, off)
                if length < 16 or off + length > n:
                    break
                yield off, length, mtype, flags, mseq
                off += (length + 3) & ~3

    def _recv_nowait(self) -> Callable[[bytearray], int]:
        """recv_into() of the request socket that raises BlockingIOError at
        once when it is empty: a twin (dup) without the timeout, since
        CPython polls before any recv on a socket with one (two syscalls a
        datagram where one does)."""
        if self._nowait is None:
            self._nowait = self._request_socket().dup()
            self._nowait.setblocking(False)
        return self._nowait.recv_into

    def _end_parser(self) -> Callable[[bytearray, int, int], EndBrief | None]:
        """parse(buf, off, end) of one proxy-del-ntf message: an EndBrief
        (None for another command), walking the attributes once.  Made
        once per handle."""
        if self._end_parse is not None:
            return self._end_parse
        spec = self._spec
        root = spec.attr_sets[spec.root_set]
        del_cmd = spec.cmd("proxy-del-ntf")
        t_id, t_reason, t_ab, t_ba = (root[n].value for n in ("id", "reason", "a-to-b", "b-to-a"))
        t_alert = root["tls-alert"].value if "tls-alert" in root else -1
        t_bytes = spec.attr_sets[root["a-to-b"].nested]["bytes"].value
        reasons = spec.enums["reason"]
        nla = wire.NLAHDR.unpack_from
        u64 = struct.Struct("=Q").unpack_from
        u32 = _U32.unpack_from
        mask = wire.NLA_TYPE_MASK

        def nested_bytes(buf: bytearray, off: int, end: int) -> int:
            while off + 4 <= end:
                length, typ = nla(buf, off)
                if length < 4:
                    break
                if typ & mask == t_bytes and length >= 12:
                    return int(u64(buf, off + 4)[0])
                off += (length + 3) & ~3
            return 0

        def parse(buf: bytearray, off: int, end: int) -> EndBrief | None:
            if buf[off + 16] != del_cmd:
                return None
            pid = ab = ba = 0
            reason: str = "?"
            alert = None
            off += wire.HEADERS
            while off + 4 <= end:
                length, typ = nla(buf, off)
                if length < 4 or off + length > end:
                    break
                typ &= mask
                if typ == t_id:
                    pid = u32(buf, off + 4)[0]
                elif typ == t_reason:
                    reason = reasons.label(u32(buf, off + 4)[0])
                elif typ == t_ab:
                    ab = nested_bytes(buf, off + 4, off + length)
                elif typ == t_ba:
                    ba = nested_bytes(buf, off + 4, off + length)
                elif typ == t_alert:
                    alert = buf[off + 4]
                off += (length + 3) & ~3
            return EndBrief(pid, reason, ab, ba, alert)
        self._end_parse = parse
        return parse

    def _create_template(self) -> tuple[bytearray, int, int]:
        """proxy-new with notify and placeholder fds, encoded once, with
        the offsets of the fd-a and fd-b values."""
        tmpl = self._create_tmpl
        if tmpl is None:
            spec = self._spec
            if "notify" not in spec.attr_sets[spec.root_set]:
                raise KproxyError(errno.EOPNOTSUPP, "this schema has no notify attribute")
            self._big_request_rcvbuf()
            body = self._encode({"fd-a": 0, "fd-b": 0, "notify": True}, "proxy-new")
            req = bytearray(wire.request(self.family_id, spec.cmd("proxy-new"), spec.version,
                                         wire.NLM_F_REQUEST, 0, body))
            where = {}
            for kind, at, _end in wire._walk(req, wire.HEADERS, len(req)):
                where[kind] = at
            a = spec.attr(spec.root_set, "fd-a").value
            b = spec.attr(spec.root_set, "fd-b").value
            tmpl = self._create_tmpl = (req, where[a], where[b])
        return tmpl

    def _id_attr_type(self) -> int:
        return self._spec.attr(self._spec.root_set, "id").value

    def ended(self, timeout: float | None = 0.0, *, with_new: bool = False) -> list[Event]:
        """The ends (Events of kind "del") of the proxies this handle made
        with notify_end=True, received since the last call.  Waits up to
        `timeout` seconds (None: until one comes) when there is none yet;
        0 only reads what is there.  with_new: also the births ("new") of
        the proxies of a listener made with notify=True, in order."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            sock = self._request_socket()
            while True:
                self._drain()
                if self._ends_lost:
                    self._ends_lost = False
                    raise KproxyError(errno.ENOBUFS, "ends of proxies were lost (receive buffer full)")
                if self._ends:
                    out = [e for e in self._ends if with_new or e.kind == "del"]
                    self._ends.clear()
                    if out or timeout == 0:
                        return out
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                # Unlocked while waiting would let a request steal the
                # datagram; a caller that waits owns the handle meanwhile.
                select.select([sock], [], [], left)

    def _drain(self) -> None:
        """Read every datagram waiting on the request socket, keeping ends."""
        fid = self.family_id
        for off, length, mtype, _flags, mseq in self._messages_nowait():
            if mseq == 0 and mtype == fid:
                self._keep_end(self._buf, off, length)

    def get(self, proxy_id: int) -> Proxy:
        return self._proxy_reply("proxy-get", {"id": int(proxy_id)})

    def destroy(self, proxy_id: int) -> None:
        """End a proxy; sockets whose fds the caller kept work normally again."""
        self._do("proxy-del", {"id": int(proxy_id)})

    def list(self) -> list[Proxy]:
        """All proxies of this handle's netns, from one consistent dump."""
        for _ in range(DUMP_RETRIES):
            proxies, interrupted = self._dump_proxies()
            # The kernel flags a dump that raced a change (NLM_F_DUMP_INTR);
            # the only remedy is to redo it.
            if not interrupted:
                return proxies
        raise KproxyError(
            errno.EINTR, f"dump interrupted by concurrent changes {DUMP_RETRIES} times"
        )

    def _dump_proxies(self) -> tuple[list[Proxy], bool]:
        """Every proxy of one proxy-get dump (the layout route of
        kpctl.decode), and whether the kernel flagged it as interrupted."""
        out: list[Proxy] = []
        append = out.append
        decode = self._reader.decode
        interrupted = False
        attrs_at = wire.HEADERS

        def keep(buf: bytearray, off: int, length: int, mtype: int, flags: int) -> None:
            nonlocal interrupted
            if flags & wire.NLM_F_DUMP_INTR:
                interrupted = True
            append(decode(buf, off + attrs_at, off + length))

        seq = self._next_seq()
        req = wire.request(self.family_id, self._spec.cmd("proxy-get"), self._spec.version,
                           wire.NLM_F_REQUEST | wire.NLM_F_DUMP, seq)
        with self._dump_socket() as sock:
            self._exchange(sock, req, seq, self.family_id, keep, dump=True)
        return out, interrupted

    def attach(self, proxy_id: int, kind: str, prog: Any, direction: str = "both", *,
               replies: Sequence[bytes] | None = None) -> None:
        """Attach (or replace) a BPF program on a direction of a proxy.

        `kind`: "parser" or "verdict"; `direction`: "a-to-b", "b-to-a" or
        "both"; `prog`: a program fd (int) or a loaded program (an object
        with fileno() or fd, e.g. kpctl.bpf.Program).  The kernel takes its
        own reference: the caller may close its program afterwards.
        `replies`: for a verdict, the bytes it may answer with (reply i for
        a return of 0x80000000 | i: sent to the message's sender before the
        proxy closes, reason "denied"); at most 16, each at most 1 KiB.
        """
        attrs: dict[str, Any] = {
            "id": int(proxy_id),
            "prog-fd": _prog_fd(prog),
            "kind": self._enum_value("bpf-kind", kind),
            "direction": self._enum_value("direction", direction),
        }
        if replies:
            attrs["verdict-replies"] = [bytes(r) for r in replies]
        self._do("bpf-attach", attrs)

    def detach(self, proxy_id: int, kind: str, direction: str = "both") -> None:
        """Detach the parser or verdict of a direction (ENOENT: none attached;
        EBUSY: a parser while a verdict still needs it)."""
        attrs = {
            "id": int(proxy_id),
            "kind": self._enum_value("bpf-kind", kind),
            "direction": self._enum_value("direction", direction),
        }
        self._do("bpf-detach", attrs)

    def _enum_value(self, enum: str, label: Any) -> int:
        if isinstance(label, int) and not isinstance(label, bool):
            return label  # raw values pass through (tests of the kernel's checks)
        en = self._spec.enums[enum]
        try:
            return en.value(str(label))
        except (KeyError, ValueError):
            raise KproxyError(
                errno.EINVAL, f"{enum} must be one of {', '.join(en.by_name)}, not {label!r}"
            ) from None

    def _program_attrs(self, parser: Any, verdict: Any, replies: Sequence[bytes] | None,
                       verdict_direction: Any) -> dict[str, Any]:
        """The attributes of programs given with proxy-new or listener-new."""
        attrs: dict[str, Any] = {}
        if parser is not None:
            attrs["parser-fd"] = _prog_fd(parser)
        if verdict is not None:
            attrs["verdict-fd"] = _prog_fd(verdict)
        if replies:
            attrs["verdict-replies"] = [bytes(r) for r in replies]
        if verdict_direction is not None:
            attrs["verdict-direction"] = self._enum_value("direction", verdict_direction)
        return attrs

    # listeners

    def listen(self, sock_or_fd: Any, target: Endpoint | str | tuple[str, int], *,
               max_proxies: int | None = None, connect_timeout: float | None = None,
               parser: Any = None, verdict: Any = None,
               source: Endpoint | str | tuple[str, int] | None = None,
               notify: bool = False, replies: Sequence[bytes] | None = None,
               verdict_direction: str | None = None) -> Listener:
        """Accept on a listening TCP socket in the kernel: every connection
        is connected to `target` ("HOST:PORT", ("host", port) or an
        Endpoint) and joined to it as a proxy, with no userspace per
        connection.  The listener takes its own reference on the socket:
        the caller may close its fd.

        max_proxies: its proxies alive at once, connects in flight
        included (beyond: the client is reset); connect_timeout: seconds
        a connect may take (the kernel's default: 10); parser/verdict: BPF
        programs (fds or loaded programs) attached to both directions of
        every proxy (the verdict to `verdict_direction`'s: "a-to-b",
        "b-to-a" or "both", the default); replies: the verdict's replies,
        as attach()'s; source: the address (port 0: any) to connect from;
        notify: the births and ends of its proxies come to this handle
        (ended(with_new=True)), not through the monitor group.
        """
        attrs: dict[str, Any] = {"fd": _fd(sock_or_fd), "target": _endpoint_attrs(target)}
        if source is not None:
            attrs["source"] = _endpoint_attrs(source)
        if max_proxies is not None:
            attrs["max-proxies"] = int(max_proxies)
        if connect_timeout is not None:
            attrs["connect-timeout-ms"] = max(1, round(connect_timeout * 1000))
        attrs.update(self._program_attrs(parser, verdict, replies, verdict_direction))
        if notify:
            attrs["notify"] = True
            self._big_request_rcvbuf()
        reply = self._do("listener-new", attrs)
        if reply is None:
            raise KproxyError(errno.EPROTO, "listener-new: no reply from the kernel")
        return listener_from_attrs(reply)

    def listeners(self) -> list[Listener]:
        """All listeners of this handle's netns, from one consistent dump."""
        for _ in range(DUMP_RETRIES):
            msgs = self._messages("listener-get", b"", dump=True)
            if not any(m.flags & wire.NLM_F_DUMP_INTR for m in msgs):
                return [listener_from_attrs(m.attrs) for m in msgs if m.attrs is not None]
        raise KproxyError(
            errno.EINTR, f"dump interrupted by concurrent changes {DUMP_RETRIES} times"
        )

    def get_listener(self, listener_id: int) -> Listener:
        reply = self._do("listener-get", {"id": int(listener_id)})
        if reply is None:
            raise KproxyError(errno.EPROTO, "listener-get: no reply from the kernel")
        return listener_from_attrs(reply)

    def close_listener(self, listener_id: int, end_proxies: bool = False) -> None:
        """Stop accepting: the listening socket is handed back and connects
        in flight end; the listener's proxies go on unless end_proxies."""
        attrs: dict[str, Any] = {"id": int(listener_id)}
        if end_proxies:
            attrs["end-proxies"] = True
        self._do("listener-del", attrs)

    def monitor(self, listeners: bool = False) -> Monitor:
        """A new Monitor of the `monitor` group (its own netlink socket).

        Events that happened before this call are not seen: open the
        monitor first, then act.  listeners=True: the listeners' events
        (ListenerEvent) come too; without it only proxies' (Event), which
        is what every caller written before listeners expects.
        """
        groups = self._info().mcast_groups
        group = self._spec.mcast_groups[0] if self._spec.mcast_groups else "monitor"
        if group not in groups:
            raise KproxyError(errno.ENOENT, f"multicast group {group!r} not registered")
        try:
            sock = self._raw_socket()
        except OSError as e:
            raise _os_error(e) from None
        try:
            _big_rcvbuf(sock, MONITOR_RCVBUF)
            sock.bind((0, 0))
            sock.setsockopt(wire.SOL_NETLINK, wire.NETLINK_ADD_MEMBERSHIP, groups[group])
        except OSError as e:
            sock.close()
            raise KproxyError(e.errno or errno.EIO, f"cannot join {group!r}: {e.strerror}") from None
        mon = Monitor(sock, self.family_id, self._spec, listeners)
        self._monitors.add(mon)
        return mon

    def events(self) -> Iterator[Event]:
        """Alias of monitor() for `for ev in kp.events():`."""
        return self.monitor()
