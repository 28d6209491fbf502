"""The TLS-termination benchmarks, inside the VM (bench/guest.py runs them).

Every peer terminates TLS 1.3 (AES-128-GCM) from the client and speaks
plain TCP to one target server; "direct" is the target itself speaking TLS
through the kernel (kpctl.tls: a userspace handshake, then kTLS), no proxy:

    direct      the target on its TLS port
    kproxy      kpctl serve --tls-cert/--tls-key (kTLS both ways, records in
                the kernel, handshakes in serve's thread pool)
    nginx       nginx stream TLS termination (OpenSSL in userspace)
    nginx-ktls  the same with `ssl_conf_command Options KTLS` (OpenSSL hands
                what it can to kTLS: Debian 12's OpenSSL 3.0 the TLS 1.3
                transmit side)
    haproxy     HAProxy `bind ... ssl`, mode tcp
    socat       socat OPENSSL-LISTEN,fork

The client is a kTLS socket (kpctl.tls), the same for every peer, so the
client's cost is alike in every row. Per scenario it sends a 13-byte
request through the peer to the target: "D" + write size + total (the
target writes `total` bytes in writes of that size: a download, which the
peer encrypts) or "U" + write size + total (the client writes them, the
peer decrypts; the target answers "ok" when all arrived), or "P" (the
target answers one byte: the handshake-rate request). Throughput is the
receiver's: bytes over the time from the request to the last byte (to the
"ok" for uploads). CPU and context switches per GB are the whole guest's,
from /proc/stat, as in the plain stream rows.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import stats

HOST = "127.0.0.1"
PLAIN_PORT, DIRECT_PORT = 7001, 7002
PORT_BASE = 20080
REQUEST = struct.Struct(">cIQ")  # op, write size, total bytes
SOL_TLS, TLS_GET_RECORD_TYPE, RECORD_DATA = 282, 2, 23
TLS13_AES128 = ("TLS_AES_128_GCM_SHA256",)


def peer_port(peers: list[str], peer: str) -> int:
    return DIRECT_PORT if peer == "direct" else PORT_BASE + peers.index(peer)


# --- the target server (a helper process: guest.py tls-server) ----------


def target_server(port: int, cert: str | None, key: str | None) -> None:
    """Answers the requests above, a thread per connection; with a
    certificate it first does the TLS handshake and hands the records to
    the kernel (kpctl.tls), as kproxy's own sockets are."""
    from kpctl.tls import ServerConfig, accept_tls

    cfg = ServerConfig(cert, key, versions=("TLSv1.3",), ciphers=TLS13_AES128) if cert else None
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((HOST, port))
    ls.listen(1024)

    def serve(c: socket.socket) -> None:
        with c:
            try:
                if cfg:
                    accept_tls(c, cfg, timeout=60)
                request = recv_data(c, REQUEST.size)
                if len(request) < REQUEST.size:
                    return  # a readiness probe
                op, size, total = REQUEST.unpack(request)
                if op == b"D":
                    chunk = memoryview(b"d" * size)
                    while total > 0:
                        total -= c.send(chunk[:total])
                elif op == b"U":
                    got = drain(c, total)
                    c.sendall(b"ok" if got == total else b"no")
                else:
                    c.sendall(b"p")
            except OSError:
                pass  # a client gone: nothing to answer

    while True:
        c, _ = ls.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def _recv_record_data(s: socket.socket, view: memoryview) -> int:
    """recv into view, application data only: on a kTLS socket a control
    record (a TLS 1.3 server's NewSessionTicket) comes back alone, with its
    record type in a cmsg, and is skipped. 0 at EOF."""
    while True:
        got, anc, _, _ = s.recvmsg_into([view], socket.CMSG_SPACE(1))
        if not (anc and anc[0][:2] == (SOL_TLS, TLS_GET_RECORD_TYPE)
                and anc[0][2][0] != RECORD_DATA):
            return got


def recv_data(s: socket.socket, n: int) -> bytes:
    """n bytes of application data (fewer on EOF)."""
    buf = bytearray(n)
    view, have = memoryview(buf), 0
    while have < n and (got := _recv_record_data(s, view[have:])):
        have += got
    return bytes(buf[:have])


def drain(s: socket.socket, n: int) -> int:
    """Reads n bytes of application data into a scratch buffer; how many
    arrived (fewer on EOF)."""
    view, have = memoryview(bytearray(1 << 18)), 0
    while have < n and (got := _recv_record_data(s, view[:min(len(view), n - have)])):
        have += got
    return have


# --- the peers ----------------------------------------------------------

NGINX_CONF = """daemon off;
user root;
worker_processes 1;
pid {work}/nginx-tls.pid;
error_log {work}/nginx-tls.error.log warn;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events {{ worker_connections 4096; }}
stream {{
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    server {{ listen {host}:{plain_port} ssl; proxy_pass {host}:{target}; }}
    server {{
        listen {host}:{ktls_port} ssl;
        ssl_conf_command Options KTLS;
        proxy_pass {host}:{target};
    }}
}}
"""

HAPROXY_CONF = """global
    nbthread 1
    maxconn 4000
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
listen tls
    bind {host}:{port} ssl crt {pem}
    server s {host}:{target}
"""


def make_certificate(work: Path) -> dict[str, str]:
    """A self-signed EC P-256 certificate for "localhost": cert, key and
    both in one file (HAProxy's and socat's form)."""
    cert, key, pem = work / "tls-cert.pem", work / "tls-key.pem", work / "tls-both.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-days", "2"], check=True, capture_output=True)
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    return {"cert": str(cert), "key": str(key), "pem": str(pem)}


def peer_argvs(peers: list[str], work: Path, pki: dict[str, str], kpctl: str,
               guest: str) -> dict[str, list[str]]:
    """The processes to start: name -> argv (nginx runs both of its rows)."""
    argvs: dict[str, list[str]] = {
        "tls-target": [sys.executable, guest, "tls-server", str(PLAIN_PORT)]}
    port = {p: peer_port(peers, p) for p in peers}
    if "direct" in peers:
        argvs["tls-direct"] = [sys.executable, guest, "tls-server", str(DIRECT_PORT),
                               "--cert", pki["cert"], "--key", pki["key"]]
    if "kproxy" in peers:
        argvs["kproxy-tls"] = [kpctl, "serve", f"{HOST}:{port['kproxy']}", f"{HOST}:{PLAIN_PORT}",
                               "--tls-cert", pki["cert"], "--tls-key", pki["key"],
                               "--tls-versions", "1.3"]
    if "nginx" in peers or "nginx-ktls" in peers:
        conf = work / "nginx-tls.conf"
        conf.write_text(NGINX_CONF.format(
            work=work, cert=pki["cert"], key=pki["key"], host=HOST, target=PLAIN_PORT,
            plain_port=port.get("nginx", PORT_BASE + 8), ktls_port=port.get("nginx-ktls", PORT_BASE + 9)))
        argvs["nginx-tls"] = ["nginx", "-p", str(work), "-e", str(work / "nginx-tls.error.log"),
                              "-c", str(conf)]
    if "haproxy" in peers:
        conf = work / "haproxy-tls.cfg"
        conf.write_text(HAPROXY_CONF.format(host=HOST, port=port["haproxy"], pem=pki["pem"],
                                            target=PLAIN_PORT))
        argvs["haproxy-tls"] = ["haproxy", "-db", "-f", str(conf)]
    if "socat" in peers:
        argvs["socat-tls"] = ["socat", f"OPENSSL-LISTEN:{port['socat']},bind={HOST},reuseaddr,fork,"
                              f"cert={pki['pem']},verify=0", f"TCP:{HOST}:{PLAIN_PORT}"]
    return argvs


# --- the client ---------------------------------------------------------


def ktls_client(port: int, pki: dict[str, str]) -> socket.socket:
    from kpctl.tls import ClientConfig, connect_tls

    cfg = ClientConfig(ca=pki["cert"], server_name="localhost", versions=("TLSv1.3",),
                       ciphers=TLS13_AES128)
    s = socket.create_connection((HOST, port), timeout=120)
    try:
        connect_tls(s, cfg, timeout=60)
    except BaseException:
        s.close()
        raise
    finally:
        cfg.close()
    return s


def transfer(port: int, pki: dict[str, str], op: str, size: int, total: int) -> float:
    """One download or upload of `total` bytes in `size`-byte writes:
    seconds from the request to the receiver's last byte."""
    with ktls_client(port, pki) as s:
        t0 = time.perf_counter()
        s.sendall(REQUEST.pack(op.encode(), size, total))
        if op == "D":
            got = drain(s, total)
        else:
            chunk = memoryview(b"u" * size)
            left = total
            while left > 0:
                left -= s.send(chunk[:left])
            got = total if recv_data(s, 2) == b"ok" else 0
        took = time.perf_counter() - t0
    if got != total:
        raise ConnectionError(f"{got} of {total} bytes arrived")
    return took


def handshake_rate(port: int, pki: dict[str, str], secs: float) -> float:
    """Sequential clients (Python's ssl, TLS 1.3): connect, handshake, one
    byte each way, close; per second."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(pki["cert"])
    n, start = 0, time.monotonic()
    while time.monotonic() - start < secs:
        with socket.create_connection((HOST, port), timeout=60) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(REQUEST.pack(b"P", 0, 0))
            if s.recv(1) != b"p":
                raise ConnectionError("no answer to the request")
        n += 1
    return n / (time.monotonic() - start)


def tls_stat() -> dict[str, int]:
    """/proc/net/tls_stat: which records the kernel's TLS handled."""
    try:
        with open("/proc/net/tls_stat") as f:
            return {k: int(v) for k, v in (line.split() for line in f if line.strip())}
    except OSError:
        return {}


def run(peers: list[str], pki: dict[str, str], add: Callable[..., None], log: Callable[[str], None],
        *, sizes: list[str], size_bytes: dict[str, int], ops: list[str], total: int, secs: int,
        reps: int, save: Callable[[], None]) -> None:
    """Every scenario for every peer in turn, `reps` times; samples go to
    add(scenario, peer, metric, unit, value, error=None)."""
    names = {"D": "download", "U": "upload"}
    for op in ops:
        for size in sizes:
            scen = f"tls {names[op]} {size}"
            log(scen)
            for _ in range(reps):
                for peer in peers:
                    port = peer_port(peers, peer)
                    _measure(scen, peer, add, log, total, lambda: transfer(
                        port, pki, op, size_bytes[size], total))
                save()
    scen = "tls handshakes"
    log(scen)
    for _ in range(reps):
        for peer in peers:
            try:
                rate = handshake_rate(peer_port(peers, peer), pki, secs)
                add(scen, peer, "rate", "hs/s", rate)
                log(f"  {scen} {peer}: {rate:.1f}/s")
            except (OSError, ssl.SSLError) as e:
                add(scen, peer, "rate", "hs/s", None, f"{type(e).__name__}: {e}")
                log(f"  {scen} {peer}: {type(e).__name__}: {e}")
        save()


def _measure(scen: str, peer: str, add: Callable[..., None], log: Callable[[str], None],
             total: int, once: Callable[[], float]) -> None:
    before, ktls0 = stats.parse_proc_stat(_read("/proc/stat")), tls_stat()
    try:
        took = once()
    except (OSError, ssl.SSLError) as e:
        why = f"{type(e).__name__}: {e}"
        if isinstance(e, OSError) and e.errno == errno.EIO:
            why += " (a control record the client did not expect)"
        add(scen, peer, "throughput", "Gbit/s", None, why)
        log(f"  {scen} {peer}: {why}")
        return
    after, ktls1 = stats.parse_proc_stat(_read("/proc/stat")), tls_stat()
    gbps = total * 8 / took / 1e9
    pg = stats.per_gb(before, after, total, os.sysconf("SC_CLK_TCK"))
    add(scen, peer, "throughput", "Gbit/s", gbps)
    add(scen, peer, "cpu", "s/GB", pg["cpu_s_per_gb"])
    add(scen, peer, "ctxsw", "1/GB", pg["ctxsw_per_gb"])
    # sockets given kTLS during the run: the client's, and the server
    # side's where the peer (or the direct target) uses the kernel's TLS
    ktls = {k: ktls1[k] - ktls0.get(k, 0) for k in ("TlsTxSw", "TlsRxSw") if k in ktls1}
    log(f"  {scen} {peer}: {gbps:.3f} Gbit/s, {pg['cpu_s_per_gb']:.2f} CPU s/GB, "
        f"{pg['ctxsw_per_gb']:.0f} ctxsw/GB; kernel TLS sockets opened: {ktls}")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()
