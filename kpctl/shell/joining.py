"""The sockets `create --listen/--connect` joins: accept one client, connect
to a target, each within a deadline, in the context's network namespace.

Every failure is a KproxyError (an errno and a sentence naming the
address), and every socket made here is closed on failure: nothing is left
open or listening.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable

from kpctl.errors import KproxyError

SocketFactory = Callable[[int], socket.socket]


def socket_factory_for(netns: str | None) -> SocketFactory:
    """TCP sockets made in `netns` (a socket stays in the netns it was made in)."""
    if not netns:
        return lambda family: socket.socket(family, socket.SOCK_STREAM)
    from kpctl.netns import socket_in_netns
    return lambda family: socket_in_netns(netns, family, socket.SOCK_STREAM)


def _close(s: socket.socket | None) -> None:
    if s is not None:
        try:
            s.close()
        except OSError:
            pass


def _os_error(e: OSError, what: str) -> KproxyError:
    num = e.errno or errno.EIO
    return KproxyError(num, f"{what}: {e.strerror or e}")


def _wait_text(timeout: float | None) -> str:
    return f"{timeout:g} s"


def open_listener(addr: Any, make: SocketFactory) -> socket.socket:
    """A listening socket on `addr` (a kpctl.address.Address)."""
    ls = make(addr.family)
    try:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(addr.sockaddr())
        ls.listen(1)
    except OSError as e:
        _close(ls)
        raise _os_error(e, f"cannot listen on {addr}") from None
    return ls


def accept_one(ls: socket.socket, where: str, timeout: float | None) -> socket.socket:
    """The first client of `ls` (listening on `where`); the listener stays
    the caller's to close."""
    ls.settimeout(timeout)
    try:
        conn, _peer = ls.accept()
    except socket.timeout:
        raise KproxyError(errno.ETIMEDOUT, f"no client connected to {where} within "
                                           f"{_wait_text(timeout)}") from None
    except OSError as e:
        raise _os_error(e, f"cannot accept on {where}") from None
    conn.settimeout(None)
    return conn


def connect_one(addr: Any, timeout: float | None, make: SocketFactory) -> socket.socket:
    """A socket connected to `addr` (a kpctl.address.Address)."""
    s = make(addr.family)
    try:
        s.settimeout(timeout)
        s.connect(addr.sockaddr())
        s.settimeout(None)
    except socket.timeout:
        _close(s)
        raise KproxyError(errno.ETIMEDOUT, f"cannot connect to {addr.describe()}: no answer "
                                           f"within {_wait_text(timeout)}") from None
    except OSError as e:
        _close(s)
        raise _os_error(e, f"cannot connect to {addr.describe()}") from None
    except BaseException:  # Ctrl-C while connecting
        _close(s)
        raise
    return s
