"""rich rendering, to a fixed-width recording Console."""

import dataclasses
import io

import pytest
from rich.console import Console

from cli_fakes import NOW, make_listener, make_proxy, new_event, del_event
from kpctl.shell import columns
from kpctl.model import TlsInfo
from kpctl.shell import render as R


def console(width=100):
    return Console(width=width, file=io.StringIO(), record=True, color_system=None,
                   force_terminal=False, legacy_windows=False, _environ={})


def text_of(renderable, width=100):
    c = console(width)
    c.print(renderable)
    return c.export_text()


@pytest.mark.parametrize("n,s", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                 (1536, "1.5 KiB"), (10 * 1024 * 1024, "10.0 MiB"),
                                 (150 * 1024 * 1024, "150 MiB"), (3 * 1024 ** 3, "3.0 GiB")])
def test_human_bytes(n, s):
    assert R.human_bytes(n) == s


@pytest.mark.parametrize("secs,s", [(0, "0s"), (59.9, "59s"), (192, "3m12s"), (3600, "1h00m"),
                                    (3 * 86400 + 4 * 3600 + 5, "3d04h"), (-5, "0s")])
def test_human_duration(secs, s):
    assert R.human_duration(secs) == s


def test_human_rate():
    assert R.human_rate(2048.4) == "2.0 KiB/s"


def test_list_table_exact():
    t = R.proxy_table([make_proxy(1, ab=2048, ba=10), make_proxy(12, state="closing")], now=NOW)
    assert text_of(t).splitlines() == [
        "ID  STATE    A LOCAL         A REMOTE         B LOCAL          B REMOTE            A→B   B→A    AGE",
        "───────────────────────────────────────────────────────────────────────────────────────────────────",
        " 1  active   127.0.0.1:8000  10.0.0.1:40001   127.0.0.1:50001  127.0.0.1:9000  2.0 KiB  10 B  3m12s",
        "12  closing  127.0.0.1:8000  10.0.0.12:40012  127.0.0.1:50012  127.0.0.1:9000      0 B   0 B  3m12s",
    ]


def test_tls_sides_in_list_and_show():
    tls = TlsInfo("1.3", "aes-128-gcm")
    p = make_proxy(5)
    p = dataclasses.replace(p, a=dataclasses.replace(p.a, tls=tls),
                            a_to_b=dataclasses.replace(p.a_to_b, tls_records_in=7),
                            b_to_a=dataclasses.replace(p.b_to_a, tls_records_out=9))
    # One spaceless cell off a terminal; a TLS column on one once a side is kTLS.
    assert columns.tls_sides(p) == "A=1.3/aes-128-gcm"
    assert "A=1.3/aes-128-gcm" in text_of(R.proxy_table([p], now=NOW), width=160)
    out = text_of(R.proxy_panel(p, now=NOW), width=160)
    assert "1.3 aes-128-gcm" in out and "TLS IN" in out and "TLS OUT" in out
    a_to_b = next(line for line in out.splitlines() if "A→B" in line)
    assert a_to_b.strip("│ ").split()[-2:] == ["7", "-"]
    plain = text_of(R.proxy_panel(make_proxy(6), now=NOW), width=160)
    assert "TLS IN" not in plain


def test_list_table_narrow_folds_addresses_never_ellipsis():
    out = text_of(R.proxy_table([make_proxy(12)], now=NOW), width=70)
    assert "…" not in out


def test_list_table_ipv6_brackets():
    out = text_of(R.proxy_table([make_proxy(2, v6=True)], now=NOW), width=140)
    assert "[::1]:8000" in out and "[::1]:40002" in out


def test_show_panel():
    out = text_of(R.proxy_panel(make_proxy(7, ab=5000, ba=1), now=NOW))
    lines = out.splitlines()
    assert lines[0].startswith("╭─ proxy 7 ")
    assert "state    active" in out
    assert "(3m12s ago)" in out
    assert any(l.strip("│ ").startswith("A ") and "ESTABLISHED" in l for l in lines)
    ab = [l for l in lines if "A→B" in l][0]
    assert "4.9 KiB (5000)" in ab and ab.split()[-4:-1] == ["no", "-", "-"]  # SHUT PARSER VERDICT


def test_show_panel_program_ids():
    import dataclasses
    p = make_proxy(7)
    p = dataclasses.replace(p, a_to_b=dataclasses.replace(p.a_to_b, parser_id=12, verdict_id=13),
                            b_to_a=dataclasses.replace(p.b_to_a, parser_id=12))
    lines = text_of(R.proxy_panel(p, now=NOW)).splitlines()
    head = [l for l in lines if "DIRECTION" in l][0]
    assert head.split()[-3:-1] == ["PARSER", "VERDICT"]
    ab = [l for l in lines if "A→B" in l][0]
    ba = [l for l in lines if "B→A" in l][0]
    assert ab.rstrip(" │").endswith("id 12    id 13")
    assert ba.rstrip(" │").endswith("id 12        -")


def test_event_lines():
    p = make_proxy(4, ab=3 << 20)
    new = R.event_text(new_event(p)).plain
    assert new.startswith(R.fmt_time(NOW) + " [NEW] proxy 4 a 10.0.0.4:40004>127.0.0.1:8000")
    assert new.endswith("state active")
    gone = R.event_text(del_event(p, "reset")).plain
    assert "[DEL] proxy 4" in gone and "reason reset" in gone and "a>b 3.0 MiB" in gone


def test_event_colour_only_when_asked():
    ev = new_event(make_proxy(1))
    buf = io.StringIO()
    c = R.make_console(buf, color=True, width=200)
    c.print(R.event_text(ev))
    assert "\x1b[" in buf.getvalue()
    buf = io.StringIO()
    c = R.make_console(buf, color=False, width=200)
    c.print(R.event_text(ev))
    assert "\x1b[" not in buf.getvalue()


def test_totals_text():
    out = columns.totals_text({"active": 2, "bytes": 2048})
    assert out.splitlines() == ["active               2", "bytes             2048  (2.0 KiB)"]


def test_stats_interval_text():
    out = columns.stats_interval_text(NOW, 1.0, {"active": 3, "bytes": 2048, "msgs": 5},
                                {"bytes": 2048.0, "msgs": 5.0})
    lines = out.splitlines()
    assert lines[0].startswith("# ") and lines[0].endswith("interval 1.00s")
    assert lines[1].split() == ["active", "3"]
    assert lines[2].split() == ["bytes", "+2048", "2.0", "KiB/s"]
    assert lines[3].split() == ["msgs", "+5", "5.0/s"]


def test_top_rows_and_table():
    a, b = make_proxy(1, ab=1000), make_proxy(2, ab=1000)
    prev = {1: a, 2: b}
    a2, b2 = make_proxy(1, ab=1000 + 2048), make_proxy(2, ab=1000 + 4096, ba=1024)
    rows = R.top_rows([a2, b2], prev, 2.0, now=NOW)
    assert [r["proxy"].id for r in rows] == [2, 1]
    assert rows[0]["rate_ab"] == 2048.0 and rows[0]["rate_ba"] == 512.0
    out = text_of(R.top_table(rows, NOW), width=120)
    assert "2 proxies, 3.5 KiB/s" in out
    first_row = [l for l in out.splitlines() if l.strip().startswith("2 ")][0]
    assert "2.0 KiB/s" in first_row and "512 B/s" in first_row


def test_top_shows_listeners_above_the_proxies():
    old = {7: make_listener(7, accepted=100), 3: make_listener(3, accepted=0)}
    now = [make_listener(7, accepted=130, active=4, failed_refused=2, refused_limit=1),
           make_listener(3, accepted=5)]
    lrows = R.listener_top_rows(now, old, 2.0, now=NOW)
    assert [(r["listener"].id, r["accepted_per_s"]) for r in lrows] == [(3, 2.5), (7, 15.0)]
    rows = R.top_rows([make_proxy(1, ab=1000)], None, None, now=NOW)
    lines = text_of(R.top_view(lrows, rows, NOW), width=120).splitlines()
    head = next(i for i, l in enumerate(lines) if "ACCEPTED/s" in l)
    assert lines[head - 1].strip() == "2 listeners"
    assert lines[head].split() == ["ID", "LISTEN", "TARGET", "ACCEPTED/s", "ACTIVE", "FAILED",
                                   "REFUSED"]
    assert lines[head + 2].split() == ["3", "127.0.0.1:8003", "[::1]:80", "2.5", "0", "0", "0"]
    assert lines[head + 3].split() == ["7", "127.0.0.1:8007", "[::1]:80", "15.0", "4", "2", "1"]
    proxies_title = next(i for i, l in enumerate(lines) if "kpctl top" in l)
    assert proxies_title > head + 3  # the proxies come below
    # the first screen: the average since the listener was made (100 s ago)
    (first,) = R.listener_top_rows([make_listener(7, accepted=300)], None, None, now=NOW)
    assert first["accepted_per_s"] == 3.0
    # no listeners: the proxies' table alone, as before listeners existed
    assert text_of(R.top_view([], rows, NOW)) == text_of(R.top_table(rows, NOW))


def test_console_off_terminal_is_wide_and_plain():
    buf = io.StringIO()
    c = R.make_console(buf, color=False)
    assert c.width == 200 and c.color_system is None
