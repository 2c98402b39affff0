"""`python -m sandbox --config FILE [--host 127.0.0.1] [--port 8765]`: serve the provider sandbox.

Prints one line, "provider sandbox listening on <url>", once the socket accepts connections, so
scripts can wait for it. Ctrl-C / SIGTERM stop it (uvicorn's own signal handling, main thread).
"""

from __future__ import annotations

import argparse
import threading

from sandbox.app import create_app
from sandbox.config import SandboxConfig
from sandbox.server import bind, make_server, url_of, wait_started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON or YAML SandboxConfig file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    args = parser.parse_args(argv)

    sock = bind(args.host, args.port)
    server = make_server(create_app(SandboxConfig.from_file(args.config)))

    def announce() -> None:
        wait_started(server, threading.main_thread())
        print(f"provider sandbox listening on {url_of(sock)}", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
