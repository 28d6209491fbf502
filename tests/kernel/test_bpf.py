"""BPF on a proxy, as a user sees it: parser and verdict programs cut the
stream into messages and pass or drop them; attached, replaced and detached
while traffic flows without losing, duplicating or reordering a byte; bad
input refused with errno and message; program references released.

Programs are the ones shipped in the tree (build/bpf/*.o, built by `make`),
loaded through kpctl.bpf as `kpctl attach` does.  Data volumes stay modest
and every wait is bounded: the VM may run under software emulation.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from identity import Channel, become_nobody, run_child
from kpctl import Kproxy, KproxyError, bpf, cli
from util import (  # noqa: F401 - kp is a fixture
    IO_TIMEOUT,
    join_all,
    kp,
    make_chain,
    proc_proxies,
    recv_exact,
    wait_event,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
KiB, MiB = 1 << 10, 1 << 20
# Attach/replace/detach while this much flows (half each way).
STRESS_BYTES = int(os.environ.get("KPROXY_TEST_BPF_STRESS_MIB", "32")) * MiB


@pytest.fixture(scope="module", autouse=True)
def shipped_built():
    missing = [n for n in bpf.SHIPPED if not (REPO / "build" / "bpf" / f"{n}.o").is_file()]
    if missing:
        pytest.fail(f"build/bpf/{{{','.join(missing)}}}.o missing: `make` builds the BPF programs")


@pytest.fixture
def progs():
    """load(name, prefix=None, offset=4): a loaded shipped program, closed after the test."""
    loaded: list[bpf.Program] = []

    def load(name: str, prefix: bytes | None = None, offset: int = 4) -> bpf.Program:
        p = bpf.load(name)
        loaded.append(p)
        if prefix is not None:
            p.set_prefix(prefix, offset)
        return p

    yield load
    for p in loaded:
        p.close()


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def log_uniform_sizes(rng: random.Random, n: int, lo: int = 1, hi: int = 64 * KiB) -> list[int]:
    """Sizes spread over every order of magnitude from lo to hi, both ends included."""
    sizes = [lo, hi] + [min(hi, max(lo, int(2 ** rng.uniform(0, 16)))) for _ in range(n - 2)]
    rng.shuffle(sizes)
    return sizes


def seq_payload(seq: int, size: int) -> bytes:
    """A message body that says where it belongs: its sequence number, then
    bytes derived from it (a shifted or mixed-up message shows)."""
    head = struct.pack(">I", seq)
    if size <= 4:
        return head[:size] if size < 4 else head
    body = hashlib.sha256(head).digest()
    body = (body * (size // 32 + 1))[: size - 4]
    return head + body


class FrameReader:
    """Reads length-prefixed messages from a socket."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.buf = bytearray()

    def next(self) -> bytes:
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack_from(">I", self.buf, 0)
                if len(self.buf) >= 4 + n:
                    msg = bytes(self.buf[4 : 4 + n])
                    del self.buf[: 4 + n]
                    return msg
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise AssertionError(f"EOF with {len(self.buf)} bytes of a partial message")
            self.buf += chunk


class MsgSender(threading.Thread):
    """Sends length-prefixed messages; .digest is the sha256 of the stream."""

    def __init__(self, s: socket.socket, payloads, split_rng: random.Random | None = None,
                 gate: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.s, self.payloads, self.split_rng = s, payloads, split_rng
        # With a gate: cleared = hold before the next message; `lock` is held
        # while one message is being sent, so a holder knows none is half-sent.
        self.gate = gate
        self.lock = threading.Lock()
        self.digest, self.sent, self.bytes = "", 0, 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            h = hashlib.sha256()
            for p in self.payloads:
                if self.gate is not None and not self.gate.wait(IO_TIMEOUT):
                    raise AssertionError("sender held at its gate for too long")
                data = frame(p)
                h.update(data)
                with self.lock:
                    self.s.sendall(data)
                    self.sent += 1
                self.bytes += len(data)
            self.digest = h.hexdigest()
        except BaseException as e:  # noqa: BLE001 - reported by join_all
            self.error = e


class MsgReceiver(threading.Thread):
    """Receives `count` messages; checks each against `expect(i, payload)`."""

    def __init__(self, s: socket.socket, count: int, expect=None) -> None:
        super().__init__(daemon=True)
        self.s, self.count, self.expect = s, count, expect
        self.digest, self.got = "", 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            h = hashlib.sha256()
            r = FrameReader(self.s)
            for i in range(self.count):
                msg = r.next()
                h.update(frame(msg))
                if self.expect is not None:
                    self.expect(i, msg)
                self.got += 1
            self.digest = h.hexdigest()
        except BaseException as e:  # noqa: BLE001
            self.error = e


def seq_checker(payload_of):
    """expect(i, msg) for messages that must be payload_of(i), in order."""

    def expect(i: int, msg: bytes) -> None:
        want = payload_of(i)
        if msg != want:
            got_seq = struct.unpack(">I", msg[:4])[0] if len(msg) >= 4 else None
            raise AssertionError(f"message {i}: {len(msg)} bytes (seq {got_seq}), expected "
                                 f"{len(want)} bytes")

    return expect


def prog_gone(prog_id: int, timeout: float = 20.0) -> None:
    """Wait until the kernel has freed program `prog_id` (bpftool agrees)."""
    wait_for(lambda: not bpf.prog_exists(prog_id), timeout=timeout,
             what=f"BPF program id {prog_id} to be freed")
    if shutil.which("bpftool"):
        r = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0, f"bpftool still shows program {prog_id}: {r.stdout}"


def proc_line(pid: int):
    (line,) = [p for p in proc_proxies() if p.id == pid]
    return line


# --- framing and verdicts ------------------------------------------------------


def test_lenprefix_and_pass_both_ways_at_once(kp, progs):
    n = 200
    rng = random.Random(5)
    ab = [seq_payload(i, s) for i, s in enumerate(log_uniform_sizes(rng, n))]
    ba = [seq_payload(i, s) for i, s in enumerate(log_uniform_sizes(rng, n))]
    lp, ps = progs("lenprefix"), progs("pass")
    ch = make_chain(kp)
    try:
        kp.attach(ch.proxy.id, "parser", lp)
        kp.attach(ch.proxy.id, "verdict", ps)
        threads = [MsgSender(ch.c1, ab), MsgReceiver(ch.s2, n, seq_checker(ab.__getitem__)),
                   MsgSender(ch.s2, ba), MsgReceiver(ch.c1, n, seq_checker(ba.__getitem__))]
        for t in threads:
            t.start()
        join_all(threads, timeout=600)
        assert threads[1].digest == threads[0].digest
        assert threads[3].digest == threads[2].digest

        total_ab = sum(4 + len(p) for p in ab)
        total_ba = sum(4 + len(p) for p in ba)
        p = wait_for(lambda: (q := kp.get(ch.proxy.id)).a_to_b.msgs == n
                     and q.b_to_a.msgs == n and q, timeout=30, what="message counters")
        assert p.a_to_b.bytes == total_ab and p.b_to_a.bytes == total_ba
        assert p.a_to_b.drops == 0 and p.b_to_a.drops == 0
        for d in (p.a_to_b, p.b_to_a):
            assert (d.parser_id, d.verdict_id) == (lp.id, ps.id)
        line = proc_line(ch.proxy.id)
        assert line.a_to_b.msgs == n and line.b_to_a.msgs == n
        for d in (line.a_to_b, line.b_to_a):
            assert (d.parser_id, d.verdict_id) == (lp.id, ps.id)
    finally:
        ch.close()


def test_drop_prefix_drops_exactly_the_marked_messages(kp, progs):
    n = 200
    rng = random.Random(7)
    sizes = log_uniform_sizes(rng, n, lo=8, hi=16 * KiB)
    marked = set(rng.sample(range(n), 50)) | {0, n - 1}
    payloads = []
    for i, s in enumerate(sizes):
        body = seq_payload(i, s)[4:]
        payloads.append((b"DROP" if i in marked else b"KEEP") + struct.pack(">I", i) + body)
    kept = [p for i, p in enumerate(payloads) if i not in marked]
    lp, dp = progs("lenprefix"), progs("drop-prefix", prefix=b"DROP")
    ch = make_chain(kp)
    try:
        kp.attach(ch.proxy.id, "parser", lp, "a-to-b")
        kp.attach(ch.proxy.id, "verdict", dp, "a-to-b")
        threads = [MsgSender(ch.c1, payloads), MsgReceiver(ch.s2, len(kept), seq_checker(kept.__getitem__))]
        for t in threads:
            t.start()
        join_all(threads, timeout=300)
        p = wait_for(lambda: (q := kp.get(ch.proxy.id)).a_to_b.drops == len(marked) and q,
                     timeout=30, what=f"{len(marked)} drops")
        assert p.a_to_b.msgs == len(kept)
        assert p.a_to_b.bytes == sum(4 + len(k) for k in kept)
        assert (p.a_to_b.parser_id, p.a_to_b.verdict_id) == (lp.id, dp.id)
        assert (p.b_to_a.parser_id, p.b_to_a.verdict_id) == (None, None)
        assert proc_line(ch.proxy.id).a_to_b.drops == len(marked)
        # The other way is a plain stream, untouched.
        ch.s2.sendall(b"DROP this is not a message")
        assert recv_exact(ch.c1, 26) == b"DROP this is not a message"
        # Nothing arrived beyond the kept messages.
        ch.s2.settimeout(0.5)
        with pytest.raises(socket.timeout):
            ch.s2.recv(1)
    finally:
        ch.close()


def _send_in_small_writes(s: socket.socket, data: bytes, rng: random.Random) -> None:
    i = 0
    while i < len(data):
        n = rng.randint(1, 7)
        s.sendall(data[i : i + n])
        i += n
        if rng.random() < 0.05:
            time.sleep(0.001)  # let some pieces go out as their own segments


def _lines(rng: random.Random, n: int) -> list[bytes]:
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 :/.-"
    return [bytes(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 5, 40, 200, 1500))))
            + b"\n" for _ in range(n)]


def test_lines_split_across_small_writes(kp, progs):
    rng = random.Random(11)
    lines = _lines(rng, 300)
    data = b"".join(lines)
    ln = progs("lines")
    ch = make_chain(kp)
    try:
        ch.c1.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kp.attach(ch.proxy.id, "parser", ln, "a-to-b")
        t = threading.Thread(target=_send_in_small_writes, args=(ch.c1, data, rng), daemon=True)
        t.start()
        got = recv_exact(ch.s2, len(data))
        t.join(IO_TIMEOUT)
        assert not t.is_alive()
        assert got == data
        p = wait_for(lambda: (q := kp.get(ch.proxy.id)).a_to_b.msgs == len(lines) and q,
                     timeout=30, what=f"{len(lines)} messages")
        assert p.a_to_b.parser_id == ln.id and p.a_to_b.drops == 0
    finally:
        ch.close()


def test_lines_with_a_verdict_on_the_line_start(kp, progs):
    rng = random.Random(13)
    lines = [(b"DROP " if rng.random() < 0.3 else b"PASS ") + b"%d " % i + ln
             for i, ln in enumerate(_lines(rng, 200))]
    kept = [ln for ln in lines if not ln.startswith(b"DROP ")]
    ln, dp = progs("lines"), progs("drop-prefix", prefix=b"DROP ", offset=0)
    ch = make_chain(kp)
    try:
        ch.c1.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kp.attach(ch.proxy.id, "parser", ln, "a-to-b")
        kp.attach(ch.proxy.id, "verdict", dp, "a-to-b")
        t = threading.Thread(target=_send_in_small_writes, args=(ch.c1, b"".join(lines), rng),
                             daemon=True)
        t.start()
        want = b"".join(kept)
        assert recv_exact(ch.s2, len(want)) == want
        t.join(IO_TIMEOUT)
        p = wait_for(lambda: (q := kp.get(ch.proxy.id)).a_to_b.drops == len(lines) - len(kept)
                     and q, timeout=30, what="drops")
        assert p.a_to_b.msgs == len(kept)
    finally:
        ch.close()


# --- changes while traffic flows -----------------------------------------------


def test_attach_replace_detach_while_messages_flow(kp, progs):
    """Programs come and go under STRESS_BYTES of messages, both ways: every
    message arrives once, whole, in order (sequence numbers), and the
    streams' sha256 match.

    Replacing or detaching programs happens while messages flow. A plain
    byte stream knows no message boundaries, so the first parser of a
    round starts where the application is at one: the senders hold between
    two messages until everything sent has arrived, as a real user would
    attach before the traffic or at a quiet point of the protocol."""
    per_dir = STRESS_BYTES // 2
    rng = random.Random(17)

    def payloads(seed: int) -> list[bytes]:
        r, out, total, i = random.Random(seed), [], 0, 0
        while total < per_dir:
            s = min(64 * KiB, max(5, int(2 ** r.uniform(2, 16))))
            out.append(seq_payload(i, s))
            total += 4 + s
            i += 1
        return out

    ab, ba = payloads(1), payloads(2)
    lp1, lp2 = progs("lenprefix"), progs("lenprefix")
    ps1, ps2 = progs("pass"), progs("pass")
    # A verdict that never drops here: payloads start with a seq < 2**24.
    never = progs("drop-prefix", prefix=b"\xffNEVER")
    ch = make_chain(kp)
    pid = ch.proxy.id
    gate = threading.Event()
    gate.set()

    def at_message_boundary(step):
        def run(d: str) -> None:
            gate.clear()
            try:
                with threads[0].lock, threads[2].lock:
                    wait_for(lambda: threads[1].got == threads[0].sent and
                             threads[3].got == threads[2].sent or
                             any(t.error for t in threads), timeout=IO_TIMEOUT,
                             what="the receivers to catch up with the held senders")
                    step(d)
            finally:
                gate.set()
        return run

    steps = [
        at_message_boundary(lambda d: kp.attach(pid, "parser", lp1, d)),
        lambda d: kp.attach(pid, "verdict", ps1, d),
        lambda d: kp.attach(pid, "verdict", never, d),   # replace the verdict
        lambda d: kp.attach(pid, "parser", lp2, d),      # replace the parser
        lambda d: kp.attach(pid, "verdict", ps2, d),
        lambda d: kp.detach(pid, "verdict", d),
        lambda d: kp.attach(pid, "parser", lp1, d),
        lambda d: kp.detach(pid, "parser", d),           # back to a plain stream
    ]
    changes = 0
    try:
        threads = [MsgSender(ch.c1, ab, gate=gate),
                   MsgReceiver(ch.s2, len(ab), seq_checker(ab.__getitem__)),
                   MsgSender(ch.s2, ba, gate=gate),
                   MsgReceiver(ch.c1, len(ba), seq_checker(ba.__getitem__))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 600
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            if any(t.error for t in threads):
                break
            d = rng.choice(("both", "both", "a-to-b", "b-to-a"))
            for step in steps:
                try:
                    step(d)
                except KproxyError as e:
                    # One direction only: the other's state may refuse a step
                    # (a verdict with no parser there); never anything else.
                    assert d != "both" and e.errno in (errno.EINVAL, errno.EBUSY, errno.ENOENT), e
                changes += 1
                time.sleep(rng.random() * 0.01)
            # tidy up so that every round starts from a plain stream
            for k in ("verdict", "parser"):
                with contextlib.suppress(KproxyError):
                    kp.detach(pid, k, "both")
                for dd in ("a-to-b", "b-to-a"):
                    with contextlib.suppress(KproxyError):
                        kp.detach(pid, k, dd)
        join_all(threads, timeout=max(1.0, deadline - time.monotonic()))
        assert threads[1].digest == threads[0].digest and threads[1].got == len(ab)
        assert threads[3].digest == threads[2].digest and threads[3].got == len(ba)
        assert changes >= len(steps), "the traffic ended before a single round of changes"
        p = kp.get(pid)
        assert p.state == "active"
        assert p.a_to_b.bytes == threads[0].bytes and p.b_to_a.bytes == threads[2].bytes
        assert p.a_to_b.drops == 0 and p.b_to_a.drops == 0
    finally:
        ch.close()


def test_parser_error_ends_the_proxy_with_reason_error(kp, progs):
    lp = progs("lenprefix")
    ch = make_chain(kp)
    pid = ch.proxy.id
    try:
        with kp.monitor() as mon:
            kp.attach(pid, "parser", lp, "a-to-b")
            ch.c1.sendall(frame(b"fine"))
            assert recv_exact(ch.s2, 8) == frame(b"fine")
            ch.c1.sendall(b"\xff\xff\xff\xff" + b"x" * 100)  # 4 GiB: -EMSGSIZE
            ev = wait_event(mon, lambda e: e.kind == "del" and e.proxy.id == pid, timeout=30)
        assert ev.reason == "error"
        assert ev.proxy.a_to_b.msgs == 1
        with pytest.raises(KproxyError) as ei:
            kp.get(pid)
        assert ei.value.errno == errno.ENOENT
    finally:
        ch.close()


def test_overlong_line_ends_the_proxy_with_reason_error(kp, progs):
    ln = progs("lines")
    ch = make_chain(kp)
    pid = ch.proxy.id
    try:
        with kp.monitor() as mon:
            kp.attach(pid, "parser", ln, "b-to-a")
            ch.s2.sendall(b"ok\n")
            assert recv_exact(ch.c1, 3) == b"ok\n"
            ch.s2.sendall(b"y" * (9 * KiB))  # over the 8 KiB bound, no newline
            ev = wait_event(mon, lambda e: e.kind == "del" and e.proxy.id == pid, timeout=30)
        assert ev.reason == "error"
    finally:
        ch.close()


# --- bad input -------------------------------------------------------------------


def _refused(fn, want_errno, *fragments):
    with pytest.raises(KproxyError) as ei:
        fn()
    e = ei.value
    assert e.errno in (want_errno if isinstance(want_errno, tuple) else (want_errno,)), e
    assert e.message and e.message != os.strerror(e.errno), f"no extack message: {e}"
    for f in fragments:
        assert f in e.message, e
    return e


@pytest.mark.parametrize("ptype", ["xdp", "sched_cls"])
def test_program_of_another_type_is_einval(kp, ptype):
    ch = make_chain(kp)
    try:
        with bpf.load_insns(ptype, bpf.insn_return(0)) as other:
            _refused(lambda: kp.attach(ch.proxy.id, "parser", other), errno.EINVAL,
                     "not of type socket_filter")
        p = kp.get(ch.proxy.id)
        assert p.a_to_b.parser_id is None and p.b_to_a.parser_id is None
    finally:
        ch.close()


def test_fd_that_is_not_a_program(kp):
    ch = make_chain(kp)
    r, w = os.pipe()
    try:
        _refused(lambda: kp.attach(ch.proxy.id, "parser", r), (errno.EINVAL, errno.EBADF))
        fd = os.open("/dev/null", os.O_RDONLY)
        os.close(fd)
        _refused(lambda: kp.attach(ch.proxy.id, "parser", fd), errno.EBADF)
    finally:
        os.close(r)
        os.close(w)
        ch.close()


def test_verdict_needs_a_parser(kp, progs):
    lp, ps = progs("lenprefix"), progs("pass")
    ch = make_chain(kp)
    pid = ch.proxy.id
    try:
        _refused(lambda: kp.attach(pid, "verdict", ps), errno.EINVAL, "parser")
        kp.attach(pid, "parser", lp, "a-to-b")
        # both: b-to-a has no parser, so nothing changes anywhere
        _refused(lambda: kp.attach(pid, "verdict", ps, "both"), errno.EINVAL, "parser")
        assert kp.get(pid).a_to_b.verdict_id is None
        kp.attach(pid, "verdict", ps, "a-to-b")
        # the parser cannot go while the verdict needs it
        _refused(lambda: kp.detach(pid, "parser", "a-to-b"), errno.EBUSY)
        _refused(lambda: kp.detach(pid, "verdict", "b-to-a"), errno.ENOENT)
        kp.detach(pid, "verdict", "a-to-b")
        kp.detach(pid, "parser", "a-to-b")
        _refused(lambda: kp.detach(pid, "parser"), errno.ENOENT)
        p = kp.get(pid)
        assert (p.a_to_b.parser_id, p.a_to_b.verdict_id) == (None, None)
        # a plain stream again
        ch.c1.sendall(b"plain")
        assert recv_exact(ch.s2, 5) == b"plain"
    finally:
        ch.close()


def test_unknown_proxy_is_enoent(kp, progs):
    lp = progs("lenprefix")
    _refused(lambda: kp.attach(0xFFFFFFF0, "parser", lp), errno.ENOENT)
    _refused(lambda: kp.detach(0xFFFFFFF0, "parser"), errno.ENOENT)


def _attach_detach_as_nobody(_ch: Channel, pid: int, fd: int) -> dict:
    become_nobody()
    out = {}
    with Kproxy() as nobodys:
        for name, fn in (("attach", lambda: nobodys.attach(pid, "parser", fd)),
                         ("detach", lambda: nobodys.detach(pid, "parser"))):
            try:
                fn()
                out[name] = "ok"
            except KproxyError as e:
                out[name] = [e.errno_name, e.message]
    return out


def test_unprivileged_caller_is_eperm(kp, progs):
    lp = progs("lenprefix")
    ch = make_chain(kp)
    try:
        kp.attach(ch.proxy.id, "parser", lp)
        out = run_child(_attach_detach_as_nobody, ch.proxy.id, lp.fd)
        assert out["attach"][0] == "EPERM" and out["attach"][1]
        assert out["detach"][0] == "EPERM" and out["detach"][1]
        assert kp.get(ch.proxy.id).a_to_b.parser_id == lp.id
    finally:
        ch.close()


# --- ids and references --------------------------------------------------------------


def test_ids_in_get_list_and_proc(kp, progs):
    lp, ps = progs("lenprefix"), progs("pass")
    ch = make_chain(kp)
    pid = ch.proxy.id
    try:
        kp.attach(pid, "parser", lp)
        kp.attach(pid, "verdict", ps, "b-to-a")
        for p in (kp.get(pid), [q for q in kp.list() if q.id == pid][0], proc_line(pid)):
            assert (p.a_to_b.parser_id, p.a_to_b.verdict_id) == (lp.id, None)
            assert (p.b_to_a.parser_id, p.b_to_a.verdict_id) == (lp.id, ps.id)
        d = kp.get(pid).to_dict()
        assert d["b_to_a"]["verdict_id"] == ps.id and d["a_to_b"]["verdict_id"] is None
    finally:
        ch.close()


def test_references_released_on_detach_replace_and_destroy(kp):
    ch = make_chain(kp)
    pid = ch.proxy.id
    try:
        with bpf.load("lenprefix") as lp1, bpf.load("lenprefix") as lp2, bpf.load("pass") as ps:
            ids = lp1.id, lp2.id, ps.id
            kp.attach(pid, "parser", lp1)
            kp.attach(pid, "parser", lp2, "a-to-b")  # lp1 stays on b-to-a
            kp.attach(pid, "verdict", ps, "a-to-b")
        # our fds are closed: only the proxy holds them
        for i in ids:
            assert bpf.prog_exists(i)
        kp.detach(pid, "parser", "b-to-a")  # lp1's last user
        prog_gone(ids[0])
        assert bpf.prog_exists(ids[1]) and bpf.prog_exists(ids[2])
        # traffic still framed by lp2 + ps on a-to-b
        ch.c1.sendall(frame(b"after"))
        assert recv_exact(ch.s2, 9) == frame(b"after")
        kp.destroy(pid)
        prog_gone(ids[1])
        prog_gone(ids[2])
    finally:
        ch.close()


def test_references_released_when_the_proxy_ends_by_itself(kp):
    ch = make_chain(kp)
    pid = ch.proxy.id
    with bpf.load("lines") as ln:
        kp.attach(pid, "parser", ln)
        lid = ln.id
    ch.close_inner()
    try:
        ch.c1.sendall(b"bye\n")
        assert recv_exact(ch.s2, 4) == b"bye\n"
    finally:
        ch.c1.close()
        ch.s2.close()
    wait_for(lambda: pid not in {p.id for p in kp.list()}, timeout=30, what="proxy ended")
    prog_gone(lid)


def test_references_released_on_unload(kp, kproxy_ko):
    ch = make_chain(kp)
    with bpf.load("lenprefix") as lp, bpf.load("pass") as ps:
        kp.attach(ch.proxy.id, "parser", lp)
        kp.attach(ch.proxy.id, "verdict", ps)
        ids = lp.id, ps.id
    try:
        subprocess.run(["rmmod", "kproxy"], check=True, timeout=120)
        for i in ids:
            prog_gone(i)
    finally:
        if not Path("/sys/module/kproxy").exists():
            subprocess.run(["insmod", str(kproxy_ko)], check=True, timeout=120)
        ch.close()


# --- the CLI, end to end -----------------------------------------------------------------


def test_cli_attach_show_detach(kp):
    ch = make_chain(kp)
    pid = str(ch.proxy.id)
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1")

    def kpctl(*args):
        # kpctl's main() in this process: the same argv, streams and exit
        # status as the command line, without seconds of imports under TCG.
        out, err = io.StringIO(), io.StringIO()
        rc = cli.main(list(args), stdout=out, stderr=err, env=env)
        return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())

    try:
        r = kpctl("attach", pid, "parser", "lenprefix")
        assert r.returncode == 0 and "parser lenprefix" in r.stdout, r.stderr
        r = kpctl("-j", "attach", pid, "verdict", "drop-prefix", "--prefix", "X", "--dir", "a-to-b")
        assert r.returncode == 0, r.stderr
        vid = json.loads(r.stdout)["prog"]["id"]
        p = json.loads(kpctl("-j", "show", pid).stdout)
        assert p["a_to_b"]["verdict_id"] == vid and p["a_to_b"]["parser_id"]
        assert p["b_to_a"]["verdict_id"] is None
        r = kpctl("show", pid)
        assert f"id {vid}" in r.stdout
        ch.c1.sendall(frame(b"Xdropped") + frame(b"kept"))
        assert recv_exact(ch.s2, 8) == frame(b"kept")
        r = kpctl("detach", pid, "parser")
        assert r.returncode == 2 and "Error: " in r.stderr and "(EBUSY)" in r.stderr
        r = kpctl("attach", pid, "verdict", "nosuch")
        assert r.returncode == 2 and "nor a shipped program" in r.stderr
        assert kpctl("detach", pid, "verdict", "--dir", "a-to-b").returncode == 0
        assert kpctl("detach", pid, "parser").returncode == 0
        prog_gone(vid)
    finally:
        ch.close()
