"""The HTTP benchmark's handling (bench/http_bench.py): wrk's report
parsed, the goals, the peers' configurations as nginx and HAProxy check
them, and the non-kproxy peers really started on the host, checked and
measured with wrk for a second. The kproxy rows run in the bench VM.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("http_bench", ROOT / "bench" / "http_bench.py")
hb = importlib.util.module_from_spec(spec)
sys.modules["http_bench"] = hb
spec.loader.exec_module(hb)

WRK = """Running 4s test @ http://127.0.0.1:20061/index.bin
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.00us  300.12us   9.10ms   90.00%
    Req/Sec    19.71k     1.02k   21.00k    70.00%
  Latency Distribution
     50%  750.00us
     75%  900.00us
     90%    1.10ms
     99%    2.50ms
  78456 requests in 4.00s, 96.00MB read
Requests/sec:  19614.00
Transfer/sec:     24.00MB
"""


def test_wrk_report_gives_rate_and_percentiles_in_ms():
    assert hb.parse_wrk(WRK) == {"rate": 19614.0, "p50": 0.75, "p75": 0.9, "p90": 1.1,
                                 "p99": 2.5}
    slow = WRK.replace("99%    2.50ms", "99%    1.20s")
    assert hb.parse_wrk(slow)["p99"] == 1200.0


@pytest.mark.parametrize("extra, message", [
    ("  Non-2xx or 3xx responses: 12\n", "12 non-2xx/3xx responses"),
    ("  Socket errors: connect 0, read 3, write 0, timeout 0\n", "socket errors"),
])
def test_wrk_report_with_failed_requests_is_refused(extra, message):
    with pytest.raises(hb.WrkError, match=message):
        hb.parse_wrk(WRK + extra)


def test_wrk_report_without_figures_is_refused():
    with pytest.raises(hb.WrkError, match="no Requests/sec"):
        hb.parse_wrk("unable to connect to 127.0.0.1:20061 Connection refused\n")
    hb.parse_wrk(WRK + "  Socket errors: connect 0, read 0, write 0, timeout 0\n")


def rec(scen, peer, metric, median):
    return {"scenario": scen, "peer": peer, "metric": metric, "median": median}


def test_goals_compare_rules_with_haproxy_and_with_no_rules():
    s = "http keep-alive x16"
    recs = [rec(s, "haproxy", "rate", 10000.0), rec(s, "haproxy", "latency p99", 3.0),
            rec(s, "kproxy-http", "rate", 12000.0), rec(s, "kproxy-http-rules", "rate", 10500.0),
            rec(s, "kproxy-http-rules", "latency p99", 3.5),
            rec("tls handshakes", "kproxy", "rate", 1.0)]
    assert hb.goals(recs) == [
        "  ok  http keep-alive x16 kproxy-http-rules >= 1.0x haproxy (req/s): 10500.00 vs "
        "10000.00",
        "  MISS http keep-alive x16 kproxy-http-rules p99 <= haproxy (ms): 3.50 vs 3.00",
        "  MISS http keep-alive x16 rules cost <= 10%: kproxy-http-rules >= 0.9x kproxy-http "
        "(req/s): 10500.00 vs 10800.00",
    ]
    assert hb.goals([rec(s, "haproxy", "rate", 1.0)])[0] == \
        "  ??  http keep-alive x16 kproxy-http-rules >= 1.0x haproxy (req/s): no figure"


def test_every_peer_has_its_process_and_kproxy_its_rules(tmp_path):
    argvs = hb.peer_argvs(list(hb.PEERS), tmp_path, "/usr/bin/kpctl")
    assert set(argvs) == {"http-backend", "haproxy-http", "nginx-http-proxy", "kproxy",
                          "kproxy-http", "kproxy-http-rules"}
    target = f"127.0.0.1:{hb.BACKEND_PORT}"
    assert argvs["kproxy"] == ["/usr/bin/kpctl", "serve", "-q", "127.0.0.1:20063", target]
    assert argvs["kproxy-http"][5:] == ["--http"]
    assert argvs["kproxy-http-rules"][5:] == ["--http", "--deny-path", "/admin",
                                              "--allow-methods", "GET,HEAD,POST",
                                              "--max-header-bytes", "16384"]
    assert len({hb.peer_port(p) for p in hb.PEERS}) == len(hb.PEERS)
    assert (tmp_path / "http-www" / "index.bin").stat().st_size == hb.BODY_SIZE


needs_tools = pytest.mark.skipif(not all(shutil.which(t) for t in ("nginx", "haproxy", "wrk")),
                                 reason="nginx, haproxy or wrk not installed")


@needs_tools
def test_configurations_are_accepted(tmp_path):
    argvs = hb.peer_argvs(list(hb.PEERS), tmp_path, "/usr/bin/kpctl")
    for name in ("http-backend", "nginx-http-proxy"):
        r = subprocess.run([*argvs[name], "-t"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    r = subprocess.run(["haproxy", "-c", "-f", argvs["haproxy-http"][-1]], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@needs_tools
def test_userspace_peers_answer_deny_and_are_measured(tmp_path, monkeypatch):
    """The backend, HAProxy and nginx really started: each checked (200,
    and 403 for /admin where it filters) and measured by wrk."""
    backend, *_ = ports = _free_ports(4)
    monkeypatch.setattr(hb, "BACKEND_PORT", backend)
    monkeypatch.setattr(hb, "peer_port", lambda p: ports[hb.PEERS.index(p)])
    peers = ["direct", "haproxy", "nginx-proxy"]
    procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
             for argv in hb.peer_argvs(peers, tmp_path, "/usr/bin/kpctl").values()]
    try:
        for p in peers:
            assert hb.wait_port(hb.peer_port(p), 30), p
        assert [hb.check_peer(p) for p in peers] == [None, None, None]
        assert hb.status_of(hb.peer_port("haproxy"), "/admin/x") == 403
        samples, lines = [], []
        hb.run(["haproxy"], lambda *a: samples.append(a), lines.append, conns=[4], secs=1,
               reps=1, save=lambda: None)
        assert [s[2:4] for s in samples] == [("rate", "req/s"), ("latency p50", "ms"),
                                             ("latency p99", "ms")]
        assert samples[0][4] > 0 and samples[2][4] >= samples[1][4] > 0
        assert lines[0] == "http keep-alive x4"
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)


def test_a_peer_that_does_not_filter_is_not_measured(monkeypatch):
    """A filtering peer that lets /admin through is reported, not measured."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    monkeypatch.setattr(hb, "peer_port", lambda p: ls.getsockname()[1])

    import threading

    def answer():
        for _ in range(2):
            c, _ = ls.accept()
            with c:
                c.recv(4096)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        assert hb.check_peer("haproxy") == "GET /admin/x answered 200, not 403"
    finally:
        t.join(10)
        ls.close()


def test_plot_draws_the_http_rows_without_taking_them_for_sockperf_ones(tmp_path):
    """bench/plot.py draws p50/p99 rows by message size: the HTTP rows
    have metrics of their own, so a run with them still plots."""
    import json

    py = next((p for p in (sys.executable, "/usr/bin/python3")
               if subprocess.call([p, "-c", "import matplotlib"], stderr=subprocess.DEVNULL) == 0),
              None)
    if py is None:
        pytest.skip("no Python with matplotlib (as bench/run.py looks for one)")
    recs = [{"scenario": "http keep-alive x16", "peer": "haproxy", "metric": m, "unit": "ms",
             "median": 2.0, "min": 1.0, "max": 3.0, "ratio_to_direct": None}
            for m in ("latency p50", "latency p99")]
    (tmp_path / "results.json").write_text(json.dumps(recs))
    r = subprocess.run([py, str(ROOT / "bench" / "plot.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
