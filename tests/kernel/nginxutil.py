"""Debian's nginx as a real backend for the kernel tests, one instance per
test module, in a directory of its own.

`Nginx(workdir, www)` serves files of `www` over HTTP and, with a
certificate, over HTTPS on a second port (TLS 1.2 and 1.3, session tickets
on: TLS 1.3 sends them after the handshake). PUT under /upload/ stores the
body (WebDAV) so an upload's sha256 can be checked on disk. The master runs
in the foreground as a child of the test (`daemon off`) as root, with every
path nginx writes (pid, logs, temp files) in `workdir`, never /var: the VM
shares this machine's filesystem.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from util import wait_for

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
START_TIMEOUT = 60.0

CONF = """\
daemon off;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    types {{ text/plain txt; application/octet-stream bin; }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 60s;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{http_port};
        {tls_listen}
        server_name localhost;
        root {www};
        location /upload/ {{
            dav_methods PUT;
            create_full_put_path on;
        }}
        location = /status/204 {{ return 204; }}
    }}
}}
"""

TLS_LISTEN = """listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;"""


class Nginx:
    """nginx serving `www`: HTTP on .http_port, HTTPS on .https_port when
    built with a certificate and key."""

    def __init__(self, workdir: Path, www: Path, *, http_port: int, https_port: int | None = None,
                 cert: str | None = None, key: str | None = None) -> None:
        self.workdir, self.www = workdir, www
        self.http_port, self.https_port = http_port, https_port
        tls = TLS_LISTEN.format(https_port=https_port, cert=cert, key=key) if cert else ""
        conf = workdir / "nginx.conf"
        conf.write_text(CONF.format(d=workdir, www=www, http_port=http_port, tls_listen=tls))
        argv = [NGINX, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
        check = subprocess.run(argv + ["-t"], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ports = [p for p in (http_port, https_port) if p]
        try:
            wait_for(lambda: self.proc.poll() is not None or all(map(_listening, ports)),
                     timeout=START_TIMEOUT, what="nginx listening")
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
        except BaseException:
            self.stop()
            raise

    def stored(self, name: str) -> tuple[str, int]:
        """sha256 and size of what a PUT stored as /upload/<name>; removes it
        (the VM's tmpfs holds the test files in memory)."""
        path = self.www / "upload" / name
        h, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        path.unlink()
        return h.hexdigest(), size

    def requests(self) -> list[str]:
        """The access log's request lines ("GET /x HTTP/1.1"), in order."""
        log = self.workdir / "access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line.split('"')[1] for line in lines if line.count('"') >= 2]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc.stderr.close()


def _listening(port: int) -> bool:
    """Something listens on 127.0.0.1:port (from /proc/net/tcp, without
    connecting: a probe connection would show in the access log)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in f.readlines()[1:])
