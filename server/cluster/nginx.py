"""An nginx configuration for several nodes (what docs/deployment.md explains): websocket
upgrades passed through, long responses unbuffered, and sticky sessions (``ip_hash``) unless
the nodes accept websockets only."""

from __future__ import annotations

from pathlib import Path

TEMPLATE = """\
worker_processes 1;
pid {state}/nginx.pid;
error_log {state}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format upstream '$request_uri $upstream_addr $status';
    access_log {state}/access.log upstream;
    client_body_temp_path {state}/body;
    proxy_temp_path {state}/proxy;
    fastcgi_temp_path {state}/fastcgi;
    uwsgi_temp_path {state}/uwsgi;
    scgi_temp_path {state}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream chatrun {{
        {balance}
        {servers}
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://chatrun;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


def config(state: Path, listen: str, nodes: list[str], *, sticky: bool) -> str:
    """nginx's configuration: ``listen`` (``host:port``) in front of ``nodes`` (``host:port``
    each); ``state`` holds its pid, logs and buffers. Not ``sticky``: each new connection
    goes to the node with the fewest (websocket-only nodes)."""
    servers = "\n        ".join(f"server {node};" for node in nodes)
    return TEMPLATE.format(
        state=state,
        listen=listen,
        servers=servers,
        balance="ip_hash;" if sticky else "least_conn;",
    )
