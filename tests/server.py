"""A real uvicorn server on loopback, in a thread, around a given `Server`; and its fixtures."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import uvicorn

from rtserve.app import build_app
from rtserve.config import Limits, ServerConfig
from rtserve.server import Server
from tests.tone_asr import ToneAsr


@contextlib.contextmanager
def running(server: Server) -> Iterator[str]:
    """Serve `server` on a free loopback port; yields the base URL `127.0.0.1:PORT`."""
    options = server.config.uvicorn_options() | {"host": "127.0.0.1", "port": 0}
    config = uvicorn.Config(
        build_app(server),
        **options,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(10)


def make_server(models=None, api_key: str | None = None, deflate: bool = False, **limits) -> Server:
    models = models if models is not None else [ToneAsr()]
    limits = replace(Limits(), **limits)
    config = ServerConfig(api_key=api_key, limits=limits, ws_per_message_deflate=deflate)
    return Server(config, {m.name: m for m in models})
