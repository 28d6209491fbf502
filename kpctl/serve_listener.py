"""`kpctl serve` on a kernel listener: the module accepts, connects and
joins; the process only reports.

The service opens its listening socket as the userspace path does (same
address, backlog, SO_REUSEPORT), loads its BPF programs once, and hands
the socket to the kernel with `listener-new` (notify): from then on no
Python runs per connection.  The loop (kpctl.serve.Server's, unchanged)
hears:

    its request socket -> proxy-new-ntf / proxy-del-ntf of the listener's
                          proxies, unicast to it alone (notify): the
                          "proxy" and "ended" events, the live set
    every second       -> one listener-get: accepted, failures by cause and
                          refusals at the limit since the last tick become
                          "failed" and "refused" events and the counters

Same options, events and summary as the userspace path, with two
differences a user sees: a "failed" or "refused" event has no client
address (the kernel counts those connections, it does not name them) and
comes within a tick; `accept_errors` stays 0 (the kernel's accept does not
fail that way). TLS needs handshakes in userspace: those options keep the
userspace path (kpctl.serve.make_server decides).

Without per-connection events (options.connection_events false: text
output in the foreground) the listener does not notify at all, and not even the
live set costs Python per connection: created, ended, the ended proxies'
bytes and the active count come from the listener's counters, once a tick.

Stopping: the listener is deleted (the kernel stops accepting and resets
the connects in flight), then leave / drain / kill as before: kill ends
the live proxies one by one, drain waits for their ends. Without
notifications, stopping first shuts the listening socket down (the kernel
listener stops accepting, its counters go on), takes the live proxies
from one dump, and keeps the listener until they are gone, so that its
counters still count their ends and bytes; it is deleted last.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from .errors import KproxyError
from .serve import PROGRAM_KINDS, Server, _error, _errname

# A listener's failure counters: (event stage, errno) of each.
_FAILURES = (
    ("failed_refused", "connect", errno.ECONNREFUSED),
    ("failed_unreachable", "connect", errno.EHOSTUNREACH),
    ("failed_timeout", "timeout", errno.ETIMEDOUT),
    ("failed_other", "create", None),
)


class ListenerServer(Server):
    """Server whose connections the kernel accepts (a kernel listener)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.listener_id: int | None = None
        self._seen: dict[str, int] = {}  # the listener's counters at the last poll
        self._notified = self.options.connection_events
        self._kernel_active = 0  # unnotified: the listener's active count
        self._next_list = 0.0    # unnotified, stopping: when to look for ends again

    # -- the listening socket goes to the kernel -------------------------------

    def open(self) -> Any:
        """Bind and listen as the userspace path does, then hand the socket
        to the kernel (when the client is there already; else run() does)."""
        addr = super().open()
        if self.client is not None:
            try:
                self._listen_on()
            except BaseException:
                listener, self._listener = self._listener, None
                if listener is not None:
                    listener.close()
                self._close_own_programs()
                raise
        return addr

    def _listen_on(self) -> None:
        if self.listener_id is not None or self._listener is None or self._stopping:
            return
        progs = self._programs or {}
        verdict_dir, replies = self.options.attach_plan(PROGRAM_KINDS[1])
        http = {"replies": replies, "verdict_direction": verdict_dir} if replies else {}
        li = self.client.listen(
            self._listener, (self.target.host, self.target.port),
            max_proxies=self.options.max_conns, connect_timeout=self.options.connect_timeout,
            parser=progs.get(PROGRAM_KINDS[0]), verdict=progs.get(PROGRAM_KINDS[1]),
            notify=self._notified, **http)
        self.listener_id = li.id
        self._listening = True

    def _listen_off(self) -> None:
        if self.listener_id is None:
            return
        if not self._notified and self._listening:
            self._stop_accepting()
            if self._live:
                return  # deleted once they are gone (_finish)
        self._poll()  # the last failures and refusals, before the counters go
        lid, self.listener_id = self.listener_id, None
        self._listening = False
        try:
            self.client.close_listener(lid)
        except KproxyError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the module went, or its netns
                self._emit("warning", {"message": f"listener {lid}: {e}"})
        self._on_ends()  # proxies made before the listener went

    def _stop_accepting(self) -> None:
        """Unnotified: the kernel listener stops accepting (its socket is
        shut down: new clients are refused) but lives on, counting the
        ends of the proxies it made, which one dump names."""
        self._listening = False
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._poll()
        try:
            self._live = {p.id for p in self.client.list() if p.listener_id == self.listener_id}
        except (KproxyError, OSError) as e:
            self._emit("warning", {"message": f"cannot list the listener's proxies: "
                                              f"{getattr(e, 'message', None) or e}"})

    def _finish(self) -> None:
        if not self._notified:
            self._live.clear()  # what is left goes on (leave) or was waited for
            self._listen_off()  # the listener kept counting until now: delete it
        super()._finish()

    # -- what the kernel tells -------------------------------------------------

    def _on_ends(self) -> None:
        if not self._notified:
            if self._live and self.listener_id is not None:
                self._forget_ended()
            return
        try:
            events = self.client.ended(0, with_new=True)
        except (KproxyError, OSError) as e:
            if getattr(e, "errno", None) == errno.ENOBUFS:
                self._reconcile()
            else:
                self._emit("warning", {"message": f"cannot read the proxies' news: "
                                                  f"{getattr(e, 'message', None) or e}"})
            return
        for ev in events:
            p = ev.proxy
            if ev.kind == "new":
                if self.listener_id is not None and p.listener_id not in (None, self.listener_id):
                    continue
                self.counters.created += 1
                self._live.add(p.id)
                self._emit("proxy", {"id": p.id, "client": str(p.a.remote),
                                     "upstream": str(p.b.local),
                                     "tls": {"client": None, "target": None}})
            elif ev.kind == "del" and p.id in self._live:
                self._ended(p.id, ev.reason or "?", p.a_to_b.bytes, p.b_to_a.bytes,
                            tls_alert=getattr(ev, "tls_alert", None))

    def _forget_ended(self) -> None:
        """Unnotified, stopping: the proxies of the dump that are gone (the
        listener's counters have counted their ends and bytes), 5 times a second."""
        now = self._clock()
        if now < self._next_list:
            return
        self._next_list = now + 0.2
        try:
            alive = {p.id for p in self.client.list()}
        except (KproxyError, OSError):
            return  # the next round tries again
        self._live &= alive
        self._poll()

    def _poll(self) -> None:
        """The listener's counters since the last poll: accepted, and one
        event per failure or refusal (the kernel counts them; it names no
        client)."""
        if self.listener_id is None:
            return
        try:
            li = self.client.get_listener(self.listener_id)
        except (KproxyError, OSError) as e:
            self._emit("warning", {"message": f"listener {self.listener_id}: "
                                              f"{getattr(e, 'message', None) or e}"})
            return
        c = self.counters

        def delta(name: str) -> int:
            now = int(getattr(li, name))
            d = now - self._seen.get(name, 0)
            self._seen[name] = now
            return max(0, d)

        c.accepted += delta("accepted")
        if not self._notified:
            c.created += delta("created")
            c.ended += delta("ended")
            c.bytes_a_to_b += delta("ended_bytes_a_to_b")
            c.bytes_b_to_a += delta("ended_bytes_b_to_a")
            self._kernel_active = li.active
        for name, stage, num in _FAILURES:
            for _ in range(delta(name)):
                reason = os.strerror(num) if num else "the kernel could not make the proxy"
                c.failed += 1
                key = _errname(num) or stage
                c.failures[key] = c.failures.get(key, 0) + 1
                self._emit("failed", {"client": None, "reason": reason, "stage": stage,
                                      "error": _error(num, reason)})
        for _ in range(delta("refused_limit")):
            c.refused += 1
            self._emit("refused", {"client": None, "reason": "max-conns",
                                   "limit": self.options.max_conns})
        self._kernel_pending = li.pending

    def _publish(self) -> dict[str, Any]:
        # Once a tick (the loop publishes every round): one listener-get.
        now = self._clock()
        if now >= getattr(self, "_next_poll", 0.0):
            self._next_poll = now + 1.0
            self._poll()
        snap = super()._publish()
        if not self._notified:
            snap["active"] = self.counters.active = self._kernel_active
        snap["pending"] = self.counters.pending = getattr(self, "_kernel_pending", 0) \
            if self.listener_id is not None else 0
        self._published = snap
        return snap


def make_server(client: Any, listen: Any, target: Any, options: Any = None,
                **kw: Any) -> Server:
    """The server `kpctl serve` runs: a kernel listener, unless the options
    ask for the userspace path (--userspace) or need it (TLS handshakes)."""
    from .serve import ServeOptions
    opts = options or ServeOptions()
    # A client without listen() (a test's relay, an older library) has no
    # kernel listener to offer; nor does a test that injects accept/create.
    no_listener = client is not None and not hasattr(client, "listen")
    if opts.userspace or opts.uses_tls or no_listener or kw.get("accept") is not None \
            or kw.get("create") is not None:
        return Server(client, listen, target, options, **kw)
    return ListenerServer(client, listen, target, options, **kw)
