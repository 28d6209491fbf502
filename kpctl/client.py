"""Kproxy: the library's handle on the kproxy generic-netlink family.

pyroute2 does the netlink work (framing, sequence numbers, acks, extended
ack); the message classes come from the schema (spec.py).  This module only
chooses flags, turns replies into model values and errors into KproxyError.

A Kproxy is not meant to be used by several threads at once (pyroute2's
sync sockets keep per-thread state); calls are serialised by a lock, and a
program that wants parallel requests opens one Kproxy per thread.  Monitors
are separate sockets and may be read in any thread.
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
from typing import Any, Iterator

from pyroute2.netlink import (
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_EXT_ACK,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    SOL_NETLINK,
    genlmsg,
    nlmsgerr,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

from . import spec as spec_mod
from . import wire
from .errors import KproxyError, from_netlink
from .model import DirStats, Endpoint, Event, Proxy, SockInfo
from .netns import socket_in_netns

NETLINK_GENERIC = 16

# How often a dump raced by changes (NLM_F_DUMP_INTR) is restarted before
# giving up: each retry is a full dump, and a steady churn of proxies could
# otherwise keep us looping forever.
DUMP_RETRIES = 8

# A dump's datagrams are at most 32 KiB (netlink_dump's largest skb); the
# kernel answers at once, so a silent socket means something is badly wrong.
DUMP_RECV_SIZE = 64 << 10
DUMP_TIMEOUT = 60.0

# Notifications come in bursts (an unload or a netns exit ends every proxy
# at once); a large receive buffer keeps a monitor from losing them.
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


# --- replies -> model ----------------------------------------------------


def _sock_info(nest: dict[str, Any] | None) -> SockInfo:
    if not nest:
        empty = Endpoint("0.0.0.0", 0)
        return SockInfo(socket.AF_UNSPEC, empty, empty, None)
    family = nest.get("family") or socket.AF_UNSPEC

    def endpoint(addr_attr: str, port_attr: str) -> Endpoint:
        raw = nest.get(addr_attr)
        port = nest.get(port_attr) or 0
        if not raw:
            return Endpoint("::" if family == socket.AF_INET6 else "0.0.0.0", port)
        return Endpoint.from_bytes(raw, port)

    return SockInfo(
        family=family,
        local=endpoint("local-addr", "local-port"),
        remote=endpoint("remote-addr", "remote-port"),
        tcp_state=nest.get("tcp-state"),
    )


def _dir_stats(nest: dict[str, Any] | None) -> DirStats:
    if not nest:
        return DirStats()
    return DirStats(
        bytes=nest.get("bytes") or 0,
        skbs=nest.get("skbs") or 0,
        msgs=nest.get("msgs") or 0,
        drops=nest.get("drops") or 0,
        queued=nest.get("queued") or 0,
        shut=bool(nest.get("shut")),
        parser_id=nest.get("parser-id") or None,
        verdict_id=nest.get("verdict-id") or None,
    )


def proxy_from_attrs(attrs: dict[str, Any], spec: spec_mod.Spec) -> Proxy:
    """A Proxy from the decoded attributes of a reply or notification."""
    state = attrs.get("state")
    return Proxy(
        id=attrs.get("id") or 0,
        state=spec.enums["state"].label(state) if state is not None else "active",
        created_ns=attrs.get("create-time") or 0,
        a=_sock_info(attrs.get("sock-a")),
        b=_sock_info(attrs.get("sock-b")),
        a_to_b=_dir_stats(attrs.get("a-to-b")),
        b_to_a=_dir_stats(attrs.get("b-to-a")),
    )


def event_from_attrs(
    cmd: int, attrs: dict[str, Any], spec: spec_mod.Spec, timestamp: float | None = None
) -> Event | None:
    """An Event from a notification's command and attributes; None for a
    command that is not a notification we know."""
    kind = {"proxy-new-ntf": "new", "proxy-del-ntf": "del"}.get(spec.command_names.get(cmd, ""))
    if kind is None:
        return None
    reason = attrs.get("reason")
    return Event(
        kind=kind,
        proxy=proxy_from_attrs(attrs, spec),
        reason=spec.enums["reason"].label(reason) if reason is not None else None,
        timestamp=time.time() if timestamp is None else timestamp,
    )


def _msg_attrs(msg: genlmsg, decoder: wire.Decoder) -> dict[str, Any]:
    """The attributes of a message pyroute2 has read, decoded by ours, so
    that every path builds its model values the same way."""
    start = msg.offset + wire.NLMSGHDR.size + wire.GENLMSGHDR.size
    return decoder.attrs(msg.data, start, msg.offset + msg["header"]["length"])


def proxy_from_msg(msg: genlmsg, spec: spec_mod.Spec | None = None) -> Proxy:
    """Decode a proxy-get/proxy-new reply or a notification into a Proxy."""
    spec = spec or spec_mod.default()
    return proxy_from_attrs(_msg_attrs(msg, wire.decoder(spec)), spec)


def event_from_msg(
    msg: genlmsg, spec: spec_mod.Spec | None = None, timestamp: float | None = None
) -> Event | None:
    """Decode a notification; None for a command that is not one we know."""
    spec = spec or spec_mod.default()
    return event_from_attrs(msg["cmd"], _msg_attrs(msg, wire.decoder(spec)), spec, timestamp)


# --- the monitor ---------------------------------------------------------


class Monitor:
    """An iterator of Events read from its own socket in the `monitor` group.

    Iteration blocks; close() (from any thread, or Kproxy.close()) ends it
    cleanly.  get(timeout) waits at most `timeout` seconds.
    """

    def __init__(
        self, sock: socket.socket, family_id: int, spec: spec_mod.Spec
    ) -> None:
        self._sock = sock
        self._spec = spec
        self._family_id = family_id
        self._decoder = wire.decoder(spec)
        self._pending: deque[Event] = deque()
        self._closed = False
        # A pipe wakes a reader blocked in select() when close() is called.
        self._wake_r, self._wake_w = os.pipe()
        self._read_lock = threading.Lock()

    def __iter__(self) -> "Monitor":
        return self

    def __next__(self) -> Event:
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

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None on timeout or once closed."""
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
            raise KproxyError(e.errno or errno.EIO, e.strerror) from None
        now = time.time()
        for msg in self._decoder.messages(data, self._family_id):
            if msg.attrs is None:
                continue
            ev = event_from_attrs(msg.cmd, msg.attrs, self._spec, now)
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


# --- errors --------------------------------------------------------------


class _ExtAck(nlmsgerr):
    """nlmsgerr with the extended-ack attributes pyroute2 leaves undecoded.

    Numbers are the kernel's enum nlmsgerr_attrs (uapi/linux/netlink.h),
    a stable ABI, not ours.
    """

    # pyroute2 caches a compiled nla table per class and finds the parent's
    # "compiled" mark through inheritance; this class needs its own table.
    _nlmsg_base__compiled_nla = False
    _nlmsg_base__t_nla_map = None
    _nlmsg_base__r_nla_map = None

    nla_map = (
        (0, "NLMSGERR_ATTR_UNUSED", "none"),
        (1, "NLMSGERR_ATTR_MSG", "asciiz"),
        (2, "NLMSGERR_ATTR_OFFS", "uint32"),
        (3, "NLMSGERR_ATTR_COOKIE", "hex"),
        (4, "NLMSGERR_ATTR_POLICY", "hex"),
        (5, "NLMSGERR_ATTR_MISS_TYPE", "uint32"),
        (6, "NLMSGERR_ATTR_MISS_NEST", "uint32"),
    )


_NLMSGHDR_LEN = 16
_GENLHDR_LEN = 4
_NLA_HDR = struct.Struct("HH")
_NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER


def _attr_at(
    spec: spec_mod.Spec, request: bytes, offset: int, set_name: str
) -> str | None:
    """Name the attribute of `request` at byte `offset` (NLMSGERR_ATTR_OFFS).

    The kernel points at the offending attribute by its offset in our own
    request (echoed back in the error); walking the attribute headers turns
    that into a name such as "sock-a.family" or "attribute 99".
    """
    names = {a.value: a for a in spec.attr_sets.get(set_name, {}).values()}
    pos = _NLMSGHDR_LEN + _GENLHDR_LEN
    prefix = ""
    end = len(request)
    while pos + _NLA_HDR.size <= end:
        length, typ = _NLA_HDR.unpack_from(request, pos)
        if length < _NLA_HDR.size:
            return None
        typ &= _NLA_TYPE_MASK
        attr = names.get(typ)
        label = prefix + (attr.name if attr else f"attribute {typ}")
        if pos <= offset < pos + length:
            inner = pos + _NLA_HDR.size
            if attr is not None and attr.nested and offset >= inner:
                # Descend into the nest and keep walking its attributes.
                names = {a.value: a for a in spec.attr_sets[attr.nested].values()}
                prefix = label + "."
                end = pos + length
                pos = inner
                continue
            return label
        pos += (length + 3) & ~3
    return None


def _attr_detail(
    spec: spec_mod.Spec, root_set: str, request: bytes, offset: int | None, missing: int | None
) -> str | None:
    """What the extended ack points at, by schema name: "attribute fd-a"
    (NLMSGERR_ATTR_OFFS) or "missing attribute id" (NLMSGERR_ATTR_MISS_TYPE)."""
    if offset is not None:
        name = _attr_at(spec, request, offset, root_set)
        if name:
            return f"attribute {name}" if not name.startswith("attribute") else name
    elif missing is not None:
        attr = {a.value: a.name for a in spec.attr_sets[root_set].values()}.get(missing)
        return f"missing attribute {attr or missing}"
    return None


def _with_detail(base: KproxyError, detail: str | None) -> KproxyError:
    if detail and detail.split(" ", 1)[-1] not in base.message:
        return KproxyError(base.errno, f"{base.message} ({detail})")
    return base


def _translate(spec: spec_mod.Spec, root_set: str, err: Any, msg: Any) -> KproxyError:
    """pyroute2's exception_factory: a KproxyError that names the attribute."""
    base = from_netlink(err)
    if not isinstance(msg, nlmsgerr) or getattr(msg, "data", None) is None:
        return base
    try:
        ext = _ExtAck(msg.data, offset=msg.offset)
        ext.decode()
        start = msg.offset + _NLMSGHDR_LEN + 4  # the echoed request
        (orig_len,) = struct.unpack_from("I", msg.data, start)
        request = bytes(msg.data[start : start + orig_len])
        detail = _attr_detail(spec, root_set, request, ext.get_attr("NLMSGERR_ATTR_OFFS"),
                              ext.get_attr("NLMSGERR_ATTR_MISS_TYPE"))
        return _with_detail(base, detail)
    except Exception:  # noqa: BLE001 - never hide the kernel's error behind ours
        return base


# --- the client ----------------------------------------------------------


def _keep_reading_until_done(nl: GenericNetlinkSocket) -> None:
    """Make pyroute2 read a reply up to NLMSG_DONE / the ack, not less.

    pyroute2 stops reading a request's answer at the first message without
    NLM_F_MULTI.  Dump messages built with genlmsg_iput() (the YNL-era
    helper) do not carry that flag, so a dump longer than one datagram
    would be cut short and its tail left in the socket.  Marking our
    family's messages as multipart makes pyroute2 read on until NLMSG_DONE
    (dumps) or the ack (do requests, which therefore always ask for one).
    """
    marshal = nl.asyncore.marshal
    family_id = nl.prid
    original = marshal.fix_message

    def fix_message(msg: Any) -> None:
        if msg["header"].get("type") == family_id:
            msg["header"]["flags"] |= NLM_F_MULTI
        original(msg)

    marshal.fix_message = fix_message



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
        self._version: int | None = None
        self._nl: GenericNetlinkSocket | None = None
        self._do_sock: socket.socket | None = None
        self._seq = 0
        nl: GenericNetlinkSocket | None = None
        try:
            if netns is None:
                nl = GenericNetlinkSocket(ext_ack=True)
            else:
                raw = self._raw_socket(socket.SOCK_DGRAM)
                # pyroute2 sets socket options only on sockets it creates.
                raw.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
                nl = GenericNetlinkSocket(ext_ack=True, use_socket=raw)
            # We report a missing family ourselves; keep pyroute2 quiet.
            nl.asyncore.module_err_level = "debug"
            nl.bind(self._spec.family, self._spec.msg_class)
            _keep_reading_until_done(nl)
            root = self._spec.root_set
            nl.asyncore.exception_factory = lambda err, msg: _translate(
                self._spec, root, err, msg
            )
        except NetlinkError as e:
            if nl is not None:
                nl.close()
            if e.code == errno.ENOENT:
                raise KproxyError(
                    errno.ENOENT,
                    f"kproxy module not loaded (family '{self._spec.family}' not found)",
                ) from None
            raise from_netlink(e) from None
        except OSError as e:
            if nl is not None:
                nl.close()
            raise KproxyError(e.errno or errno.EIO, e.strerror) from None
        self._nl = nl
        try:
            # Opened now, not on first use: a socket appearing later would
            # take an fd number the caller may have just seen free.
            self._do_sock = self._raw_socket(socket.SOCK_RAW)
            self._do_sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self._do_sock.settimeout(DUMP_TIMEOUT)
        except OSError as e:
            self.close()
            raise KproxyError(e.errno or errno.EIO, e.strerror) from None

    def _raw_socket(self, type: int) -> socket.socket:
        if self._netns is None:
            return socket.socket(socket.AF_NETLINK, type, NETLINK_GENERIC)
        return socket_in_netns(self._netns, socket.AF_NETLINK, type, NETLINK_GENERIC)

    # context manager / lifetime

    def __enter__(self) -> "Kproxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for mon in list(self._monitors):
            mon.close()
        with self._lock:
            if self._nl is not None:
                self._nl.close()
                self._nl = None
            if self._do_sock is not None:
                self._do_sock.close()
                self._do_sock = None

    @property
    def spec(self) -> spec_mod.Spec:
        return self._spec

    @property
    def netns(self) -> str | None:
        return self._netns

    def _sock(self) -> GenericNetlinkSocket:
        if self._nl is None:
            raise KproxyError(errno.EBADF, "Kproxy handle is closed")
        return self._nl

    @property
    def family_id(self) -> int:
        return int(self._sock().prid)

    @property
    def version(self) -> int:
        """The family version the running module registered."""
        if self._version is None:
            with self._lock:
                try:
                    reply = self._sock().discovery(self._spec.family)
                except NetlinkError as e:
                    raise from_netlink(e) from None
                self._version = int(reply.get_attr("CTRL_ATTR_VERSION") or 0)
        return self._version

    # requests

    def _request(self, cmd: str, attrs: dict[str, Any] | None, flags: int) -> list[genlmsg]:
        msg = self._spec.new_msg(cmd, attrs)
        with self._lock:
            nl = self._sock()
            try:
                return list(nl.nlm_request(msg, msg_type=nl.prid, msg_flags=flags))
            except NetlinkError as e:  # the exception_factory missed it
                raise from_netlink(e) from None

    def request(
        self, cmd: str, attrs: dict[str, Any] | None = None, *, dump: bool = False
    ) -> list[genlmsg]:
        """Send any operation of the spec, attributes by YAML name; raw replies.

        For tools and tests that need a message the typed API will not build
        (e.g. a request missing an attribute).  The reply list may end with
        the ack (an nlmsgerr with error 0).
        """
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        return self._request(cmd, attrs, flags)

    def send_raw(self, msg: genlmsg, *, dump: bool = False) -> list[genlmsg]:
        """Send a message built by the caller (tests of malformed requests).

        Errors are translated as for every other request.
        """
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        with self._lock:
            nl = self._sock()
            try:
                return list(nl.nlm_request(msg, msg_type=nl.prid, msg_flags=flags))
            except NetlinkError as e:
                raise from_netlink(e) from None

    def _do(self, cmd: str, attrs: dict[str, int]) -> dict[str, Any] | None:
        """A do request of the typed API: the reply's attributes, or None
        when the kernel only acked.

        Sent and read on a plain socket of the handle's own, encoded and
        decoded by kpctl.wire: pyroute2's message classes cost several
        times the kernel's own work per request, which a proxy service
        pays on every connection.
        """
        fid = self.family_id
        try:
            body = wire.encode_attrs(self._spec, attrs)
        except ValueError as e:
            raise KproxyError(errno.ERANGE, str(e)) from None
        decoder = wire.decoder(self._spec)
        with self._lock:
            self._seq = self._seq % 0xFFFFFFFF + 1
            seq = self._seq
            req = wire.request(fid, self._spec.cmd(cmd), self._spec.version,
                               NLM_F_REQUEST | NLM_F_ACK, seq, body)
            reply: dict[str, Any] | None = None
            try:
                sock = self._do_socket()
                sock.send(req)
                while True:
                    for m in decoder.messages(sock.recv(DUMP_RECV_SIZE), fid):
                        if m.seq != seq:
                            continue  # left by a request an exception interrupted
                        if m.type == wire.NLMSG_ERROR:
                            if m.error:
                                raise self._refused(m, req)
                            return reply
                        if m.attrs is not None:
                            reply = m.attrs
            except OSError as e:
                raise KproxyError(e.errno or errno.EIO, e.strerror or str(e)) from None

    def _do_socket(self) -> socket.socket:
        if self._do_sock is None:
            raise KproxyError(errno.EBADF, "Kproxy handle is closed")
        return self._do_sock

    def _refused(self, m: wire.Message, request: bytes) -> KproxyError:
        base = KproxyError(m.error, m.error_msg or None)
        detail = _attr_detail(self._spec, self._spec.root_set, request,
                              m.error_offset, m.error_missing)
        return _with_detail(base, detail)

    def _proxy_reply(self, cmd: str, attrs: dict[str, int]) -> Proxy:
        reply = self._do(cmd, attrs)
        if reply is None:
            raise KproxyError(errno.EPROTO, f"{cmd}: no reply from the kernel")
        return proxy_from_attrs(reply, self._spec)

    def create(self, sock_a: Any, sock_b: Any) -> Proxy:
        """Join two connected TCP sockets (socket objects or fds of ours).

        The proxy takes its own references: the caller may close its fds.
        """
        return self._proxy_reply("proxy-new", {"fd-a": _fd(sock_a), "fd-b": _fd(sock_b)})

    def get(self, proxy_id: int) -> Proxy:
        return self._proxy_reply("proxy-get", {"id": int(proxy_id)})

    def destroy(self, proxy_id: int) -> None:
        """End a proxy; sockets whose fds the caller kept work normally again."""
        self._do("proxy-del", {"id": int(proxy_id)})

    def list(self) -> list[Proxy]:
        """All proxies of this handle's netns, from one consistent dump."""
        for _ in range(DUMP_RETRIES):
            attrs, interrupted = self._dump("proxy-get")
            # The kernel flags a dump that raced a change (NLM_F_DUMP_INTR);
            # the only remedy is to redo it.
            if not interrupted:
                return [proxy_from_attrs(a, self._spec) for a in attrs]
        raise KproxyError(
            errno.EINTR, f"dump interrupted by concurrent changes {DUMP_RETRIES} times"
        )

    def _dump(self, cmd: str) -> tuple[list[dict[str, Any]], bool]:
        """The attributes of every message of one dump, and whether the
        kernel flagged it as interrupted.

        A dump is read on a socket of its own and decoded by kpctl.wire:
        pyroute2's parser would spend seconds on 10,000 proxies.
        """
        fid = self.family_id
        decoder = wire.decoder(self._spec)
        out: list[dict[str, Any]] = []
        interrupted = False
        sock = self._raw_socket(socket.SOCK_RAW)
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            sock.settimeout(DUMP_TIMEOUT)
            sock.send(wire.request(fid, self._spec.cmd(cmd), self._spec.version,
                                   NLM_F_REQUEST | NLM_F_DUMP, seq=1))
            while True:
                for m in decoder.messages(sock.recv(DUMP_RECV_SIZE), fid):
                    interrupted |= bool(m.flags & NLM_F_DUMP_INTR)
                    if m.type == wire.NLMSG_DONE:
                        return out, interrupted
                    if m.type == wire.NLMSG_ERROR:
                        raise KproxyError(m.error, m.error_msg or os.strerror(m.error))
                    if m.attrs is not None:
                        out.append(m.attrs)
        except OSError as e:
            raise KproxyError(e.errno or errno.EIO, e.strerror or str(e)) from None
        finally:
            sock.close()

    def attach(self, proxy_id: int, kind: str, prog: Any, direction: str = "both") -> None:
        """Attach (or replace) a BPF program on a direction of a proxy.

        `kind`: "parser" or "verdict"; `direction`: "a-to-b", "b-to-a" or
        "both"; `prog`: a program fd (int) or a loaded program (an object
        with fileno() or fd, e.g. kpctl.bpf.Program).  The kernel takes its
        own reference: the caller may close its program afterwards.
        """
        attrs = {
            "id": int(proxy_id),
            "prog-fd": _prog_fd(prog),
            "kind": self._enum_value("bpf-kind", kind),
            "direction": self._enum_value("direction", direction),
        }
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

    def monitor(self) -> Monitor:
        """A new Monitor of the `monitor` group (its own netlink socket).

        Events that happened before this call are not seen: open the
        monitor first, then act.
        """
        groups = self._sock().mcast_groups
        group = self._spec.mcast_groups[0] if self._spec.mcast_groups else "monitor"
        if group not in groups:
            raise KproxyError(errno.ENOENT, f"multicast group {group!r} not registered")
        sock = self._raw_socket(socket.SOCK_RAW)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, MONITOR_RCVBUF)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MONITOR_RCVBUF)
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, groups[group])
        except OSError as e:
            sock.close()
            raise KproxyError(e.errno or errno.EIO, f"cannot join {group!r}: {e.strerror}") from None
        mon = Monitor(sock, self.family_id, self._spec)
        self._monitors.add(mon)
        return mon

    def events(self) -> Iterator[Event]:
        """Alias of monitor() for `for ev in kp.events():`."""
        return self.monitor()
