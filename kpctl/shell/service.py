"""Handlers of the service: serve (in the foreground, or as a job of the
shell with `&`/--background), jobs, stop."""

from __future__ import annotations

from typing import Any

from kpctl.shell.args import Command, Namespace, UsageError
from kpctl.shell.context import Context, is_kernel_error
from kpctl.shell.jobs import DRAIN_WAIT, STOP_WAIT, Job

# Loading errors that mean "PROG names nothing usable here": a usage error
# (exit 1), since serve checks everything before it starts.  Anything else
# (the verifier's refusal, EPERM...) is the system's: exit 2.
_NOT_FOUND_ERRNOS = (2, 20, 21)  # ENOENT, ENOTDIR, EISDIR


def _is_bad_name(exc: BaseException) -> bool:
    return (is_kernel_error(exc) and exc.errno in _NOT_FOUND_ERRNOS  # type: ignore[attr-defined]
            and not getattr(exc, "log", ""))


def serve_options(ns: Namespace, *, connection_events: bool = True) -> Any:
    from kpctl.serve import ServeOptions
    from kpctl.shell import httpopts
    rules = httpopts.rules_from(ns, "serve") if httpopts.given(ns) else None
    return ServeOptions(connection_events=connection_events, max_conns=ns.max_conns,
                        connect_timeout=ns.connect_timeout,
                        http=bool(ns.get("http")), http_rules=rules,
                        backlog=ns.backlog, reuseport=ns.reuseport,
                        on_stop="drain" if ns.drain else "kill" if ns.kill else "leave",
                        parser=ns.parser, verdict=ns.verdict, prefix=ns.prefix,
                        offset=ns.offset,
                        tls_cert=ns.tls_cert, tls_key=ns.tls_key, target_tls=ns.target_tls,
                        target_ca=ns.target_ca, target_sni=ns.target_sni,
                        target_insecure=ns.target_insecure, tls_versions=ns.tls_versions,
                        tls_ciphers=ns.tls_ciphers, handshake_timeout=ns.handshake_timeout,
                        handshake_workers=ns.handshake_workers,
                        userspace=bool(getattr(ns, "userspace", False)),
                        workers=ns.workers)



def check_serve(cmd: Command, ns: Namespace) -> None:
    """ServeOptions.check() is the one check of serve's options."""
    from kpctl.serve import ServeError
    if ns.drain and ns.kill:
        raise UsageError("serve: --drain and --kill are exclusive (what happens to running "
                         "proxies on stop)", cmd)
    try:
        serve_options(ns).check()
    except ServeError as e:
        raise UsageError(f"serve: {e.message}", cmd) from None
    if ns.workers > 1 and ns.background:
        raise UsageError("serve: --workers runs processes of their own: serve in the "
                         "foreground (not as a job of the shell)", cmd)


def _open_server(ctx: Context, ns: Namespace, client: Any, on_event: Any) -> Any:
    """A Server made and opened (programs loaded, listening), or the error
    for the user: exit 1 for what the command line got wrong."""
    from kpctl.address import check_distinct, resolve
    from kpctl.serve import ServeError
    from kpctl.shell.table import find_command
    cmd = find_command("serve")
    try:
        listen = resolve(ns.listen, listen=True)   # names are resolved once, here
        target = resolve(ns.target)
        check_distinct(listen, target)
    except ServeError as e:
        raise UsageError(f"serve: {e.message}", cmd) from None
    if ns.workers > 1:
        from kpctl.serve_workers import WorkerPool

        def factory(client: Any, listen: Any, target: Any, options: Any, **kw: Any) -> Any:
            return WorkerPool(listen, target, options, options.workers, **kw)  # clients their own
    elif ctx.server_factory is not None:
        factory = ctx.server_factory
    else:
        from kpctl.serve_listener import make_server as factory
    loading: list[str] = []  # which spec failed: the option to name
    load_failed: list[str] = []  # the open() error came from loading (not, say, a TlsError)

    def loader(spec: str) -> Any:
        loading.append(spec)
        try:
            if ctx.prog_loader is not None:
                return ctx.prog_loader(spec)
            from kpctl.bpf import load
            return load(spec)
        except BaseException:
            load_failed.append(spec)  # not the exception: its traceback would make a cycle
            raise
    # Text in the foreground needs counts alone, redrawn once a second: the
    # listener's counters, polled as often, serve them. JSON lines print
    # every connection, and a shell job answers `jobs` at any moment,
    # which the notifications keep current.
    events = bool(ctx.json) or bool(getattr(ns, "background", False))
    server = factory(client, listen, target, serve_options(ns, connection_events=events),
                     on_event=on_event,
                     netns=ctx.netns, loader=loader)
    try:
        server.open()           # loads the programs and certificates once; EADDRINUSE,
    except Exception as e:      # EACCES, a bad certificate...: exit 2
        if _is_bad_name(e) and load_failed:
            kind = "parser" if loading[-1] == ns.parser and len(loading) == 1 else "verdict"
            raise UsageError(f"serve: --{kind}: {e.message}", cmd) from None  # type: ignore[attr-defined]
        raise
    return server


def cmd_serve(ctx: Context, ns: Namespace) -> int:
    if ns.background:
        return _serve_job(ctx, ns)
    from kpctl.shell.serve_view import ServeView
    if ns.json:
        ctx.json = True
        ctx.color = False
    client = ctx.client()   # no module: "kproxy module not loaded", exit 2
    server = _open_server(ctx, ns, client, ServeView(ctx, quiet=ns.quiet))
    server.run(install_signals=True)
    return 0


def _serve_job(ctx: Context, ns: Namespace) -> int:
    from kpctl.shell.table import find_command
    if ctx.jobs is None:
        raise UsageError("serve: & (--background) needs the shell, which keeps the job; "
                         "here, serve in the foreground (or under systemd)",
                         find_command("serve"))
    job = ctx.jobs.new(ns.listen, ns.target)
    client = ctx.client_factory(ctx.netns)  # the job's own: the prompt keeps ctx's
    try:
        server = _open_server(ctx, ns, client, job.on_event)
    except BaseException:
        ctx.jobs.discard(job)
        client.close()
        raise
    job.listen = str(getattr(server, "address", ns.listen))
    ctx.jobs.launch(job, server, client)
    if ctx.json:
        ctx.emit_json(job.to_dict())
    else:
        ctx.write(f"[{job.number}] serving {job.listen} → {ns.target} "
                  f"('jobs' shows it, 'stop {job.number}' ends it)")
    return 0


# -- jobs / stop ---------------------------------------------------------------


def _jobs_of(ctx: Context, name: str) -> Any:
    from kpctl.shell.table import find_command
    if ctx.jobs is None:
        raise UsageError(f"{name}: jobs live in the shell (kpctl with no command, on a "
                         f"terminal)", find_command(name))
    return ctx.jobs


def job_line(job: Job) -> str:
    from kpctl.shell.serve_view import status_text
    line = f"[{job.number}] {job.state:<8}  {status_text(job.counters(), job.listen, job.target)}"
    if job.message:
        line += f"  ({job.message})"
    return line


def cmd_jobs(ctx: Context, ns: Namespace) -> int:
    jobs = _jobs_of(ctx, "jobs").all()
    if ctx.json:
        ctx.emit_json([j.to_dict() for j in jobs])
    elif not jobs:
        ctx.write("no jobs ('serve LISTEN TARGET &' starts one)")
    else:
        for j in jobs:
            ctx.write(job_line(j))
    return 0


def check_stop(cmd: Command, ns: Namespace) -> None:
    if sum((ns.drain, ns.kill, ns.leave)) > 1:
        raise UsageError("stop: --drain, --kill and --leave are exclusive", cmd)


def stop_mode(ns: Namespace) -> str | None:
    return "drain" if ns.drain else "kill" if ns.kill else "leave" if ns.leave else None


def cmd_stop(ctx: Context, ns: Namespace) -> int:
    from kpctl.shell.table import find_command
    job = _jobs_of(ctx, "stop").get(ns.job)
    if job is None or job.server is None:
        raise UsageError(f"stop: no job {ns.job} ('jobs' lists them)", find_command("stop"))
    mode = stop_mode(ns)
    job.stop(mode)
    ended = job.wait(DRAIN_WAIT if mode == "drain" else STOP_WAIT)
    if ended:
        ctx.jobs.discard(job)  # reported here: not again before the next prompt
    if ctx.json:
        ctx.emit_json(job.to_dict())
    elif ended:
        ctx.write(job_line(job))
    else:
        active = job.counters().get("active", 0)
        ctx.write(f"[{job.number}] stopping: waiting for {active} proxies to end "
                  f"('jobs' shows it; 'stop {job.number} --kill' ends them)")
    return 0
