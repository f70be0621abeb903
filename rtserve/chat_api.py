"""What the chat APIs (OpenAI, Anthropic, realtime conversations) share: picking the model,
turning messages into a prompt, running a request on the engine, and API errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine.engine import Output, RequestError
from engine.request import DEFAULT
from engine.sampling import SamplingParams
from engine.tokenizer import ChatTemplateError
from rtserve.server import Server, UnknownModel

DISCONNECT_POLL_S = 0.5  # how often a non-streaming request checks that its client is still there


class ApiError(Exception):
    """A request the server refuses; each API renders it in its own error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status,
            message,
            kind,
            param,
            code,
        )


def endpoint(handler, render: Callable[[ApiError], Response]):
    """An HTTP handler whose ApiErrors become responses in its API's error shape."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as e:
            return render(e)

    return run


def chat_model(server: Server, name: Any) -> Any:
    if not isinstance(name, str) or not name:
        raise ApiError(400, "`model` is required", param="model")
    try:
        return server.chat_model(name)
    except UnknownModel as e:
        raise ApiError(404, str(e), "not_found_error", "model", "model_not_found") from None


@dataclass
class Message:
    role: str
    text: str


def text_of(content: Any, where: str) -> str:
    """Message content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in (
                "text",
                "input_text",
                "output_text",
            ):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(
                    400,
                    f"{where}: content parts of type {kind!r} are not supported; send text",
                    param=where,
                )
            if not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}: a text part needs a string `text`", param=where)
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where}: content must be a string or a list of text parts", param=where)


def prompt_ids(
    model: Any, messages: list[Message], template_kwargs: dict | None = None
) -> list[int]:
    """Render a conversation with the model's chat template and tokenize it."""
    rendered = [{"role": m.role, "content": m.text} for m in messages]
    try:
        text = model.tokenizer.apply_chat_template(
            rendered, add_generation_prompt=True, **(template_kwargs or {})
        )
    except ChatTemplateError as e:
        raise ApiError(
            400, f"the chat template rejected the messages: {e}", param="messages"
        ) from None
    return model.tokenizer.encode(text)


def sampling(
    *,
    max_tokens: Any,
    temperature: Any = 1.0,
    top_p: Any = 1.0,
    top_k: Any = 0,
    seed: Any = None,
    stop: Any = None,
    repetition_penalty: Any = 1.0,
    ignore_eos: Any = False,
) -> SamplingParams:
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "`stop` must be a string or a list of non-empty strings", param="stop")
    checks = [
        ("max_tokens", max_tokens, int),
        ("temperature", temperature, (int, float)),
        ("top_p", top_p, (int, float)),
        ("top_k", top_k, int),
        ("repetition_penalty", repetition_penalty, (int, float)),
    ]
    for name, value, kind in checks:
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ApiError(400, f"`{name}` must be a number", param=name)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "`seed` must be an integer", param="seed")
    try:
        return SamplingParams(
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=top_k,
            repetition_penalty=float(repetition_penalty),
            seed=seed,
            max_tokens=max_tokens,
            stop=tuple(stops),
            ignore_eos=bool(ignore_eos),
        )
    except ValueError as e:
        raise ApiError(400, str(e)) from None


def room_for_output(model: Any, ids: list[int]) -> int:
    """Tokens left in the model's context after the prompt."""
    return max(model.engine.engine.max_model_len - len(ids) - 1, 1)


async def generate(
    model: Any, ids: list[int], params: SamplingParams, priority: int = DEFAULT
) -> AsyncIterator[Output]:
    """The engine's outputs; a request the engine refuses becomes a 400."""
    stream = model.engine.generate(ids, params, priority=priority)
    try:
        first = await stream.__anext__()
    except RequestError as e:
        code = "context_length_exceeded" if "takes" in str(e) else None
        raise ApiError(400, str(e), code=code) from None
    except StopAsyncIteration:
        return
    try:
        yield first
        async for out in stream:
            yield out
    finally:
        await stream.aclose()


async def collect(request: Request, outputs: AsyncIterator[Output]) -> list[Output]:
    """All outputs of a non-streaming request; stops the request if its client goes away."""

    async def drain() -> list[Output]:
        return [o async for o in outputs]

    task = asyncio.create_task(drain())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise ApiError(499, "the client closed the request", code="client_closed_request")
    finally:
        task.cancel()


async def json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body
