#!/usr/bin/env python3
"""The `make run` demo for a session with no terminal: kproxy's main job,
shown with kpctl as a user runs it, and checked.

With the module loaded: an echo server on 127.0.0.1; `kpctl monitor` in
the background; `kpctl create --listen ... --connect ...` with a client
connecting; 1 MiB each way through the proxy; `kpctl list`, `show`,
`stats` and the /proc/net/kproxy line; the shipped `lenprefix` parser and
`drop-prefix` verdict attached, one message dropped, then detached;
`kpctl destroy`; the monitor's events.  Every step checks what it shows
(bytes by sha256, counters against the bytes sent, the id in the list,
the events) and the demo exits 1 on the first mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = 1 << 20
# A new Python process under emulation takes seconds (see tests/kernel/util.py).
CMD_TIMEOUT = 300.0
IO_TIMEOUT = 120.0


class DemoFailed(Exception):
    pass


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def check(ok: bool, what: str) -> None:
    if not ok:
        raise DemoFailed(what)
    print(f"   ok: {what}", flush=True)


def kpctl_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "kpctl", *args]


def kpctl_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1")


def kpctl(*args: str) -> str:
    """Run kpctl, show its command line and output; its stdout."""
    print(f"$ kpctl {' '.join(args)}", flush=True)
    r = subprocess.run(kpctl_argv(*args), cwd=ROOT, env=kpctl_env(), capture_output=True,
                       text=True, timeout=CMD_TIMEOUT)
    sys.stdout.write(r.stdout)
    sys.stdout.write(r.stderr)
    sys.stdout.flush()
    if r.returncode != 0:
        raise DemoFailed(f"kpctl {' '.join(args)} exited {r.returncode}")
    return r.stdout


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(1 << 16, n - len(buf)))
        if not chunk:
            raise DemoFailed(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


class EchoServer:
    """Sends back what it gets; remembers what it got (sha256)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.received = hashlib.sha256()
        self.got = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    return
                self.received.update(data)
                self.got += len(data)
                conn.sendall(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect_retry(port: int) -> socket.socket:
    deadline = time.monotonic() + CMD_TIMEOUT
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
            return s
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise DemoFailed(f"kpctl never listened on 127.0.0.1:{port}") from None
            time.sleep(0.1)


def subscribed(pid: int) -> bool:
    """Has process PID a generic netlink socket in a multicast group yet?"""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except FileNotFoundError:
        return False
    for line in Path("/proc/net/netlink").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == "16" and f[9] in inodes and int(f[3], 16) != 0:
            return True
    return False


def start_monitor() -> subprocess.Popen:
    print("$ kpctl -j monitor -c 2 &", flush=True)
    mon = subprocess.Popen(kpctl_argv("-j", "monitor", "-c", "2"), cwd=ROOT, env=kpctl_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + CMD_TIMEOUT
    while not subscribed(mon.pid):
        if mon.poll() is not None or time.monotonic() > deadline:
            raise DemoFailed(f"kpctl monitor did not start: {mon.communicate()}")
        time.sleep(0.1)
    return mon


def create_proxy(echo: EchoServer) -> tuple[int, socket.socket]:
    """`kpctl create --listen` with our client connecting: (id, client)."""
    port = free_port()
    args = ("create", "--listen", f"127.0.0.1:{port}", "--connect", f"127.0.0.1:{echo.port}",
            "--timeout", str(int(CMD_TIMEOUT)))
    print(f"$ kpctl {' '.join(args)}", flush=True)
    proc = subprocess.Popen(kpctl_argv(*args), cwd=ROOT, env=kpctl_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = connect_retry(port)
    out, err = proc.communicate(timeout=CMD_TIMEOUT)
    sys.stdout.write(err + out)
    m = re.fullmatch(r"proxy (\d+) created\n", out)
    check(proc.returncode == 0 and m is not None, "kpctl create printed the new id")
    return int(m.group(1)), client


def move_bytes(client: socket.socket, echo: EchoServer) -> None:
    data = os.urandom(PAYLOAD)
    sent = hashlib.sha256(data).hexdigest()
    t = threading.Thread(target=client.sendall, args=(data,), daemon=True)
    t.start()
    back = recv_exact(client, PAYLOAD)
    t.join(IO_TIMEOUT)
    print(f"   sent {PAYLOAD} bytes, sha256 {sent[:16]}...")
    check(echo.received.hexdigest() == sent, "the server got the client's bytes (sha256)")
    check(hashlib.sha256(back).hexdigest() == sent, "the client got them back (sha256)")


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def show_json(pid: int) -> dict:
    r = subprocess.run(kpctl_argv("-j", "show", str(pid)), cwd=ROOT, env=kpctl_env(),
                       capture_output=True, text=True, timeout=CMD_TIMEOUT)
    if r.returncode != 0:
        raise DemoFailed(f"kpctl -j show {pid}: {r.stderr}")
    return json.loads(r.stdout)


def demo() -> None:
    echo = EchoServer()
    step(f"an echo server on 127.0.0.1:{echo.port}; kpctl monitor in the background")
    mon = start_monitor()
    try:
        step("create a proxy from the CLI: accept one client, connect to the server")
        pid, client = create_proxy(echo)
        with client:
            step("1 MiB each way through the proxy")
            move_bytes(client, echo)

            step("what kpctl shows")
            out = kpctl("list")
            check(any(line.split()[:2] == [str(pid), "active"] for line in out.splitlines()),
                  f"proxy {pid} is listed, active")
            kpctl("show", str(pid))
            p = show_json(pid)
            check((p["a_to_b"]["bytes"], p["b_to_a"]["bytes"]) == (PAYLOAD, PAYLOAD),
                  f"its counters are the bytes sent: {PAYLOAD} each way")
            out = kpctl("stats")
            totals = dict(line.split()[:2] for line in out.splitlines())
            check(int(totals["bytes"]) >= 2 * PAYLOAD and int(totals["active"]) >= 1,
                  "the module's totals count them")

            step("/proc/net/kproxy")
            text = Path("/proc/net/kproxy").read_text()
            header, *rows = text.splitlines()
            print(header)
            row = [r for r in rows if r.split()[0] == str(pid)]
            print("\n".join(row))
            cols = dict(zip(header.split(), row[0].split())) if row else {}
            check(cols.get("ab_bytes") == str(PAYLOAD) and cols.get("ba_bytes") == str(PAYLOAD),
                  "its line has the same counters")

            step("a shipped parser and verdict: lenprefix messages, drop those starting DROP")
            kpctl("attach", str(pid), "parser", "lenprefix")
            kpctl("attach", str(pid), "verdict", "drop-prefix", "--prefix", "DROP")
            client.sendall(frame(b"DROP this one") + frame(b"keep this one"))
            back = recv_exact(client, len(frame(b"keep this one")))
            check(back == frame(b"keep this one"), "the kept message came back, the other was "
                                                   "dropped")
            p = show_json(pid)
            check(p["a_to_b"]["drops"] == 1, "show counts one drop client -> server")
            kpctl("detach", str(pid), "verdict")
            kpctl("detach", str(pid), "parser")
            client.sendall(b"plain bytes again")
            check(recv_exact(client, 17) == b"plain bytes again", "a plain stream again")

            step("destroy")
            kpctl("destroy", str(pid))
            out = kpctl("-j", "list")
            check(pid not in [x["id"] for x in json.loads(out)], "gone from the list")

        step("kpctl monitor saw it come and go")
        out, err = mon.communicate(timeout=CMD_TIMEOUT)
        sys.stdout.write(out)
        events = [json.loads(line) for line in out.splitlines()]
        check([(e["kind"], e["proxy"]["id"]) for e in events] == [("new", pid), ("del", pid)],
              f"events: new and del of proxy {pid}")
        check(events[1]["reason"] == "user", "ended by the user (destroy)")
    finally:
        if mon.poll() is None:
            mon.kill()
            mon.wait()


def main() -> int:
    try:
        demo()
    except (DemoFailed, OSError, subprocess.TimeoutExpired) as e:
        print(f"\nDEMO FAILED: {e}", flush=True)
        return 1
    print("\nDEMO OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
