"""OpenAI-compatible `POST /v1/chat/completions` and `POST /v1/completions`, streaming or not."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

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
    room_for_output,
    sampling,
    text_of,
)

ROLES = {"system", "user", "assistant", "tool", "developer"}
UNSUPPORTED = ("tools", "functions", "logit_bias", "response_format")  # refused when set


def error_response(e: ApiError) -> JSONResponse:
    body = {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}}
    return JSONResponse(body, status_code=e.status)


def api(handler):
    return endpoint(handler, error_response)


def _check_common(body: dict) -> None:
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    for key in UNSUPPORTED:
        if body.get(key):
            raise ApiError(400, f"`{key}` is not supported by this server", param=key)
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key, 0) not in (0, 0.0, None):
            raise ApiError(400, f"`{key}` is not supported; use `repetition_penalty`", param=key)
    if body.get("logprobs"):
        raise ApiError(400, "`logprobs` is not supported", param="logprobs")


def _get(body: dict, key: str, default: Any) -> Any:
    """A field, with JSON null meaning the default (as OpenAI's SDK sends it)."""
    value = body.get(key)
    return default if value is None else value


def _params(body: dict, model: Any, ids: list[int]):
    max_tokens = _get(body, "max_completion_tokens", body.get("max_tokens"))
    return sampling(
        max_tokens=room_for_output(model, ids) if max_tokens is None else max_tokens,
        temperature=_get(body, "temperature", 1.0),
        top_p=_get(body, "top_p", 1.0),
        top_k=_get(body, "top_k", 0),
        seed=body.get("seed"),
        stop=body.get("stop"),
        repetition_penalty=_get(body, "repetition_penalty", 1.0),
        ignore_eos=_get(body, "ignore_eos", False),
    )


def _usage(last: Output) -> dict:
    return {
        "prompt_tokens": last.num_prompt_tokens,
        "completion_tokens": last.num_output_tokens,
        "total_tokens": last.num_prompt_tokens + last.num_output_tokens,
        "prompt_tokens_details": {"cached_tokens": last.num_cached_tokens},
    }


def _messages(body: dict) -> list[Message]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(
                400,
                f"messages[{i}].role must be one of {sorted(ROLES)}",
                param=f"messages[{i}].role",
            )
        role = "system" if m["role"] == "developer" else m["role"]
        out.append(Message(role, text_of(m.get("content") or "", f"messages[{i}].content")))
    return out


async def chat_completions(request: Request) -> Response:
    body = await json_body(request)
    model = chat_model(request.app.state.server, body.get("model"))
    _check_common(body)
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ApiError(
            400, "`chat_template_kwargs` must be an object", param="chat_template_kwargs"
        )
    ids = prompt_ids(model, _messages(body), kwargs)
    params = _params(body, model, ids)
    head = {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "created": int(time.time()),
        "model": model.name,
    }
    outputs = generate(model, ids, params)
    if body.get("stream"):
        first = await _first(outputs)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return _sse(_chat_chunks(head, first, outputs, usage))
    outs = await collect(request, outputs)
    last = outs[-1]
    return JSONResponse(
        {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(o.text for o in outs)},
                    "finish_reason": last.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(last),
        }
    )


async def completions(request: Request) -> Response:
    body = await json_body(request)
    model = chat_model(request.app.state.server, body.get("model"))
    _check_common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        ids = model.tokenizer.encode(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        ids = prompt
    else:
        raise ApiError(
            400, "`prompt` must be a non-empty string or a list of token ids", param="prompt"
        )
    if body.get("echo"):
        raise ApiError(400, "`echo` is not supported", param="echo")
    if body.get("max_tokens") is None:
        body["max_tokens"] = 16  # OpenAI's default for completions
    params = _params(body, model, ids)
    head = {"id": f"cmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": model.name}
    outputs = generate(model, ids, params)
    if body.get("stream"):
        first = await _first(outputs)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return _sse(_completion_chunks(head, first, outputs, usage))
    outs = await collect(request, outputs)
    last = outs[-1]
    return JSONResponse(
        {
            **head,
            "object": "text_completion",
            "choices": [
                {
                    "index": 0,
                    "text": "".join(o.text for o in outs),
                    "finish_reason": last.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(last),
        }
    )


async def _first(outputs: AsyncIterator[Output]) -> Output:
    """The first output, before the 200 goes out: a refused request still gets its 400."""
    return await outputs.__anext__()


async def _rest(first: Output, outputs: AsyncIterator[Output]) -> AsyncIterator[Output]:
    yield first
    async for out in outputs:
        yield out


def _sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        async for e in events:
            yield f"data: {json.dumps(e, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream")


async def _chat_chunks(head: dict, first: Output, outputs, usage: bool) -> AsyncIterator[dict]:
    chunk = {**head, "object": "chat.completion.chunk"}

    def choice(delta: dict, finish: str | None) -> dict:
        return {
            **chunk,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    yield choice({"role": "assistant", "content": ""}, None)
    last = first
    async for out in _rest(first, outputs):
        last = out
        if out.text:
            yield choice({"content": out.text}, None)
    yield choice({}, last.finish_reason)
    if usage:
        yield {**chunk, "choices": [], "usage": _usage(last)}


async def _completion_chunks(
    head: dict, first: Output, outputs, usage: bool
) -> AsyncIterator[dict]:
    chunk = {**head, "object": "text_completion"}
    last = first
    async for out in _rest(first, outputs):
        last = out
        if out.text or out.finished:
            finish = out.finish_reason if out.finished else None
            yield {
                **chunk,
                "choices": [
                    {"index": 0, "text": out.text, "finish_reason": finish, "logprobs": None}
                ],
            }
    if usage:
        yield {**chunk, "choices": [], "usage": _usage(last)}


chat_completions = api(chat_completions)
completions = api(completions)
