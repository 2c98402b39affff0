"""The provider sandbox: a local ASGI app that answers like each provider (``sandbox.providers``)
on its real paths.

It stands in for the provider APIs only (they cannot run here); everything on our side of the wire,
connectors and webhook receivers alike, runs unchanged against it. Outcomes are deterministic per
recipient (`sandbox.outcomes`), callbacks are posted and signed the way the providers do it
(`sandbox.callbacks`), and `/_sandbox/*` lets tests and demos see what arrived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.providers import PROVIDER_MODULES
from sandbox.config import SandboxConfig
from sandbox.state import SandboxState


def create_app(config: SandboxConfig) -> Starlette:
    state = SandboxState(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.dispatcher.start()
        try:
            yield
        finally:
            await state.dispatcher.aclose()

    inspection = [
        Route("/_sandbox/messages", _messages, methods=["GET"]),
        Route("/_sandbox/stats", _stats, methods=["GET"]),
        Route("/_sandbox/reset", _reset, methods=["POST"]),
    ]
    provider_routes = [route for module in PROVIDER_MODULES.values() for route in module.routes()]
    app = Starlette(routes=provider_routes + inspection, lifespan=lifespan)
    app.state.sandbox = state
    return app


async def _messages(request: Request) -> JSONResponse:
    """What was received, oldest first; `?provider=<name>` (a key of PROVIDER_MODULES) filters."""
    state: SandboxState = request.app.state.sandbox
    provider = request.query_params.get("provider")
    if provider is not None and provider not in PROVIDER_MODULES:
        return JSONResponse({"message": f"unknown provider {provider!r}"}, status_code=400)
    return JSONResponse({"messages": [m for m in state.messages if provider in (None, m["provider"])]})


async def _stats(request: Request) -> JSONResponse:
    state: SandboxState = request.app.state.sandbox
    providers = {name: state.stats[name].as_json() for name in PROVIDER_MODULES}
    return JSONResponse({"providers": providers, "callbacks": state.dispatcher.stats()})


async def _reset(request: Request) -> JSONResponse:
    """Forget messages and counters and cancel pending callbacks; accounts and webhooks stay."""
    request.app.state.sandbox.reset()
    return JSONResponse({"ok": True})
