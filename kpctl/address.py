"""LISTEN and TARGET of `kpctl serve`: parsed and resolved once.

Forms: HOST:PORT, IPV4:PORT, [IPV6]:PORT (as iproute2 and ss print them);
for LISTEN also :PORT, *:PORT and PORT (every IPv4 address).  str(Address)
is the one printed form ("HOST:PORT", "[::1]:80").
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable


class ServeError(Exception):
    """A LISTEN/TARGET or a serve option the service cannot run with; the
    CLI turns it into a usage error. Defined here, where the first such
    errors are found; kpctl.serve raises it for its options."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


def split_hostport(text: str, listen: bool = False) -> tuple[str, str]:
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


def resolve(text: str, listen: bool = False, resolver: Resolver | None = None) -> Address:
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


def check_distinct(listen: Address, target: Address) -> None:
    """Refuse a service that would connect to itself."""
    if listen.port != target.port or listen.port == 0:
        return
    same = listen.host == target.host or (
        listen.host in ("0.0.0.0", "::") and ipaddress.ip_address(target.host).is_loopback)
    if same:
        raise ServeError(f"LISTEN {listen} and TARGET {target} are the same address: "
                         f"the service would connect to itself")
