"""The Starlette application: routes, middleware, and the WebSocket endpoints."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from rtserve import anthropic_api, audio_api, http_api, openai_api
from rtserve.auth import ApiKeyMiddleware
from rtserve.protocols.funasr import FunasrConnection
from rtserve.protocols.native import NativeConnection
from rtserve.protocols.openai_realtime import RealtimeConnection
from rtserve.server import Server

WEB_DEMO = Path(__file__).resolve().parent.parent / "web_demo"


async def realtime(websocket: WebSocket) -> None:
    await RealtimeConnection(websocket, websocket.app.state.server).serve()


async def stream(websocket: WebSocket) -> None:
    await NativeConnection(websocket, websocket.app.state.server).serve()


async def funasr(websocket: WebSocket) -> None:
    await FunasrConnection(websocket, websocket.app.state.server).serve()


def build_app(server: Server) -> Starlette:
    routes = [
        Route("/health", http_api.health),
        Route("/metrics", http_api.metrics),
        Route("/v1/models", http_api.list_models),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai_api.completions, methods=["POST"]),
        Route("/v1/messages", anthropic_api.messages, methods=["POST"]),
        Route("/v1/audio/transcriptions", audio_api.transcriptions, methods=["POST"]),
        Route("/v1/messages/count_tokens", anthropic_api.count_tokens, methods=["POST"]),
        WebSocketRoute("/v1/realtime", realtime),
        WebSocketRoute("/v1/stream", stream),
        WebSocketRoute("/v1/funasr", funasr),
        # stock FunASR clients connect to the root; a WebSocketRoute matches only WebSocket
        # scopes, so an HTTP GET / falls through to the demo page below
        WebSocketRoute("/", funasr),
        Mount("/", StaticFiles(directory=WEB_DEMO, html=True), name="web_demo"),
    ]
    app = Starlette(
        routes=routes, middleware=[Middleware(ApiKeyMiddleware, api_key=server.config.api_key)]
    )
    app.state.server = server
    return app
