"""The benchmarks' BPF sockmap proxy: an L4 relay whose data path is an
sk_skb verdict program redirecting each socket's data to its peer.

    python bench/sockmap.py OBJ LISTEN_PORT:TARGET_PORT [...]   (127.0.0.1)

OBJ is build/bench/sockmap.o (bench/bpf/sockmap.bpf.c), loaded through
libbpf with kpctl.bpf and attached to its `socks` map as BPF_SK_SKB_VERDICT
(no stream parser). For each accepted client the loader connects to the
target (blocking: loopback), records each socket's cookie -> the other's
index in `peer`, then inserts both sockets into `socks`. Bytes that arrived
before the insertion sit in the receive queue where the program never sees
them: the loader forwards those itself once. After that it only waits for
EOF (EPOLLRDHUP, not EPOLLIN, so data never wakes it), passes the FIN on
with shutdown(SHUT_WR), and closes both sockets when both directions ended.

Caveat of sockmap, kept as is: a redirect to a peer whose send buffer is
full is queued in the psock without backpressure on the sender.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kpctl import bpf  # noqa: E402

SK_SKB = 14  # enum bpf_prog_type
BPF_SK_SKB_VERDICT = 38  # enum bpf_attach_type (uapi/linux/bpf.h)
SO_COOKIE = 57
MAX_SOCKS = 65536
HUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


class SockmapProxy:
    def __init__(self, obj: str) -> None:
        lib = bpf.libbpf()
        self.obj, prog_fd = self._load(lib, obj)
        lib.bpf_prog_attach.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint]
        lib.bpf_prog_attach.restype = ctypes.c_int
        lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.bpf_map_delete_elem.restype = ctypes.c_int
        self.lib = lib
        self.socks_fd = lib.bpf_map__fd(lib.bpf_object__find_map_by_name(self.obj, b"socks"))
        self.peer_fd = lib.bpf_map__fd(lib.bpf_object__find_map_by_name(self.obj, b"peer"))
        ret = lib.bpf_prog_attach(prog_fd, self.socks_fd, BPF_SK_SKB_VERDICT, 0)
        if ret:
            raise OSError(-ret, f"bpf_prog_attach: {os.strerror(-ret)}")
        self.free = list(range(MAX_SOCKS - 1, -1, -1))
        self.ep = select.epoll()
        self.listeners: dict[int, tuple[socket.socket, int]] = {}
        # fd -> [sock, peer sock, index, cookie, eof seen]
        self.conns: dict[int, list] = {}

    @staticmethod
    def _load(lib, path: str) -> tuple[int, int]:
        """Open and load the object as sk_skb/BPF_SK_SKB_VERDICT, set
        explicitly: Debian 12's libbpf (1.1) does not know the section
        name "sk_skb/verdict"."""
        lib.bpf_program__set_expected_attach_type.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.bpf_program__set_expected_attach_type.restype = ctypes.c_int
        opts = bpf._OpenOpts(sz=ctypes.sizeof(bpf._OpenOpts))
        obj = lib.bpf_object__open_file(path.encode(), ctypes.byref(opts))
        if not obj:
            raise OSError(ctypes.get_errno(), f"{path}: cannot open")
        prog = lib.bpf_object__next_program(obj, None)
        lib.bpf_program__set_type(prog, SK_SKB)
        lib.bpf_program__set_expected_attach_type(prog, BPF_SK_SKB_VERDICT)
        ret = lib.bpf_object__load(obj)
        if ret:
            raise OSError(-ret, f"{path}: load failed: {os.strerror(-ret)}")
        return obj, lib.bpf_program__fd(prog)

    def listen(self, port: int, target: int) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port))
        ls.listen(1024)
        self.listeners[ls.fileno()] = (ls, target)
        self.ep.register(ls.fileno(), select.EPOLLIN)

    def _map_update(self, fd: int, key: bytes, value: bytes) -> None:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value, len(value))
        ret = self.lib.bpf_map_update_elem(fd, k, v, 0)
        if ret:
            raise OSError(-ret, f"bpf_map_update_elem: {os.strerror(-ret)}")

    def _map_delete(self, fd: int, key: bytes) -> None:
        k = ctypes.create_string_buffer(key, len(key))
        self.lib.bpf_map_delete_elem(fd, k)

    def _accept(self, ls: socket.socket, target: int) -> None:
        try:
            a, _ = ls.accept()
        except BlockingIOError:
            return
        b = socket.socket()
        try:
            b.connect(("127.0.0.1", target))
        except OSError:
            a.close()
            b.close()
            return
        ia, ib = self.free.pop(), self.free.pop()
        ca = a.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8)
        cb = b.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8)
        try:
            self._map_update(self.peer_fd, ca, struct.pack("I", ib))
            self._map_update(self.peer_fd, cb, struct.pack("I", ia))
            self._map_update(self.socks_fd, struct.pack("I", ia), struct.pack("I", a.fileno()))
            self._map_update(self.socks_fd, struct.pack("I", ib), struct.pack("I", b.fileno()))
        except OSError as e:
            # EOPNOTSUPP: a socket no longer established (a client that
            # already closed, such as a readiness probe): drop the pair.
            print(f"sockmap: dropping a connection: {e}", file=sys.stderr, flush=True)
            for fd, key in ((self.peer_fd, ca), (self.peer_fd, cb),
                            (self.socks_fd, struct.pack("I", ia)), (self.socks_fd, struct.pack("I", ib))):
                self._map_delete(fd, key)
            self.free += [ia, ib]
            a.close()
            b.close()
            return
        self.conns[a.fileno()] = [a, b, ia, ca, False]
        self.conns[b.fileno()] = [b, a, ib, cb, False]
        # What arrived before the insertion: the program never sees it.
        for s, p in ((a, b), (b, a)):
            self._drain(s, p)
            self.ep.register(s.fileno(), HUP)

    @staticmethod
    def _drain(s: socket.socket, p: socket.socket) -> bool:
        """Forward what sits in s's receive queue; True at EOF."""
        while True:
            try:
                data = s.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not data:
                return True
            try:
                p.sendall(data)
            except OSError:
                return True

    def _eof(self, fd: int) -> None:
        c = self.conns.get(fd)
        if c is None:
            return
        s, p, _, _, seen = c
        if seen:
            return
        self._drain(s, p)
        c[4] = True
        self.ep.unregister(fd)  # HUP/ERR would keep firing
        try:
            p.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        pc = self.conns.get(p.fileno())
        if pc is not None and pc[4]:
            self._close(c)
            self._close(pc)

    def _close(self, c: list) -> None:
        s, _, idx, cookie, _ = c
        fd = s.fileno()
        self.conns.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        self._map_delete(self.socks_fd, struct.pack("I", idx))
        self._map_delete(self.peer_fd, cookie)
        self.free.append(idx)
        s.close()

    def run(self) -> None:
        while True:
            for fd, ev in self.ep.poll():
                if fd in self.listeners:
                    ls, target = self.listeners[fd]
                    self._accept(ls, target)
                elif ev & HUP:
                    self._eof(fd)


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    proxy = SockmapProxy(sys.argv[1])
    for pair in sys.argv[2:]:
        lp, tp = pair.split(":")
        proxy.listen(int(lp), int(tp))
    print("ready", flush=True)
    proxy.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
