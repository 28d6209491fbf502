"""HTTP on a proxy: the `http` parser and the `http-filter` verdict's rules.

The parser (kmod/bpf/http.bpf.c) frames requests on a-to-b and responses
on b-to-a and records what it framed in a per-proxy state map,
`http_state`; the filter (kmod/bpf/http-filter.bpf.c) judges requests by
that state and by rules in its `http_rules` map, answering a denied one
with a canned response (CANNED_REPLIES, attached as verdict-replies) and
a close.

The two are loaded separately (two `kpctl attach` calls may load them),
so the filter must be given the parser's state map before it is loaded:
load_http() does it for programs it loads together; for a parser already
attached, parser_state_map() finds the map from the parser's program id
(the kernel lists a program's maps: bpf_prog_info.map_ids) and
load_filter() loads the filter on it (bpf_map__reuse_fd()).

Rules file format (parse_rules_file()): one rule per line, `#` starts a
comment, blank lines are ignored; a rule is a keyword and its value:

    allow-methods GET,HEAD,POST     # 405 for any other method
    deny-host evil.example          # 403; repeatable (at most 8 hosts)
    deny-path /admin                # 403 for paths starting so; repeatable
    allow-path /public              # 403 for paths starting with none of them
    max-request-line 8192           # 414 beyond (bytes, CRLF excluded)
    max-header-bytes 16384          # 431 beyond (the whole header block)
    max-headers 100                 # 431 beyond (field lines)
    max-body-bytes 1048576          # 413 beyond (Content-Length or chunks)

At most 8 path rules (deny and allow together); hosts and path prefixes
are at most 64 bytes. Malformed requests and smuggling attempts get 400
whatever the rules.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

from . import bpf
from .errors import KproxyError

STATE_MAP = "http_state"
RULES_MAP = "http_rules"
CFG_MAP = "http_cfg"
PARSER = "http"
FILTER = "http-filter"

RULE_LEN = 64
RULES_MAX = 8

# enum http_method of kmod/bpf/http.h: bit n of the rules' mask allows n.
METHODS = {
    "GET": 1, "HEAD": 2, "POST": 3, "PUT": 4, "DELETE": 5,
    "CONNECT": 6, "OPTIONS": 7, "TRACE": 8, "PATCH": 9,
}  # fmt: skip


def _reply(status: int, reason: str) -> bytes:
    body = f"{status} {reason}\n".encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


# In reply-index order: the filter returns KPROXY_VERDICT_REPLY(i).
REPLY_STATUSES = (400, 403, 405, 413, 414, 431)
CANNED_REPLIES: list[bytes] = [
    _reply(400, "Bad Request"),
    _reply(403, "Forbidden"),
    _reply(405, "Method Not Allowed"),
    _reply(413, "Content Too Large"),
    _reply(414, "URI Too Long"),
    _reply(431, "Request Header Fields Too Large"),
]


class HttpRulesError(KproxyError):
    """A rules file or rule that cannot be used (errno EINVAL)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)


@dataclass(frozen=True)
class HttpRules:
    """What http-filter enforces; None or empty: no such rule."""

    allow_methods: frozenset[str] | None = None
    deny_hosts: tuple[str, ...] = ()
    deny_paths: tuple[str, ...] = ()
    allow_paths: tuple[str, ...] = ()
    max_request_line: int | None = None
    max_header_bytes: int | None = None
    max_headers: int | None = None
    max_body_bytes: int | None = None
    source: str = field(default="", compare=False)

    def check(self) -> None:
        """Raise HttpRulesError when the rules do not fit the filter's maps."""
        for m in self.allow_methods or ():
            if m not in METHODS:
                raise HttpRulesError(f"unknown method {m!r} (known: {', '.join(METHODS)})")
        if len(self.deny_hosts) > RULES_MAX:
            raise HttpRulesError(f"at most {RULES_MAX} deny-host rules")
        if len(self.deny_paths) + len(self.allow_paths) > RULES_MAX:
            raise HttpRulesError(f"at most {RULES_MAX} path rules (deny-path and allow-path)")
        for what, values in (("host", self.deny_hosts), ("path", self.deny_paths),
                             ("path", self.allow_paths)):
            for v in values:
                raw = v.encode()
                if not raw or len(raw) > RULE_LEN or any(c <= 32 or c == 127 for c in raw):
                    raise HttpRulesError(
                        f"{what} {v!r}: 1 to {RULE_LEN} bytes without spaces or controls")
        for name, limit in (("max-request-line", self.max_request_line),
                            ("max-header-bytes", self.max_header_bytes),
                            ("max-headers", self.max_headers)):
            if limit is not None and not 0 < limit < 1 << 32:
                raise HttpRulesError(f"{name} must be 1 to {(1 << 32) - 1}")
        if self.max_body_bytes is not None and not 0 < self.max_body_bytes < 1 << 63:
            raise HttpRulesError("max-body-bytes must be positive")


_LIMITS = {
    "max-request-line": "max_request_line",
    "max-header-bytes": "max_header_bytes",
    "max-headers": "max_headers",
    "max-body-bytes": "max_body_bytes",
}
_LISTS = {"deny-host": "deny_hosts", "deny-path": "deny_paths", "allow-path": "allow_paths"}


def parse_rules_file(text: str, source: str = "rules") -> HttpRules:
    """Rules from the text of a rules file (format in this module's doc);
    HttpRulesError names the line of the first mistake."""
    values: dict[str, Any] = {k: [] for k in _LISTS.values()}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}: line {number}"
        parts = line.split()
        if len(parts) != 2:
            raise HttpRulesError(f"{where}: expected 'KEYWORD VALUE', got {line!r}")
        key, value = parts
        if key == "allow-methods":
            methods = frozenset(m.strip().upper() for m in value.split(",") if m.strip())
            unknown = sorted(methods - METHODS.keys())
            if unknown or not methods:
                raise HttpRulesError(f"{where}: unknown method {', '.join(unknown) or repr(value)} "
                                     f"(known: {', '.join(METHODS)})")
            values["allow_methods"] = methods
        elif key in _LISTS:
            values[_LISTS[key]].append(value)
        elif key in _LIMITS:
            try:
                values[_LIMITS[key]] = int(value, 10)
            except ValueError:
                raise HttpRulesError(f"{where}: {key} needs a number, not {value!r}") from None
        else:
            raise HttpRulesError(f"{where}: unknown rule {key!r} (rules: allow-methods, "
                                 f"{', '.join(_LISTS)}, {', '.join(_LIMITS)})")
    rules = HttpRules(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()},
                      source=source)
    try:
        rules.check()
    except HttpRulesError as e:
        raise HttpRulesError(f"{source}: {e}") from None
    return rules


# struct http_rules of kmod/bpf/http-filter.bpf.c.
_HEAD = struct.Struct("<IIIIQII")
_RULE = struct.Struct(f"<II{RULE_LEN}s")
RULES_SIZE = _HEAD.size + 2 * RULES_MAX * _RULE.size


def encode(rules: HttpRules) -> bytes:
    """The http_rules map value for `rules` (checked first)."""
    rules.check()
    mask = 0
    for m in rules.allow_methods or ():
        mask |= 1 << METHODS[m]
    hosts = [_RULE.pack(len(h.encode()), 0, h.encode()) for h in rules.deny_hosts]
    paths = ([_RULE.pack(len(p.encode()), 0, p.encode()) for p in rules.deny_paths]
             + [_RULE.pack(len(p.encode()), 1, p.encode()) for p in rules.allow_paths])
    empty = _RULE.pack(0, 0, b"")
    return (_HEAD.pack(mask, rules.max_request_line or 0, rules.max_header_bytes or 0,
                       rules.max_headers or 0, rules.max_body_bytes or 0,
                       len(hosts), len(paths))
            + b"".join(hosts) + empty * (RULES_MAX - len(hosts))
            + b"".join(paths) + empty * (RULES_MAX - len(paths)))


def decode(value: bytes) -> HttpRules:
    """The rules an http_rules map value holds (encode()'s inverse)."""
    mask, line, hdr_bytes, hdrs, body, nhosts, npaths = _HEAD.unpack_from(value, 0)
    methods = frozenset(m for m, bit in METHODS.items() if mask & (1 << bit)) or None

    def rule(i: int) -> tuple[str, int]:
        length, kind, text = _RULE.unpack_from(value, _HEAD.size + i * _RULE.size)
        return text[:length].decode(errors="replace"), kind

    hosts = tuple(rule(i)[0] for i in range(min(nhosts, RULES_MAX)))
    paths = [rule(RULES_MAX + i) for i in range(min(npaths, RULES_MAX))]
    return HttpRules(allow_methods=methods, deny_hosts=hosts,
                     deny_paths=tuple(p for p, k in paths if k == 0),
                     allow_paths=tuple(p for p, k in paths if k == 1),
                     max_request_line=line or None, max_header_bytes=hdr_bytes or None,
                     max_headers=hdrs or None, max_body_bytes=body or None)


def to_lines(rules: HttpRules) -> list[str]:
    """The rules as the lines of a rules file (parse_rules_file() reads them back)."""
    lines = []
    if rules.allow_methods:
        lines.append("allow-methods " + ",".join(m for m in METHODS if m in rules.allow_methods))
    for key, attr in _LISTS.items():
        lines += [f"{key} {v}" for v in getattr(rules, attr)]
    for key, attr in _LIMITS.items():
        if getattr(rules, attr) is not None:
            lines.append(f"{key} {getattr(rules, attr)}")
    return lines


def to_dict(rules: HttpRules) -> dict[str, Any]:
    """The rules as JSON (kpctl -j): every rule, null or [] when not set."""
    return {
        "allow_methods": (None if rules.allow_methods is None
                          else [m for m in METHODS if m in rules.allow_methods]),
        "deny_hosts": list(rules.deny_hosts), "deny_paths": list(rules.deny_paths),
        "allow_paths": list(rules.allow_paths),
        "max_request_line": rules.max_request_line, "max_header_bytes": rules.max_header_bytes,
        "max_headers": rules.max_headers, "max_body_bytes": rules.max_body_bytes,
    }


def apply(prog: bpf.Program, rules: HttpRules) -> None:
    """Write `rules` into a loaded http-filter; one map update, so a filter
    already attached switches rules between two messages."""
    prog.map_update(RULES_MAP, struct.pack("I", 0), encode(rules))


def set_header_limit(parser: bpf.Program, limit: int) -> None:
    """The parser's header block limit (256 B to 64 KiB; default 16 KiB)."""
    if not 256 <= limit <= 65536:
        raise HttpRulesError("the header block limit must be 256 to 65536 bytes")
    parser.map_update(CFG_MAP, struct.pack("I", 0), struct.pack("I", limit))


# --- finding an attached parser's state map ------------------------------------

_PROG_INFO_SIZE = 256
_MAP_INFO_SIZE = 96


def _info(fd: int, buf: ctypes.Array[ctypes.c_char], what: str) -> None:
    size = ctypes.c_uint32(len(buf))
    ret = bpf.libbpf().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size))
    if ret:
        e = bpf._errno_of(ret)
        raise bpf.BpfError(e, f"cannot read {what} info: {os.strerror(e)}")


def _prog_map(prog_id: int, map_name: str, what: str) -> int:
    """A new fd of the map named `map_name` of the program with this id;
    the caller closes it."""
    lib = bpf.libbpf()
    pfd = lib.bpf_prog_get_fd_by_id(int(prog_id))
    if pfd < 0:
        e = bpf._errno_of(pfd)
        raise bpf.BpfError(e, f"no program with id {prog_id}: {os.strerror(e)}")
    try:
        # struct bpf_prog_info: nr_map_ids u32 @52, map_ids u64 @56.
        ids = (ctypes.c_uint32 * 64)()
        buf = ctypes.create_string_buffer(_PROG_INFO_SIZE)
        struct.pack_into("<IQ", buf, 52, len(ids), ctypes.addressof(ids))
        _info(pfd, buf, f"program {prog_id}")
        count = min(struct.unpack_from("I", buf.raw, 52)[0], len(ids))
    finally:
        os.close(pfd)
    for map_id in ids[:count]:
        mfd = lib.bpf_map_get_fd_by_id(map_id)
        if mfd < 0:
            continue
        # struct bpf_map_info: name char[16] @24.
        mbuf = ctypes.create_string_buffer(_MAP_INFO_SIZE)
        try:
            _info(mfd, mbuf, f"map {map_id}")
        except bpf.BpfError:
            os.close(mfd)
            raise
        if mbuf.raw[24:40].split(b"\0", 1)[0] == map_name.encode():
            return mfd
        os.close(mfd)
    raise bpf.BpfError(errno.EINVAL, f"program {prog_id} has no {map_name} map: "
                                     f"is it the {what}?")


def parser_state_map(parser_prog_id: int) -> int:
    """A new fd of the http_state map of the program with this id (the
    parser attached to a proxy or listener); the caller closes it."""
    return _prog_map(parser_prog_id, STATE_MAP, "http parser")


def _map_lookup(fd: int, key: bytes, size: int) -> bytes | None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(size)
    ret = bpf.libbpf().bpf_map_lookup_elem(fd, k, v)
    if ret:
        e = bpf._errno_of(ret)
        if e == errno.ENOENT:
            return None
        raise bpf.BpfError(e, f"cannot read a map: {os.strerror(e)}")
    return v.raw


def _map_update(fd: int, key: bytes, value: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    ret = bpf.libbpf().bpf_map_update_elem(fd, k, v, 0)
    if ret:
        e = bpf._errno_of(ret)
        raise bpf.BpfError(e, f"cannot update the rules map: {os.strerror(e)}")


def apply_attached(filter_prog_id: int, rules: HttpRules) -> None:
    """Write `rules` into the http-filter attached with this program id (a
    proxy's or a listener's verdict): one map update, no byte lost."""
    value = encode(rules)
    fd = _prog_map(filter_prog_id, RULES_MAP, "http-filter")
    try:
        _map_update(fd, struct.pack("I", 0), value)
    finally:
        os.close(fd)


def rules_attached(filter_prog_id: int) -> HttpRules:
    """The rules in force in the http-filter with this program id."""
    fd = _prog_map(filter_prog_id, RULES_MAP, "http-filter")
    try:
        raw = _map_lookup(fd, struct.pack("I", 0), RULES_SIZE)
    finally:
        os.close(fd)
    return decode(raw) if raw is not None else HttpRules()


# struct http_state of kmod/bpf/http.h: per direction `heads` (header
# blocks framed) at 36 in a 72-byte struct http_dir_state.
_DIR_STATE_SIZE = 72
_HEADS_AT = 36
STATE_SIZE = 2 * _DIR_STATE_SIZE + 16 + 32
_STAMP_AT = 2 * _DIR_STATE_SIZE + 12  # http_state.stamp


@dataclass(frozen=True)
class HttpCounts:
    """What the parser framed on one proxy: header blocks of requests
    (a-to-b) and of responses (b-to-a, interim 1xx ones included)."""

    requests: int
    responses: int


def counts(parser_prog_id: int, proxy_id: int, created_ns: int | None = None) -> HttpCounts | None:
    """The parser's counts for this proxy (None: the parser has not seen it,
    or its entry was evicted from the LRU map). With the proxy's
    created_ns, an entry an earlier proxy of the same id left (ids start
    again at a module reload) is not taken for this one's."""
    fd = parser_state_map(parser_prog_id)
    try:
        raw = _map_lookup(fd, struct.pack("I", proxy_id), STATE_SIZE)
    finally:
        os.close(fd)
    if raw is None:
        return None
    if created_ns is not None and \
            struct.unpack_from("I", raw, _STAMP_AT)[0] != created_ns & 0xFFFFFFFF:
        return None
    ab = struct.unpack_from("I", raw, _HEADS_AT)[0]
    ba = struct.unpack_from("I", raw, _DIR_STATE_SIZE + _HEADS_AT)[0]
    return HttpCounts(ab, ba)


def load_filter(state_map_fd: int, rules: HttpRules | None = None) -> bpf.Program:
    """Load http-filter on an existing state map (its fd stays the
    caller's), with `rules` written (none: every request passes)."""
    prog = bpf.load_object(bpf.shipped_path(FILTER),
                           reuse_maps={STATE_MAP: state_map_fd})
    try:
        apply(prog, rules or HttpRules())
    except BaseException:
        prog.close()
        raise
    return prog


@dataclass
class HttpPrograms:
    """Programs load_http() loaded; close() closes them (attached ones live on)."""

    parser: bpf.Program | None
    filter: bpf.Program | None

    def close(self) -> None:
        for p in (self.parser, self.filter):
            if p is not None:
                p.close()

    def __enter__(self) -> "HttpPrograms":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_http(parser: bool = True, filter: bool = True, rules: HttpRules | None = None, *,
              parser_prog_id: int | None = None, header_limit: int | None = None,
              loader: Callable[[str], bpf.Program] | None = None) -> HttpPrograms:
    """Load the parser, the filter, or both sharing one state map.

    A filter alone shares the state map of the parser already loaded with
    id `parser_prog_id` (see parser_state_map()). `rules` go into the
    filter, `header_limit` into the parser.
    """
    if filter and not parser and parser_prog_id is None:
        raise HttpRulesError("the http filter needs the parser's id (parser_prog_id) "
                             "to share its state")
    load = loader or bpf.load
    progs = HttpPrograms(None, None)
    try:
        if parser:
            progs.parser = load(PARSER)
            if header_limit is not None:
                set_header_limit(progs.parser, header_limit)
        if filter:
            if progs.parser is not None:
                progs.filter = load_filter(progs.parser.map_fd(STATE_MAP), rules)
            else:
                assert parser_prog_id is not None
                fd = parser_state_map(parser_prog_id)
                try:
                    progs.filter = load_filter(fd, rules)
                finally:
                    os.close(fd)
    except BaseException:
        progs.close()
        raise
    return progs
