"""Who a test process is, and running code as someone else.

Children are forks of the test process, not new interpreters: a new Python
costs tens of seconds under TCG on the debug kernel, and a fork needs no
read access to the checkout for the identity it drops to. They drop
privileges with setres[ug]id, capset or unshare(CLONE_NEWUSER) and report
JSON lines to the parent, which asserts.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import select
import socket
import struct
import time
import traceback
from collections.abc import Callable
from typing import Any

NOBODY = 65534
CAP_NET_ADMIN = 12
PR_SET_KEEPCAPS, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 8, 4, 24
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CHILD_TIMEOUT = 60.0

libc = ctypes.CDLL(None, use_errno=True)


# --- identities -------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def set_caps(effective: int, permitted: int) -> None:
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
    _check(libc.capset(ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)), data), "capset")


def cap_eff() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))


def become_nobody(keep_caps: bool = False) -> None:
    if keep_caps:
        _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "PR_SET_KEEPCAPS")
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    # A uid change makes the process undumpable, and its /proc/self files
    # root's: it could not write its own uid_map after unshare.
    _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "PR_SET_DUMPABLE")


def drop_net_admin() -> None:
    """Root keeps its uid and every capability but CAP_NET_ADMIN."""
    _check(libc.prctl(PR_CAPBSET_DROP, CAP_NET_ADMIN, 0, 0, 0), "PR_CAPBSET_DROP")
    caps = cap_eff() & ~(1 << CAP_NET_ADMIN)
    set_caps(caps, caps)


def enter_userns(netns: bool) -> None:
    """unshare a user namespace (and a netns it owns), mapping us to its root."""
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(CLONE_NEWUSER | (CLONE_NEWNET if netns else 0)), "unshare")
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"0 {uid} 1"),
                       ("/proc/self/gid_map", f"0 {gid} 1")):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    if netns:  # loopback starts down in a new netns
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            flags = struct.unpack_from("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh22x", b"lo", 0)))[1]
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def netlink_socket() -> socket.socket:
    """A netlink socket of the caller's current netns and credentials."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)


# --- forked children --------------------------------------------------------


class Channel:
    """JSON lines over a pair of pipes."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.buf = b""

    def send(self, obj: Any) -> None:
        os.write(self.wfd, json.dumps(obj).encode() + b"\n")

    def recv(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise AssertionError(f"no message within {timeout}s")
            chunk = os.read(self.rfd, 65536)
            if not chunk:
                raise AssertionError("the other side closed its pipe")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            os.close(fd)


class Child:
    """fn(channel, *args) in a fork of this process; it leaves by os._exit,
    never returning into pytest, and its return value (or exception) comes
    back as the last line."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 2
            try:
                os.close(up_r)
                os.close(down_w)
                ch = Channel(down_r, up_w)
                try:
                    ch.send({"result": fn(ch, *args)})
                    code = 0
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    ch.send({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
                    code = 1
            finally:
                os._exit(code)
        os.close(up_w)
        os.close(down_r)
        self.pid = pid
        self.ch = Channel(up_r, down_w)

    def recv(self, timeout: float = CHILD_TIMEOUT) -> Any:
        msg = self.ch.recv(timeout)
        if isinstance(msg, dict) and "error" in msg:
            raise AssertionError(f"child failed: {msg['error']}\n{msg['traceback']}")
        return msg

    def send(self, obj: Any) -> None:
        self.ch.send(obj)

    def result(self, timeout: float = CHILD_TIMEOUT) -> Any:
        msg = self.recv(timeout)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.pid = 0
                assert os.waitstatus_to_exitcode(status) == 0, f"child exited {status}"
                return msg["result"]
            assert time.monotonic() < deadline, "child did not exit"
            time.sleep(0.02)

    def close(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = 0
        self.ch.close()


def run_child(fn: Callable[..., Any], *args: Any) -> Any:
    c = Child(fn, *args)
    try:
        return c.result()
    finally:
        c.close()
