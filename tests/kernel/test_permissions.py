"""Permissions (issue 8, item 4), as a user without privilege sees them.

The module's ops carry GENL_UNS_ADMIN_PERM for every mutation (proxy-new,
proxy-del, bpf-attach, bpf-detach; schema flag uns-admin-perm) and no flag
for proxy-get: the genetlink core then asks netlink_ns_capable(skb,
net->user_ns, CAP_NET_ADMIN), where net is the netns of the netlink socket
that sent the request.  That capability is checked twice: on the sender
(current) and on whoever opened the socket (its file's credentials).  So:

- without CAP_NET_ADMIN (nobody; root that dropped it) every mutation is
  EPERM, while get, dump and /proc/net/kproxy work;
- nobody with CAP_NET_ADMIN (ambient-style, kept over setuid) may mutate;
- root of a new user namespace may manage proxies in the netns it owns,
  and sees only them there; its socket in the initial netns gets EPERM;
- root with a socket opened by nobody, or nobody-turned-userns-root with a
  socket opened by root, get EPERM: both halves of the check count;
- an fd number open only in another process names nothing here (EBADF).

Children are forks of this process (identity.py) that talk raw netlink
(rawnl.Genl, no pyroute2 in a fork).
test_netns_perm.py already covers a named netns (isolation, netns exit)
and the plain unprivileged list; these go further, without repeating it.
"""

from __future__ import annotations

import errno
import os
import socket

import pytest

from kpctl import KproxyError, bpf
from kpctl.procfs import parse_proxies, parse_totals, read_totals
from identity import (
    CAP_NET_ADMIN,
    CHILD_TIMEOUT,
    NOBODY,
    Channel,
    Child,
    become_nobody,
    cap_eff,
    drop_net_admin,
    enter_userns,
    netlink_socket,
    run_child,
    set_caps,
)
from rawnl import SPEC, Answer, Genl
from util import (  # noqa: F401 - kp is a fixture
    assert_pingpong,
    kp,
    listed_ids,
    make_chain,
    module_param,
    proc_ids,
    recv_exact,
    tcp_pair,
)

PARSER = SPEC.enums["bpf-kind"].value("parser")
A_TO_B = SPEC.enums["direction"].value("a-to-b")
BOTH = SPEC.enums["direction"].value("both")
MUTATIONS = ("proxy-new", "proxy-del", "bpf-attach", "bpf-detach")


# --- what a caller gets -----------------------------------------------------


def summary(a: Answer) -> dict:
    """An answer as JSON: errno name ("OK" for none), message, proxy ids,
    and the a-to-b parser of each proxy listed."""
    return {"errno": errno.errorcode.get(a.errno, str(a.errno)) if a.errno else "OK", "msg": a.msg,
            "ids": a.ids, "parsers": [r["a-to-b"].get("parser-id") for r in a.replies]}


def try_everything(g: Genl, target: int, prog_fd: int) -> dict:
    """Every operation: the mutations against proxy `target` (a create over
    two sockets of the caller's own), then the reads."""
    c1, s1 = tcp_pair()
    c2, s2 = tcp_pair()
    try:
        out = {
            "proxy-new": g.request("proxy-new", {"fd-a": s1.fileno(), "fd-b": c2.fileno()}),
            "proxy-del": g.request("proxy-del", {"id": target}),
            "bpf-attach": g.request("bpf-attach", {"id": target, "prog-fd": prog_fd, "kind": PARSER,
                                                   "direction": BOTH}),
            "bpf-detach": g.request("bpf-detach", {"id": target, "kind": PARSER, "direction": A_TO_B}),
            "proxy-get": g.request("proxy-get", {"id": target}),
            "dump": g.request("proxy-get", dump=True),
        }
    finally:
        for s in (c1, s1, c2, s2):
            s.close()
    return {k: summary(v) for k, v in out.items()}


def assert_refused_but_readable(got: dict, target: int, parser_id: int, who: str) -> None:
    """EPERM for every mutation; get and dump show the target as it is."""
    for op in MUTATIONS:
        assert got[op]["errno"] == "EPERM", f"{who}: {op} got {got[op]} (all: {got})"
    assert got["proxy-get"]["errno"] == "OK" and got["proxy-get"]["ids"] == [target], f"{who}: get: {got}"
    assert got["proxy-get"]["parsers"] == [parser_id], f"{who}: get shows parser {got['proxy-get']}"
    assert got["dump"]["errno"] == "OK" and target in got["dump"]["ids"], f"{who}: dump: {got}"


@pytest.fixture
def victim(kp):  # noqa: F811
    """Root's proxy in the initial netns, a parser attached on a-to-b.

    At the end it must be exactly as it was: same parser, and working once
    root detaches it (a parser returning 0 holds every byte back)."""
    ch = make_chain(kp)
    prog = bpf.load_insns("socket_filter", bpf.insn_return(0))
    kp.attach(ch.proxy.id, "parser", prog, "a-to-b")
    yield ch, prog
    try:
        p = kp.get(ch.proxy.id)
        assert (p.a_to_b.parser_id, p.b_to_a.parser_id) == (prog.id, None), f"victim changed: {p}"
        kp.detach(ch.proxy.id, "parser", "a-to-b")
        assert_pingpong(ch.c1, ch.s2, b"still joined after every refused request")
    finally:
        prog.close()
        ch.close()


# --- the tests ----------------------------------------------------------------


def _unprivileged(ch: Channel, how: str, fid: int, target: int, prog_fd: int) -> dict:
    if how == "nobody":
        become_nobody()
    else:
        drop_net_admin()
    g = Genl(fid, netlink_socket())
    got = try_everything(g, target, prog_fd)
    with open("/proc/net/kproxy") as f:
        got["proc"] = [p.id for p in parse_proxies(f.read())]
    got["uid"], got["cap_net_admin"] = os.getuid(), bool(cap_eff() & 1 << CAP_NET_ADMIN)
    return got


@pytest.mark.parametrize("how", ["nobody", "root-without-cap-net-admin"])
def test_without_cap_net_admin_every_mutation_is_eperm_and_reads_work(kp, victim, how):  # noqa: F811
    ch, prog = victim
    got = run_child(_unprivileged, how, kp.family_id, ch.proxy.id, prog.fd)
    assert got["uid"] == (NOBODY if how == "nobody" else 0) and not got["cap_net_admin"], got
    assert_refused_but_readable(got, ch.proxy.id, prog.id, how)
    assert ch.proxy.id in got["proc"], f"{how}: /proc/net/kproxy shows {got['proc']}"
    assert listed_ids(kp) == {ch.proxy.id}, "a refused create made a proxy"


def _nobody_with_cap(ch: Channel, fid: int, prog_fd: int) -> dict:
    become_nobody(keep_caps=True)
    set_caps(1 << CAP_NET_ADMIN, 1 << CAP_NET_ADMIN)
    g = Genl(fid, netlink_socket())
    c1, s1 = tcp_pair()
    c2, s2 = tcp_pair()
    new = g.request("proxy-new", {"fd-a": s1.fileno(), "fd-b": c2.fileno()})
    out = {"uid": os.getuid(), "caps": cap_eff(), "proxy-new": summary(new)}
    if new.errno == 0:
        pid = new.ids[0]
        assert_pingpong(c1, s2, b"through nobody's proxy")
        out["bpf-attach"] = summary(g.request("bpf-attach", {"id": pid, "prog-fd": prog_fd, "kind": PARSER,
                                                             "direction": BOTH}))
        out["proxy-get"] = summary(g.request("proxy-get", {"id": pid}))
        out["bpf-detach"] = summary(g.request("bpf-detach", {"id": pid, "kind": PARSER, "direction": BOTH}))
        out["proxy-del"] = summary(g.request("proxy-del", {"id": pid}))
    return out


def test_cap_net_admin_without_root_may_mutate(kp):  # noqa: F811
    """The gate is the capability, not uid 0: nobody holding CAP_NET_ADMIN
    makes, programs and deletes a proxy."""
    with bpf.load_insns("socket_filter", bpf.insn_return(0)) as prog:
        got = run_child(_nobody_with_cap, kp.family_id, prog.fd)
        assert got["uid"] == NOBODY and got["caps"] == 1 << CAP_NET_ADMIN, got
        for op in MUTATIONS:
            assert got.get(op, {}).get("errno") == "OK", f"{op}: {got}"
        assert got["proxy-get"]["parsers"] == [prog.id], got
    assert kp.list() == []


def _userns_root(ch: Channel, fid: int, target: int, prog_fd: int) -> dict:
    become_nobody()
    outer = Genl(fid, netlink_socket())  # opened by nobody, in the initial netns
    enter_userns(netns=True)
    inner = Genl(fid, netlink_socket())  # in the netns our user namespace owns
    out: dict = {"uid": os.getuid(), "caps": cap_eff()}
    out["outer"] = try_everything(outer, target, prog_fd)

    c1, s1 = tcp_pair()
    c2, s2 = tcp_pair()
    new = inner.request("proxy-new", {"fd-a": s1.fileno(), "fd-b": c2.fileno()})
    out["proxy-new"] = summary(new)
    if new.errno:
        return out
    own = new.ids[0]
    payload = os.urandom(4096)
    c1.sendall(payload)
    out["bytes_through"] = recv_exact(s2, len(payload)) == payload
    out["dump"] = summary(inner.request("proxy-get", dump=True))
    with open("/proc/net/kproxy") as f:
        out["proc"] = [p.id for p in parse_proxies(f.read())]
    with open("/proc/net/kproxy_stat") as f:
        out["stat"] = parse_totals(f.read()).to_dict()
    # The initial netns's proxy, by id, from here: it does not exist.
    out["foreign"] = {
        "proxy-get": summary(inner.request("proxy-get", {"id": target})),
        "proxy-del": summary(inner.request("proxy-del", {"id": target})),
        "bpf-attach": summary(inner.request("bpf-attach", {"id": target, "prog-fd": prog_fd, "kind": PARSER,
                                                           "direction": BOTH})),
        "bpf-detach": summary(inner.request("bpf-detach", {"id": target, "kind": PARSER, "direction": A_TO_B})),
    }
    out["bpf-attach"] = summary(inner.request("bpf-attach", {"id": own, "prog-fd": prog_fd, "kind": PARSER,
                                                             "direction": BOTH}))
    out["proxy-get"] = summary(inner.request("proxy-get", {"id": own}))
    out["bpf-detach"] = summary(inner.request("bpf-detach", {"id": own, "kind": PARSER, "direction": BOTH}))
    ch.send({"own": own})
    ch.recv(CHILD_TIMEOUT)  # the parent looks for it from the initial netns
    out["proxy-del"] = summary(inner.request("proxy-del", {"id": own}))
    out["dump_after"] = summary(inner.request("proxy-get", dump=True))
    for s in (c1, s1, c2, s2):
        s.close()
    return out


def test_userns_root_manages_proxies_only_in_the_netns_it_owns(kp, victim):  # noqa: F811
    """With the module parameter userns_admin set (off by default, see
    test_hardening.py), a user namespace's root manages proxies of its own
    network namespace and nothing else."""
    ch, prog = victim
    with module_param("userns_admin", "Y"):
        _userns_root_in_its_netns(kp, ch, prog)


def _userns_root_in_its_netns(kp, ch, prog) -> None:  # noqa: F811
    before = read_totals()
    child = Child(_userns_root, kp.family_id, ch.proxy.id, prog.fd)
    try:
        own = child.recv()["own"]
        # From the initial netns the child's proxy is invisible and unreachable.
        assert own not in listed_ids(kp) and own not in proc_ids()
        for fn in (kp.get, kp.destroy):
            with pytest.raises(KproxyError) as ei:
                fn(own)
            assert ei.value.errno == errno.ENOENT, f"{fn.__name__}({own}) from the initial netns: {ei.value}"
        assert read_totals().created == before.created, "the child's proxy counted in the initial netns"
        child.send({"go": True})
        got = child.result()
    finally:
        child.close()

    assert got["uid"] == 0 and got["caps"] & 1 << CAP_NET_ADMIN, f"not root of its user namespace: {got}"
    # Its socket in the initial netns: a netns its user namespace does not own.
    assert_refused_but_readable(got["outer"], ch.proxy.id, prog.id, "userns root, initial-netns socket")
    # In its own netns it does everything, and sees only its own.
    for op in MUTATIONS:
        assert got[op]["errno"] == "OK", f"userns root in its netns: {op}: {got}"
    assert got["bytes_through"], "no bytes through the userns root's proxy"
    assert got["proxy-get"]["parsers"] == [prog.id], got
    assert got["dump"]["ids"] == [own] and got["proc"] == [own], f"its netns shows {got['dump']} {got['proc']}"
    assert (got["stat"]["active"], got["stat"]["created"]) == (1, 1), got["stat"]
    assert got["dump_after"]["ids"] == [], got
    # The initial netns's proxy is not there, whatever the operation.
    for op, a in got["foreign"].items():
        assert a["errno"] == "ENOENT", f"userns root reached the initial netns's proxy: {op}: {a}"
    assert listed_ids(kp) == {ch.proxy.id}


def _root_socket_then_userns(ch: Channel, fid: int, target: int, prog_fd: int) -> dict:
    g = Genl(fid, netlink_socket())  # opened by root with every capability
    enter_userns(netns=False)
    return {"uid": os.getuid(), "got": try_everything(g, target, prog_fd)}


def _open_as_nobody(ch: Channel, unix_fd: int) -> bool:
    become_nobody()
    s = netlink_socket()
    socket.send_fds(socket.socket(fileno=unix_fd), [b"x"], [s.fileno()])
    return True


def test_both_sender_and_socket_opener_need_the_capability(kp, victim):  # noqa: F811
    """netlink_ns_capable() checks whoever sends and whoever opened the
    socket: root that moved into a user namespace cannot use the socket it
    opened as root, and root cannot use a socket opened by nobody."""
    ch, prog = victim
    got = run_child(_root_socket_then_userns, kp.family_id, ch.proxy.id, prog.fd)
    assert got["uid"] == 0, got
    assert_refused_but_readable(got["got"], ch.proxy.id, prog.id, "root socket, sender in a user namespace")

    ours, theirs = socket.socketpair()
    ours.settimeout(30)
    try:
        assert run_child(_open_as_nobody, theirs.fileno())
        _msg, fds, _flags, _addr = socket.recv_fds(ours, 16, 1)
        g = Genl(kp.family_id, socket.socket(fileno=fds[0]))
        try:
            assert_refused_but_readable(try_everything(g, ch.proxy.id, prog.fd), ch.proxy.id, prog.id,
                                        "root sending on nobody's socket")
        finally:
            g.close()
    finally:
        ours.close()
        theirs.close()
    assert listed_ids(kp) == {ch.proxy.id}


FOREIGN_FDS = (900, 901, 902)  # numbers the child uses and we never open


def _hold_foreign_fds(ch: Channel, prog_fd: int) -> dict:
    c, s = tcp_pair()
    os.dup2(c.fileno(), FOREIGN_FDS[0])
    os.dup2(s.fileno(), FOREIGN_FDS[1])
    os.dup2(prog_fd, FOREIGN_FDS[2])
    ch.send("ready")
    ch.recv(CHILD_TIMEOUT)  # the parent names our fd numbers in its requests
    # Our sockets were not taken: they still talk to each other directly.
    a = socket.socket(fileno=os.dup(FOREIGN_FDS[0]))
    b = socket.socket(fileno=os.dup(FOREIGN_FDS[1]))
    a.settimeout(30)
    b.settimeout(30)
    assert_pingpong(a, b, b"still our own connection")
    return {"pingpong": True}


def test_fd_numbers_of_another_process_reach_nothing(kp):  # noqa: F811
    """The kernel looks fds up in the caller's table only: numbers open in
    another process (a connected TCP socket, a socket filter program) and
    not in ours are EBADF, and that process's objects are untouched."""
    for fd in FOREIGN_FDS:
        assert not os.path.exists(f"/proc/self/fd/{fd}"), f"fd {fd} is open here"
    ch = make_chain(kp)
    prog = bpf.load_insns("socket_filter", bpf.insn_return(0))
    mine_c, mine_s = tcp_pair()
    child = Child(_hold_foreign_fds, prog.fd)
    try:
        assert child.recv() == "ready"
        tried = {
            "fd-a": (kp.create, FOREIGN_FDS[1], mine_s, "fd-a is not an open file descriptor"),
            "fd-b": (kp.create, mine_s, FOREIGN_FDS[0], "fd-b is not an open file descriptor"),
            "prog-fd": (lambda p: kp.attach(ch.proxy.id, "parser", p, "both"), FOREIGN_FDS[2], None,
                        "prog-fd is not a BPF program"),
        }
        for what, (fn, x, y, message) in tried.items():
            with pytest.raises(KproxyError) as ei:
                fn(x) if y is None else fn(x, y)
            assert ei.value.errno == errno.EBADF and message in ei.value.message, f"{what}: {ei.value}"
        child.send({"go": True})
        assert child.result() == {"pingpong": True}
    finally:
        child.close()
        mine_c.close()
        mine_s.close()
    try:
        assert listed_ids(kp) == {ch.proxy.id}, "a proxy was made"
        p = kp.get(ch.proxy.id)
        assert (p.a_to_b.parser_id, p.b_to_a.parser_id) == (None, None), f"a program was attached: {p}"
        # Our own numbers still work, so the refusals were about the numbers.
        kp.attach(ch.proxy.id, "parser", prog, "both")
        kp.detach(ch.proxy.id, "parser", "both")
        assert_pingpong(ch.c1, ch.s2)
    finally:
        prog.close()
        ch.close()
