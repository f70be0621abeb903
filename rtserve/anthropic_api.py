"""Anthropic-compatible `POST /v1/messages` (streaming or not) and `/v1/messages/count_tokens`."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from engine.engine import Output
from rtserve.chat_api import (
    ApiError,
    Message,
    chat_model,
    collect,
    endpoint,
    generate,
    json_body,
    prompt_ids,
    sampling,
    text_of,
)

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}


def error_response(e: ApiError) -> JSONResponse:
    kind = ERROR_TYPES.get(e.status, "api_error")
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": e.message}}, status_code=e.status
    )


def api(handler):
    return endpoint(handler, error_response)


def _conversation(body: dict) -> list[Message]:
    out = []
    system = body.get("system")
    if system:
        out.append(Message("system", text_of(system, "system")))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ApiError(400, f"messages.{i}.role: must be 'user' or 'assistant'")
        out.append(Message(m["role"], text_of(m.get("content"), f"messages.{i}.content")))
    return out


def _parse(request: Request, body: dict):
    model = chat_model(request.app.state.server, body.get("model"))
    ids = prompt_ids(model, _conversation(body))
    return model, ids


async def count_tokens(request: Request) -> Response:
    body = await json_body(request)
    _, ids = _parse(request, body)
    return JSONResponse({"input_tokens": len(ids)})


async def messages(request: Request) -> Response:
    body = await json_body(request)
    model, ids = _parse(request, body)
    if "max_tokens" not in body:
        raise ApiError(400, "max_tokens: Field required")
    stops = body.get("stop_sequences") or []
    params = sampling(
        max_tokens=body["max_tokens"],
        temperature=body.get("temperature", 1.0),
        top_p=body.get("top_p", 1.0),
        top_k=body.get("top_k", 0),
        stop=stops,
    )
    message = {
        "id": f"msg_{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": model.name,
    }
    outputs = generate(model, ids, params)
    if body.get("stream"):
        first = await outputs.__anext__()  # a refused request still gets its 400
        return StreamingResponse(_events(message, first, outputs), media_type="text/event-stream")
    outs = await collect(request, outputs)
    last = outs[-1]
    return JSONResponse(
        {
            **message,
            "content": [{"type": "text", "text": "".join(o.text for o in outs)}],
            **_stop(last),
            "usage": _usage(last),
        }
    )


def _stop(last: Output) -> dict:
    if last.stop is not None:
        return {"stop_reason": "stop_sequence", "stop_sequence": last.stop}
    reason = "max_tokens" if last.finish_reason == "length" else "end_turn"
    return {"stop_reason": reason, "stop_sequence": None}


def _usage(last: Output) -> dict:
    return {
        "input_tokens": last.num_prompt_tokens - last.num_cached_tokens,
        "cache_read_input_tokens": last.num_cached_tokens,
        "cache_creation_input_tokens": 0,
        "output_tokens": last.num_output_tokens,
    }


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data}, ensure_ascii=False)}\n\n"


async def _events(
    message: dict, first: Output, outputs: AsyncIterator[Output]
) -> AsyncIterator[str]:
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**_usage(first), "output_tokens": 0},
    }
    yield _sse("message_start", {"message": start})
    yield _sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    yield _sse("ping", {})
    last = first
    async for piece in _texts(first, outputs):
        last = piece
        if piece.text:
            yield _sse(
                "content_block_delta",
                {"index": 0, "delta": {"type": "text_delta", "text": piece.text}},
            )
    yield _sse("content_block_stop", {"index": 0})
    yield _sse(
        "message_delta", {"delta": _stop(last), "usage": {"output_tokens": last.num_output_tokens}}
    )
    yield _sse("message_stop", {})


async def _texts(first: Output, outputs: AsyncIterator[Output]) -> AsyncIterator[Output]:
    yield first
    async for out in outputs:
        yield out


count_tokens = api(count_tokens)
messages = api(messages)
