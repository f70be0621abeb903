"""Plain HTTP endpoints: health, metrics and the model list."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

STARTED = int(time.time())


async def health(request: Request) -> JSONResponse:
    server = request.app.state.server
    return JSONResponse(
        {
            "status": "ok",
            "models": sorted(server.models),
            "sessions": server.admission.active,
            "max_sessions": server.admission.max_sessions,
        }
    )


async def metrics(request: Request) -> Response:
    m = request.app.state.server.metrics
    return Response(m.render(), media_type=m.content_type)


async def list_models(request: Request) -> JSONResponse:
    server = request.app.state.server
    data = [
        {"id": name, "object": "model", "created": STARTED, "owned_by": "rtserve", "kind": m.kind}
        for name, m in server.models.items()
    ]
    return JSONResponse({"object": "list", "data": data})
