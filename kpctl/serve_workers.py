"""`kpctl serve --userspace --workers N`: N processes serve one address.

Each worker is a child process (fork) with its own listening socket on
LISTEN (SO_REUSEPORT: the kernel spreads the connections over them), its
own kproxy handle and its own loop (kpctl.serve.Server): they share
nothing, so N workers use N CPUs where one loop is bound to one.

The parent reports for them all, as one service: each worker writes its
events to a pipe (a JSON line each), the parent hands them to on_event
with a "worker" field (0..N-1), and its own "listening", "tick",
"stopping" and "stopped" carry the workers' summed counters.  Why the
parent and not each worker printing its own lines: a user and the shell
read one status line and one summary per service, and the JSON log stays
one stream in which each per-connection event names its worker.
Per-connection events ("proxy", "ended") come only with
options.connection_events (the JSON log; the text view prints none).

LISTEN with port 0: the parent binds a first socket (SO_REUSEPORT, no
listen(), so it takes no connection) to learn the port; every worker binds
that port; the parent's socket closes once all listen.

Stopping: stop(mode) and the parent's SIGINT/SIGTERM/SIGHUP reach each
worker through its control pipe, once; each stops as serve does (leave,
drain, kill).  Workers run in their own process group and ignore signals
sent to them directly (a terminal's Ctrl-C, systemd's SIGTERM to every
process of the unit): they obey the parent alone.  A worker whose control
pipe closes (the parent died) stops as "leave".
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

from .address import Address, ServeError
from .errors import KproxyError
from .serve import STOP_MODES, TICK, Counters, ServeOptions, Server, emit_guarded

# Counters that are not summed over the workers.
_NOT_SUMMED = ("failures", "started", "elapsed")


class WorkerError(KproxyError):
    """A worker could not start (its open() failed): the worker's error."""


def sum_counters(per_worker: list[dict[str, Any]]) -> dict[str, Any]:
    """The service's counters: each worker's summed (failures by reason
    too), started the earliest, elapsed the longest."""
    out = Counters().to_dict()
    for c in per_worker:
        for key, value in c.items():
            if key == "failures":
                for reason, n in value.items():
                    out["failures"][reason] = out["failures"].get(reason, 0) + n
            elif key not in _NOT_SUMMED and isinstance(value, int):
                out[key] = out.get(key, 0) + value
    started = [c["started"] for c in per_worker if c.get("started")]
    out["started"] = min(started) if started else 0.0
    out["elapsed"] = max((c.get("elapsed", 0.0) for c in per_worker), default=0.0)
    return out


class _Worker:
    __slots__ = ("index", "pid", "events", "control", "buf", "counters", "listening", "done")

    def __init__(self, index: int, pid: int, events: int, control: int) -> None:
        self.index, self.pid, self.events, self.control = index, pid, events, control
        self.buf = b""
        self.counters: dict[str, Any] = {}
        self.listening: dict[str, Any] | None = None
        self.done = False


class WorkerPool:
    """Server's interface (open, run, stop, snapshot, address) over N
    worker processes.  `server_factory(listen, target, options, on_event)`
    makes a worker's Server (default kpctl.serve.Server, with its own
    client opened in the worker, in netns)."""

    def __init__(self, listen: Address, target: Address, options: ServeOptions, workers: int,
                 *, on_event: Callable[[str, dict], None] | None = None,
                 netns: str | None = None, loader: Callable[[str], Any] | None = None,
                 server_factory: Callable[..., Server] | None = None) -> None:
        if workers < 2:
            raise ServeError("--workers: a pool needs 2 workers or more")
        self.options = options
        self.listen_addr = listen
        self.target = target
        self.workers = workers
        self.on_event = on_event or (lambda kind, data: None)
        self._netns = netns
        self._loader = loader
        self._factory = server_factory
        self._workers: list[_Worker] = []
        self._probe: socket.socket | None = None
        self._programs: dict[str, Any] = {}
        # Re-entrant: the signal handler runs in the main thread, maybe
        # while that thread is in _tell() already.
        self._lock = threading.RLock()
        self._stop_mode: str | None = None
        self._stopping_seen = False
        self._published: dict[str, Any] = Counters().to_dict()

    @property
    def address(self) -> Address:
        return self.listen_addr

    # -- starting --------------------------------------------------------------

    def open(self) -> Address:
        """Bind the port, start the workers and wait until each listens;
        raises the first worker's error (EADDRINUSE, a BPF load...) after
        ending the others.  The programs are loaded here, once, before the
        workers are forked: every worker attaches the same programs, so
        one service has one set of maps (`kpctl http-rules` on any of its
        proxies changes the rules of all).  The parent closes its
        descriptors once the workers have ended."""
        from .serve import load_programs
        self._programs = load_programs(self.options, self._loader)
        try:
            self._bind_probe()
            for index in range(self.workers):
                self._spawn(index)
            self._wait_listening()
        except BaseException:
            self._abort()
            raise
        finally:
            if self._probe is not None:
                self._probe.close()
                self._probe = None
        return self.listen_addr

    def _bind_probe(self) -> None:
        a = self.listen_addr
        if self._netns:
            from .netns import socket_in_netns
            s = socket_in_netns(self._netns, a.family, socket.SOCK_STREAM)
        else:
            s = socket.socket(a.family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if a.family == socket.AF_INET6 and a.host == "::":
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(a.sockaddr())
        except BaseException:
            s.close()
            raise
        self._probe = s
        self.listen_addr = Address(a.host, s.getsockname()[1], a.family, a.name)

    def _spawn(self, index: int) -> None:
        ev_r, ev_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        inherited = [fd for w in self._workers for fd in (w.events, w.control)]
        for stream in (sys.stdout, sys.stderr):  # else the worker would print it again
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):  # closed, or none
                pass
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            code = 1
            try:
                os.close(ev_r)
                os.close(ctl_w)
                for fd in inherited:
                    os.close(fd)
                code = self._worker_main(index, ev_w, ctl_r)
            finally:
                os._exit(code)
        os.close(ev_w)
        os.close(ctl_r)
        os.set_blocking(ev_r, False)
        self._workers.append(_Worker(index, pid, ev_r, ctl_w))

    def _wait_listening(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            for w in self._workers:
                sel.register(w.events, selectors.EVENT_READ, w)
            while not all(w.listening is not None for w in self._workers):
                for key, _ in sel.select(None):
                    w = key.data
                    for kind, data in self._read(w):
                        if kind == "error":
                            raise WorkerError(data.get("errno") or errno.EIO, data["message"])
                        if kind == "listening":
                            w.listening = data
                    if w.done and w.listening is None:
                        raise WorkerError(errno.EIO, f"worker {w.index} exited before listening")
        finally:
            sel.close()

    def _abort(self) -> None:
        self._close_programs()
        for w in self._workers:
            _close_fd(w.control)
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(w.pid, 0)
            except ChildProcessError:
                pass
            _close_fd(w.events)
        self._workers = []

    def _close_programs(self) -> None:
        from .serve import close_programs
        close_programs(self._programs)
        self._programs = {}

    # -- in the worker -----------------------------------------------------------

    def _worker_main(self, index: int, ev_w: int, ctl_r: int) -> int:
        os.setpgid(0, 0)  # a terminal's signals go to the parent alone
        # and so do the others: systemd signals every process of the
        # service, and a worker that also obeyed its own SIGTERM would
        # count the parent's as a second one (drain: stop waiting).
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        out = os.fdopen(ev_w, "w", buffering=1)

        def send(kind: str, data: dict) -> None:
            out.write(json.dumps([kind, data], separators=(",", ":"), default=str) + "\n")

        options = dataclasses.replace(self.options, reuseport=True)
        factory = self._factory or (lambda listen, target, opts, on_event: Server(
            None, listen, target, opts, on_event=on_event, netns=self._netns,
            loader=self._loader, programs=self._programs or None))
        try:
            server = factory(self.listen_addr, self.target, options, send)
            server.open()
        except Exception as e:  # noqa: BLE001 - reported to the parent
            send("error", {"errno": getattr(e, "errno", None) or errno.EIO,
                           "message": getattr(e, "message", None) or getattr(e, "strerror", None)
                           or str(e)})
            return 2
        threading.Thread(target=_control, args=(ctl_r, server), daemon=True).start()
        server.run(install_signals=False)
        out.flush()
        return 0

    # -- in the parent -------------------------------------------------------------

    def _read(self, w: _Worker) -> list[tuple[str, dict]]:
        try:
            chunk = os.read(w.events, 1 << 16)
        except BlockingIOError:
            return []
        if not chunk:
            w.done = True
            return []
        w.buf += chunk
        *lines, w.buf = w.buf.split(b"\n")
        return [tuple(json.loads(line)) for line in lines if line]  # type: ignore[misc]

    def stop(self, mode: str | None = None) -> None:
        """Stop every worker (None: options.on_stop); thread-safe."""
        if mode is not None and mode not in STOP_MODES:
            raise ValueError(f"stop mode must be one of {', '.join(STOP_MODES)}")
        self._tell(f"stop {mode or ''}".strip())

    def _tell(self, line: str) -> None:
        with self._lock:
            for w in self._workers:
                if not w.done:
                    try:
                        os.write(w.control, (line + "\n").encode())
                    except OSError:  # that worker has gone
                        pass

    def snapshot(self) -> dict[str, Any]:
        return dict(self._published)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._tell(f"signal {signal.Signals(signum).name}")

    def run(self, *, install_signals: bool = True) -> Counters:
        """Report the workers' events until every worker has ended; their
        summed counters."""
        saved: dict[int, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                saved[s] = signal.signal(s, self._on_signal)
        first = self._workers[0].listening or {}
        self._emit("listening", dict(first, pid=os.getpid(),
                                     workers=[w.pid for w in self._workers]))
        sel = selectors.DefaultSelector()
        for w in self._workers:
            sel.register(w.events, selectors.EVENT_READ, w)
        next_tick = time.monotonic() + TICK
        try:
            while not all(w.done for w in self._workers):
                for key, _ in sel.select(max(0.0, next_tick - time.monotonic())):
                    w = key.data
                    for kind, data in self._read(w):
                        self._on_worker_event(w, kind, data)
                    if w.done:
                        sel.unregister(w.events)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK
                    self._emit("tick", self._publish())
        finally:
            sel.close()
            for s, h in saved.items():
                signal.signal(s, h)
            for w in self._workers:
                _close_fd(w.control)
                _close_fd(w.events)
                try:
                    os.waitpid(w.pid, 0)
                except ChildProcessError:
                    pass
            self._close_programs()
        final = self._publish()
        self._emit("stopped", final)
        c = Counters()
        for key, value in final.items():
            setattr(c, key, value)
        return c

    def _on_worker_event(self, w: _Worker, kind: str, data: dict) -> None:
        if kind in ("tick", "stopped"):
            w.counters = data
            return
        if kind == "stopping":
            if not self._stopping_seen:  # one line for the service, not one per worker
                self._stopping_seen = True
                active = sum(x.counters.get("active", 0) for x in self._workers)
                self._emit("stopping", dict(data, active=max(active, data.get("active", 0))))
            return
        if kind == "signal" and w.index != 0:
            return  # every worker says the same about a signal the parent passed on
        self._emit(kind, dict(data, worker=w.index))

    def _publish(self) -> dict[str, Any]:
        self._published = sum_counters([w.counters for w in self._workers if w.counters])
        return self._published

    def _emit(self, kind: str, data: dict) -> None:
        emit_guarded(self.on_event, kind, data)


def _control(fd: int, server: Server) -> None:
    """In a worker: the parent's stop requests and signals, one a line;
    EOF (the parent has gone) stops as "leave"."""
    with os.fdopen(fd, "r") as f:
        for line in f:
            what, _, arg = line.strip().partition(" ")
            if what == "stop":
                server.stop(arg or None)
            elif what == "signal":
                server.signal(arg)
    server.stop("leave")


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
