"""What `kpctl serve` prints: the library's events (kpctl.serve) turned into
a status line, log lines and a summary.

- text on a terminal: one status line redrawn in place every second
  (accepted, active, failed, refused, ended, and the bytes each way of the
  ended proxies: the kernel's final counters, which serve learns from each
  end; live proxies are not polled); failures, refusals, accept errors and
  signals are printed above it as log lines; a summary on exit.
- text elsewhere (a pipe, the journal): the same log lines and summary, no
  status line (a line a second would flood a log); no line per successful
  connection.
- -j: one JSON object per line and event, every connection included
  ({"ts": ..., "event": "proxy", ...}); the last line is the summary
  ({"event": "summary", ...}).
- --quiet: only warnings, accept errors and signals.
"""

from __future__ import annotations

import json
import time

PER_CONNECTION = ("proxy", "ended", "failed", "refused")
ALWAYS = ("accept-error", "warning", "signal", "stopping")


def _isatty(f) -> bool:
    try:
        return bool(f.isatty())
    except Exception:
        return False


def _bytes(n) -> str:
    from kpctl.shell.render import human_bytes
    return human_bytes(n)


def _duration(s) -> str:
    from kpctl.shell.render import human_duration
    return human_duration(s)


def status_text(c: dict, listen: str = "", target: str = "") -> str:
    """The one status line (also what the tests check)."""
    head = f"{listen} → {target}  " if listen else ""
    parts = [f"accepted {c['accepted']}"]
    if c.get("handshaking"):
        parts.append(f"handshaking {c['handshaking']}")
    parts.append(f"active {c['active']}")
    if c.get("pending"):
        parts.append(f"connecting {c['pending']}")
    parts.append(f"failed {c['failed']}")
    parts.append(f"refused {c['refused']}")
    if c.get("accept_errors"):
        parts.append(f"accept errors {c['accept_errors']}")
    # Bytes are known when a proxy ends: they belong to the ended ones.
    parts.append(f"ended {c['ended']}: ↑ {_bytes(c['bytes_a_to_b'])} "
                 f"↓ {_bytes(c['bytes_b_to_a'])}")
    return head + "  ".join(parts)


def summary_text(c: dict, listen: str = "", target: str = "", mode: str = "leave") -> str:
    lines = [f"served {listen} → {target} for {_duration(c.get('elapsed', 0))}: "
             f"{c['accepted']} accepted, {c['created']} proxied, {c['failed']} failed, "
             f"{c['refused']} refused"
             + (f", {c['accept_errors']} accept errors" if c.get("accept_errors") else ""),
             f"bytes of the {c['ended']} ended: client→target {_bytes(c['bytes_a_to_b'])} "
             f"({c['bytes_a_to_b']}), target→client {_bytes(c['bytes_b_to_a'])} "
             f"({c['bytes_b_to_a']})"]
    if c.get("handshakes") or c.get("handshakes_failed"):
        lines.append(f"TLS handshakes: {c.get('handshakes', 0)} done, "
                     f"{c.get('handshakes_failed', 0)} failed")
    if c.get("lost"):
        lines.append(f"{c['lost']} of them ended unreported (the kernel dropped their ends: "
                     f"ENOBUFS): their bytes are not counted")
    if c.get("failures"):
        lines.append("failures: " + ", ".join(f"{k} {v}" for k, v in sorted(c["failures"].items())))
    if c.get("active"):
        lines.append(f"{c['active']} proxies go on in the kernel "
                     f"('kpctl list' shows them, 'kpctl destroy ID' ends one)")
    return "\n".join(lines)


class ServeView:
    """on_event(kind, data) for kpctl.serve.Server, drawing on ctx.stdout."""

    def __init__(self, ctx, *, quiet: bool = False, clock=time.time, tty: bool | None = None):
        self.out = ctx.stdout
        self.json = ctx.json
        self.pretty = False  # one object per line, even with -p
        self.quiet = quiet
        self.clock = clock
        if tty is None:
            tty = _isatty(self.out)
        self.live = tty and not self.json and not quiet
        self.listen = ""
        self.target = ""
        self.mode = "leave"
        self._status = ""
        self.last: dict | None = None

    # -- output -------------------------------------------------------------

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _log(self, text: str) -> None:
        if self.live and self._status:
            self._write("\r\x1b[2K" + text + "\n" + self._status)
        else:
            self._write(text + "\n")

    def _json(self, kind: str, data: dict) -> None:
        obj = {"ts": round(self.clock(), 6), "event": kind}
        obj.update(data)
        self._write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")

    def _stamp(self) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self.clock()))

    # -- events -------------------------------------------------------------

    def __call__(self, kind: str, data: dict) -> None:
        if kind == "listening":
            self.listen, self.target = data["listen"], data["target"]
        elif kind == "stopping":
            self.mode = data.get("mode", "leave")
        if kind in ("tick", "stopped"):
            self.last = data
        if self.quiet and kind not in ALWAYS:
            return
        if self.json:
            if kind == "tick":
                return
            if kind == "stopped":
                self._json("summary", dict(data, listen=self.listen, target=self.target))
                return
            self._json(kind, data)
            return
        getattr(self, "_on_" + kind.replace("-", "_"), self._ignore)(data)

    def _ignore(self, data: dict) -> None:
        pass

    def _on_listening(self, d: dict) -> None:
        extra = []
        o = d.get("options", {})
        if o.get("max_conns"):
            extra.append(f"max {o['max_conns']} connections")
        if d.get("workers"):
            extra.append(f"{len(d['workers'])} workers")
        if o.get("on_stop") and o["on_stop"] != "leave":
            extra.append(f"on stop: {o['on_stop']}")
        for kind, prog in (d.get("programs") or {}).items():
            text = f"{kind} {prog.get('source')} (id {prog.get('id')})"
            if kind == "verdict" and o.get("prefix") is not None:
                text += f" dropping {o['prefix']!r}"
            extra.append(text)
        self._log(f"kpctl serve: listening on {d['listen']}, forwarding to {d['target']}"
                  + (f" ({', '.join(extra)})" if extra else "")
                  + " through kproxy")

    def _on_failed(self, d: dict) -> None:
        self._log(f"{self._stamp()} {d['client']}: not served: {d['reason']}")

    def _on_refused(self, d: dict) -> None:
        self._log(f"{self._stamp()} {d['client']}: refused: {d['limit']} connections "
                  f"already (--max-conns)")

    def _on_accept_error(self, d: dict) -> None:
        err = d["error"]
        self._log(f"{self._stamp()} warning: accept: {err['message']} ({err['errno_name']}); "
                  f"pausing {d['backoff'] * 1000:.0f} ms")

    def _on_warning(self, d: dict) -> None:
        self._log(f"{self._stamp()} warning: {d['message']}")

    def _on_signal(self, d: dict) -> None:
        self._log(f"{self._stamp()} {d['signal']}: {d['action']}")

    def _on_stopping(self, d: dict) -> None:
        n = d.get("active", 0)
        what = {"leave": f"{n} proxies go on in the kernel",
                "drain": f"waiting for {n} proxies to end (signal again to stop waiting)",
                "kill": f"ending {n} proxies"}[d.get("mode", "leave")]
        if d.get("mode") == "drain" and not n:
            what = "no proxies to wait for"
        self._log(f"{self._stamp()} stopped accepting; {what}")

    def _on_tick(self, d: dict) -> None:
        if not self.live:
            return
        self._status = status_text(d, self.listen, self.target)
        self._write("\r\x1b[2K" + self._status)

    def _on_stopped(self, d: dict) -> None:
        if self.live and self._status:
            self._write("\r\x1b[2K")
            self._status = ""
        self._log(summary_text(d, self.listen, self.target, self.mode))
