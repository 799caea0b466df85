"""The non-streaming mock upstream: nginx answering every request with one static chat
completion from memory (`return 200 '…'`), and a path ending in `/responses` with one static
Response object (`responses_wire.STATIC`), so the upstream costs almost no CPU and whatever
limits the numbers is the proxy, not the mock."""

from __future__ import annotations

from pathlib import Path

from bench.overhead import responses_wire
from bench.overhead.mock_sse import STATIC

CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # Proxies keep pooled connections for the whole run: never close a busy keep-alive one.
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
        # A regex location wins over the prefix one: POST …/responses (the Responses API).
        location ~ /responses$ {{
            default_type application/json;
            return 200 '{responses}';
        }}
    }}
}}
"""


def write_conf(workdir: Path, port: int) -> Path:
    """nginx.conf for a mock on 127.0.0.1:`port`, everything it writes kept under workdir."""
    body, responses = STATIC.decode(), responses_wire.STATIC.decode()
    for text in (body, responses):
        assert "'" not in text and "$" not in text  # nginx would read these as syntax
    path = workdir / "nginx.conf"
    path.write_text(CONF.format(dir=workdir, port=port, body=body, responses=responses))
    return path


def argv(nginx: str, conf: Path, workdir: Path) -> list[str]:
    return [nginx, "-p", str(workdir), "-c", str(conf)]
