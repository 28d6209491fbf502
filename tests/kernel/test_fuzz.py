"""A seeded netlink fuzzer of the kproxy family (issue 8, item 1).

Requests are built by hand (nlmsghdr + genlmsghdr + attributes, with
struct) and sent over a plain NETLINK_GENERIC socket, so that anything may
be malformed: the netlink and genetlink headers and flags, the attributes'
headers, lengths, types and nesting, and their values (fds of every kind,
proxy ids, huge numbers).  Every operation of the family is targeted
(proxy-new, proxy-del, proxy-get do and dump, bpf-attach, bpf-detach) and
command numbers the family does not have.

An oracle says, for each request, what the kernel must answer.  It parses
the bytes as netlink_rcv_skb(), genetlink and the strict policy validation
of lib/nlattr.c do (the policies are derived from schema/kproxy.yaml, like
the module's), and models the module's handlers: which fd number is what
in our table, which proxies live in this netns, which programs are
attached.  The kernel's answer must be exactly that: the errno, the
module's extack message where it gives one, the missing attribute, one
reply of the right shape for the right proxy, or a dump listing exactly the
live proxies; nothing at all where the kernel drops a message silently (a
bad nlmsg_len), which a probe sent right after proves.  A wrong errno, a
missing or an extra reply, a crash, a leaked or a phantom proxy all fail.

Valid traffic runs alongside: a "canary" proxy carries bytes both ways the
whole time, pumped by a child process that holds its outer sockets (so no
fd of ours can reach them, and their numbers are "another process's fds"),
and real proxies are made, used, inspected and deleted between fuzzed
requests.  Proxies the fuzzer makes by accident (it joins idle "decoy"
sockets) are modelled like any other and deleted at the end.

KPROXY_FUZZ_SEED=<n> replays a run's choices (the seed is printed and in
every failure message); ids and fd numbers the kernel hands out may differ
from one run to the next, so a failure also shows the datagram's bytes, what
the oracle expected and what came back.  `make test` sends 3000 datagrams
(30-45 s under TCG), `make test-long` 20,000.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import select
import signal
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kpctl import Kproxy, bpf
from rawnl import (
    GENLHDR,
    INT_MAX,
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    NLA_TYPE_MASK,
    NLAHDR,
    NLHDR,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_ECHO,
    NLM_F_MATCH,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLM_F_ROOT,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_MIN_TYPE,
    SPEC,
    U32_MAX,
    A,
    Conn,
    Msg,
    align4,
    decode_error,
    decode_set,
    family_ids,
    nla,
    nlmsg,
    u32,
)
from util import (  # noqa: F401 - kp is a fixture
    assert_pingpong,
    destroy_all,
    kp,
    listed_ids,
    live_objects,
    long_or,
    make_chain,
    proc_ids,
    recv_exact,
    tcp_pair,
    wait_for,
)

SEED = int(os.environ.get("KPROXY_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
# Datagrams sent by the fuzzer (a batch datagram carries several requests).
# Under TCG 3000 take 30-45 s; long mode is the figure.
REQUESTS = long_or(20000, 3000)
# A real proxy is made, used and deleted every this many fuzzed datagrams.
VALID_EVERY = long_or(100, 50)
TCP_ESTABLISHED, TCP_CLOSE_WAIT, TCP_LISTEN = 1, 8, 10

# --- the family, from the schema ------------------------------------------


@dataclass(frozen=True)
class AttrPolicy:
    name: str
    value: int
    min: int | None
    max: int | None
    flag: bool = False  # NLA_FLAG (no payload)
    binary_max: int | None = None  # NLA_BINARY of at most this length; else NLA_U32


@dataclass(frozen=True)
class Op:
    """An operation as the kernel validates it: one policy for do and dump."""

    name: str
    cmd: int
    do: bool
    dump: bool
    request: tuple[str, ...]  # attributes of the do request, in spec order
    maxattr: int
    policy: dict[int, AttrPolicy]  # the others up to maxattr are NLA_UNSPEC


def _attr_policy(name: str) -> AttrPolicy:
    raw = next(a for s in SPEC.raw["attribute-sets"] if s["name"] == SPEC.root_set
               for a in s["attributes"] if a["name"] == name)
    a = SPEC.attr(SPEC.root_set, name)
    # The fuzzer models u32, flag and binary request attributes only: a new
    # type in a request must be taught to it (and fails here until it is).
    assert a.type in ("u32", "flag", "binary"), \
        f"request attribute {name} is {a.type}: teach the fuzzer"
    if a.type == "flag":
        return AttrPolicy(name, a.value, None, None, flag=True)
    checks = raw.get("checks", {})
    if a.type == "binary":
        return AttrPolicy(name, a.value, None, None, binary_max=_const(checks["max-len"]))
    lo, hi = checks.get("min"), checks.get("max")
    if a.enum is not None and hi is None:
        hi = max(SPEC.enums[a.enum].by_value)
    return AttrPolicy(name, a.value, lo, hi)


def _const(name: str) -> int:
    return next(d["value"] for d in SPEC.raw["definitions"] if d["name"] == name)


def _ops() -> dict[str, Op]:
    out = {}
    for raw in SPEC.raw["operations"]["list"]:
        if "do" not in raw and "dump" not in raw:
            continue  # notifications: no handler
        names: list[str] = []
        for mode in ("do", "dump"):
            for n in ((raw.get(mode) or {}).get("request") or {}).get("attributes", []):
                if n not in names:
                    names.append(n)
        pol = {p.value: p for p in map(_attr_policy, names)}
        out[raw["name"]] = Op(raw["name"], SPEC.cmd(raw["name"]), "do" in raw, "dump" in raw,
                              tuple(((raw.get("do") or {}).get("request") or {}).get("attributes", [])),
                              max(pol, default=0), pol)
    return out


OPS = _ops()
OPS_BY_CMD = {op.cmd: op for op in OPS.values()}


def unmodelled_cmds() -> set[int]:
    """The commands of operations the oracle has no handler for (the
    listener operations): the fuzzer sends none of them, bit flips
    included. tests/kernel/test_listener.py tests their bad input."""
    return {op.cmd for op in OPS.values()
            if not hasattr(Oracle, "do_" + op.name.replace("-", "_"))}
ALL_ATTRS = set(A.values())
NEST_ATTRS = [a.value for a in SPEC.attr_sets[SPEC.root_set].values() if a.type == "nest"]
FLAG_ATTRS = {a.name for a in SPEC.attr_sets[SPEC.root_set].values() if a.type == "flag"}
KIND = SPEC.enums["bpf-kind"].by_name
DIRECTION = SPEC.enums["direction"].by_name
PARSER, VERDICT = KIND["parser"], KIND["verdict"]
REPLIES_MAX = _const("replies-max")
REPLY_LEN_MAX = _const("reply-len-max")
# Optional attributes, most requests come without: proxy-new's programs
# (in place before the first byte), bpf-attach's replies.
OPTIONAL_ATTRS = ("parser-fd", "verdict-fd", "verdict-direction", "verdict-replies")

# The module's extack texts a user sees (kmod/proxy.c, kmod/netlink.c).
MSG_NO_PROXY = "no such proxy in this network namespace"
MSG_NOT_PROG = "prog-fd is not a BPF program"
MSG_WRONG_PROG = "program is not of type socket_filter"
MSG_VERDICT_NEEDS_PARSER = "a verdict needs a parser"
MSG_NOT_ATTACHED = "no program of this kind is attached"
MSG_VERDICT_ATTACHED = "a verdict is attached"
MSG_NEW_NOT_PROG = "not a BPF program"
MSG_NEW_VERDICT_ONLY = "verdict-replies and verdict-direction are for a verdict: give verdict-fd too"
MSG_NEW_VERDICT_NEEDS_PARSER = "a verdict needs a parser: give parser-fd too"
MSG_REPLIES_FOR_VERDICT = "verdict-replies are for a verdict"
MSG_REPLIES_MAX = f"at most {REPLIES_MAX} verdict-replies"
# ... and the kernel's own (lib/nlattr.c, net/netlink/genetlink.c).
MSG_UNKNOWN_TYPE = "Unknown attribute type"
MSG_UNSUPPORTED = "Unsupported attribute"
MSG_BAD_LEN = "invalid attribute length"
MSG_NESTED = "NLA_F_NESTED not expected"
MSG_RANGE = "integer out of range"
MSG_POLICY = "Attribute failed policy validation"
MSG_LEFTOVER = "bytes leftover after parsing attributes"
MSG_RESERVED = "genlmsghdr.reserved field is not 0"
MSG_FLAGS = "ambiguous or reserved bits set in nlmsg_flags"


def dirs_of(direction: int) -> list[int]:
    """The directions (0 a-to-b, 1 b-to-a) a direction value names."""
    return {DIRECTION["a-to-b"]: [0], DIRECTION["b-to-a"]: [1], DIRECTION["both"]: [0, 1]}[direction]


# --- what an fd number is, in our table ----------------------------------


@dataclass(frozen=True)
class FdInfo:
    kind: str  # "none" (not open), "file", "socket", "bpf"
    ino: int = 0
    tcp: bool = False
    state: int = 0
    local: tuple[int, bytes, int] | None = None  # (family, address, port)
    remote: tuple[int, bytes, int] | None = None
    prog: Prog | None = None


@dataclass(frozen=True)
class Prog:
    fd: int
    id: int
    socket_filter: bool


def _endpoint(family: int, addr: tuple) -> tuple[int, bytes, int]:
    return (family, socket.inet_pton(family, addr[0]), addr[1])


def classify(fd: int, progs: dict[int, Prog]) -> FdInfo:
    """What the kernel finds at this fd number of our table (as a u32)."""
    if fd > INT_MAX:
        return FdInfo("none")  # fget() of an unsigned number past any table
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return FdInfo("none")
    if link == "anon_inode:bpf-prog":
        assert fd in progs, f"fd {fd} is a BPF program the fuzzer did not load"
        return FdInfo("bpf", prog=progs[fd])
    if not link.startswith("socket:["):
        return FdInfo("file")
    ino = int(link[len("socket:["):-1])
    s = socket.socket(fileno=fd)
    try:
        tcp = s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM \
            and s.proto == socket.IPPROTO_TCP
        if not tcp:
            return FdInfo("socket", ino)
        state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        local = remote = None
        if state in (TCP_ESTABLISHED, TCP_CLOSE_WAIT):
            local = _endpoint(s.family, s.getsockname())
            remote = _endpoint(s.family, s.getpeername())
        return FdInfo("socket", ino, True, state, local, remote)
    finally:
        s.detach()


# --- the module, as the oracle sees it -----------------------------------


@dataclass
class ProxyModel:
    id: int
    inos: tuple[int, int]
    ends: tuple[tuple | None, tuple | None]  # ((local, remote) of A, of B), None: unknown
    progs: dict[tuple[int, int], int] = field(default_factory=dict)  # (kind, dir) -> prog id
    notify: bool = False  # made with `notify`: its end is unicast to the fuzzer's socket


class Model:
    def __init__(self) -> None:
        self.proxies: dict[int, ProxyModel] = {}
        self.dead: deque[int] = deque(maxlen=64)  # ids that lived and ended
        self.notified: list[int] = []  # ended proxies made with `notify`
        self.canary: int = 0

    def busy(self, ino: int) -> bool:
        return any(ino in p.inos for p in self.proxies.values())

    def add(self, p: ProxyModel) -> None:
        assert p.id not in self.proxies
        self.proxies[p.id] = p

    def remove(self, pid: int) -> None:
        if self.proxies.pop(pid).notify:
            self.notified.append(pid)
        self.dead.append(pid)


@dataclass
class Req:
    """One netlink message of a datagram, as the kernel splits it."""

    type: int
    flags: int
    seq: int
    body: bytes  # after the nlmsghdr, nlmsg_len - 16 bytes
    routed: object = None  # Oracle.route()'s answer, once asked (it depends on the bytes only)


@dataclass
class Expect:
    """What the kernel answers to one Req.

    kind: "none" (nothing), "ack" (NLMSG_ERROR 0), "error", "reply" (one
    message of the family, then an ack if asked), "dump" (messages, DONE).
    `effect(reply_attrs)` updates the model once the answer is confirmed.
    """

    kind: str
    op: str
    errno: int = 0
    msg: str | None = None
    miss: int | None = None
    ack: bool = False
    reply_cmd: int = 0
    reply_id: int | None = None
    effect: Callable[[dict | None], None] | None = None

    def describe(self) -> str:
        if self.kind == "error":
            return f"{errno.errorcode.get(self.errno, self.errno)}" + (f" ({self.msg!r})" if self.msg else "") \
                + (f" missing attr {self.miss}" if self.miss else "")
        return self.kind + (" + ack" if self.ack else "")


def split_datagram(data: bytes) -> list[Req]:
    """The messages netlink_rcv_skb() handles, in order: it stops silently at
    a header shorter than 16 bytes or longer than what is left."""
    out, off = [], 0
    while len(data) - off >= NLHDR.size:
        n, typ, flags, seq, _pid = NLHDR.unpack_from(data, off)
        if n < NLHDR.size or len(data) - off < n:
            break
        out.append(Req(typ, flags, seq, data[off + NLHDR.size: off + n]))
        off += min(align4(n), len(data) - off)
    return out


class PolicyError(Exception):
    def __init__(self, err: int, msg: str | None) -> None:
        super().__init__(err, msg)
        self.err, self.msg = err, msg


def validate_attrs(data: bytes, op: Op) -> dict[int, int]:
    """__nla_validate_parse() with NL_VALIDATE_STRICT: the attributes a
    handler gets (the last of duplicates wins), or the error it never sees."""
    tb: dict[int, int] = {}
    off, rem = 0, len(data)
    while rem >= NLAHDR.size:
        nlen, ntype = NLAHDR.unpack_from(data, off)
        if nlen < NLAHDR.size or nlen > rem:
            break
        t = ntype & NLA_TYPE_MASK
        if t == 0 or t > op.maxattr:
            raise PolicyError(errno.EINVAL, MSG_UNKNOWN_TYPE)
        pt = op.policy.get(t)
        if pt is None:  # within maxattr but not in the policy: NLA_UNSPEC
            raise PolicyError(errno.EINVAL, MSG_UNSUPPORTED)
        # validate_nla(): the exact length of integers, NLA_F_NESTED, then
        # the type's own check (a flag with a payload: -ERANGE, its default).
        if not pt.flag and pt.binary_max is None and nlen - NLAHDR.size != 4:
            raise PolicyError(errno.EINVAL, MSG_BAD_LEN)
        if ntype & NLA_F_NESTED:
            raise PolicyError(errno.EINVAL, MSG_NESTED)
        if pt.flag:
            if nlen > NLAHDR.size:
                raise PolicyError(errno.ERANGE, MSG_POLICY)
            tb[t] = 1
        elif pt.binary_max is not None:
            if nlen - NLAHDR.size > pt.binary_max:
                raise PolicyError(errno.ERANGE, MSG_POLICY)
            tb[t] = tb.get(t, 0) + 1  # how many: the handler walks them all
        else:
            (v,) = struct.unpack_from("=I", data, off + NLAHDR.size)
            if (pt.min is not None and v < pt.min) or (pt.max is not None and v > pt.max):
                raise PolicyError(errno.ERANGE, MSG_RANGE)
            tb[t] = v
        step = align4(nlen)
        off += step
        rem -= step
    if rem > 0:
        raise PolicyError(errno.EINVAL, MSG_LEFTOVER)
    return tb


class Oracle:
    def __init__(self, family_id: int, other_families: set[int], model: Model, progs: dict[int, Prog]) -> None:
        self.fid = family_id
        self.others = other_families
        self.model = model
        self.progs = progs

    def modelled(self, r: Req) -> bool:
        """False for a message another family would handle (nlctrl, ...)."""
        return not (r.flags & NLM_F_REQUEST and r.type >= NLMSG_MIN_TYPE and r.type in self.others)

    def route(self, r: Req) -> Expect | tuple[Op, dict[int, int], bool]:
        """Up to the handler: the answer of the netlink and genetlink core,
        or the op, its validated attributes and whether it is a dump."""
        ack = bool(r.flags & NLM_F_ACK)
        # netlink_rcv_skb(): only requests, and no control messages.
        if not r.flags & NLM_F_REQUEST or r.type < NLMSG_MIN_TYPE:
            return Expect("ack" if ack else "none", "not-a-request")
        if r.type != self.fid:
            assert r.type not in self.others
            return Expect("error", "other-family", errno.ENOENT)
        # genl_family_rcv_msg()
        if len(r.body) < GENLHDR.size:
            return Expect("error", "short-genl", errno.EINVAL)
        cmd, _version, reserved = GENLHDR.unpack_from(r.body)
        op = OPS_BY_CMD.get(cmd)
        label = op.name if op else f"cmd-{cmd}"
        if cmd >= min(OPS_BY_CMD):  # resv_start_op: strict header checks
            if reserved:
                return Expect("error", label, errno.EINVAL, MSG_RESERVED)
            fl = r.flags & ~NLM_F_DUMP if r.flags & NLM_F_DUMP == NLM_F_DUMP else r.flags
            if fl & ~(NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO):
                return Expect("error", label, errno.EINVAL, MSG_FLAGS)
        dump = r.flags & NLM_F_DUMP == NLM_F_DUMP
        if op is None or not (op.dump if dump else op.do):
            return Expect("error", label, errno.EOPNOTSUPP)
        try:
            tb = validate_attrs(r.body[GENLHDR.size:], op)
        except PolicyError as e:
            return Expect("error", label + ("-dump" if dump else ""), e.err, e.msg)
        return op, tb, dump

    def predict(self, r: Req) -> Expect:
        if r.routed is None:
            r.routed = self.route(r)
        routed = r.routed
        if isinstance(routed, Expect):
            return routed
        op, tb, dump = routed
        if dump:
            return Expect("dump", op.name + "-dump")
        return getattr(self, "do_" + op.name.replace("-", "_"))(tb, bool(r.flags & NLM_F_ACK))

    # The handlers (kmod/netlink.c), in the order they check things.

    def _missing(self, tb: dict[int, int], names: list[str], label: str) -> Expect | None:
        for n in names:
            if A[n] not in tb:
                return Expect("error", label, errno.EINVAL, miss=A[n])
        return None

    def _live(self, tb: dict[int, int]) -> ProxyModel | None:
        return self.model.proxies.get(tb[A["id"]])

    def _done(self, label: str, ack: bool, effect: Callable[[], None]) -> Expect:
        return Expect("ack" if ack else "none", label, effect=lambda _attrs: effect())

    def do_proxy_new(self, tb: dict[int, int], ack: bool) -> Expect:
        label = "proxy-new"
        if (e := self._missing(tb, ["fd-a", "fd-b"], label)) is not None:
            return e
        progs = self._new_programs(tb, label)
        if isinstance(progs, Expect):
            return progs
        infos = []
        for name in ("fd-a", "fd-b"):  # kproxy_get_socket(), A then B
            fi = classify(tb[A[name]], self.progs)
            if fi.kind == "none":
                return Expect("error", label, errno.EBADF, f"{name} is not an open file descriptor")
            if fi.kind != "socket":
                return Expect("error", label, errno.ENOTSOCK, f"{name} is not a socket")
            if not fi.tcp:
                return Expect("error", label, errno.EPROTONOSUPPORT, f"{name} is not a TCP socket")
            infos.append(fi)
        if infos[0].ino == infos[1].ino:
            return Expect("error", label, errno.EINVAL, "fd-a and fd-b are the same socket")
        for name, fi in zip(("fd-a", "fd-b"), infos):  # kproxy_hook()
            if fi.state == TCP_LISTEN:
                return Expect("error", label, errno.ENOTCONN, f"{name} is a listening socket")
            if fi.state not in (TCP_ESTABLISHED, TCP_CLOSE_WAIT):
                return Expect("error", label, errno.ENOTCONN, f"{name} is not connected")
            if self.model.busy(fi.ino):
                return Expect("error", label, errno.EBUSY, f"{name} is already in a proxy")

        def created(attrs: dict | None) -> None:
            assert attrs is not None
            self.model.add(ProxyModel(attrs["id"], (infos[0].ino, infos[1].ino),
                                      tuple((fi.local, fi.remote) for fi in infos),
                                      progs, notify=A["notify"] in tb))

        return Expect("reply", label, ack=ack, reply_cmd=SPEC.cmd("proxy-new"), effect=created)

    def _new_programs(self, tb: dict[int, int], label: str) -> dict[tuple[int, int], int] | Expect:
        """kproxy_nl_new_progs(), before the sockets are looked at: the
        programs a new proxy starts with ((kind, dir) -> prog id), or the
        error."""
        if (A["verdict-replies"] in tb or A["verdict-direction"] in tb) and A["verdict-fd"] not in tb:
            return Expect("error", label, errno.EINVAL, MSG_NEW_VERDICT_ONLY)
        if A["verdict-fd"] in tb and A["parser-fd"] not in tb:
            return Expect("error", label, errno.EINVAL, MSG_NEW_VERDICT_NEEDS_PARSER)
        ids = {}
        for kind, name in ((PARSER, "parser-fd"), (VERDICT, "verdict-fd")):
            if A[name] not in tb:
                continue
            fi = classify(tb[A[name]], self.progs)
            if fi.kind == "none":
                return Expect("error", label, errno.EBADF, MSG_NEW_NOT_PROG)
            if fi.kind != "bpf":
                return Expect("error", label, errno.EINVAL)  # as in do_bpf_attach
            if not fi.prog.socket_filter:
                return Expect("error", label, errno.EINVAL, MSG_WRONG_PROG)
            ids[kind] = fi.prog.id
        if VERDICT in ids and tb.get(A["verdict-replies"], 0) > REPLIES_MAX:
            return Expect("error", label, errno.E2BIG, MSG_REPLIES_MAX)
        progs = {(PARSER, d): ids[PARSER] for d in (0, 1)} if PARSER in ids else {}
        if VERDICT in ids:
            for d in dirs_of(tb.get(A["verdict-direction"], DIRECTION["both"])):
                progs[(VERDICT, d)] = ids[VERDICT]
        return progs

    def do_proxy_del(self, tb: dict[int, int], ack: bool) -> Expect:
        label = "proxy-del"
        if (e := self._missing(tb, ["id"], label)) is not None:
            return e
        p = self._live(tb)
        if p is None:
            return Expect("error", label, errno.ENOENT, MSG_NO_PROXY)
        return self._done(label, ack, lambda: self.model.remove(p.id))

    def do_proxy_get(self, tb: dict[int, int], ack: bool) -> Expect:
        label = "proxy-get"
        if (e := self._missing(tb, ["id"], label)) is not None:
            return e
        p = self._live(tb)
        if p is None:
            return Expect("error", label, errno.ENOENT, MSG_NO_PROXY)
        return Expect("reply", label, ack=ack, reply_cmd=SPEC.cmd("proxy-get"), reply_id=p.id)

    def do_bpf_attach(self, tb: dict[int, int], ack: bool) -> Expect:
        label = "bpf-attach"
        if (e := self._missing(tb, ["id", "prog-fd", "kind", "direction"], label)) is not None:
            return e
        kind, dirs = tb[A["kind"]], dirs_of(tb[A["direction"]])
        replies = tb.get(A["verdict-replies"], 0)
        if kind != VERDICT and replies:
            return Expect("error", label, errno.EINVAL, MSG_REPLIES_FOR_VERDICT)
        if replies > REPLIES_MAX:
            return Expect("error", label, errno.E2BIG, MSG_REPLIES_MAX)
        fi = classify(tb[A["prog-fd"]], self.progs)
        if fi.kind == "none":
            return Expect("error", label, errno.EBADF, MSG_NOT_PROG)
        if fi.kind != "bpf":
            # bpf_prog_get_type() says EINVAL for any file that is not a
            # program; the module then words it as a program of the wrong
            # type, so only the errno is checked here.
            return Expect("error", label, errno.EINVAL)
        if not fi.prog.socket_filter:
            return Expect("error", label, errno.EINVAL, MSG_WRONG_PROG)
        p = self._live(tb)
        if p is None:
            return Expect("error", label, errno.ENOENT, MSG_NO_PROXY)
        if kind == VERDICT and any((PARSER, d) not in p.progs for d in dirs):
            return Expect("error", label, errno.EINVAL, MSG_VERDICT_NEEDS_PARSER)
        prog_id = fi.prog.id

        def attach() -> None:
            for d in dirs:
                p.progs[(kind, d)] = prog_id

        return self._done(label, ack, attach)

    def do_bpf_detach(self, tb: dict[int, int], ack: bool) -> Expect:
        label = "bpf-detach"
        if (e := self._missing(tb, ["id", "kind", "direction"], label)) is not None:
            return e
        kind, dirs = tb[A["kind"]], dirs_of(tb[A["direction"]])
        p = self._live(tb)
        if p is None:
            return Expect("error", label, errno.ENOENT, MSG_NO_PROXY)
        for d in dirs:
            if (kind, d) not in p.progs:
                return Expect("error", label, errno.ENOENT, MSG_NOT_ATTACHED)
            if kind == PARSER and (VERDICT, d) in p.progs:
                return Expect("error", label, errno.EBUSY, MSG_VERDICT_ATTACHED)

        def detach() -> None:
            for d in dirs:
                del p.progs[(kind, d)]

        return self._done(label, ack, detach)


# --- replies ---------------------------------------------------------------


def check_proxy_attrs(attrs: dict, what: str) -> None:
    """A proxy as every reply carries it (the schema's proxy-all)."""
    for name in ("id", "state", "create-time", "sock-a", "sock-b", "a-to-b", "b-to-a"):
        assert name in attrs, f"{what}: no {name}"
    assert attrs["id"] >= 1, f"{what}: id {attrs['id']}"
    assert attrs["state"] in SPEC.enums["state"].by_value, f"{what}: state {attrs['state']}"
    assert attrs["create-time"] > 0, f"{what}: create-time 0"
    for s in ("sock-a", "sock-b"):
        sk = attrs[s]
        fam = sk.get("family")
        assert fam in (socket.AF_INET, socket.AF_INET6), f"{what}.{s}: family {fam}"
        alen = 4 if fam == socket.AF_INET else 16
        for k in ("local-addr", "remote-addr"):
            assert len(sk.get(k, b"")) == alen, f"{what}.{s}.{k}: {sk.get(k)!r}"
        for k in ("local-port", "remote-port", "tcp-state"):
            assert k in sk, f"{what}.{s}: no {k}"
    for d in ("a-to-b", "b-to-a"):
        for k in ("bytes", "skbs", "msgs", "drops", "queued"):
            assert k in attrs[d], f"{what}.{d}: no {k}"


# --- the canary: a proxy pumped by another process ------------------------


def pump(a: socket.socket, b: socket.socket, seed: int, stop_fd: int, out_fd: int) -> int:
    """In a child: random-sized chunks a -> b and b -> a until told to stop,
    each checked byte for byte; then the totals, as a JSON line.  It keeps
    its sockets (closing them would end the canary) until the stop pipe is
    closed."""
    rng = random.Random(seed)
    sent, rounds = [0, 0], 0
    try:
        os.write(out_fd, b"ready\n")
        while not select.select([stop_fd], [], [], 0.02)[0]:
            for i, (src, dst) in enumerate(((a, b), (b, a))):
                data = rng.randbytes(rng.randint(1, 32768))
                src.sendall(data)
                if recv_exact(dst, len(data)) != data:
                    raise AssertionError(f"direction {i}: bytes differ in round {rounds}")
                sent[i] += len(data)
            rounds += 1
        result, code = {"rounds": rounds, "a_to_b": sent[0], "b_to_a": sent[1]}, 0
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        result, code = {"error": repr(e), "rounds": rounds}, 1
    os.write(out_fd, (json.dumps(result) + "\n").encode())
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if select.select([stop_fd], [], [], 1)[0] and not os.read(stop_fd, 64):
            break
    return code


def read_line(fd: int, timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"{what}: no line within {timeout}s (got {buf!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"{what}: the child closed its pipe (got {buf!r})")
        buf += chunk
    return buf.decode().strip()


def reap(pid: int, timeout: float) -> int | None:
    """The child's exit status, or None if it is still running after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


# --- the generator -------------------------------------------------------

# Op targets: every operation, the dump, and commands the family lacks.
TARGETS = ["proxy-new", "proxy-del", "proxy-get", "proxy-get-dump", "bpf-attach", "bpf-detach", "unknown-cmd"]
# Malformation classes (one scheduled per datagram, sometimes a second one).
ATTR_CLASSES = ["valid", "missing", "extra-attr", "unknown-type", "duplicate", "wrong-length",
                "nested-flag", "byteorder-flag", "nested-garbage", "bad-nla-len", "trailing",
                "random-attrs", "bitflip", "huge-values", "bad-fd", "random-id", "shuffle"]
MSG_CLASSES = ["cut", "genl-truncated", "nl-truncated", "short-len-extra", "flags", "reserved",
               "header-fields", "wrong-family", "batch"]
CLASSES = ATTR_CLASSES + MSG_CLASSES
FD_OPS = {"proxy-new", "bpf-attach"}
ID_OPS = {"proxy-del", "proxy-get", "bpf-attach", "bpf-detach"}


def applicable(target: str, cls: str) -> bool:
    if cls == "valid":
        return target != "unknown-cmd"
    if cls == "bad-fd":
        return target in FD_OPS
    if cls == "random-id":
        return target in ID_OPS
    if cls in ("missing", "duplicate", "wrong-length", "nested-flag", "byteorder-flag", "huge-values"):
        return target not in ("proxy-get-dump", "unknown-cmd")
    return True


@dataclass
class Datagram:
    data: bytes
    target: str
    classes: tuple[str, ...]
    reqs: list[Req]  # the messages the kernel will see in it


# Per target: the classes that apply, those that may come second, and
# those a message inside a batch may have.
CLASSES_FOR = {t: [c for c in CLASSES if applicable(t, c)] for t in TARGETS}
EXTRA_FOR = {t: [c for c in ATTR_CLASSES if c != "valid" and applicable(t, c)] for t in TARGETS}
IN_BATCH_FOR = {t: [c for c in CLASSES_FOR[t] if c not in ("batch", "nl-truncated", "short-len-extra")]
                for t in TARGETS}


class Generator:
    def __init__(self, rng: random.Random, model: Model, fds: dict[str, list[int]], progs: dict[int, Prog],
                 family_id: int, unregistered: list[int]) -> None:
        self.rng, self.model, self.fds, self.progs = rng, model, fds, progs
        self.fid = family_id
        self.unregistered = unregistered
        self.seq = 1000
        self.decoy_ino = {fd: os.fstat(fd).st_ino for fd in fds["decoy"]}
        pairs = [(t, c) for t in TARGETS for c in CLASSES if applicable(t, c)]
        rng.shuffle(pairs)
        # Every (target, class) first, so that a short CI run covers them all.
        self.schedule = deque(pairs)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # values

    def free_decoys(self) -> list[int]:
        busy = {ino for p in self.model.proxies.values() for ino in p.inos}
        return [fd for fd in self.fds["decoy"] if self.decoy_ino[fd] not in busy]

    def fd(self, bad: bool) -> int:
        r = self.rng
        free = self.free_decoys()
        if not bad and free and r.random() < 0.8:
            return r.choice(free)
        pool = r.choice(["special", "decoy", "dup", "closed", "foreign", "huge", "small"])
        if pool == "huge":
            return r.choice([INT_MAX, INT_MAX + 1, U32_MAX, U32_MAX - 1, 1 << 20, 1 << 30, r.getrandbits(32)])
        if pool == "small":
            return r.randrange(0, max(self.fds["decoy"]) + 16)
        return r.choice(self.fds[pool])

    def prog_fd(self, bad: bool) -> int:
        good = [p.fd for p in self.progs.values() if p.socket_filter]
        if not bad and self.rng.random() < 0.8:
            return self.rng.choice(good)
        return self.rng.choice([p.fd for p in self.progs.values()] + [self.fd(True)])

    def proxy_id(self, bad: bool, mutating: bool) -> int:
        r = self.rng
        live = [i for i in self.model.proxies if not (mutating and i == self.model.canary)]
        if not bad and live and r.random() < 0.85:
            return r.choice(live)
        choice = r.randrange(6)
        if choice == 0 and self.model.dead:
            return r.choice(self.model.dead)
        if choice == 1:
            return r.choice([0, 1, INT_MAX, INT_MAX + 1, U32_MAX])
        if choice == 2:
            return r.getrandbits(32)
        top = max([*self.model.proxies, *self.model.dead, 1])
        return r.randrange(0, top + 8)

    def value(self, name: str, bad: bool, mutating: bool) -> int:
        r = self.rng
        if name in ("fd-a", "fd-b"):
            return self.fd(bad)
        if name in ("prog-fd", "parser-fd", "verdict-fd"):
            return self.prog_fd(bad)
        if name == "id":
            return self.proxy_id(bad, mutating)
        if name == "kind":
            return r.choice(list(KIND.values())) if not bad or r.random() < 0.5 else \
                r.choice([len(KIND), U32_MAX, r.getrandbits(32)])
        if name in ("direction", "verdict-direction"):
            return r.choice(list(DIRECTION.values())) if not bad or r.random() < 0.5 else \
                r.choice([len(DIRECTION), U32_MAX, r.getrandbits(32)])
        return r.getrandbits(32)

    def replies(self, bad: bool) -> list[bytes]:
        """verdict-replies: a few short ones; bad, too many or one too long."""
        r = self.rng
        n = REPLIES_MAX + r.randint(1, 3) if bad and r.random() < 0.5 else r.randint(1, 3)
        out = [nla(A["verdict-replies"], r.randbytes(r.randint(0, 32))) for _ in range(n)]
        if bad and r.random() < 0.5:
            out[r.randrange(n)] = nla(A["verdict-replies"], r.randbytes(REPLY_LEN_MAX + r.randint(1, 16)))
        return out

    def new_programs(self) -> list[bytes]:
        """A valid proxy-new's programs: a parser, maybe a verdict with
        its direction and replies."""
        r = self.rng
        out = [nla(A["parser-fd"], u32(self.prog_fd(False)))]
        if r.random() < 0.5:
            out.append(nla(A["verdict-fd"], u32(self.prog_fd(False))))
            if r.random() < 0.5:
                out.append(nla(A["verdict-direction"], u32(r.choice(list(DIRECTION.values())))))
            if r.random() < 0.5:
                out += self.replies(False)
        return out

    def huge(self) -> int:
        return self.rng.choice([U32_MAX, U32_MAX - 1, INT_MAX, INT_MAX + 1, 1 << 31 | self.rng.getrandbits(31)])

    def garbage(self, depth: int) -> bytes:
        """Random attributes, nested ones among them, some of them broken."""
        r = self.rng
        out = b""
        for _ in range(r.randint(0, 4)):
            t = r.choice([r.randrange(0, 16), r.randrange(0, 1 << 14), *NEST_ATTRS])
            if depth > 0 and r.random() < 0.4:
                out += nla(t | NLA_F_NESTED, self.garbage(depth - 1))
            elif r.random() < 0.15:
                payload = r.randbytes(r.randint(0, 12))
                out += nla(t, payload, length=r.choice([0, 1, 3, 4 + len(payload) + r.randint(1, 40)]))
            else:
                out += nla(t | r.choice([0, NLA_F_NESTED, NLA_F_NET_BYTEORDER]), r.randbytes(r.randint(0, 12)))
        return out

    # messages

    def attrs_for(self, target: str, cls: str, extra: str | None) -> list[bytes]:
        """The attribute list of a request of `target`, malformed by `cls`."""
        r = self.rng
        if target == "unknown-cmd":
            names = r.sample(sorted(A), r.randint(0, 3))
        elif target == "proxy-get-dump":
            names = ["id"] if r.random() < 0.2 else []
        else:
            names = list(OPS[target].request)
        mutating = target in ("proxy-del", "bpf-attach", "bpf-detach")
        classes = {cls, extra}
        bad_fd, bad_id = "bad-fd" in classes, "random-id" in classes
        attrs: list[bytes] = []
        for n in names:
            if n in OPTIONAL_ATTRS and r.random() < 0.75:
                continue
            if n == "verdict-replies":
                attrs += self.replies(cls != "valid" and r.random() < 0.25)
                continue
            if n in FLAG_ATTRS:  # given or left out; a payload is malformed
                if r.random() < 0.5:
                    bad = cls != "valid" and r.random() < 0.25
                    attrs.append(nla(A[n], r.randbytes(r.randint(1, 4)) if bad else b""))
                continue
            if "huge-values" in classes and r.random() < 0.6:
                v = self.huge()
            else:
                bad = (bad_fd and n in ("fd-a", "fd-b", "prog-fd")) or (bad_id and n == "id") or \
                    (cls != "valid" and r.random() < 0.25)
                v = self.value(n, bad, mutating)
            attrs.append(nla(A[n], u32(v)))
        if target == "proxy-new" and cls == "valid" and len(self.free_decoys()) >= 2:
            a, b = r.sample(self.free_decoys(), 2)  # a real proxy, by accident
            attrs = [nla(A["fd-a"], u32(a)), nla(A["fd-b"], u32(b))]
            if r.random() < 0.5:
                attrs.append(nla(A["notify"], b""))
            if r.random() < 0.3:
                attrs += self.new_programs()
        if target == "proxy-new" and r.random() < 0.1:  # the same socket twice, maybe via a dup
            fd = r.choice(self.fds["decoy"])
            same = r.choice([fd, *[d for d in self.fds["dup"] if os.fstat(d).st_ino == os.fstat(fd).st_ino]])
            attrs = [nla(A["fd-a"], u32(fd)), nla(A["fd-b"], u32(same))]
        for c in (cls, extra):
            attrs = self.mutate_attrs(c, attrs, target)
        return attrs

    def mutate_attrs(self, c: str | None, attrs: list[bytes], target: str) -> list[bytes]:
        r = self.rng
        own = set(OPS["proxy-get" if target == "proxy-get-dump" else target].policy) if target in OPS or \
            target == "proxy-get-dump" else set()
        # Chunks that are whole attributes (not raw garbage from a mutation before).
        whole = [i for i, a in enumerate(attrs) if len(a) >= NLAHDR.size]
        i = r.choice(whole) if whole else None
        t = struct.unpack_from("=H", attrs[i], 2)[0] if i is not None else 0
        if c == "missing" and i is not None:
            attrs.pop(i)
        elif c == "extra-attr":
            extra = r.choice(sorted(ALL_ATTRS - own))
            payload = self.garbage(2) if extra in NEST_ATTRS else u32(r.getrandbits(32))
            attrs.insert(r.randint(0, len(attrs)), nla(extra | (NLA_F_NESTED if extra in NEST_ATTRS else 0), payload))
        elif c == "unknown-type":
            unknown = r.choice([0, max(ALL_ATTRS) + 1, max(ALL_ATTRS) + r.randint(2, 50), NLA_TYPE_MASK])
            attrs.insert(r.randint(0, len(attrs)), nla(unknown, u32(r.getrandbits(32))))
        elif c == "duplicate" and i is not None:
            name = next((n for n, v in A.items() if v == t & NLA_TYPE_MASK), None)
            v = self.value(name, r.random() < 0.5, True) if name else r.getrandbits(32)
            attrs.insert(r.randint(0, len(attrs)), nla(t, u32(v)))
        elif c == "wrong-length" and i is not None:
            attrs[i] = nla(t, r.randbytes(r.choice([0, 1, 2, 3, 5, 6, 7, 8, 12, 16])))
        elif c == "nested-flag" and i is not None:
            attrs[i] = attrs[i][:2] + struct.pack("=H", t | NLA_F_NESTED) + attrs[i][4:]
        elif c == "byteorder-flag" and i is not None:
            attrs[i] = attrs[i][:2] + struct.pack("=H", t | NLA_F_NET_BYTEORDER) + attrs[i][4:]
        elif c == "nested-garbage":
            nest = r.choice([*NEST_ATTRS, *(own or ALL_ATTRS)])
            attrs.insert(r.randint(0, len(attrs)), nla(nest | NLA_F_NESTED, self.garbage(3)))
        elif c == "bad-nla-len" and i is not None:
            attrs[i] = struct.pack("=H", r.choice([0, 1, 2, 3, 5, 7, 9, 200, 0xFFFF])) + attrs[i][2:]
        elif c == "trailing":
            attrs.append(r.randbytes(r.randint(1, 3)))
        elif c == "random-attrs":
            attrs = [r.randbytes(r.randint(0, 64))]
        elif c == "shuffle":
            r.shuffle(attrs)
        return attrs

    def message(self, target: str, cls: str, extra: str | None, in_batch: bool = False) -> bytes:
        r = self.rng
        if target == "unknown-cmd":
            known = set(OPS_BY_CMD)
            cmd = r.choice([c for c in [0, 4, 5, 8, 9, 100, 255, r.randrange(256)] if c not in known] or [0])
        else:
            cmd = OPS["proxy-get" if target == "proxy-get-dump" else target].cmd
        flags = NLM_F_REQUEST | NLM_F_ACK
        if target == "proxy-get-dump":
            flags = NLM_F_REQUEST | NLM_F_DUMP | (NLM_F_ACK if r.random() < 0.3 else 0)
        version, reserved, pid = SPEC.version, 0, 0
        classes = {cls, extra}
        if "flags" in classes:
            flags = r.choice([
                flags & ~NLM_F_REQUEST, flags & ~NLM_F_ACK, flags | NLM_F_ECHO,
                flags & ~(NLM_F_REQUEST | NLM_F_ACK), flags | NLM_F_DUMP, flags | NLM_F_ROOT,
                flags | NLM_F_MATCH, flags | NLM_F_MULTI, flags | NLM_F_DUMP_INTR,
                flags | 1 << r.randrange(4, 16), r.getrandbits(16)])
        if "reserved" in classes:
            reserved = r.randrange(1, 1 << 16)
        if "header-fields" in classes:  # fields the kernel ignores
            version, pid = r.randrange(256), r.getrandbits(32)
        if in_batch and flags & NLM_F_DUMP == NLM_F_DUMP:
            flags &= ~NLM_F_MATCH  # no dumps inside a batch: their parts would interleave
        body = GENLHDR.pack(cmd, version, reserved) + b"".join(self.attrs_for(target, cls, extra))
        if "bitflip" in classes:
            b = bytearray(body)
            for _ in range(r.randint(1, 4)):
                b[r.randrange(len(b))] ^= 1 << r.randrange(8)
            if b[0] in unmodelled_cmds():
                b[0] = cmd  # a flip onto an operation the oracle does not model
            body = bytes(b)
        typ = self.fid
        if "wrong-family" in classes:
            typ = r.choice([r.choice(self.unregistered), r.randrange(0, NLMSG_MIN_TYPE)])
        seq = self.next_seq()
        if "genl-truncated" in classes:
            return nlmsg(typ, flags, seq, body[:r.randrange(0, GENLHDR.size)], pid=pid)
        if "cut" in classes and len(body) > GENLHDR.size:
            return nlmsg(typ, flags, seq, body[:r.randrange(GENLHDR.size, len(body))], pid=pid)
        if "nl-truncated" in classes and not in_batch:
            full = nlmsg(typ, flags, seq, body, pid=pid)
            how = r.randrange(3)
            if how == 0:
                return full[:r.randrange(0, NLHDR.size)]  # not even a header
            if how == 1:
                return nlmsg(typ, flags, seq, body, length=r.randrange(0, NLHDR.size), pid=pid)
            return nlmsg(typ, flags, seq, body, length=len(full) + r.randint(1, 64), pid=pid)
        if "short-len-extra" in classes and not in_batch and len(body) > 1:
            # nlmsg_len covers part of the body; the kernel then parses the
            # rest of the datagram as the next message.
            return nlmsg(typ, flags, seq, body, length=NLHDR.size + r.randrange(0, len(body)), pid=pid)
        return nlmsg(typ, flags, seq, body, pid=pid)

    def datagram(self, oracle: Oracle) -> Datagram:
        r = self.rng
        if self.schedule:
            target, cls = self.schedule.popleft()
        else:
            target = r.choice(TARGETS)
            cls = r.choice(CLASSES_FOR[target])
        for _ in range(100):
            extra = None
            if cls not in ("valid", "batch") and r.random() < 0.3:
                extra = r.choice(EXTRA_FOR[target])
            if cls == "batch":
                parts = []
                for _ in range(r.randint(2, 4)):
                    t = r.choice(TARGETS)
                    c = r.choice(IN_BATCH_FOR[t])
                    parts.append(self.message(t, c, None, in_batch=True))
                data = b"".join(p + bytes(align4(len(p)) - len(p)) for p in parts)
            else:
                data = self.message(target, cls, extra)
            reqs = self.acceptable(data, oracle)
            if reqs is not None:
                return Datagram(data, target, tuple(c for c in (cls, extra) if c), reqs)
        raise AssertionError(f"seed={SEED}: no acceptable {target}/{cls} datagram in 100 tries")

    def acceptable(self, data: bytes, oracle: Oracle) -> list[Req] | None:
        """Refuse a datagram whose answer the oracle cannot tell:

        - a message another family would handle (nlctrl, out of garbage);
        - a dump followed by another message: the dump's later parts come
          on our reads, after the next message's answer (the kernel is
          right, the oracle's order is not);
        - a message that would end or reprogram the canary (its traffic
          proves valid work goes on while we fuzz; deleting it would be
          correct, and useless).
        """
        reqs = split_datagram(data)
        for i, m in enumerate(reqs):
            if not oracle.modelled(m):
                return None
            m.routed = oracle.route(m)
            if isinstance(m.routed, Expect):
                continue
            op, tb, dump = m.routed
            if dump and i != len(reqs) - 1:
                return None
            if op.name != "proxy-get" and tb.get(A["id"]) == self.model.canary:
                return None
        return reqs


# --- the run ---------------------------------------------------------------


class Fuzzer:
    def __init__(self, conn: Conn, oracle: Oracle, model: Model) -> None:
        self.conn, self.oracle, self.model = conn, oracle, model
        self.where = ""
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.messages = 0
        self.probe_seq = 1 << 30

    def fail(self, text: str) -> None:
        raise AssertionError(f"seed={SEED} {self.where}: {text}")

    def exchange(self, data: bytes, where: str, reqs: list[Req] | None = None) -> list[dict | None]:
        """Send one datagram and check every answer; the attrs of replies."""
        self.where = where
        try:
            self.conn.send(data)
        except OSError as e:
            # netlink_sendmsg() refuses an empty datagram, and only that.
            if data or e.errno != errno.ENODATA:
                self.fail(f"send refused: {e!r} (datagram {data.hex()})")
            self.outcomes[("empty-datagram", "ENODATA")] += 1
            self.probe()
            return []
        if not data:
            self.fail("an empty datagram was accepted")
        if reqs is None:
            reqs = split_datagram(data)
        results = []
        last = "none"
        for r in reqs:
            exp = self.oracle.predict(r)
            last = exp.kind
            self.messages += 1
            try:
                results.append(self.check(r, exp))
            except AssertionError as e:
                self.fail(f"{e} -- expected {exp.describe()} for message type={r.type} flags={r.flags:#x} "
                          f"seq={r.seq} body={r.body.hex()} (datagram {data.hex()})")
        if last == "none":  # no answer expected to the last one (or none sent)
            self.probe()
        return results

    def check(self, r: Req, exp: Expect) -> dict | None:
        attrs = None
        if exp.kind == "none":
            self.outcomes[(exp.op, "silent")] += 1
        elif exp.kind in ("ack", "error"):
            m = self.conn.next("answer")
            assert m.type == NLMSG_ERROR, f"got message type {m.type}, flags {m.flags:#x}, not an NLMSG_ERROR"
            assert m.seq == r.seq, f"answer for seq {m.seq}, expected {r.seq}"
            e = decode_error(m, "answer")
            name = errno.errorcode.get(e.errno, str(e.errno))
            assert e.errno == exp.errno, f"got {name} ({e.msg!r})"
            if exp.msg is not None:
                assert e.msg and exp.msg in e.msg, f"got {name} with message {e.msg!r}"
            if exp.miss is not None:
                assert e.miss == exp.miss, f"got {name} with missing-attribute {e.miss}"
            self.outcomes[(exp.op, name if e.errno else "ack")] += 1
        elif exp.kind == "reply":
            m = self.conn.next("reply")
            assert m.type == self.oracle.fid, f"got message type {m.type} " + (
                f"({decode_error(m, 'reply')})" if m.type == NLMSG_ERROR else "")
            assert m.seq == r.seq, f"reply for seq {m.seq}, expected {r.seq}"
            attrs = self.check_proxy_msg(m, exp.reply_cmd, "reply")
            if exp.reply_id is not None:
                assert attrs["id"] == exp.reply_id, f"reply for proxy {attrs['id']}, asked {exp.reply_id}"
                self.check_against_model(attrs, "reply")
            else:
                assert attrs["id"] not in self.model.proxies, f"new proxy has the id {attrs['id']} of a live one"
            if exp.ack:
                a = self.conn.next("ack after reply")
                assert a.type == NLMSG_ERROR and a.seq == r.seq, f"no ack after the reply: {a}"
                assert decode_error(a, "ack").errno == 0, "error after a reply"
            self.outcomes[(exp.op, "reply")] += 1
        elif exp.kind == "dump":
            seen = []
            while True:
                m = self.conn.next("dump")
                assert m.seq == r.seq, f"dump part for seq {m.seq}, expected {r.seq}"
                if m.type == NLMSG_DONE:
                    assert len(m.body) >= 4 and struct.unpack_from("=i", m.body)[0] == 0, \
                        f"dump ended with {m.body.hex()}"
                    break
                assert m.type == self.oracle.fid, f"dump: message type {m.type}"
                assert m.flags & NLM_F_MULTI, "dump message without NLM_F_MULTI"
                a = self.check_proxy_msg(m, SPEC.cmd("proxy-get"), "dump")
                self.check_against_model(a, "dump")
                seen.append(a["id"])
            assert len(seen) == len(set(seen)), f"dump lists a proxy twice: {seen}"
            assert set(seen) == set(self.model.proxies), \
                f"dump lists {sorted(seen)}, the live proxies are {sorted(self.model.proxies)}"
            self.outcomes[(exp.op, "dump")] += 1
        if exp.effect is not None:
            exp.effect(attrs)
        if exp.kind == "reply" and exp.reply_id is None:  # a new proxy: the sockets we named
            self.check_against_model(attrs, "new proxy")
        return attrs

    def check_proxy_msg(self, m: Msg, cmd: int, what: str) -> dict:
        assert len(m.body) >= GENLHDR.size, f"{what}: {len(m.body)} bytes"
        got_cmd, version, _ = GENLHDR.unpack_from(m.body)
        assert got_cmd == cmd, f"{what}: cmd {got_cmd}, expected {cmd}"
        assert version == SPEC.version, f"{what}: version {version}"
        attrs = decode_set(m.body[GENLHDR.size:], SPEC.root_set, what)
        check_proxy_attrs(attrs, what)
        assert "reason" not in attrs, f"{what}: a reason in a live proxy"
        return attrs

    def check_against_model(self, attrs: dict, what: str) -> None:
        p = self.model.proxies.get(attrs["id"])
        assert p is not None, f"{what}: proxy {attrs['id']} is not one the model knows"
        for d, dname in enumerate(("a-to-b", "b-to-a")):
            for kind, key in ((PARSER, "parser-id"), (VERDICT, "verdict-id")):
                assert attrs[dname].get(key) == p.progs.get((kind, d)), \
                    f"{what}: proxy {p.id} {dname} {key} {attrs[dname].get(key)}, expected {p.progs.get((kind, d))}"
        for s, ends in zip(("sock-a", "sock-b"), p.ends):
            if ends is None or ends[0] is None:
                continue
            (fam, laddr, lport), (_f, raddr, rport) = ends
            sk = attrs[s]
            got = (sk["family"], sk["local-addr"], sk["local-port"], sk["remote-addr"], sk["remote-port"])
            assert got == (fam, laddr, lport, raddr, rport), f"{what}: proxy {p.id} {s} is {got}, joined {ends}"

    def probe(self) -> None:
        """A request that must be the next one answered: nothing came for
        the messages before it, as predicted."""
        self.probe_seq += 1
        self.conn.send(nlmsg(self.oracle.fid, NLM_F_REQUEST | NLM_F_ACK, self.probe_seq,
                             GENLHDR.pack(OPS["proxy-get"].cmd, 1, 0) + nla(A["id"], u32(INT_MAX))))
        m = self.conn.next("probe")
        if m.seq != self.probe_seq or m.type != NLMSG_ERROR:
            self.fail(f"an answer nobody asked for: type {m.type} flags {m.flags:#x} seq {m.seq} {m.body.hex()}")
        e = decode_error(m, "probe")
        if e.errno != errno.ENOENT:
            self.fail(f"probe answered {e}")


class Arena:
    """The fds the fuzzer throws at the kernel, of every kind, in our table;
    and the canary, whose fds are only in its pump child's table."""

    def __init__(self, kp: Kproxy, conn: Conn, model: Model) -> None:  # noqa: F811
        self.sockets: list[socket.socket] = []
        self.raw: list[int] = []
        self.programs: list[bpf.Program] = []
        self.pump_pid = 0
        self.fds: dict[str, list[int]] = {k: [] for k in ("decoy", "special", "dup", "closed", "foreign")}
        try:
            self._open(kp, conn, model)
        except BaseException:
            self.close()
            raise

    def _sock(self, s: socket.socket) -> socket.socket:
        self.sockets.append(s)
        return s

    def _open(self, kp: Kproxy, conn: Conn, model: Model) -> None:  # noqa: F811
        # Idle connected TCP sockets: the fuzzer may join any two of them.
        for host in ("127.0.0.1",) * 4 + ("::1",) * 2:
            for s in tcp_pair(host):
                self.fds["decoy"].append(self._sock(s).fileno())
        for fd in self.fds["decoy"][::3]:  # the same sockets under another number
            self.raw.append(os.dup(fd))
            self.fds["dup"].append(self.raw[-1])
        listener = self._sock(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        unconnected = self._sock(socket.socket())
        udp = self._sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        udp.connect(("127.0.0.1", 9))
        unix = [self._sock(s) for s in socket.socketpair()]
        self.raw += [*os.pipe(), os.eventfd(0), os.open("/dev/null", os.O_RDONLY),
                     os.open("/", os.O_RDONLY | os.O_DIRECTORY)]
        sf = bpf.load_insns("socket_filter", bpf.insn_return(0))
        self.programs.append(sf)
        xdp = bpf.load_insns("xdp", bpf.insn_return(2))
        self.programs.append(xdp)
        self.progs = {sf.fd: Prog(sf.fd, sf.id, True), xdp.fd: Prog(xdp.fd, xdp.id, False)}
        self.fds["special"] = [listener.fileno(), unconnected.fileno(), udp.fileno(), unix[0].fileno(),
                               conn.fileno(), *self.raw[len(self.fds["dup"]):], sf.fd, xdp.fd]

        # The canary: A = s1, B = c2; the child pumps c1 -> s2 and back.
        c1, s1 = tcp_pair()
        c2, s2 = tcp_pair()
        try:
            self.canary = kp.create(s1, c2)
            model.canary = self.canary.id
            model.add(ProxyModel(self.canary.id, (os.fstat(s1.fileno()).st_ino, os.fstat(c2.fileno()).st_ino),
                                 (None, None)))
            stop_r, self.stop_w = os.pipe()
            self.out_r, out_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the pump; never returns into pytest
                code = 1
                try:
                    os.close(self.stop_w)  # or it would never see the pipe's end
                    os.close(self.out_r)
                    code = pump(c1, s2, SEED, stop_r, out_w)
                finally:
                    os._exit(code)
            self.pump_pid = pid
            os.close(stop_r)
            os.close(out_w)
            # Open there, closed here from now on: another process's fds.
            self.fds["foreign"] = [c1.fileno(), s2.fileno()]
        finally:
            for s in (c1, s1, c2, s2):
                s.close()
        self.fds["closed"] = [fd for fd in range(3, max(self.fds["decoy"]) + 32)
                              if not os.path.exists(f"/proc/self/fd/{fd}")][:8] + self.fds["foreign"]
        assert read_line(self.out_r, 60, "canary pump") == "ready", f"seed={SEED}: the pump did not start"

    def stop_pump(self) -> dict:
        """The pump's totals; it still holds the canary's sockets."""
        os.write(self.stop_w, b"stop\n")
        result = json.loads(read_line(self.out_r, 60, "canary pump"))
        assert "error" not in result, f"seed={SEED}: canary pump: {result}"
        return result

    def release_pump(self) -> None:
        os.close(self.stop_w)
        self.stop_w = None
        code = reap(self.pump_pid, 30)
        self.pump_pid = 0
        assert code == 0, f"seed={SEED}: canary pump exited {code}"

    def close(self) -> None:
        if self.pump_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pump_pid, signal.SIGKILL)
            reap(self.pump_pid, 30)
        for fd in (getattr(self, "stop_w", None), getattr(self, "out_r", None), *self.raw):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        for s in self.sockets:
            s.close()
        for p in self.programs:
            p.close()


def test_fuzz_every_operation(kp, dmesg, say, record_testsuite_property):  # noqa: F811
    say(f"kproxy fuzz seed {SEED} (replay: KPROXY_FUZZ_SEED={SEED}), {REQUESTS} datagrams")
    rng = random.Random(SEED)
    destroy_all(kp)
    assert kp.list() == [], f"seed={SEED}: proxies left by an earlier test"
    baseline = live_objects()
    model = Model()
    unicast: list[Msg] = []  # the ends of the fuzzer's `notify` proxies
    conn = Conn(notifications=unicast)
    arena = None
    try:
        families = family_ids(conn)
        fid = families[SPEC.family]
        assert fid == kp.family_id, f"seed={SEED}: nlctrl says {fid}, the library {kp.family_id}"
        used = set(families.values())
        unregistered = [t for t in (0x7000, 0x7FFF, 0x8000, 0xBEEF, 0xFFFE, 0xFFFF) if t not in used]
        arena = Arena(kp, conn, model)
        oracle = Oracle(fid, used - {fid}, model, arena.progs)
        gen = Generator(rng, model, arena.fds, arena.progs, fid, unregistered)
        fz = Fuzzer(conn, oracle, model)
        run_fuzz(fz, gen, kp, rng, say, record_testsuite_property)

        # The canary carried bytes the whole time, and its counters agree.
        result = arena.stop_pump()
        assert result["rounds"] > 0, f"seed={SEED}: the canary never ran"
        got = kp.get(arena.canary.id)
        assert (got.a_to_b.bytes, got.b_to_a.bytes) == (result["a_to_b"], result["b_to_a"]), \
            f"seed={SEED}: canary counters {got.a_to_b.bytes}/{got.b_to_a.bytes}, pumped {result}"
        record_testsuite_property("fuzz_canary_rounds", result["rounds"])

        # Every proxy the fuzzer made is accounted for: the model's are the
        # kernel's, by netlink and by /proc; then they go.
        assert listed_ids(kp) == set(model.proxies), \
            f"seed={SEED}: kernel lists {sorted(listed_ids(kp))}, model {sorted(model.proxies)}"
        assert proc_ids() == set(model.proxies), f"seed={SEED}: /proc lists {sorted(proc_ids())}"
        record_testsuite_property("fuzz_accidental_proxies_left", len(model.proxies) - 1)
        notify_left = [p.id for p in model.proxies.values() if p.notify]
        for pid in list(model.proxies):
            kp.destroy(pid)
        arena.release_pump()
        assert kp.list() == [] and proc_ids() == set(), f"seed={SEED}: proxies left after deleting all"

        # Exactly one end unicast per proxy the fuzzer made with `notify`,
        # none for the others, whoever ended them.
        want = sorted(model.notified + notify_left)

        def ends_in() -> bool:
            conn.drain_notifications()
            return len(unicast) >= len(want)
        wait_for(ends_in, 10, what=f"seed={SEED}: {len(want)} unicast ends")
        got = []
        for m in unicast:
            (cmd, _version, _reserved) = GENLHDR.unpack_from(m.body)
            assert cmd == SPEC.cmd("proxy-del-ntf"), f"seed={SEED}: unsolicited cmd {cmd}"
            got.append(decode_set(m.body[GENLHDR.size:], SPEC.root_set, "unicast end")["id"])
        assert sorted(got) == want, f"seed={SEED}: unicast ends {sorted(got)}, expected {want}"
        record_testsuite_property("fuzz_unicast_ends", len(got))

        # A normal proxy still works, and nothing leaked or complained.
        ch = make_chain(kp)
        try:
            assert_pingpong(ch.c1, ch.s2, rng.randbytes(65536))
            kp.destroy(ch.proxy.id)
        finally:
            ch.close()
        wait_for(lambda: live_objects() == baseline, 30, what=f"seed={SEED}: live objects back to {baseline}")
        assert dmesg.bad() == [], f"seed={SEED}: kernel log: {dmesg.bad()}"
    finally:
        if arena is not None:
            arena.close()
        conn.close()
        destroy_all(kp)


def run_fuzz(fz: Fuzzer, gen: Generator, kp: Kproxy, rng: random.Random,  # noqa: F811
             say: Callable[[str], None], record: Callable[[str, object], None]) -> None:
    start = time.monotonic()
    fuzz_time = 0.0
    valid_steps = 0
    for i in range(REQUESTS):
        if i % VALID_EVERY == 0:
            valid_step(fz, gen, kp, rng, i, valid_steps)
            valid_steps += 1
        t0 = time.monotonic()
        dg = gen.datagram(fz.oracle)
        fz.exchange(dg.data, f"datagram #{i} ({dg.target}, {'+'.join(dg.classes)})", dg.reqs)
        fuzz_time += time.monotonic() - t0
        for c in dg.classes:
            fz.outcomes[("class:" + c, dg.target)] += 1
    elapsed = time.monotonic() - start
    fz.where = "after the run"
    fz.probe()  # nothing is left unanswered

    # Every target met every class that applies to it, and every operation
    # both succeeded and failed.
    missing = [(t, c) for t in TARGETS for c in CLASSES
               if applicable(t, c) and not fz.outcomes[("class:" + c, t)]]
    assert not missing, f"seed={SEED}: never fuzzed {missing}"
    for op in ("proxy-new", "proxy-del", "proxy-get", "proxy-get-dump", "bpf-attach", "bpf-detach"):
        ok = sum(n for (o, what), n in fz.outcomes.items() if o == op and what in ("reply", "ack", "dump"))
        errs = sum(n for (o, what), n in fz.outcomes.items() if o == op and what.startswith("E"))
        assert ok and errs, f"seed={SEED}: {op} saw {ok} successes and {errs} errors"

    stats = {"seed": SEED, "datagrams": REQUESTS, "messages": fz.messages, "valid_steps": valid_steps,
             "seconds": round(elapsed, 1), "datagrams_per_s": round(REQUESTS / fuzz_time)}
    say(f"fuzz: {json.dumps(stats)}")
    outcomes = sorted((k, v) for k, v in fz.outcomes.items() if not k[0].startswith("class:"))
    say(f"outcomes: {outcomes}")
    for k, v in stats.items():
        record(f"fuzz_{k}", v)


def valid_step(fz: Fuzzer, gen: Generator, kp: Kproxy, rng: random.Random, i: int, n: int) -> None:  # noqa: F811
    """Real work between fuzzed requests: a proxy made over the fuzzer's own
    socket (checked by the same oracle), bytes through it both ways, its
    counters, programs attached and detached, then deleted; every other
    time through the library instead, and its dump compared with the model."""
    where = f"valid step before datagram #{i}"
    fid = fz.oracle.fid
    c1, s1 = tcp_pair(rng.choice(["127.0.0.1", "::1"]))
    c2, s2 = tcp_pair()
    try:
        if n % 2:
            p = kp.create(s1, c2)
            assert_pingpong(c1, s2, rng.randbytes(rng.randint(1, 8192)))
            assert listed_ids(kp) == set(fz.model.proxies) | {p.id}, f"seed={SEED} {where}: list != model"
            kp.destroy(p.id)
            return

        def send(op: str, attrs: list[bytes], flags: int = NLM_F_REQUEST | NLM_F_ACK) -> dict | None:
            (res,) = fz.exchange(nlmsg(fid, flags, gen.next_seq(), GENLHDR.pack(OPS[op].cmd, 1, 0) + b"".join(attrs)),
                                 f"{where}: {op}")
            return res

        attrs = send("proxy-new", [nla(A["fd-a"], u32(s1.fileno())), nla(A["fd-b"], u32(c2.fileno()))])
        assert attrs is not None, f"seed={SEED} {where}: proxy-new did not create"
        pid = attrs["id"]
        payload = rng.randbytes(rng.randint(1, 65536))
        back = rng.randbytes(rng.randint(1, 65536))
        c1.sendall(payload)
        assert recv_exact(s2, len(payload)) == payload, f"seed={SEED} {where}: a_to_b bytes differ"
        s2.sendall(back)
        assert recv_exact(c1, len(back)) == back, f"seed={SEED} {where}: b_to_a bytes differ"
        got = send("proxy-get", [nla(A["id"], u32(pid))])
        assert (got["a-to-b"]["bytes"], got["b-to-a"]["bytes"]) == (len(payload), len(back)), \
            f"seed={SEED} {where}: counters {got['a-to-b']['bytes']}/{got['b-to-a']['bytes']}"
        sf = next(p.fd for p in fz.oracle.progs.values() if p.socket_filter)
        both, ab = DIRECTION["both"], DIRECTION["a-to-b"]
        send("bpf-attach", [nla(A["id"], u32(pid)), nla(A["prog-fd"], u32(sf)), nla(A["kind"], u32(PARSER)),
                            nla(A["direction"], u32(both))])
        send("bpf-attach", [nla(A["id"], u32(pid)), nla(A["prog-fd"], u32(sf)), nla(A["kind"], u32(VERDICT)),
                            nla(A["direction"], u32(ab))])
        send("proxy-get", [nla(A["id"], u32(pid))])  # program ids checked against the model
        send("bpf-detach", [nla(A["id"], u32(pid)), nla(A["kind"], u32(PARSER)), nla(A["direction"], u32(ab))])
        send("bpf-detach", [nla(A["id"], u32(pid)), nla(A["kind"], u32(VERDICT)), nla(A["direction"], u32(ab))])
        send("proxy-get", [], NLM_F_REQUEST | NLM_F_DUMP)
        send("proxy-del", [nla(A["id"], u32(pid))])
        assert pid not in fz.model.proxies, f"seed={SEED} {where}: proxy-del was not acknowledged"
    finally:
        for s in (c1, s1, c2, s2):
            s.close()
