"""``python -m gateway --host 127.0.0.1 --port 8766 [--workers N] [--tenants tenants.yaml]``: run the webhook gateway.

``--workers`` starts N processes on one listening socket (uvicorn's supervisor restarts any that
die); each has its own inbox writer, and the store serialises their commits (SQLite in WAL mode
with a busy timeout, or PostgreSQL). The Mailgun token memory is per worker too, so a replayed
token is caught only by the worker that saw it first. Logs are JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import functools
import os

import uvicorn
from uvicorn.supervisors import Multiprocess

from gateway.app import worker_app
from gateway.request_log import configure_logging
from policies.loader import load_tenants
from resources.opstore import migrate
from resources.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(description="Algor webhook gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the socket (default 1)")
    parser.add_argument("--tenants", help="tenants YAML to serve (default: policies/config/tenants.yaml)")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    tenants_file = os.path.abspath(args.tenants) if args.tenants else None
    configure_logging()
    load_tenants(tenants_file)  # a bad file fails here, with its problems listed, not in every worker
    migrate(get_settings().database_url)  # once, before workers race to upgrade the same schema
    config = uvicorn.Config(
        functools.partial(worker_app, tenants_file),
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        log_level="warning",
        access_log=False,  # the request log middleware writes one line per request
    )
    if args.workers == 1:
        uvicorn.Server(config).run()
    else:
        Multiprocess(config, sockets=[config.bind_socket()]).run()


if __name__ == "__main__":
    main()
