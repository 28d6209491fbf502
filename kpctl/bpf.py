"""Load the BPF programs that kproxy attaches to a direction.

kproxy runs programs of type BPF_PROG_TYPE_SOCKET_FILTER: a parser cuts a
direction's stream into messages, a verdict passes (non-zero) or drops (0)
each whole message.  This module turns what a user names into a loaded
program's fd:

- the NAME of a program shipped with kproxy (`lenprefix`, `lines`,
  `drop-prefix`, `pass`): `<name>.o` in the package data of an installed
  kpctl (kpctl/data/bpf/, built into the wheel), or in a checkout's
  `build/bpf/`, built by `make bpf` (see bpf_dirs());
- an ELF object, `file.o` (its one program) or `file.o:NAME` (a program
  by its function name, or by its ELF section when that is unique);
- a program pinned in bpffs (`/sys/fs/bpf/...`), through bpf_obj_get().

ELF objects go through libbpf (Debian's libbpf1, through ctypes): no ELF
parsing of our own.  Every failure is a BpfError (a KproxyError: an errno
and a clear message), e.g. a missing file, a program of the wrong type,
or the verifier's refusal with the end of its log.

A Program owns its fd (and, for an ELF object, the libbpf object with its
maps): close it, or use it as a context manager, once it is attached; the
kernel keeps its own reference while the program is attached.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import KproxyError

# enum bpf_prog_type (uapi/linux/bpf.h): a stable ABI.
PROG_TYPES = {
    0: "unspec", 1: "socket_filter", 2: "kprobe", 3: "sched_cls", 4: "sched_act",
    5: "tracepoint", 6: "xdp", 7: "perf_event", 8: "cgroup_skb", 9: "cgroup_sock",
    10: "lwt_in", 11: "lwt_out", 12: "lwt_xmit", 13: "sock_ops", 14: "sk_skb",
    15: "cgroup_device", 16: "sk_msg", 17: "raw_tracepoint", 18: "cgroup_sock_addr",
    19: "lwt_seg6local", 20: "lirc_mode2", 21: "sk_reuseport", 22: "flow_dissector",
    23: "cgroup_sysctl", 24: "raw_tracepoint_writable", 25: "cgroup_sockopt",
    26: "tracing", 27: "struct_ops", 28: "ext", 29: "lsm", 30: "sk_lookup",
    31: "syscall", 32: "netfilter",
}  # fmt: skip
PROG_TYPE_IDS = {v: k for k, v in PROG_TYPES.items()}
SOCKET_FILTER = 1

# Programs shipped with kproxy (kmod/bpf/<name>.bpf.c -> <name>.o, found
# through bpf_dirs()) and what each is for.
SHIPPED = {
    "lenprefix": "parser: 4-byte big-endian length prefix, message = 4 + length",
    "lines": "parser: newline-terminated lines, at most 8 KiB",
    "drop-prefix": "verdict: drops messages whose payload starts with --prefix",
    "pass": "verdict: forwards every message",
    "http": "parser: HTTP/1.1 requests (a-to-b) and responses (b-to-a); attach both ways",
    "http-filter": "verdict: HTTP request rules (see kpctl.http), after the http parser",
}

# drop-prefix's configuration map (kmod/bpf/drop-prefix.bpf.c).
PREFIX_MAP = "prefix_cfg"
PREFIX_MAX = 64
PREFIX_DEFAULT_OFFSET = 4  # after lenprefix's 4-byte header

BPF_FS_MAGIC = 0xCAFE4A11
VERIFIER_LOG_SIZE = 8 << 20  # 6.1 fails a load with ENOSPC when its log overflows
LOG_TAIL_LINES = 12  # the verifier states its reason at the end of the log

_LIBBPF_ERRNO_START = 4000  # libbpf's own error codes (LIBBPF_ERRNO__*)


class BpfError(KproxyError):
    """A program that could not be found, opened, loaded or used.

    `log` is the verifier's whole log when it refused the program.
    """

    def __init__(self, errno: int, message: str, log: str = "") -> None:
        super().__init__(errno, message)
        self.log = log


# --- libbpf through ctypes ----------------------------------------------


class _OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts of libbpf >= 1.0 (append-only ABI)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_removed_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_void_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    ]


class _TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf >= 0.7)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_lib_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
_captured = threading.local()
_print_cb: Any = None  # kept alive as long as libbpf may call it

LIBBPF_WARN = 0


def _on_libbpf_print(level: int, fmt: bytes, args: int) -> int:
    # libbpf's messages go to the current load's list (shown in errors),
    # never to stderr.  va_list is a pointer on x86-64 and arm64.
    sink = getattr(_captured, "lines", None)
    if sink is None or level != LIBBPF_WARN:
        return 0
    buf = ctypes.create_string_buffer(1024)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    sink.append(buf.value.decode(errors="replace").rstrip())
    return 0


def _sig(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


def libbpf() -> ctypes.CDLL:
    """libbpf.so.1, set up once; BpfError when it is not installed."""
    global _lib, _print_cb
    with _lib_lock:
        if _lib is not None:
            return _lib
        names = ["libbpf.so.1"]
        found = ctypes.util.find_library("bpf")
        if found:
            names.append(found)
        lib = None
        for n in names:
            try:
                lib = ctypes.CDLL(n, use_errno=True)
                break
            except OSError:
                continue
        if lib is None:
            raise BpfError(errno.ENOENT, "libbpf not found (Debian: apt install libbpf1)")
        vp, cp, i, u32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32
        try:
            _sig(lib, "libbpf_set_print", vp, _PRINT_FN)
            _sig(lib, "libbpf_strerror", i, i, cp, ctypes.c_size_t)
            _sig(lib, "bpf_object__open_file", vp, cp, ctypes.POINTER(_OpenOpts))
            _sig(lib, "bpf_object__load", i, vp)
            _sig(lib, "bpf_object__close", None, vp)
            _sig(lib, "bpf_object__next_program", vp, vp, vp)
            _sig(lib, "bpf_object__find_map_by_name", vp, vp, cp)
            _sig(lib, "bpf_program__name", cp, vp)
            _sig(lib, "bpf_program__section_name", cp, vp)
            _sig(lib, "bpf_program__type", i, vp)
            _sig(lib, "bpf_program__set_type", i, vp, i)
            _sig(lib, "bpf_program__set_autoload", i, vp, ctypes.c_bool)
            _sig(lib, "bpf_program__fd", i, vp)
            _sig(lib, "bpf_map__fd", i, vp)
            _sig(lib, "bpf_map__reuse_fd", i, vp, i)
            _sig(lib, "bpf_map_get_fd_by_id", i, u32)
            _sig(lib, "bpf_map__value_size", u32, vp)
            _sig(lib, "bpf_map_update_elem", i, i, vp, vp, ctypes.c_uint64)
            _sig(lib, "bpf_map_lookup_elem", i, i, vp, vp)
            _sig(lib, "bpf_obj_get", i, cp)
            _sig(lib, "bpf_obj_pin", i, i, cp)
            _sig(lib, "bpf_obj_get_info_by_fd", i, i, vp, ctypes.POINTER(u32))
            _sig(lib, "bpf_prog_get_fd_by_id", i, u32)
            _sig(lib, "bpf_prog_load", i, i, cp, cp, vp, ctypes.c_size_t, vp)
            _sig(lib, "bpf_prog_test_run_opts", i, i, ctypes.POINTER(_TestRunOpts))
        except AttributeError as e:
            raise BpfError(errno.ENOSYS, f"libbpf too old (need 1.0 or later): {e}") from None
        _print_cb = _PRINT_FN(_on_libbpf_print)
        lib.libbpf_set_print(_print_cb)
        _lib = lib
        return lib


def _errno_of(ret: int) -> int:
    """libbpf 1.x returns -errno (and sets errno); NULL pointers set errno."""
    e = -ret if ret < 0 else ctypes.get_errno()
    return e or errno.EINVAL


def _strerror(e: int) -> str:
    if e >= _LIBBPF_ERRNO_START:
        buf = ctypes.create_string_buffer(256)
        libbpf().libbpf_strerror(e, buf, len(buf))
        return buf.value.decode(errors="replace")
    return os.strerror(e)


def _norm_errno(e: int) -> int:
    # libbpf's own codes (bad ELF, relocation...) mean "invalid object".
    return errno.EINVAL if e >= _LIBBPF_ERRNO_START else e


class _Capture:
    """Collect libbpf's warnings during a call, for the error message."""

    def __enter__(self) -> list[str]:
        self.prev = getattr(_captured, "lines", None)
        _captured.lines = []
        return _captured.lines

    def __exit__(self, *exc: object) -> None:
        _captured.lines = self.prev


def shorten_log(log: str, lines: int = LOG_TAIL_LINES) -> str:
    """The end of a verifier log, where it says why (its whole text is long)."""
    all_lines = [ln for ln in log.splitlines() if ln.strip()]
    tail = all_lines[-lines:]
    if len(all_lines) > lines:
        tail.insert(0, f"... ({len(all_lines) - lines} earlier lines of the log not shown)")
    return "\n".join("  " + ln for ln in tail)


# --- program info ----------------------------------------------------------


@dataclass(frozen=True)
class ProgInfo:
    """What bpf_obj_get_info_by_fd() says about a loaded program."""

    id: int
    type: int
    name: str

    @property
    def type_name(self) -> str:
        return PROG_TYPES.get(self.type, str(self.type))


def _fd_kind(fd: int) -> str:
    """'bpf-prog', 'bpf-map', 'bpf-link'... or what the fd is otherwise."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "unknown"
    return target.removeprefix("anon_inode:")


def prog_info(fd: int) -> ProgInfo:
    """The id, type and name of the program behind `fd` (BpfError if none)."""
    kind = _fd_kind(fd)
    if kind != "bpf-prog":
        try:
            os.fstat(fd)
        except OSError:
            raise BpfError(errno.EBADF, f"fd {fd} is not open") from None
        raise BpfError(errno.EINVAL, f"fd {fd} is not a BPF program (it is {kind})")
    # struct bpf_prog_info: type u32 @0, id u32 @4, name char[16] @64.  The
    # kernel fills what it knows and requires the rest of our buffer zero.
    buf = ctypes.create_string_buffer(256)
    size = ctypes.c_uint32(len(buf))
    ret = libbpf().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size))
    if ret:
        e = _errno_of(ret)
        raise BpfError(e, f"cannot read program info of fd {fd}: {os.strerror(e)}")
    ptype, pid = struct.unpack_from("II", buf.raw, 0)
    name = buf.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgInfo(id=pid, type=ptype, name=name)


def prog_exists(prog_id: int) -> bool:
    """Whether the kernel still has a program with this id (bpftool prog show id N)."""
    fd = libbpf().bpf_prog_get_fd_by_id(int(prog_id))
    if fd < 0:
        e = _errno_of(fd)
        if e == errno.ENOENT:
            return False
        raise BpfError(e, f"cannot look up program id {prog_id}: {os.strerror(e)}")
    os.close(fd)
    return True


def _type_error(what: str, ptype: int, section: str | None = None) -> BpfError:
    sec = f" (section '{section}')" if section else ""
    return BpfError(
        errno.EINVAL,
        f"{what} is a {PROG_TYPES.get(ptype, ptype)} program{sec}: kproxy takes "
        f'socket_filter programs (SEC("socket"))',
    )


# --- a loaded program --------------------------------------------------------


class Program:
    """A loaded BPF program: its fd (fileno()), kernel id and name.

    From an ELF object it also keeps the libbpf object (its maps); close()
    releases everything.  Attaching gives the kernel its own reference, so
    closing after kp.attach() is the usual thing to do.
    """

    def __init__(self, fd: int, info: ProgInfo, source: str, obj: int | None = None) -> None:
        self._fd = fd
        self._obj = obj
        self.info = info
        self.source = source

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise BpfError(errno.EBADF, f"program {self.source} is closed")
        return self._fd

    def fileno(self) -> int:
        return self.fd

    @property
    def id(self) -> int:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._obj is not None:
            libbpf().bpf_object__close(self._obj)  # closes the prog and map fds
            self._obj = None
        else:
            os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> "Program":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"<Program {self.name!r} id {self.id} from {self.source}>"

    # maps (ELF objects only)

    def map_fd(self, name: str) -> int:
        if self._obj is None:
            raise BpfError(errno.ENOENT, f"{self.source}: no map {name!r} (not loaded from an ELF object)")
        m = libbpf().bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise BpfError(errno.ENOENT, f"{self.source}: no map {name!r}")
        return libbpf().bpf_map__fd(m)

    def map_value_size(self, name: str) -> int:
        self.map_fd(name)
        m = libbpf().bpf_object__find_map_by_name(self._obj, name.encode())
        return int(libbpf().bpf_map__value_size(m))

    def map_update(self, name: str, key: bytes, value: bytes) -> None:
        fd = self.map_fd(name)
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value, len(value))
        ret = libbpf().bpf_map_update_elem(fd, k, v, 0)
        if ret:
            e = _errno_of(ret)
            raise BpfError(e, f"{self.source}: cannot update map {name!r}: {os.strerror(e)}")

    def map_lookup(self, name: str, key: bytes) -> bytes:
        fd = self.map_fd(name)
        size = self.map_value_size(name)
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(size)
        ret = libbpf().bpf_map_lookup_elem(fd, k, v)
        if ret:
            e = _errno_of(ret)
            raise BpfError(e, f"{self.source}: cannot read map {name!r}: {os.strerror(e)}")
        return v.raw

    def set_prefix(self, prefix: bytes | str, offset: int = PREFIX_DEFAULT_OFFSET) -> None:
        """Configure drop-prefix: drop messages whose bytes at `offset` start with `prefix`."""
        if isinstance(prefix, str):
            prefix = prefix.encode()
        if not prefix:
            raise BpfError(errno.EINVAL, "the prefix must not be empty")
        if len(prefix) > PREFIX_MAX:
            raise BpfError(errno.EINVAL, f"the prefix is {len(prefix)} bytes; at most {PREFIX_MAX}")
        if not 0 <= offset <= 1 << 20:
            raise BpfError(errno.EINVAL, f"offset {offset} out of range (0..1048576)")
        try:
            size = self.map_value_size(PREFIX_MAP)
        except BpfError:
            raise BpfError(
                errno.EINVAL,
                f"{self.source}: program {self.name!r} takes no prefix (no {PREFIX_MAP!r} map; "
                f"--prefix is for drop-prefix)",
            ) from None
        value = struct.pack("II", offset, len(prefix)) + prefix.ljust(PREFIX_MAX, b"\0")
        if size != len(value):
            raise BpfError(errno.EINVAL, f"{self.source}: map {PREFIX_MAP!r} has value size "
                                         f"{size}, expected {len(value)}")
        self.map_update(PREFIX_MAP, struct.pack("I", 0), value)

    # running it on data (tests, and checking a program by hand)

    def test_run(self, data: bytes) -> int:
        """Run the program once on `data` (BPF_PROG_TEST_RUN) and return its value,
        as the signed int the module reads it as.

        The program sees `data` at offset 0 (an Ethernet header is added in
        front and pulled by the kernel, as for every socket filter test run).
        """
        packet = b"\0" * 12 + b"\x88\xb5" + bytes(data)  # local experimental ethertype
        buf = ctypes.create_string_buffer(packet, len(packet))
        opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
        opts.data_in = ctypes.cast(buf, ctypes.c_void_p)
        opts.data_size_in = len(packet)
        opts.repeat = 1
        ret = libbpf().bpf_prog_test_run_opts(self.fd, ctypes.byref(opts))
        if ret:
            e = _errno_of(ret)
            raise BpfError(e, f"test run of {self.source} failed: {os.strerror(e)}")
        return ctypes.c_int32(opts.retval).value


# --- loading -----------------------------------------------------------------


def _programs(obj: int) -> list[int]:
    lib = libbpf()
    out, p = [], None
    while True:
        p = lib.bpf_object__next_program(obj, p)
        if not p:
            return out
        out.append(p)


def _describe(progs: list[int]) -> str:
    lib = libbpf()
    return ", ".join(
        f"{lib.bpf_program__name(p).decode()} (section '{lib.bpf_program__section_name(p).decode()}')"
        for p in progs
    )


def load_object(path: str | os.PathLike[str], program: str | None = None, *,
                any_type: bool = False, reuse_maps: Mapping[str, int] | None = None) -> Program:
    """Load one program of an ELF object through libbpf.

    `program`: its function name or its ELF section (when one program has
    it); None when the object holds a single program.  The program is
    loaded as a socket filter; a section naming another type (xdp, tc...)
    is refused with EINVAL unless `any_type` (tests of the kernel's own
    check).  Only the chosen program is loaded.  `reuse_maps`: maps of the
    object (by name) that are to be existing maps (by fd) instead of new
    ones, so two programs share state (bpf_map__reuse_fd()).
    """
    lib = libbpf()
    path = os.fspath(path)
    src = f"{path}:{program}" if program else path
    if not os.path.exists(path):
        raise BpfError(errno.ENOENT, f"{path}: no such file")
    if os.path.isdir(path):
        raise BpfError(errno.EISDIR, f"{path}: is a directory, not an ELF object")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise BpfError(e.errno or errno.EIO, f"{path}: {e.strerror}") from None
    if magic != b"\x7fELF":
        raise BpfError(errno.EINVAL, f"{path}: not an ELF object (build it with clang -target bpf)")

    log = ctypes.create_string_buffer(VERIFIER_LOG_SIZE)
    opts = _OpenOpts(sz=ctypes.sizeof(_OpenOpts))
    opts.kernel_log_buf = ctypes.cast(log, ctypes.c_void_p)
    opts.kernel_log_size = len(log)
    opts.kernel_log_level = 0  # libbpf asks for the log again when a load fails
    with _Capture() as msgs:
        ctypes.set_errno(0)
        obj = lib.bpf_object__open_file(path.encode(), ctypes.byref(opts))
        if not obj:
            e = _errno_of(0)
            detail = f": {msgs[-1]}" if msgs else ""
            raise BpfError(_norm_errno(e), f"{path}: cannot open as a BPF object: "
                                           f"{_strerror(e)}{detail}")
        try:
            progs = _programs(obj)
            chosen = _choose(path, program, progs)
            name = lib.bpf_program__name(chosen).decode()
            section = lib.bpf_program__section_name(chosen).decode()
            for p in progs:
                lib.bpf_program__set_autoload(p, p == chosen)
            ptype = lib.bpf_program__type(chosen)
            if ptype not in (0, SOCKET_FILTER) and not any_type:
                raise _type_error(f"{path}: program '{name}'", ptype, section)
            if ptype == 0:
                # A section libbpf does not know: load it as what kproxy takes.
                lib.bpf_program__set_type(chosen, SOCKET_FILTER)
            for map_name, map_fd in (reuse_maps or {}).items():
                _reuse_map(obj, path, map_name, map_fd)
            ret = lib.bpf_object__load(obj)
            if ret:
                e = _errno_of(ret)
                text = log.value.decode(errors="replace")
                if text.strip():
                    raise BpfError(
                        e,
                        f"{path}: the verifier refused program '{name}' ({_strerror(e)}):\n"
                        + shorten_log(text),
                        log=text,
                    )
                detail = "\n" + "\n".join("  " + m for m in msgs[-3:]) if msgs else ""
                raise BpfError(_norm_errno(e), f"{path}: cannot load program '{name}': "
                                               f"{_strerror(e)}{detail}")
            fd = lib.bpf_program__fd(chosen)
            info = prog_info(fd)
        except BaseException:
            lib.bpf_object__close(obj)
            raise
    return Program(fd, info, src, obj)


def _reuse_map(obj: int, path: str, name: str, fd: int) -> None:
    lib = libbpf()
    m = lib.bpf_object__find_map_by_name(obj, name.encode())
    if not m:
        raise BpfError(errno.ENOENT, f"{path}: no map {name!r} to share")
    ret = lib.bpf_map__reuse_fd(m, fd)
    if ret:
        e = _errno_of(ret)
        raise BpfError(e, f"{path}: cannot use the existing map for {name!r}: {os.strerror(e)}")


def _choose(path: str, program: str | None, progs: list[int]) -> int:
    lib = libbpf()
    if not progs:
        raise BpfError(errno.ENOENT, f"{path}: holds no BPF program")
    if program is None:
        if len(progs) > 1:
            raise BpfError(errno.EINVAL, f"{path}: holds several programs, name one as "
                                         f"{path}:NAME: {_describe(progs)}")
        return progs[0]
    by_name = [p for p in progs if lib.bpf_program__name(p).decode() == program]
    if by_name:
        return by_name[0]
    by_sec = [p for p in progs if lib.bpf_program__section_name(p).decode() == program]
    if len(by_sec) == 1:
        return by_sec[0]
    if len(by_sec) > 1:
        raise BpfError(errno.EINVAL, f"{path}: section '{program}' holds several programs, "
                                     f"name one: {_describe(by_sec)}")
    raise BpfError(errno.ENOENT, f"{path}: no program or section '{program}'; it holds "
                                 f"{_describe(progs)}")


def _is_bpffs(path: str) -> bool:
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type first
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return False
    (ftype,) = struct.unpack_from("l", buf.raw, 0)
    return (ftype & 0xFFFFFFFF) == BPF_FS_MAGIC


def load_pinned(path: str | os.PathLike[str]) -> Program:
    """A program pinned in bpffs (bpf_obj_get); it must be a socket filter."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BpfError(errno.ENOENT, f"{path}: no such file")
    fd = libbpf().bpf_obj_get(path.encode())
    if fd < 0:
        e = _errno_of(fd)
        raise BpfError(e, f"{path}: cannot open the pinned object: {os.strerror(e)}")
    try:
        kind = _fd_kind(fd)
        if kind != "bpf-prog":
            raise BpfError(errno.EINVAL, f"{path}: pinned object is not a program (it is a {kind})")
        info = prog_info(fd)
        if info.type != SOCKET_FILTER:
            raise _type_error(f"{path}: pinned program '{info.name}'", info.type)
    except BaseException:
        os.close(fd)
        raise
    return Program(fd, info, path)


def from_fd(fd: int, *, source: str | None = None) -> Program:
    """Take a duplicate of a program fd the caller has (checked to be a socket filter)."""
    info = prog_info(fd)
    if info.type != SOCKET_FILTER:
        raise _type_error(f"fd {fd}: program '{info.name}'", info.type)
    return Program(os.dup(fd), info, source or f"fd {fd}")


def bpf_dirs() -> list[Path]:
    """Where the shipped programs are looked for, first match wins:
    $KPROXY_BPF_DIR, the package's own data (a wheel or `make install`
    carries them there), then the checkout's build/bpf (`make bpf`), for an
    editable install or kpctl run from the source tree."""
    dirs = []
    env = os.environ.get("KPROXY_BPF_DIR")
    if env:
        dirs.append(Path(env))
    package = Path(__file__).resolve().parent
    dirs.append(package / "data" / "bpf")
    dirs.append(package.parent / "build" / "bpf")
    return dirs


def shipped_path(name: str) -> Path:
    """The object file `<name>.o` of a shipped program (BpfError if none is built)."""
    if name not in SHIPPED:
        raise BpfError(errno.ENOENT, f"no shipped program '{name}' (shipped: {', '.join(SHIPPED)})")
    for d in bpf_dirs():
        p = d / f"{name}.o"
        if p.is_file():
            return p
    raise BpfError(errno.ENOENT, f"shipped program '{name}' is not built: in a checkout "
                                 f"`make bpf` builds build/bpf/{name}.o (looked in "
                                 f"{', '.join(str(d) for d in bpf_dirs())})")


def load(spec: str, *, any_type: bool = False) -> Program:
    """Load what the user named: a shipped NAME, `file.o[:NAME]`, or a bpffs path."""
    spec = str(spec)
    if not spec:
        raise BpfError(errno.EINVAL, "empty program name")
    if os.path.exists(spec):
        if _is_bpffs(spec):
            return load_pinned(spec)
        return load_object(spec, any_type=any_type)
    path, sep, sel = spec.rpartition(":")
    if sep and path and os.path.exists(path):
        if _is_bpffs(path):
            raise BpfError(errno.EINVAL, f"{spec}: a pinned program takes no ':NAME'")
        return load_object(path, sel or None, any_type=any_type)
    if "/" not in spec and not spec.endswith(".o"):
        name, sep, sel = spec.partition(":")
        if name in SHIPPED:
            return load_object(shipped_path(name), sel or None, any_type=any_type)
        raise BpfError(errno.ENOENT, f"'{spec}': no such file, nor a shipped program "
                                     f"({', '.join(SHIPPED)})")
    raise BpfError(errno.ENOENT, f"{path if sep and path else spec}: no such file")


def load_configured(spec: str, *, prefix: bytes | str | None = None,
                    offset: int | None = None,
                    loader: Callable[[str], Any] | None = None) -> Program:
    """The one way kpctl loads a program the user named: `loader(spec)`
    (default load()), then, for a drop-prefix verdict, its prefix at
    `offset` (default PREFIX_DEFAULT_OFFSET). The program is closed again
    when configuring it fails."""
    prog = (loader or load)(spec)
    try:
        if prefix is not None:
            prog.set_prefix(prefix, PREFIX_DEFAULT_OFFSET if offset is None else offset)
    except BaseException:
        prog.close()
        raise
    return prog


def load_insns(prog_type: str | int, insns: bytes, *, name: str = "kproxy_raw",
               license: str = "GPL") -> Program:
    """Load raw BPF instructions of any type (tests: a program of another type).

    `insns`: struct bpf_insn array (8 bytes each).
    """
    ptype = PROG_TYPE_IDS[prog_type] if isinstance(prog_type, str) else int(prog_type)
    if len(insns) % 8:
        raise BpfError(errno.EINVAL, "instructions must be a multiple of 8 bytes")
    buf = ctypes.create_string_buffer(bytes(insns), len(insns))
    with _Capture() as msgs:
        fd = libbpf().bpf_prog_load(ptype, name.encode(), license.encode(), buf,
                                    len(insns) // 8, None)
    if fd < 0:
        e = _errno_of(fd)
        detail = f": {msgs[-1]}" if msgs else ""
        raise BpfError(e, f"cannot load {PROG_TYPES.get(ptype, ptype)} program: "
                          f"{os.strerror(e)}{detail}")
    return Program(fd, prog_info(fd), f"<{PROG_TYPES.get(ptype, ptype)} instructions>")


def insn_return(value: int) -> bytes:
    """`r0 = value; exit`: the smallest program, for load_insns()."""
    mov = struct.pack("<BBhi", 0xB7, 0x00, 0, value)  # BPF_ALU64|BPF_MOV|BPF_K, dst r0
    exit_ = struct.pack("<BBhi", 0x95, 0, 0, 0)  # BPF_JMP|BPF_EXIT
    return mov + exit_


def pin(prog: Program, path: str | os.PathLike[str]) -> None:
    """Pin a loaded program in bpffs (bpftool prog pin)."""
    ret = libbpf().bpf_obj_pin(prog.fd, os.fsencode(path))
    if ret:
        e = _errno_of(ret)
        raise BpfError(e, f"cannot pin {prog.source} at {os.fspath(path)}: {os.strerror(e)}")


def available() -> str | None:
    """None when programs can be loaded here, else why not (for skipping tests)."""
    try:
        with load_insns("socket_filter", insn_return(1)):
            return None
    except BpfError as e:
        return str(e)
