"""The HTTP benchmark, inside the VM (bench/guest.py's `http` group).

Keep-alive requests per second and latency percentiles measured by wrk
(`wrk --latency`, the same client for every row) for a 1 KiB file from
one nginx backend, through:

    direct             nginx itself
    haproxy            HAProxy `mode http` with the deny rules below
    nginx-proxy        nginx as a reverse proxy (keep-alive upstream), same rules
    kproxy             kpctl serve (kernel listener), no parser: the floor
    kproxy-http        kpctl serve --http: parser both ways, http-filter, no rules
    kproxy-http-rules  kpctl serve --http with the deny rules

The rules, alike for the three that filter: 403 for paths under /admin,
405 for methods other than GET, HEAD and POST (kproxy also caps the
header block at 16 KiB, which HAProxy's and nginx's buffers do anyway).
Before a row is measured its peer must answer the file with 200 and,
where it filters, /admin with 403: a peer that fails is recorded with
the reason, not measured.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

HOST = "127.0.0.1"
BACKEND_PORT = 20060
PORT_BASE = 20061
PEERS = ("direct", "haproxy", "nginx-proxy", "kproxy", "kproxy-http", "kproxy-http-rules")
FILTERING = frozenset({"haproxy", "nginx-proxy", "kproxy-http-rules"})
PATH = "/index.bin"
BODY_SIZE = 1024
KPROXY_RULES = ("--deny-path", "/admin", "--allow-methods", "GET,HEAD,POST",
                "--max-header-bytes", "16384")


def peer_port(peer: str) -> int:
    return BACKEND_PORT if peer == "direct" else PORT_BASE + PEERS.index(peer) - 1


BACKEND_CONF = """daemon off;
user root;
worker_processes 1;
pid {work}/nginx-http-backend.pid;
error_log {work}/nginx-http-backend.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    client_body_temp_path {work}/http-body;
    proxy_temp_path {work}/http-proxy;
    fastcgi_temp_path {work}/http-fastcgi;
    uwsgi_temp_path {work}/http-uwsgi;
    scgi_temp_path {work}/http-scgi;
    server {{
        listen {host}:{port} reuseport;
        root {www};
    }}
}}
"""

PROXY_CONF = """daemon off;
user root;
worker_processes 1;
pid {work}/nginx-http-proxy.pid;
error_log {work}/nginx-http-proxy.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {work}/http-proxy-body;
    proxy_temp_path {work}/http-proxy-proxy;
    fastcgi_temp_path {work}/http-proxy-fastcgi;
    uwsgi_temp_path {work}/http-proxy-uwsgi;
    scgi_temp_path {work}/http-proxy-scgi;
    upstream backend {{
        server {host}:{backend};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen {host}:{port};
        if ($request_method !~ ^(GET|HEAD|POST)$) {{ return 405; }}
        location /admin {{ return 403; }}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""

HAPROXY_CONF = """global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
listen http
    bind {host}:{port}
    http-request deny deny_status 405 unless {{ method GET HEAD POST }}
    http-request deny deny_status 403 if {{ path_beg /admin }}
    http-reuse always
    server s {host}:{backend}
"""


def make_www(work: Path) -> Path:
    www = work / "http-www"
    www.mkdir(parents=True, exist_ok=True)
    (www / PATH.lstrip("/")).write_bytes(b"k" * BODY_SIZE)
    return www


def peer_argvs(peers: list[str], work: Path, kpctl: str) -> dict[str, list[str]]:
    """The processes to start, backend included: name -> argv."""
    www = make_www(work)
    backend = work / "nginx-http-backend.conf"
    backend.write_text(BACKEND_CONF.format(work=work, host=HOST, port=BACKEND_PORT, www=www))
    argvs = {"http-backend": ["nginx", "-p", str(work), "-e",
                              str(work / "nginx-http-backend.error.log"), "-c", str(backend)]}
    target = f"{HOST}:{BACKEND_PORT}"
    for peer in peers:
        port = peer_port(peer)
        if peer == "haproxy":
            conf = work / "haproxy-http.cfg"
            conf.write_text(HAPROXY_CONF.format(host=HOST, port=port, backend=BACKEND_PORT))
            argvs["haproxy-http"] = ["haproxy", "-db", "-f", str(conf)]
        elif peer == "nginx-proxy":
            conf = work / "nginx-http-proxy.conf"
            conf.write_text(PROXY_CONF.format(work=work, host=HOST, port=port,
                                              backend=BACKEND_PORT))
            argvs["nginx-http-proxy"] = ["nginx", "-p", str(work), "-e",
                                         str(work / "nginx-http-proxy.error.log"), "-c", str(conf)]
        elif peer.startswith("kproxy"):
            extra = {"kproxy": [], "kproxy-http": ["--http"],
                     "kproxy-http-rules": ["--http", *KPROXY_RULES]}[peer]
            argvs[peer] = [kpctl, "serve", "-q", f"{HOST}:{port}", target, *extra]
    return argvs


# --- checks and measurement ------------------------------------------------------


def status_of(port: int, path: str, timeout: float = 30.0) -> int:
    """The status of one GET (HTTP/1.1, closing)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            got = s.recv(4096)
            if not got:
                break
            head += got
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"not an HTTP response: {head[:80]!r}") from None


def check_peer(peer: str) -> str | None:
    """Why the peer cannot be measured, or None: the file must come with
    200 and, where the peer filters, /admin with 403."""
    port = peer_port(peer)
    try:
        got = status_of(port, PATH)
        if got != 200:
            return f"GET {PATH} answered {got}, not 200"
        if peer in FILTERING:
            got = status_of(port, "/admin/x")
            if got != 403:
                return f"GET /admin/x answered {got}, not 403"
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_PERCENT = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([0-9.]+)(us|ms|s|m)\s*$", re.M)
_RATE = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.M)
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkError(ValueError):
    """wrk's output lacks a figure or reports failed requests."""


def parse_wrk(text: str) -> dict[str, float]:
    """requests/s and the latency percentiles (ms) of `wrk --latency`'s
    report; WrkError for a report without them, or with non-2xx answers
    or socket errors (a peer that fails requests is not measured)."""
    rate = _RATE.search(text)
    pct = {f"p{p}": float(v) * _UNITS[u] for p, v, u in _PERCENT.findall(text)}
    if rate is None or "p50" not in pct or "p99" not in pct:
        raise WrkError(f"no Requests/sec or latency distribution in wrk's output: "
                       f"{text.strip()[-200:]!r}")
    bad = _NON2XX.search(text)
    if bad:
        raise WrkError(f"{bad.group(1)} non-2xx/3xx responses")
    errs = _SOCKERR.search(text)
    if errs and any(int(n) for n in errs.groups()):
        raise WrkError(f"socket errors: {errs.group(0)}")
    return {"rate": float(rate.group(1)), **pct}


def wrk_argv(port: int, conns: int, secs: int) -> list[str]:
    return ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency", f"http://{HOST}:{port}{PATH}"]


def measure(peer: str, conns: int, secs: int, add: Callable[..., None],
            log: Callable[[str], None]) -> None:
    scen = f"http keep-alive x{conns}"
    argv = wrk_argv(peer_port(peer), conns, secs)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 120)
        figures = parse_wrk(r.stdout)
    except (OSError, subprocess.TimeoutExpired, WrkError) as e:
        add(scen, peer, "rate", "req/s", None, f"{type(e).__name__}: {e}")
        log(f"  {scen} {peer}: {type(e).__name__}: {e}")
        return
    add(scen, peer, "rate", "req/s", figures["rate"])
    # Not "p50"/"p99": those are sockperf's rows (plot.py draws them by size).
    add(scen, peer, "latency p50", "ms", figures["p50"])
    add(scen, peer, "latency p99", "ms", figures["p99"])
    log(f"  {scen} {peer}: {figures['rate']:.0f} req/s, p50 {figures['p50']:.3f} ms, "
        f"p99 {figures['p99']:.3f} ms")


def run(peers: list[str], add: Callable[..., None], log: Callable[[str], None], *,
        conns: list[int], secs: int, reps: int, save: Callable[[], None]) -> None:
    """Every peer in turn, `reps` times per connection count."""
    for n in conns:
        log(f"http keep-alive x{n}")
        for _ in range(reps):
            for peer in peers:
                measure(peer, n, secs, add, log)
            save()


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


# --- goals ------------------------------------------------------------------------


def _line(ok: bool | None, what: str, value: float | None, limit: float | None) -> str:
    if value is None or limit is None:
        return f"  ??  {what}: no figure"
    return f"  {'ok ' if ok else 'MISS'} {what}: {value:.2f} vs {limit:.2f}"


def goals(recs: list[dict]) -> list[str]:
    """The HTTP issue's goals per scenario, on the medians: kproxy --http
    with rules >= 1.0x HAProxy's requests/s, its p99 <= HAProxy's, and the
    rules costing <= 10% of --http without rules."""
    med = {(r["scenario"], r["peer"], r["metric"]): r.get("median") for r in recs}
    out = []
    for scen in dict.fromkeys(r["scenario"] for r in recs if r["scenario"].startswith("http ")):
        k = med.get((scen, "kproxy-http-rules", "rate"))
        h = med.get((scen, "haproxy", "rate"))
        out.append(_line(k is not None and h is not None and k >= h,
                         f"{scen} kproxy-http-rules >= 1.0x haproxy (req/s)", k, h))
        k99 = med.get((scen, "kproxy-http-rules", "latency p99"))
        h99 = med.get((scen, "haproxy", "latency p99"))
        out.append(_line(k99 is not None and h99 is not None and k99 <= h99,
                         f"{scen} kproxy-http-rules p99 <= haproxy (ms)", k99, h99))
        bare = med.get((scen, "kproxy-http", "rate"))
        floor = bare * 0.9 if bare is not None else None
        out.append(_line(k is not None and floor is not None and k >= floor,
                         f"{scen} rules cost <= 10%: kproxy-http-rules >= 0.9x kproxy-http (req/s)",
                         k, floor))
    return out
