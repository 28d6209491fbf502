"""Open a socket inside a named network namespace.

A socket belongs for life to the netns it was created in, so it is enough
to create it there.  setns() changes the namespace of the calling thread
only; doing it in a short-lived thread of our own leaves every other thread
(and the caller) where it was, without forking a helper process as
pyroute2's netns support does (and without its habit of creating a missing
namespace).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Callable, TypeVar

from .errors import KproxyError

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def netns_path(name: str) -> str:
    """`name` under /var/run/netns (as `ip netns` names them), or a path."""
    return name if "/" in name else os.path.join(NETNS_RUN_DIR, name)


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    # Imported here: ctypes costs every kpctl command milliseconds at start,
    # and only --netns on Python < 3.12 comes here.
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _open_netns(name: str) -> int:
    path = netns_path(name)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise KproxyError(errno.ENOENT, f"network namespace {name!r} not found") from None
        raise KproxyError(e.errno or errno.EIO, f"cannot open {path}: {e.strerror}") from None


def _entry_error(name: str, e: OSError) -> KproxyError:
    return KproxyError(e.errno or errno.EIO,
                       f"cannot enter network namespace {name!r}: {e.strerror}")


def enter(name: str) -> None:
    """Move the calling thread into the network namespace `name`, for good.

    For a thread of its own that makes many sockets there (a service's
    loop): it enters once instead of once per socket. /proc/thread-self/net
    then shows that namespace too.
    """
    nsfd = _open_netns(name)
    try:
        _setns(nsfd)
    except OSError as e:
        raise _entry_error(name, e) from None
    finally:
        os.close(nsfd)


def run_in(name: str, fn: Callable[[], T]) -> T:
    """fn() run in the network namespace `name`, by a short-lived thread
    that enters it: the caller's own thread stays where it is."""
    nsfd = _open_netns(name)
    result: list[T] = []
    failure: list[BaseException] = []

    def worker() -> None:
        # This thread ends right after, so its netns is never restored.
        try:
            _setns(nsfd)
        except OSError as e:
            failure.append(_entry_error(name, e))
            return
        try:
            result.append(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            failure.append(e)

    try:
        t = threading.Thread(target=worker, name=f"kpctl-netns-{name}", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(nsfd)
    if failure:
        raise failure[0]
    return result[0]


def socket_in_netns(name: str, family: int, type: int, proto: int = 0) -> socket.socket:
    """Create socket(family, type, proto) in the network namespace `name`."""
    return run_in(name, lambda: socket.socket(family, type, proto))
