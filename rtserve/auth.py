"""API-key checks for HTTP requests and WebSocket handshakes.

HTTP: `Authorization: Bearer KEY` (OpenAI) or `x-api-key: KEY` (Anthropic). WebSocket: the same
headers, or, for browsers that cannot set headers, the subprotocol `openai-insecure-api-key.KEY`.
"""

from __future__ import annotations

import hmac
import json

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
# Open without a key: liveness probes and the demo page (which asks the user for the key).
OPEN_PATHS = ("/health",)


def presented_keys(headers: Headers, subprotocols: list[str] = ()) -> list[str]:
    keys = []
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        keys.append(token.strip())
    if "x-api-key" in headers:
        keys.append(headers["x-api-key"])
    keys += [p[len(SUBPROTOCOL_PREFIX) :] for p in subprotocols if p.startswith(SUBPROTOCOL_PREFIX)]
    return keys


def key_matches(expected: str | None, keys: list[str]) -> bool:
    if expected is None:
        return True
    return any(hmac.compare_digest(k.encode(), expected.encode()) for k in keys)


def is_open_path(path: str) -> bool:
    if path in OPEN_PATHS:
        return True
    # the static demo page; everything under /v1 and /metrics needs the key
    return not (path.startswith("/v1/") or path == "/metrics")


class ApiKeyMiddleware:
    """Refuses HTTP requests without the key (401, OpenAI's error shape). WebSocket endpoints
    check the key themselves, so that a browser gets a readable error event."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self.api_key is None
            or is_open_path(scope["path"])
            or key_matches(self.api_key, presented_keys(Headers(scope=scope)))
        ):
            await self.app(scope, receive, send)
            return
        message = "Incorrect or missing API key: send `Authorization: Bearer KEY` or `x-api-key`."
        if scope["path"].startswith("/v1/messages"):  # Anthropic's error shape
            error = {"type": "error", "error": {"type": "authentication_error", "message": message}}
        else:
            error = {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
        body = json.dumps(error).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
