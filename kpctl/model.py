"""What kpctl hands to its users: frozen, JSON-ready values.

These classes know nothing about netlink or /proc; client.py and procfs.py
build them.  `to_dict()` is what `kpctl -j` prints, so its keys are a public
format: add keys, never rename them.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

STATES: tuple[str, ...] = ("active", "half-closed", "closing")
REASONS: tuple[str, ...] = ("user", "closed", "reset", "error", "netns-exit", "unload",
                            "tls-alert", "tls-rekey")

# The kernel's TCP states (include/net/tcp_states.h) by the names `ss` and
# `ip -j` print; the JSON form of SockInfo.tcp_state.
TCP_STATES: dict[int, str] = {
    1: "established", 2: "syn-sent", 3: "syn-recv", 4: "fin-wait-1",
    5: "fin-wait-2", 6: "time-wait", 7: "close", 8: "close-wait",
    9: "last-ack", 10: "listen", 11: "closing", 12: "new-syn-recv",
}  # fmt: skip


@dataclass(frozen=True)
class Endpoint:
    """An address and port, printed as iproute2 does: 10.0.0.1:80, [::1]:80.

    That string is also its JSON form (the to_dict() of what holds it):
    addresses are never {"host", "port"} objects.
    """

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @classmethod
    def parse(cls, text: str) -> "Endpoint":
        """Parse `1.2.3.4:80` or `[::1]:80` (the /proc and CLI form)."""
        text = text.strip()
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep:
                raise ValueError(f"bad endpoint {text!r}: expected [addr]:port")
        else:
            host, sep, port = text.rpartition(":")
            if not sep or ":" in host:
                raise ValueError(f"bad endpoint {text!r}: expected addr:port")
        try:
            addr = ipaddress.ip_address(host)
            portnum = int(port)
        except ValueError as e:
            raise ValueError(f"bad endpoint {text!r}: {e}") from None
        if not 0 <= portnum <= 65535:
            raise ValueError(f"bad endpoint {text!r}: port out of range")
        return cls(str(addr), portnum)

    @classmethod
    def from_bytes(cls, raw: bytes, port: int) -> "Endpoint":
        """From a network-order address (4 or 16 bytes) as netlink carries it,
        written as the kernel writes it in /proc (inet_ntop)."""
        if len(raw) not in (4, 16):
            raise ValueError(f"an address is 4 or 16 bytes, not {len(raw)}")
        return cls(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw), port)


# kTLS protocol versions and ciphers (linux/tls.h) by the names kpctl and
# /proc/net/kproxy print.
TLS_VERSIONS: dict[int, str] = {0x0303: "1.2", 0x0304: "1.3"}
TLS_CIPHERS: dict[int, str] = {
    51: "aes-128-gcm", 52: "aes-256-gcm", 53: "aes-128-ccm", 54: "chacha20-poly1305",
}  # fmt: skip


@dataclass(frozen=True)
class TlsInfo:
    """A kTLS side: its protocol version ("1.3") and cipher ("aes-128-gcm")."""

    version: str
    cipher: str

    @classmethod
    def from_codes(cls, version: int, cipher: int) -> TlsInfo:
        return cls(TLS_VERSIONS.get(version, f"0x{version:04x}"),
                   TLS_CIPHERS.get(cipher, f"cipher-{cipher}"))

    @classmethod
    def parse(cls, text: str) -> TlsInfo | None:
        """/proc/net/kproxy's a_tls/b_tls column: "-" or "1.3/aes-128-gcm"."""
        if text == "-":
            return None
        version, _, cipher = text.partition("/")
        return cls(version, cipher)

    def __str__(self) -> str:
        return f"TLS {self.version} {self.cipher}"


@dataclass(frozen=True)
class SockInfo:
    """One side of a proxy.  tcp_state is None where unknown (from /proc);
    tls is None for a plain TCP socket."""

    family: int
    local: Endpoint
    remote: Endpoint
    tcp_state: int | None
    tls: TlsInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}.get(
                self.family, self.family
            ),
            "local": str(self.local),
            "remote": str(self.remote),
            "tcp_state": None if self.tcp_state is None else TCP_STATES.get(self.tcp_state),
            "tls": None if self.tls is None else asdict(self.tls),
        }


@dataclass(frozen=True)
class DirStats:
    """Counters of one direction (read from one socket, sent on the other),
    and the ids of the BPF programs attached to it (None: none attached)."""

    bytes: int = 0
    skbs: int = 0
    msgs: int = 0
    drops: int = 0
    queued: int = 0
    shut: bool = False
    parser_id: int | None = None
    verdict_id: int | None = None
    # TLS records the source received / the destination sent under their
    # current keys (kTLS sides only; None for plain TCP and from /proc).
    tls_records_in: int | None = None
    tls_records_out: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The fields a deferred Proxy makes on first access.
_NESTED = ("a", "b", "a_to_b", "b_to_a")


@dataclass(frozen=True)
class Proxy:
    """One proxy.  A list of thousands comes from deferred_proxy(): its
    sockets and counters are built from the decoded values when first
    read (by attribute, ==, repr, to_dict or dataclasses.replace), which a
    caller that only counts or filters by id never pays for."""

    id: int
    state: str
    created_ns: int
    a: SockInfo
    b: SockInfo
    a_to_b: DirStats
    b_to_a: DirStats
    # The listener that made it; None for a proxy made by create().
    listener_id: int | None = None

    def __getattr__(self, name: str) -> Any:
        # Reached only for a name not in the instance: the nested fields of
        # a deferred Proxy before their first use.
        pending = self.__dict__.get("_nested") if name in _NESTED else None
        if pending is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        nested, values = pending
        d = self.__dict__
        d["a"], d["b"], d["a_to_b"], d["b_to_a"] = nested(values)
        d.pop("_nested", None)  # another thread may have got here first
        return d[name]

    @property
    def age(self) -> float:
        """Seconds since creation (wall clock, as created_ns is CLOCK_REALTIME)."""
        return max(0.0, time.time() - self.created_ns / 1e9)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "created_ns": self.created_ns,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "a_to_b": self.a_to_b.to_dict(),
            "b_to_a": self.b_to_a.to_dict(),
            "listener_id": self.listener_id,
        }


Nested = Callable[[Any], tuple[SockInfo, SockInfo, DirStats, DirStats]]


def deferred_proxy(id: int, state: str, created_ns: int, nested: Nested, values: Any,
                   _new: Callable[[type], Any] = object.__new__,
                   listener_id: int | None = None) -> Proxy:
    """A Proxy whose a, b, a_to_b and b_to_a are nested(values), made when
    first read.  (Called once per proxy of a dump: kept to the bone.)"""
    p = _new(Proxy)
    d = p.__dict__
    d["id"] = id
    d["state"] = state
    d["created_ns"] = created_ns
    d["_nested"] = (nested, values)
    if listener_id:
        d["listener_id"] = listener_id
    return p


@dataclass(frozen=True)
class Event:
    """A monitor notification: a proxy was created ('new') or ended ('del')."""

    kind: str
    proxy: Proxy
    reason: str | None
    timestamp: float
    # The description of the TLS alert that ended the proxy (reason tls-alert).
    tls_alert: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reason": self.reason,
            "timestamp": self.timestamp,
            "proxy": self.proxy.to_dict(),
            "tls_alert": self.tls_alert,
        }


# A listener's counters, by the names its JSON form and /proc use.
LISTENER_COUNTERS: tuple[str, ...] = (
    "accepted", "created", "failed_refused", "failed_unreachable", "failed_timeout",
    "failed_other", "refused_limit", "active", "pending", "ended", "ended_bytes_a_to_b",
    "ended_bytes_b_to_a",
)  # fmt: skip


@dataclass(frozen=True)
class Listener:
    """A kernel listener: connections accepted on `listen` are connected
    to `target` and joined as proxies, with no userspace per connection.
    max_proxies 0: no limit of its own.  The counters are what the kernel
    counted when this value was read."""

    id: int
    listen: Endpoint
    target: Endpoint
    source: Endpoint | None
    max_proxies: int
    connect_timeout_ms: int
    parser_id: int | None
    verdict_id: int | None
    created_ns: int
    accepted: int = 0
    created: int = 0
    failed_refused: int = 0
    failed_unreachable: int = 0
    failed_timeout: int = 0
    failed_other: int = 0
    refused_limit: int = 0
    active: int = 0
    pending: int = 0
    ended: int = 0  # its proxies that ended, and the bytes they carried:
    ended_bytes_a_to_b: int = 0
    ended_bytes_b_to_a: int = 0

    @property
    def failed(self) -> int:
        """Connections whose connect to the target failed, any cause."""
        return self.failed_refused + self.failed_unreachable + self.failed_timeout + self.failed_other

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "listen": str(self.listen),
            "target": str(self.target),
            "source": None if self.source is None else str(self.source),
            "max_proxies": self.max_proxies,
            "connect_timeout_ms": self.connect_timeout_ms,
            "parser_id": self.parser_id,
            "verdict_id": self.verdict_id,
            "created_ns": self.created_ns,
            "counters": {name: getattr(self, name) for name in LISTENER_COUNTERS},
        }


@dataclass(frozen=True)
class ListenerEvent:
    """A monitor notification about a listener: kind 'listener-new' or
    'listener-del' (with its final counters)."""

    kind: str
    listener: Listener
    timestamp: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "timestamp": self.timestamp,
                "listener": self.listener.to_dict()}


@dataclass(frozen=True)
class Totals:
    """/proc/net/kproxy_stat: per-netns totals since the module was loaded."""

    active: int = 0
    created: int = 0
    ended_user: int = 0
    ended_closed: int = 0
    ended_reset: int = 0
    ended_error: int = 0
    ended_netns_exit: int = 0
    ended_unload: int = 0
    ended_tls_alert: int = 0
    ended_tls_rekey: int = 0
    bytes: int = 0
    skbs: int = 0
    msgs: int = 0
    drops: int = 0
    sends: int = 0
    work_runs: int = 0
    tls_records_in: int = 0
    tls_records_out: int = 0
    tls_control: int = 0

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
