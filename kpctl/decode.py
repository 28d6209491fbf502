"""Replies and notifications -> model values (Proxy, Event).

Two routes give equal values: proxy_from_attrs() from the general
decoder's dict, and the layout route (kpctl.layout) that a dump of
thousands takes, where a Proxy is made from one tuple of values and its
sockets and counters only when first read (deferred_proxy).  Both go
through sock_info() and dir_stats(), so they cannot drift apart.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

from . import layout as layout_mod
from . import spec as spec_mod
from . import wire
from .model import (
    LISTENER_COUNTERS,
    DirStats,
    Endpoint,
    Event,
    Listener,
    ListenerEvent,
    Proxy,
    SockInfo,
    TlsInfo,
    deferred_proxy,
)

_SOCK_FIELDS = ("family", "local-addr", "local-port", "remote-addr", "remote-port", "tcp-state",
                "tls-version", "tls-cipher")
_DIR_FIELDS = ("bytes", "skbs", "msgs", "drops", "queued", "parser-id", "verdict-id",
               "tls-records-in", "tls-records-out", "denied")
_SOCKS = ("sock-a", "sock-b")
# enum direction of schema/kproxy.yaml (a module without verdict-direction
# attaches a listener's verdict to both).
_DIRECTIONS = {0: "a-to-b", 1: "b-to-a", 2: "both"}
_DIRS = ("a-to-b", "b-to-a")


def _endpoint(family: int, raw: bytes | None, port: int) -> Endpoint:
    if raw is None or len(raw) not in (4, 16):
        # Absent (or not an address): the unspecified one of the family.
        return Endpoint("::" if family == socket.AF_INET6 else "0.0.0.0", port)
    return Endpoint.from_bytes(raw, port)


_NO_SOCK = SockInfo(socket.AF_UNSPEC, Endpoint("0.0.0.0", 0), Endpoint("0.0.0.0", 0), None)


def sock_info(family: int | None, laddr: bytes | None, lport: int | None,
              raddr: bytes | None, rport: int | None, tcp_state: int | None,
              tls_version: int | None = None, tls_cipher: int | None = None) -> SockInfo:
    """One side, from the sock nest's attributes (None: absent)."""
    if family is None and laddr is None and lport is None and raddr is None \
            and rport is None and tcp_state is None:
        return _NO_SOCK
    family = family or socket.AF_UNSPEC
    tls = None if tls_version is None else TlsInfo.from_codes(tls_version, tls_cipher or 0)
    return SockInfo(family, _endpoint(family, laddr, lport or 0),
                    _endpoint(family, raddr, rport or 0), tcp_state, tls)


def dir_stats(nbytes: int | None, skbs: int | None, msgs: int | None, drops: int | None,
              queued: int | None, parser_id: int | None, verdict_id: int | None,
              tls_in: int | None, tls_out: int | None, denied: int | None,
              shut: bool) -> DirStats:
    """One direction, from the dir nest's attributes (None: absent)."""
    return DirStats(nbytes or 0, skbs or 0, msgs or 0, drops or 0, queued or 0, shut,
                    parser_id or None, verdict_id or None, tls_in, tls_out, denied or 0)


def _state(spec: spec_mod.Spec, value: int | None) -> str:
    return spec.enums["state"].label(value) if value is not None else "active"


def proxy_from_attrs(attrs: dict[str, Any], spec: spec_mod.Spec) -> Proxy:
    """A Proxy from the decoded attributes of a reply or notification."""
    socks = [attrs.get(n) or {} for n in _SOCKS]
    dirs = [attrs.get(n) or {} for n in _DIRS]
    return Proxy(
        id=attrs.get("id") or 0,
        state=_state(spec, attrs.get("state")),
        created_ns=attrs.get("create-time") or 0,
        a=sock_info(*(socks[0].get(f) for f in _SOCK_FIELDS)),
        b=sock_info(*(socks[1].get(f) for f in _SOCK_FIELDS)),
        a_to_b=dir_stats(*(dirs[0].get(f) for f in _DIR_FIELDS), bool(dirs[0].get("shut"))),
        b_to_a=dir_stats(*(dirs[1].get(f) for f in _DIR_FIELDS), bool(dirs[1].get("shut"))),
        listener_id=attrs.get("listener-id") or None,
    )


def _endpoint_of(nest: dict[str, Any] | None) -> Endpoint | None:
    if not nest or "addr" not in nest:
        return None
    return Endpoint.from_bytes(nest["addr"], nest.get("port") or 0)


def listener_from_attrs(attrs: dict[str, Any]) -> Listener:
    """A Listener from the decoded attributes of a listener message."""
    counters = {name: attrs.get(name.replace("_", "-")) or 0 for name in LISTENER_COUNTERS}
    unknown = Endpoint("0.0.0.0", 0)
    return Listener(
        id=attrs.get("id") or 0,
        listen=_endpoint_of(attrs.get("listen")) or unknown,
        target=_endpoint_of(attrs.get("target")) or unknown,
        source=_endpoint_of(attrs.get("source")),
        max_proxies=attrs.get("max-proxies") or 0,
        connect_timeout_ms=attrs.get("connect-timeout-ms") or 0,
        parser_id=attrs.get("parser-id") or None,
        verdict_id=attrs.get("verdict-id") or None,
        verdict_direction=(_DIRECTIONS.get(attrs["verdict-direction"])
                           if attrs.get("verdict-id") and "verdict-direction" in attrs
                           else ("both" if attrs.get("verdict-id") else None)),
        created_ns=attrs.get("create-time") or 0,
        **counters,
    )


def listener_event_from_attrs(cmd: int, attrs: dict[str, Any], spec: spec_mod.Spec,
                              timestamp: float | None = None) -> ListenerEvent | None:
    """A ListenerEvent from a notification; None for another command."""
    kind = {"listener-new-ntf": "listener-new", "listener-del-ntf": "listener-del"}.get(
        spec.command_names.get(cmd, ""))
    if kind is None:
        return None
    return ListenerEvent(kind, listener_from_attrs(attrs),
                         time.time() if timestamp is None else timestamp)


def event_from_attrs(cmd: int, attrs: dict[str, Any], spec: spec_mod.Spec,
                     timestamp: float | None = None) -> Event | None:
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
        tls_alert=attrs.get("tls-alert"),
    )


def _getter(index: dict[layout_mod.Path, int], path: layout_mod.Path) -> Callable[[tuple], Any]:
    i = index.get(path)
    if i is None:
        return lambda v: None
    return lambda v: v[i]


def compile_proxy(lay: layout_mod.Layout, spec: spec_mod.Spec) -> Callable[[tuple], Proxy]:
    """The maker of a deferred Proxy from the values of one layout."""
    index = {p: i for i, p in enumerate(lay.paths)}
    socks = [[_getter(index, (s, f)) for f in _SOCK_FIELDS] for s in _SOCKS]
    dirs = [([_getter(index, (d, f)) for f in _DIR_FIELDS], (d, "shut") in lay.flags) for d in _DIRS]

    def nested(v: tuple) -> tuple[SockInfo, SockInfo, DirStats, DirStats]:
        (a, b), (ab, ba) = socks, dirs
        return (sock_info(*(g(v) for g in a)), sock_info(*(g(v) for g in b)),
                dir_stats(*(g(v) for g in ab[0]), ab[1]), dir_stats(*(g(v) for g in ba[0]), ba[1]))

    i_id, i_state, i_time = (index.get((n,)) for n in ("id", "state", "create-time"))
    i_listener = index.get(("listener-id",))
    label = spec.enums["state"].label
    deferred = deferred_proxy
    if i_listener is not None:
        # A listener's proxy: the general route, which reads its id too.
        get_id, get_state, get_time = (_getter(index, (n,)) for n in ("id", "state", "create-time"))
        return lambda v: deferred(get_id(v) or 0, _state(spec, get_state(v)),
                                  get_time(v) or 0, nested, v, listener_id=v[i_listener])
    if i_id is None or i_state is None or i_time is None:
        # Not what the kernel sends, but a layout all the same.
        get_id, get_state, get_time = (_getter(index, (n,)) for n in ("id", "state", "create-time"))
        return lambda v: deferred(get_id(v) or 0, _state(spec, get_state(v)),
                                  get_time(v) or 0, nested, v)
    # The kernel's shape: the three top-level values are always there.
    return lambda v: deferred(v[i_id], label(v[i_state]), v[i_time], nested, v)


class ProxyReader:
    """Proxies from the messages of one spec: the layout route, falling
    back to the general decoder."""

    def __init__(self, spec: spec_mod.Spec) -> None:
        layouts: layout_mod.Layouts[Proxy] = layout_mod.Layouts(
            wire.decoder(spec), lambda lay: compile_proxy(lay, spec),
            lambda attrs: proxy_from_attrs(attrs, spec))
        # decode(buf, off, end): the Proxy of the attributes in buf[off:end]
        # (a message's, from wire.HEADERS on); bound once, called per proxy.
        self.decode = layouts.decode
