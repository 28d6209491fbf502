"""`kpctl serve` against the real module, with real programs.

Runs as root in the VM (`pytest tests/kernel`), kproxy loaded.  serve runs
as a subprocess (`python -m kpctl.cli serve -j ...`) as a user would run it;
its JSON log lines are read back (the first, "listening", tells the port:
LISTEN is always port 0 here).

The HTTP server is `python3 -m http.server` bound to 127.0.0.1 (the TLS
tests use nginx: nginxutil.py).  Downloads and uploads use curl when the
guest has it (it shares the host's filesystem: /usr/bin/curl), else urllib.

The VM may run under TCG (10-50x slower than native): every wait is bounded
and generous.  Tunables (environment):
    KPROXY_TEST_LONG=1         the issue's sizes (make test-long): 64 MiB
                               files, 2000 short connections, 256 MiB CPU test
    KPROXY_SERVE_SHORT_CONNS   short connections in a row (200; long 2000)
    KPROXY_SERVE_CPU_MIB       MiB through the proxy for the CPU test (64; long 256)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.server
import io
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kpctl import Kproxy, bpf, cli, netns
from util import (IO_TIMEOUT, PROCESS_START_TIMEOUT, Receiver, Sender, join_all, kp,  # noqa: F401
                  long_or, recv_exact, tcp_pair, wait_for)

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = PROCESS_START_TIMEOUT  # serve is a new Python process
STOP_TIMEOUT = 120
# The sizes under `make test-long`; under `make test`, what fits CI's
# time in an emulated VM (where each connection costs ~0.3 s of Python).
BIG = long_or(64, 16) << 20
DOWNLOADS = 20
CURL = shutil.which("curl")
SHORT_CONNS = int(os.environ.get("KPROXY_SERVE_SHORT_CONNS", long_or(2000, 200)))
CPU_MIB = int(os.environ.get("KPROXY_SERVE_CPU_MIB", long_or(256, 64)))
# serve's two paths: a kernel listener (the default) and its own accept loop,
# which joins a wakeup's connections with one send and no acks.
PATHS = ((), ("--userspace",))
PATH_IDS = ("listener", "userspace")


# -- serve as a subprocess ------------------------------------------------------------

class Serve:
    """`kpctl serve -j LISTEN TARGET ARGS...`; .events: its JSON log lines."""

    def __init__(self, listen: str, target: str, *args: str, pre: tuple[str, ...] = ()) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1")
        self.argv = [sys.executable, "-m", "kpctl.cli", *pre, "serve", "-j", listen, target,
                     *args]
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self._lock = threading.RLock()  # wait_event's predicates call kinds()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        first = self.wait_event(lambda e: e["event"] == "listening", START_TIMEOUT)
        host, _, port = first["listen"].rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"event": "bad-line", "line": line}
            with self._lock:
                self.events.append(ev)
        with self._lock:
            self.events.append({"event": "eof"})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kinds(self, kind: str) -> list[dict]:
        with self._lock:
            return [e for e in self.events if e["event"] == kind]

    def wait_event(self, pred, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for e in self.events:
                    if pred(e):
                        return e
                if any(e["event"] == "eof" for e in self.events):
                    err = self.proc.stderr.read() if self.proc.stderr else ""
                    raise AssertionError(f"serve exited (rc={self.proc.poll()}): {err}\n"
                                         f"events: {self.events}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching serve event within {timeout}s: {self.events}")
            time.sleep(0.05)

    def connect(self, timeout: float = IO_TIMEOUT) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def stop(self, sig: int | None = signal.SIGTERM) -> dict:
        """Signal (None: none, it is leaving by itself), wait, return the
        summary line."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"serve did not stop within {STOP_TIMEOUT}s")
        self._reader.join(10)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        assert "Traceback" not in err, err
        assert self.proc.returncode == 0, f"rc={self.proc.returncode}: {err}"
        [summary] = self.kinds("summary")
        return summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def serving(listen: str, target: str, *args: str, pre: tuple[str, ...] = ()):
    s = Serve(listen, target, *args, pre=pre)
    try:
        yield s
    finally:
        s.kill()  # a no-op after stop()
        for stream in (s.proc.stdout, s.proc.stderr):
            if stream:
                stream.close()


def kpctl_json(*args: str):
    """`kpctl -j ARGS` through kpctl's main() in this process: the command's
    own code and output, without seconds of imports per call under TCG
    (serve itself runs as its own process)."""
    out, err = io.StringIO(), io.StringIO()
    rc = cli.main(["-j", *args], stdout=out, stderr=err,
                  env=dict(os.environ, NO_COLOR="1"))
    assert rc == 0, err.getvalue()
    return json.loads(out.getvalue())


def ours(proxies, target_port: int) -> list:
    """Proxies whose B side goes to target_port (kpctl -j list objects or Proxy)."""
    out = []
    for p in proxies:
        remote = p["b"]["remote"] if isinstance(p, dict) else str(p.b.remote)
        if remote.rpartition(":")[2] == str(target_port):
            out.append(p)
    return out


def wait_no_proxies(target_port: int, timeout: float = 60.0) -> None:
    with Kproxy() as kp:
        wait_for(lambda: not ours(kp.list(), target_port), timeout=timeout,
                 what=f"no proxy left towards port {target_port}")


def free_port(host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_listening(host: str, port: int, timeout: float = START_TIMEOUT) -> None:
    def up():
        try:
            socket.create_connection((host, port), timeout=5).close()
            return True
        except OSError:
            return False
    wait_for(up, timeout=timeout, interval=0.2, what=f"{host}:{port} listening")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    ticks = int(fields[14 - 3]) + int(fields[15 - 3])
    return ticks / os.sysconf("SC_CLK_TCK")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ended_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


class EchoServer:
    """Threaded echo on loopback (v4 or v6)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.ls = socket.socket(fam)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((host, port))
        self.ls.listen(512)
        self.port = self.ls.getsockname()[1]
        self.served = 0
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            self.served += 1
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c: socket.socket) -> None:
        c.settimeout(IO_TIMEOUT)
        with c:
            try:
                while True:
                    d = c.recv(1 << 16)
                    if not d:
                        return
                    c.sendall(d)
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        self.ls.close()


class FramedEchoServer:
    """Echoes whole length-prefixed messages (4-byte big-endian length +
    payload), one at a time, on 127.0.0.1."""

    def __init__(self) -> None:
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.received: list[bytes] = []  # payloads, in order
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    def _echo(self, c: socket.socket) -> None:
        c.settimeout(IO_TIMEOUT)
        with c:
            try:
                while True:
                    head = self._exact(c, 4)
                    if head is None:
                        return
                    (n,) = struct.unpack(">I", head)
                    payload = self._exact(c, n)
                    if payload is None:
                        return
                    self.received.append(payload)
                    c.sendall(head + payload)
            except OSError:
                return

    @staticmethod
    def _exact(c: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            d = c.recv(n - len(buf))
            if not d:
                return None
            buf += d
        return buf

    def close(self) -> None:
        self._stop = True
        self.ls.close()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("www")
    path = d / "big.bin"
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(BIG >> 20):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            f.write(chunk)
    return path, h.hexdigest()


# `python3 -m http.server`, with a listen backlog for 20 clients at once
# (its default of 5 overflows into SYN cookies and retransmits).
STATIC_SERVER = """
import functools, http.server, sys
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
Server(("127.0.0.1", int(sys.argv[2])), handler).serve_forever()
"""


@pytest.fixture(scope="module")
def http_server(big_file):
    """Python's http.server on 127.0.0.1, serving the big file's directory."""
    path, _ = big_file
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", STATIC_SERVER, str(path.parent), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening("127.0.0.1", port)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


# -- tests -------------------------------------------------------------------------------

def test_20_concurrent_downloads(big_file, http_server):
    path, digest = big_file
    with serving("127.0.0.1:0", f"127.0.0.1:{http_server}") as s:
        url = f"http://127.0.0.1:{s.port}/{path.name}"
        # Each download is hashed as it arrives (curl | sha256sum): twenty
        # copies would not fit the VM's tmpfs.
        # Paced (--limit-rate, which also makes the proxies hold back), so
        # that the downloads are still running while we list them.
        fetch = (f"{shlex.quote(CURL)} -sS --fail --max-time 900 --limit-rate 4M "
                 f"{shlex.quote(url)}"
                 if CURL else f"{shlex.quote(sys.executable)} -c {shlex.quote(URLLIB_CAT)} "
                 f"{shlex.quote(url)}")
        procs = [subprocess.Popen(["bash", "-o", "pipefail", "-c",
                                   f"{fetch} | sha256sum -b | cut -d' ' -f1"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(DOWNLOADS)]
        # Meanwhile `kpctl -j list` shows the proxies.
        seen = 0
        deadline = time.monotonic() + 900
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            seen = max(seen, len(ours(kpctl_json("list"), http_server)))
            if seen:
                break
            time.sleep(0.2)
        digests = []
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert p.returncode == 0 and not err, err
            digests.append(out.strip())
        assert seen >= 1, "kpctl -j list never showed a proxy of serve while downloading"
        assert digests == [digest] * DOWNLOADS
        wait_no_proxies(http_server)
        summary = s.stop()
    assert summary["created"] == DOWNLOADS and summary["failed"] == 0
    assert summary["accepted"] == DOWNLOADS
    # the kernel's counters: each download moved the whole file target -> client
    assert summary["bytes_b_to_a"] >= DOWNLOADS * BIG
    assert not ours(kpctl_json("list"), http_server)


# Without curl: the body of a GET on stdout.
URLLIB_CAT = """
import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=900) as r:
    shutil.copyfileobj(r, sys.stdout.buffer, 1 << 20)
"""


class HashingHandler(http.server.BaseHTTPRequestHandler):
    """POST/PUT: answers the sha256 of the body and its length."""

    def do_POST(self):  # noqa: N802
        n = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        left = n
        while left:
            b = self.rfile.read(min(left, 1 << 20))
            if not b:
                break
            h.update(b)
            left -= len(b)
        body = f"{h.hexdigest()} {n - left}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_POST

    def log_message(self, *a):  # quiet
        pass


def test_upload_hashes_equal(big_file):
    path, digest = big_file
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HashingHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with serving("127.0.0.1:0", f"127.0.0.1:{srv.server_address[1]}") as s:
            url = f"http://127.0.0.1:{s.port}/upload"
            if CURL:
                r = subprocess.run([CURL, "-sS", "--fail", "--max-time", "600", "-H", "Expect:",
                                    "-H", "Content-Type: application/octet-stream",
                                    "--data-binary", f"@{path}", url],
                                   capture_output=True, text=True, timeout=660)
                assert r.returncode == 0, r.stderr
                answer = r.stdout
            else:
                with open(path, "rb") as f:
                    req = urllib.request.Request(url, data=f, method="POST", headers={
                        "Content-Length": str(BIG),
                        "Content-Type": "application/octet-stream"})
                    with urllib.request.urlopen(req, timeout=600) as resp:
                        answer = resp.read().decode()
            assert answer.split() == [digest, str(BIG)]
            wait_no_proxies(srv.server_address[1])
            summary = s.stop()
        assert summary["created"] == 1 and summary["bytes_a_to_b"] >= BIG
    finally:
        srv.shutdown()
        srv.server_close()


def test_ipv6_loopback():
    try:
        echo = EchoServer("::1")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    try:
        with serving("[::1]:0", f"[::1]:{echo.port}") as s:
            assert s.host == "::1"
            with socket.create_connection(("::1", s.port), timeout=IO_TIMEOUT) as c:
                payload = os.urandom(1 << 20)
                t = threading.Thread(target=c.sendall, args=(payload,), daemon=True)
                t.start()
                assert recv_exact(c, len(payload)) == payload
                t.join(IO_TIMEOUT)
                ev = s.wait_event(lambda e: e["event"] == "proxy", IO_TIMEOUT)
                assert ev["upstream"].startswith("[::1]:")
                with Kproxy() as kp:
                    p = kp.get(ev["id"])
                assert p.a.family == socket.AF_INET6 and p.b.family == socket.AF_INET6
                assert str(p.b.remote) == f"[::1]:{echo.port}"
            wait_no_proxies(echo.port)
            summary = s.stop()
        assert summary["created"] == 1 and summary["bytes_a_to_b"] >= 1 << 20
    finally:
        echo.close()


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_target_down_client_ends_within_a_second_and_serve_goes_on(path):
    port = free_port()
    with serving("127.0.0.1:0", f"127.0.0.1:{port}", *path) as s:
        for _ in range(3):
            t0 = time.monotonic()
            try:
                c = s.connect()
            except ConnectionResetError:
                pass  # the reset beat connect()'s return
            else:
                with c:
                    c.settimeout(5)
                    assert ended_by_server(c)
            took = time.monotonic() - t0
            assert took < 1.0, f"the client waited {took:.2f}s"
        s.wait_event(lambda e: e["event"] == "failed" and len(s.kinds("failed")) >= 3, 30)
        f = s.kinds("failed")[0]
        assert f["error"]["errno_name"] == "ECONNREFUSED" and f["stage"] == "connect"
        assert f["error"]["errno"] == errno.ECONNREFUSED and f["error"]["message"] == f["reason"]
        # the target comes up: serve, still running, forwards again
        echo = EchoServer("127.0.0.1", port)
        try:
            with s.connect() as c:
                c.sendall(b"back up")
                assert recv_exact(c, 7) == b"back up"
            wait_no_proxies(port)
            summary = s.stop()
        finally:
            echo.close()
    assert summary["failed"] == 3 and summary["failures"] == {"ECONNREFUSED": 3}
    assert summary["created"] == 1 and summary["accepted"] == 4


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_max_conns_5_of_10(path):
    echo = EchoServer()
    held = []
    try:
        with serving("127.0.0.1:0", f"127.0.0.1:{echo.port}", "--max-conns", "5", *path) as s:
            served = refused = 0
            for i in range(10):
                try:
                    c = s.connect()
                except ConnectionResetError:
                    refused += 1
                    continue
                c.settimeout(IO_TIMEOUT)
                try:
                    c.sendall(b"%d" % i)
                    d = c.recv(1)
                except (ConnectionResetError, BrokenPipeError):
                    d = b""
                if d:
                    served += 1
                    held.append(c)  # keep it: it holds a slot
                else:
                    refused += 1
                    c.close()
            assert (served, refused) == (5, 5)
            s.wait_event(lambda e: len(s.kinds("refused")) >= 5, 30)
            assert len(ours(kpctl_json("list"), echo.port)) == 5
            for c in held:
                c.close()
            held.clear()
            wait_no_proxies(echo.port)
            summary = s.stop()
        assert summary["refused"] == 5 and summary["created"] == 5 and summary["failed"] == 0
    finally:
        for c in held:
            c.close()
        echo.close()


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_short_connections_in_a_row(record_property, path):
    echo = EchoServer()
    payload = os.urandom(1024)
    suffix = "_userspace" if path else ""
    try:
        with serving("127.0.0.1:0", f"127.0.0.1:{echo.port}", *path) as s:
            def one():
                with s.connect() as c:
                    c.sendall(payload)
                    assert recv_exact(c, len(payload)) == payload
                    c.shutdown(socket.SHUT_WR)
                    assert c.recv(1) == b""  # the proxy forwarded the echo server's FIN
            one()  # warm up: lazy imports, the first proxy
            wait_no_proxies(echo.port)
            fds_before = fd_count(s.pid)
            t0 = time.monotonic()
            for _ in range(SHORT_CONNS):
                one()
            took = time.monotonic() - t0
            rate = SHORT_CONNS / took
            record_property("serve_short_conns", SHORT_CONNS)
            record_property(f"serve_conn_rate_per_s{suffix}", round(rate, 1))
            print(f"\nserve{suffix}: {SHORT_CONNS} short connections in {took:.1f}s = "
                  f"{rate:.0f}/s")
            wait_no_proxies(echo.port, timeout=120)
            # the serve process keeps nothing per connection
            wait_for(lambda: fd_count(s.pid) <= fds_before, timeout=30,
                     what=f"serve's fds back to {fds_before} (now {fd_count(s.pid)})")
            summary = s.stop()
        assert summary["created"] == SHORT_CONNS + 1 and summary["failed"] == 0
        assert summary["accepted"] == SHORT_CONNS + 1 and summary["active"] == 0
    finally:
        echo.close()


WORKER_CONNS = 200


def test_userspace_workers_carry_every_connection(record_property):
    """--userspace --workers 2: two processes accept on one port; 200
    connections (8 clients at once) each get their own random bytes back,
    the sha256 of all that came back is that of all that was sent, both
    workers served, and the one summary counts every connection and byte."""
    echo = EchoServer()
    size = 4096
    sent, back = hashlib.sha256(), hashlib.sha256()
    lock = threading.Lock()
    try:
        with serving("127.0.0.1:0", f"127.0.0.1:{echo.port}", "--userspace",
                     "--workers", "2") as s:
            (listening,) = s.kinds("listening")
            assert len(listening["workers"]) == 2
            assert all(pid != s.pid for pid in listening["workers"])

            def client(count: int) -> None:
                for _ in range(count):
                    payload = os.urandom(size)
                    with s.connect() as c:
                        c.sendall(payload)
                        got = recv_exact(c, size)
                        c.shutdown(socket.SHUT_WR)
                        assert c.recv(1) == b""
                    with lock:  # pairs hashed together: the order of connections is free
                        sent.update(payload)
                        back.update(got)

            t0 = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                for f in [pool.submit(client, WORKER_CONNS // 8) for _ in range(8)]:
                    f.result(timeout=600)  # a client's failure fails the test
            took = time.monotonic() - t0
            record_property("serve_workers_conn_rate_per_s", round(WORKER_CONNS / took, 1))
            assert back.hexdigest() == sent.hexdigest()
            s.wait_event(lambda e: len(s.kinds("ended")) >= WORKER_CONNS, 120)
            proxies = s.kinds("proxy")
            assert len(proxies) == WORKER_CONNS
            assert {p["worker"] for p in proxies} == {0, 1}  # SO_REUSEPORT spread them
            summary = s.stop()
        assert (summary["accepted"], summary["created"], summary["ended"],
                summary["failed"], summary["active"]) == (WORKER_CONNS, WORKER_CONNS,
                                                          WORKER_CONNS, 0, 0)
        assert summary["bytes_a_to_b"] == summary["bytes_b_to_a"] == WORKER_CONNS * size
        wait_no_proxies(echo.port)
    finally:
        echo.close()


def test_cpu_time_while_bytes_pass(record_property):
    total = CPU_MIB << 20
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(8)
    sink.settimeout(IO_TIMEOUT)
    try:
        with serving("127.0.0.1:0", f"127.0.0.1:{sink.getsockname()[1]}") as s:
            c = s.connect()
            srv, _ = sink.accept()
            srv.settimeout(IO_TIMEOUT)
            s.wait_event(lambda e: e["event"] == "proxy", 60)
            cpu0, t0 = proc_cpu_seconds(s.pid), time.monotonic()
            snd = Sender(c, total, seed=6, close_wr=True)
            rcv = Receiver(srv, total)
            snd.start()
            rcv.start()
            join_all([snd, rcv], timeout=900)
            wall = time.monotonic() - t0
            cpu = proc_cpu_seconds(s.pid) - cpu0
            assert snd.digest == rcv.digest
            record_property("serve_cpu_s", round(cpu, 3))
            record_property("serve_transfer_wall_s", round(wall, 2))
            print(f"\nserve: {CPU_MIB} MiB in {wall:.1f}s; serve's CPU time {cpu:.3f}s "
                  f"({100 * cpu / wall:.1f}% of one CPU)")
            # A relay carrying the bytes would be busy most of `wall`; serve
            # only wakes once a second to read its proxies' counters.
            assert cpu < max(0.5, 0.05 * wall), f"serve used {cpu:.2f}s CPU in {wall:.1f}s"
            c.close()
            srv.close()
            wait_no_proxies(sink.getsockname()[1])
            summary = s.stop()
        assert summary["bytes_a_to_b"] >= total
    finally:
        sink.close()


def test_sighup_is_refused_and_sigterm_leaves_proxies_running():
    echo = EchoServer()
    try:
        with serving("127.0.0.1:0", f"127.0.0.1:{echo.port}") as s:
            c = s.connect()
            c.sendall(b"x")
            assert recv_exact(c, 1) == b"x"
            s.proc.send_signal(signal.SIGHUP)
            hup = s.wait_event(lambda e: e["event"] == "signal" and e["signal"] == "SIGHUP", 60)
            assert "reloading is not supported" in hup["action"]
            summary = s.stop(signal.SIGTERM)
        assert summary["active"] == 1
        # serve is gone, the proxy is the kernel's: still forwarding
        c.sendall(b"after")
        assert recv_exact(c, 5) == b"after"
        c.close()
        wait_no_proxies(echo.port)
    finally:
        echo.close()


def test_kill_ends_running_proxies():
    echo = EchoServer()
    try:
        with serving("127.0.0.1:0", f"127.0.0.1:{echo.port}", "--kill") as s:
            c = s.connect()
            c.sendall(b"x")
            assert recv_exact(c, 1) == b"x"
            summary = s.stop(signal.SIGINT)
        assert summary["active"] == 0 and summary["ended"] == 1
        with Kproxy() as kp:
            assert not ours(kp.list(), echo.port)
        c.close()
    finally:
        echo.close()


def test_drain_waits_for_proxies():
    echo = EchoServer()
    try:
        with serving("127.0.0.1:0", f"127.0.0.1:{echo.port}", "--drain") as s:
            c = s.connect()
            c.sendall(b"x")
            assert recv_exact(c, 1) == b"x"
            s.proc.send_signal(signal.SIGTERM)
            s.wait_event(lambda e: e["event"] == "stopping", 60)
            time.sleep(1.0)
            assert s.proc.poll() is None, "serve left while a proxy was running"
            c.close()  # the echo server closes too: the proxy ends, serve leaves
            summary = s.stop(None)
        assert summary["active"] == 0 and summary["ended"] == 1
    finally:
        echo.close()


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_parser_and_verdict_drop_prefixed_messages(path):
    """--parser lenprefix --verdict drop-prefix --prefix DROP: of 20 messages
    the 5 starting with DROP never reach the target; the 15 others come back
    whole and in order."""
    missing = [n for n in ("lenprefix", "drop-prefix")
               if not (REPO / "build" / "bpf" / f"{n}.o").is_file()]
    if missing:
        pytest.fail(f"build/bpf/{{{','.join(missing)}}}.o missing: `make` builds the BPF programs")
    drop = {0, 3, 8, 13, 19}  # the first and the last included
    payloads = [(b"DROP" if i in drop else b"KEEP") + b" message %d " % i + bytes([i]) * (i * 37)
                for i in range(20)]
    kept = [p for i, p in enumerate(payloads) if i not in drop]

    def frame(p: bytes) -> bytes:
        return struct.pack(">I", len(p)) + p

    echo = FramedEchoServer()
    try:
        with serving("127.0.0.1:0", f"127.0.0.1:{echo.port}", "--parser", "lenprefix",
                     "--verdict", "drop-prefix", "--prefix", "DROP", *path) as s:
            progs = s.kinds("listening")[0]["programs"]
            assert set(progs) == {"parser", "verdict"}
            with s.connect() as c:
                # The programs are attached before serve reports the proxy;
                # sending first would let the kernel forward the bytes it had
                # read before the attach as a plain stream.
                ev = s.wait_event(lambda e: e["event"] in ("proxy", "failed"), 60)
                assert ev["event"] == "proxy", ev
                c.sendall(b"".join(frame(p) for p in payloads))
                want = b"".join(frame(p) for p in kept)
                assert recv_exact(c, len(want)) == want
                c.settimeout(2.0)  # and nothing after them (the last one was dropped)
                with pytest.raises(TimeoutError):
                    c.recv(1)
                assert echo.received == kept
                with Kproxy() as kp:
                    p = kp.get(ev["id"])
                for d in (p.a_to_b, p.b_to_a):  # the programs loaded at start, both ways
                    assert (d.parser_id, d.verdict_id) == (progs["parser"]["id"],
                                                           progs["verdict"]["id"])
                assert p.a_to_b.drops == 5 and p.b_to_a.drops == 0
            wait_no_proxies(echo.port)
            summary = s.stop()
        assert summary["created"] == 1 and summary["failed"] == 0
        # serve has closed its programs; the proxy that held them has ended
        wait_for(lambda: not bpf.prog_exists(progs["parser"]["id"]), timeout=60,
                 what="the parser freed")
    finally:
        echo.close()


# -- what serve costs, and where it runs ----------------------------------------------

def test_other_processes_proxies_cost_serve_nothing(kp, record_property):  # noqa: F811
    """serve hears only the ends of its own proxies: while another process
    makes, holds and ends many proxies, serve (one live proxy of its own)
    neither dumps them nor decodes their notifications."""
    n = long_or(2000, 300)
    echo = EchoServer()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * n + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4 * n + 256, max(hard, 4 * n + 256)))
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(128)
    others: list[tuple[socket.socket, ...]] = []
    try:
        with serving("127.0.0.1:0", f"127.0.0.1:{echo.port}") as s:
            c = s.connect()
            c.sendall(b"mine")
            assert recv_exact(c, 4) == b"mine"
            s.wait_event(lambda e: e["event"] == "proxy", 60)
            cpu0, t0 = proc_cpu_seconds(s.pid), time.monotonic()
            for _ in range(n):
                c1, s1 = tcp_pair(listener=ls)
                c2, s2 = tcp_pair(listener=ls)
                kp.create(s1, c2)
                s1.close()
                c2.close()
                others.append((c1, s2))
            time.sleep(3)  # alive over three of serve's ticks
            for c1, s2 in others:
                c1.close()
                s2.close()
            others.clear()
            wait_for(lambda: len(kp.list()) <= 1, timeout=300, what="the other proxies to end")
            wall = time.monotonic() - t0
            cpu = proc_cpu_seconds(s.pid) - cpu0
            record_property("serve_cpu_s_others", round(cpu, 3))
            print(f"\nserve while another process made and ended {n} proxies in {wall:.1f}s: "
                  f"serve's CPU time {cpu:.3f}s")
            # Its ticks only (a few ms each under TCG); decoding 2n
            # notifications or dumping n proxies a second would cost seconds.
            assert cpu < max(0.5, 0.02 * wall), f"serve used {cpu:.2f}s CPU in {wall:.1f}s"
            assert not s.kinds("ended") and not s.kinds("warning")
            c.close()
            wait_no_proxies(echo.port)
            summary = s.stop()
        assert (summary["ended"], summary["bytes_a_to_b"], summary["bytes_b_to_a"]) == (1, 4, 4)
    finally:
        for pair in others:
            for x in pair:
                x.close()
        ls.close()
        echo.close()


def test_netns_serves_inside_it_from_its_loop_thread():
    """-n NETNS: the loop's thread (the main one, for the CLI) enters the
    namespace once; listener, connections and proxies are all there."""
    name = f"kpx-serve-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=60)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=60)
        target = netns.socket_in_netns(name, socket.AF_INET, socket.SOCK_STREAM)
        target.bind(("127.0.0.1", 0))
        target.listen(8)
        target.settimeout(IO_TIMEOUT)
        with serving("127.0.0.1:0", f"127.0.0.1:{target.getsockname()[1]}",
                     pre=("-n", name)) as s:
            ns_ino = os.stat(f"/var/run/netns/{name}").st_ino
            assert os.stat(f"/proc/{s.pid}/task/{s.pid}/ns/net").st_ino == ns_ino
            with netns.socket_in_netns(name, socket.AF_INET, socket.SOCK_STREAM) as c:
                c.settimeout(IO_TIMEOUT)
                c.connect((s.host, s.port))
                srv, _ = target.accept()
                with srv:
                    c.sendall(b"inside")
                    assert recv_exact(srv, 6) == b"inside"
                    with Kproxy(netns=name) as kx:
                        assert len(kx.list()) == 1
                    with Kproxy() as k0:
                        assert not ours(k0.list(), target.getsockname()[1])
            s.wait_event(lambda e: e["event"] == "ended", 60)
            summary = s.stop()
        assert (summary["created"], summary["ended"], summary["bytes_a_to_b"]) == (1, 1, 6)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=60)

