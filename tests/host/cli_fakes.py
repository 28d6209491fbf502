"""Fakes for the CLI's host tests: a client with the methods of kpctl.Kproxy.

The values are the library's own frozen dataclasses (kpctl.model); only the
netlink client is faked, and it is injected through main(client_factory=...).
"""

from __future__ import annotations

import errno
import io
import os
import socket

from kpctl.errors import KproxyError
from kpctl.model import DirStats, Endpoint, Event, Proxy, SockInfo, Totals

NOW = 1_800_000_000.0  # a fixed wall clock for the tests


def make_proxy(pid, state="active", ab=0, ba=0, age=192.0, v6=False):
    if v6:
        a = SockInfo(socket.AF_INET6, Endpoint("::1", 8000), Endpoint("::1", 40000 + pid), 1)
        b = SockInfo(socket.AF_INET6, Endpoint("::1", 50000 + pid), Endpoint("::1", 9000), 1)
    else:
        a = SockInfo(socket.AF_INET, Endpoint("127.0.0.1", 8000),
                     Endpoint("10.0.0.%d" % pid, 40000 + pid), 1)
        b = SockInfo(socket.AF_INET, Endpoint("127.0.0.1", 50000 + pid),
                     Endpoint("127.0.0.1", 9000), 1)
    return Proxy(id=pid, state=state, created_ns=int((NOW - age) * 1e9), a=a, b=b,
                 a_to_b=DirStats(bytes=ab, skbs=ab // 1000, msgs=0, drops=0, queued=0),
                 b_to_a=DirStats(bytes=ba, skbs=ba // 1000, msgs=0, drops=0, queued=0))


class FakeKproxy:
    """The methods of kpctl.Kproxy over a dict; records what was asked."""

    def __init__(self, proxies=(), events=(), netns=None, fail_open=None, listeners=()):
        if fail_open is not None:
            raise fail_open
        self.proxies = {p.id: p for p in proxies}
        self.listeners_ = {li.id: li for li in listeners}
        self.events = list(events)
        self.netns = netns
        self.calls = []
        self.closed = False
        self.next_id = max(self.proxies, default=0) + 1
        self.list_hook = None  # called before each list() (top's changing counters)
        self.progs = {}  # (id, kind) -> program id
        self.replies = {}  # id -> the verdict-replies attached with its verdict
        self.listener_table = {}  # id -> kpctl.model.Listener, for get_listener()
        self._ends = None  # fileno()'s pipe, where no end ever arrives

    def create(self, a, b, *, notify_end=False):
        self.calls.append(("create", a, b))
        if a == b:
            raise KproxyError(errno.EINVAL, "fd-a and fd-b are the same socket")
        p = make_proxy(self.next_id)
        self.proxies[p.id] = p
        self.next_id += 1
        return p

    def fileno(self):
        if self._ends is None:
            self._ends = os.pipe()
        return self._ends[0]

    def ended(self, timeout=0.0):
        return []

    def get(self, pid):
        self.calls.append(("get", pid))
        try:
            return self.proxies[pid]
        except KeyError:
            raise KproxyError(errno.ENOENT, "no proxy with this id") from None

    def list(self):
        self.calls.append(("list",))
        if self.list_hook:
            self.list_hook(self)
        return list(self.proxies.values())

    def listeners(self):
        self.calls.append(("listeners",))
        return list(self.listeners_.values())

    def destroy(self, pid):
        self.calls.append(("destroy", pid))
        if pid not in self.proxies:
            raise KproxyError(errno.ENOENT, "no proxy with this id")
        del self.proxies[pid]

    def attach(self, pid, kind, prog, direction="both", *, replies=None):
        fd = prog if isinstance(prog, int) else prog.fileno()
        self.calls.append(("attach", pid, kind, fd, direction))
        if replies is not None:
            self.replies[pid] = list(replies)
        if pid not in self.proxies:
            raise KproxyError(errno.ENOENT, "no proxy with this id")
        if kind == "verdict" and not self.progs.get((pid, "parser")):
            raise KproxyError(errno.EINVAL, "a verdict needs a parser on its direction")
        self.progs[(pid, kind)] = getattr(prog, "id", fd)

    def detach(self, pid, kind, direction="both"):
        self.calls.append(("detach", pid, kind, direction))
        if pid not in self.proxies:
            raise KproxyError(errno.ENOENT, "no proxy with this id")
        if not self.progs.get((pid, kind)):
            raise KproxyError(errno.ENOENT, f"no {kind} attached")
        if kind == "parser" and self.progs.get((pid, "verdict")):
            raise KproxyError(errno.EBUSY, "detach the verdict first")
        del self.progs[(pid, kind)]

    def get_listener(self, lid):
        self.calls.append(("get_listener", lid))
        try:
            return self.listener_table[lid]
        except KeyError:
            raise KproxyError(errno.ENOENT, "no listener with this id") from None

    def monitor(self):
        self.calls.append(("monitor",))
        return iter(list(self.events))

    def close(self):
        for fd in self._ends or ():
            os.close(fd)
        self._ends = None
        self.closed = True


class FakeProgram:
    """What kpctl.bpf.load() returns, as far as the CLI uses it."""

    def __init__(self, source, id=42, name="lenprefix", fd=99):
        self.source, self.id, self.name, self.fd = source, id, name, fd
        self.prefix = None
        self.closed = False

    def fileno(self):
        return self.fd

    def set_prefix(self, prefix, offset=4):
        self.prefix = (prefix, offset)

    def close(self):
        self.closed = True


class Harness:
    """main() with a fake client, string streams and a fixed clock."""

    def __init__(self, client=None, totals=None):
        self.client = client if client is not None else FakeKproxy()
        self.totals = list(totals or [Totals()])
        self.netns_seen = []
        self.slept = []
        self.t = NOW
        self.loaded = []  # FakePrograms handed out by load_prog
        self.server_factory = None  # kpctl.serve.Server unless a test sets one

    def load_prog(self, spec):
        from kpctl.bpf import BpfError, SHIPPED
        if spec not in SHIPPED:
            raise BpfError(errno.ENOENT, f"{spec}: no such file")
        p = FakeProgram(spec, id=40 + len(self.loaded), name=spec.replace("-", "_"))
        self.loaded.append(p)
        return p

    def factory(self, netns):
        self.netns_seen.append(netns)
        self.client.netns = netns
        return self.client

    def read_ids(self):
        """What /proc/net/kproxy would list: the fake's proxies."""
        return {pid: p.state for pid, p in self.client.proxies.items()}

    def read_totals(self):
        return self.totals.pop(0) if len(self.totals) > 1 else self.totals[0]

    def clock(self):
        return self.t

    def sleep(self, s):
        self.slept.append(s)
        self.t += s

    def run(self, *argv, stdin="", env=None, width=120):
        from kpctl.cli import main
        out, err = io.StringIO(), io.StringIO()
        rc = main(list(argv), client_factory=self.factory, stdout=out, stderr=err,
                  stdin=io.StringIO(stdin), env=env if env is not None else {},
                  totals_reader=self.read_totals, ids_reader=self.read_ids, clock=self.clock,
                  sleep=self.sleep, width=width, prog_loader=self.load_prog,
                  server_factory=self.server_factory)
        self.out, self.err = out.getvalue(), err.getvalue()
        return rc


def new_event(p, ts=NOW):
    return Event(kind="new", proxy=p, reason=None, timestamp=ts)


def del_event(p, reason="closed", ts=NOW + 1):
    return Event(kind="del", proxy=p, reason=reason, timestamp=ts)


class FakeServer:
    """kpctl.serve.Server as the shell's jobs use it (the contract): open(),
    run() in a thread until stop(mode), snapshot() from any thread."""

    made = []  # every FakeServer, for the test to inspect

    def __init__(self, client, listen, target, options, *, on_event=None, netns=None,
                 loader=None):
        import threading
        self.client, self.listen, self.target, self.options = client, listen, target, options
        self.on_event = on_event or (lambda kind, data: None)
        self.netns, self.loader = netns, loader
        self.stops = []  # the modes stop() was called with
        self._stopped = threading.Event()
        self.ended = threading.Event()  # run() returned
        self.counters = {"accepted": 3, "created": 3, "active": 2, "pending": 0, "failed": 1,
                         "refused": 0, "accept_errors": 0, "ended": 1,
                         "bytes_a_to_b": 300, "bytes_b_to_a": 4096}
        FakeServer.made.append(self)

    @property
    def address(self):
        return self.listen

    def open(self):
        return self.listen

    def run(self, install_signals=True):
        assert not install_signals  # a job's thread never takes the signals
        self.on_event("listening", {"listen": str(self.listen)})
        self._stopped.wait(30)
        mode = self.stops[-1] if self.stops and self.stops[-1] else self.options.on_stop
        if mode == "kill":
            self.counters = dict(self.counters, active=0, ended=3)
        self.on_event("stopped", dict(self.counters))
        self.ended.set()

    def stop(self, mode=None):
        self.stops.append(mode)
        self._stopped.set()

    def snapshot(self):
        return dict(self.counters)


def make_listener(lid, *, accepted=0, active=0, failed_refused=0, refused_limit=0,
                  age=100.0):
    """A kernel listener on 127.0.0.1:8000+lid towards [::1]:80, made `age`
    seconds before NOW."""
    from kpctl.model import Listener
    return Listener(lid, Endpoint("127.0.0.1", 8000 + lid), Endpoint("::1", 80), None, 0, 10000,
                    None, None, int((NOW - age) * 1e9), accepted=accepted, created=accepted,
                    failed_refused=failed_refused, refused_limit=refused_limit, active=active)
