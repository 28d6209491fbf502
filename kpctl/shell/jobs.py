"""The shell's jobs: services (`serve ... &`) running in threads beside the
prompt, each a kpctl.serve.Server with a netlink handle of its own.

A job's thread only runs Server.run(); the shell reads its counters with
Server.snapshot() and ends it with Server.stop(mode), both thread-safe.
The job records its last warning and, when the thread ends, its final
counters, for `jobs` and the line the shell prints before the next prompt
("[1] done ...", as sh prints a finished background job).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

# What happens to a job's running proxies when it stops (Server.stop modes).
STOP_MODES = ("leave", "drain", "kill")
# How long `stop` waits for a job to end before leaving it to end on its own
# (a drain waits for the clients; `jobs` shows it "stopping").
STOP_WAIT = 10.0
DRAIN_WAIT = 1.0


class Job:
    def __init__(self, number: int, listen: str, target: str) -> None:
        self.number = number
        self.listen = listen
        self.target = target
        self.server: Any = None  # set by Jobs.launch(), with the job's own client
        self.client: Any = None
        self.state = "running"         # running | stopping | done | failed
        self.stop_mode: str | None = None
        self.message: str | None = None  # the last warning, or why it failed
        self.final: dict | None = None   # the counters when it ended
        self.thread: threading.Thread | None = None

    # Server.on_event, in the job's thread
    def on_event(self, kind: str, data: dict) -> None:
        if kind in ("warning", "accept-error"):
            self.message = data.get("message") or str(data)
        elif kind == "stopped":
            self.final = dict(data)

    def run(self) -> None:
        try:
            self.server.run(install_signals=False)
            self.state = "done"
        except Exception as e:  # noqa: BLE001 - reported by `jobs`, the shell goes on
            self.state = "failed"
            self.message = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        finally:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def counters(self) -> dict:
        if self.final is not None and not self.alive:
            return self.final
        try:
            return dict(self.server.snapshot())
        except Exception:  # noqa: BLE001 - a snapshot must not break `jobs`
            return self.final or {}

    def stop(self, mode: str | None) -> None:
        """Ask the service to stop (mode None: its --drain/--kill default)."""
        self.stop_mode = mode
        if self.state == "running":
            self.state = "stopping"
        self.server.stop(mode)

    def wait(self, timeout: float | None) -> bool:
        """True when the job's thread has ended."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.alive

    def to_dict(self) -> dict:
        return {"job": self.number, "state": self.state, "listen": self.listen,
                "target": self.target, "message": self.message,
                "counters": self.counters()}


class Jobs:
    """The shell's table of jobs, numbered from 1 like sh's."""

    def __init__(self, on_end: Callable[[Job], None] | None = None) -> None:
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()
        self.on_end = on_end

    def new(self, listen: str, target: str) -> Job:
        """A numbered job (the lowest free number), not running yet: its
        on_event is what the Server is made with."""
        with self._lock:
            number = 1
            while number in self._jobs:
                number += 1
            job = Job(number, listen, target)
            self._jobs[number] = job
        return job

    def discard(self, job: Job) -> None:
        """A job whose service could not start."""
        with self._lock:
            self._jobs.pop(job.number, None)

    def launch(self, job: Job, server: Any, client: Any) -> None:
        """Run an opened server in a thread of its own."""
        job.server, job.client = server, client

        def body() -> None:
            job.run()
            if self.on_end is not None:
                self.on_end(job)
        job.thread = threading.Thread(target=body, name=f"kpctl-job-{job.number}",
                                      daemon=True)
        job.thread.start()

    def get(self, number: int) -> Job | None:
        return self._jobs.get(number)

    def all(self) -> list[Job]:
        with self._lock:
            return [self._jobs[n] for n in sorted(self._jobs)]

    def running(self) -> list[Job]:
        return [j for j in self.all() if j.alive]

    def finished(self) -> list[Job]:
        """Jobs that ended and were not announced yet; they leave the table
        once announced (as sh forgets a job it reported done)."""
        out = []
        with self._lock:
            for n in sorted(self._jobs):
                j = self._jobs[n]
                if not j.alive and j.thread is not None:
                    out.append(j)
                    del self._jobs[n]
        return out
