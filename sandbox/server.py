"""Run an ASGI app under uvicorn on a real loopback socket, in a background thread or in the foreground.

`run_uvicorn_in_thread` serves tests and demos (the sandbox, and the webhook gateway too); port 0
picks a free port, and the socket is bound before the server starts so the URL is known up front.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from sandbox.app import create_app
from sandbox.config import SandboxConfig

STARTUP_TIMEOUT_S = 10.0


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_server(app: object) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))


def wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    """Block until uvicorn serves, or raise if it died or took longer than STARTUP_TIMEOUT_S."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start (see its log above)")
        time.sleep(0.01)


@contextmanager
def run_uvicorn_in_thread(app: object, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` in a daemon thread; yields the base URL ("http://127.0.0.1:<port>")."""
    sock = bind(host, port)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_started(server, thread)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_S)
        sock.close()


@contextmanager
def running_sandbox(config: SandboxConfig, port: int = 0) -> Iterator[str]:
    """The provider sandbox on loopback; yields its base URL."""
    with run_uvicorn_in_thread(create_app(config), port=port) as url:
        yield url
