"""The TLS benchmark's parts that need no kernel TLS (bench/tls.py): the
peers' configurations as nginx and HAProxy themselves check them, the
target server's requests over plain sockets, and the TLS goals bench/run.py
prints. The transfers themselves run in the bench VM (`make bench`).
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import tls  # noqa: E402

PEERS = list(tls.stats.TLS_PEERS)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return tls.make_certificate(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def argvs(tmp_path, pki):
    return tls.peer_argvs(PEERS, tmp_path, pki, "/usr/bin/kpctl", "/bench/guest.py")


def test_every_peer_has_a_process(argvs, pki):
    assert set(argvs) == {"tls-target", "tls-direct", "kproxy-tls", "nginx-tls", "haproxy-tls",
                          "socat-tls"}
    assert argvs["kproxy-tls"][:5] == ["/usr/bin/kpctl", "serve", "127.0.0.1:20081",
                                       "127.0.0.1:7001", "--tls-cert"]
    assert argvs["tls-direct"][-4:] == ["--cert", pki["cert"], "--key", pki["key"]]


def test_nginx_accepts_its_configuration(argvs, tmp_path):
    conf = (tmp_path / "nginx-tls.conf").read_text()
    assert "listen 127.0.0.1:20082 ssl;" in conf
    assert conf.count("ssl_conf_command Options KTLS;") == 1  # only the nginx-ktls row's server
    r = subprocess.run([*argvs["nginx-tls"], "-t"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_haproxy_accepts_its_configuration(argvs):
    r = subprocess.run([*argvs["haproxy-tls"][:-2], "-c", "-f", argvs["haproxy-tls"][-1]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert argvs["haproxy-tls"][:2] == ["haproxy", "-db"]


@pytest.fixture
def target():
    """The plain target server in a thread, on a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    threading.Thread(target=tls.target_server, args=(port, None, None), daemon=True).start()
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return port
        except ConnectionRefusedError:
            threading.Event().wait(0.05)
    pytest.fail("the target server never listened")


def test_target_download_upload_and_ping(target):
    with socket.create_connection(("127.0.0.1", target), timeout=10) as s:
        s.sendall(tls.REQUEST.pack(b"D", 16384, 1_000_003))
        assert tls.drain(s, 2_000_000) == 1_000_003  # then the target closes
    with socket.create_connection(("127.0.0.1", target), timeout=10) as s:
        s.sendall(tls.REQUEST.pack(b"U", 262144, 3 << 20) + b"u" * (3 << 20))
        assert tls.recv_data(s, 2) == b"ok"
    with socket.create_connection(("127.0.0.1", target), timeout=10) as s:
        s.sendall(tls.REQUEST.pack(b"U", 1024, 100) + b"u" * 99)
        s.shutdown(socket.SHUT_WR)
        assert tls.recv_data(s, 2) == b"no"
    with socket.create_connection(("127.0.0.1", target), timeout=10) as s:
        s.sendall(tls.REQUEST.pack(b"P", 0, 0))
        assert tls.recv_data(s, 5) == b"p"  # one byte, then EOF


def _run_py():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rec(scen, peer, metric, median):
    return {"scenario": scen, "peer": peer, "metric": metric, "median": median}


def test_tls_goals_compare_kproxy_with_the_best_peer_not_direct():
    scen = "tls download 16K"
    recs = [rec(scen, "direct", "throughput", 9.0), rec(scen, "direct", "cpu", 0.1),
            rec(scen, "kproxy", "throughput", 2.0), rec(scen, "kproxy", "cpu", 3.0),
            rec(scen, "nginx", "throughput", 1.5), rec(scen, "nginx", "cpu", 5.0),
            rec(scen, "socat", "throughput", 2.5), rec(scen, "socat", "cpu", 4.0),
            rec("tls handshakes", "kproxy", "rate", 10.0)]
    assert _run_py().tls_goals(recs) == [
        "  MISS tls download 16K kproxy >= the best peer (Gbit/s): 2.00 vs 2.50",
        "  ok  tls download 16K CPU kproxy <= 0.75x the thriftiest peer (s/GB): 3.00 vs 3.00",
        "  ok  tls download 16K CPU kproxy adds <= 0.75x what the thriftiest peer adds to "
        "direct's (s/GB): 2.90 vs 2.92",
    ]
