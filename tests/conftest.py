"""Fixtures every test module may use. The web stack is imported inside the server fixtures, so
that tests of the engine alone (the GPU tests too) need none of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server():
    """A server around the tone transcriber (tests/tone_asr.py), with default limits."""
    from tests.server import make_server

    return make_server()


@pytest.fixture
def url(server) -> Iterator[str]:
    """`127.0.0.1:PORT` of that server, running."""
    from tests.server import running

    with running(server) as base:
        yield base
