"""Realtime conversation sessions on `/v1/realtime` (OpenAI Realtime, text in and out).

The client adds message items (`conversation.item.create`) and asks for a reply
(`response.create`); the reply streams as `response.output_text.delta` events inside the usual
response / output item / content part envelope, and `response.cancel` stops it. One response
runs at a time. Replies run on the chat model's engine at interactive priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from typing import Any

from engine.engine import Output
from engine.request import INTERACTIVE
from rtserve.chat_api import ApiError, Message, generate, prompt_ids, room_for_output, sampling
from rtserve.session import SessionError

ROLES = ("system", "user", "assistant")
TEXT_PARTS = {"input_text", "text", "output_text"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class Conversation:
    def __init__(self, model: Any, send: Callable[[dict], None]) -> None:
        self.model = model
        self.send = send
        self.items: list[dict] = []  # realtime.item objects, in order
        self.instructions = ""
        self.max_output_tokens: int | None = None
        self.temperature = 0.8
        self.active: tuple[str, asyncio.Task] | None = None  # (response id, task)
        self.queued = False  # a transcribed turn waits for the reply in progress to end

    # ---- session ----

    def session_object(self, session_id: str) -> dict:
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": self.model.name,
            "output_modalities": ["text"],
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens or "inf",
            "temperature": self.temperature,
        }

    def update(self, session: dict) -> None:
        if "instructions" in session:
            if not isinstance(session["instructions"], str):
                raise SessionError(
                    "invalid_value", "instructions must be a string", "session.instructions"
                )
            self.instructions = session["instructions"]
        if "output_modalities" in session and session["output_modalities"] != ["text"]:
            raise SessionError(
                "invalid_value", "only text output is served", "session.output_modalities"
            )
        if "max_output_tokens" in session:
            self.max_output_tokens = _max_tokens(session["max_output_tokens"], "session")
        if "temperature" in session:
            t = session["temperature"]
            if isinstance(t, bool) or not isinstance(t, int | float) or t < 0:
                raise SessionError(
                    "invalid_value", "temperature must be >= 0", "session.temperature"
                )
            self.temperature = float(t)

    # ---- items ----

    def create_item(self, event: dict) -> None:
        item = _message_item(event.get("item"), "item")
        previous = event.get("previous_item_id")
        ids = [i["id"] for i in self.items]
        if item["id"] in ids:
            raise SessionError("invalid_value", f"an item with id {item['id']!r} exists", "item.id")
        if previous is None or previous == "root":
            at = len(self.items) if previous is None else 0
        elif previous in ids:
            at = ids.index(previous) + 1
        else:
            raise SessionError("item_not_found", f"no item {previous!r}", "previous_item_id")
        before = self.items[at - 1]["id"] if at else None
        self.items.insert(at, item)
        self.send({"type": "conversation.item.added", "previous_item_id": before, "item": item})
        self.send({"type": "conversation.item.done", "previous_item_id": before, "item": item})

    def delete_item(self, event: dict) -> None:
        item_id = event.get("item_id")
        for i, item in enumerate(self.items):
            if item["id"] == item_id:
                del self.items[i]
                self.send({"type": "conversation.item.deleted", "item_id": item_id})
                return
        raise SessionError("item_not_found", f"no item {item_id!r}", "item_id")

    # ---- speech turns ----

    def add_audio_item(self, item_id: str) -> str | None:
        """A committed speech turn joins the conversation (its transcript follows); returns the
        id of the item before it."""
        previous = self.items[-1]["id"] if self.items else None
        content = [{"type": "input_audio", "transcript": None}]
        self.items.append(
            {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
             "role": "user", "content": content}
        )  # fmt: skip
        return previous

    def transcribed(self, item_id: str, text: str, respond: bool) -> None:
        for item in self.items:
            if item["id"] == item_id:
                item["content"][0]["transcript"] = text
        if respond and text.strip():
            if self.active is None:
                self.create_response({})
            else:
                self.queued = True

    def interrupt(self) -> None:
        """The user speaks again: the reply in progress stops."""
        if self.active is not None:
            self.active[1].cancel()

    # ---- responses ----

    def create_response(self, event: dict) -> None:
        if self.active is not None:
            raise SessionError(
                "conversation_already_has_active_response",
                f"response {self.active[0]} is in progress: cancel it or wait for response.done",
            )
        spec = event.get("response") or {}
        if not isinstance(spec, dict):
            raise SessionError("invalid_value", "`response` must be an object", "response")
        if spec.get("output_modalities", ["text"]) != ["text"]:
            raise SessionError(
                "invalid_value", "only text output is served", "response.output_modalities"
            )
        items = self.items
        if spec.get("conversation") == "none" or "input" in spec:
            items = [
                _message_item(it, f"response.input[{i}]")
                for i, it in enumerate(spec.get("input") or [])
            ]
        instructions = spec.get("instructions", self.instructions)
        messages = [Message("system", instructions)] if instructions else []
        messages += [Message(it["role"], _text(it)) for it in items]
        if not any(m.role != "system" for m in messages):
            raise SessionError("invalid_value", "the conversation has no messages to respond to")
        try:
            ids = prompt_ids(self.model, messages)
            limit = spec.get("max_output_tokens", self.max_output_tokens)
            max_tokens = _max_tokens(limit, "response") if limit is not None else None
            params = sampling(
                max_tokens=max_tokens or room_for_output(self.model, ids),
                temperature=spec.get("temperature", self.temperature),
            )
        except ApiError as e:
            raise SessionError("invalid_value", e.message) from None
        rid = new_id("resp")
        task = asyncio.create_task(
            self._respond(rid, ids, params, spec.get("conversation") != "none")
        )
        self.active = (rid, task)

    def cancel_response(self, event: dict) -> None:
        if self.active is None:
            raise SessionError("response_cancel_not_active", "there is no response in progress")
        rid = event.get("response_id")
        if rid is not None and rid != self.active[0]:
            raise SessionError(
                "invalid_value", f"response {rid!r} is not in progress", "response_id"
            )
        self.active[1].cancel()

    def close(self) -> None:
        if self.active is not None:
            self.active[1].cancel()

    async def _respond(self, rid: str, ids: list[int], params, into_conversation: bool) -> None:
        item_id = new_id("item")
        response = {"id": rid, "object": "realtime.response", "status": "in_progress", "output": []}
        self.send({"type": "response.created", "response": {**response, "usage": None}})
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        where = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
        self.send(
            {
                "type": "response.output_item.added",
                "response_id": rid,
                "output_index": 0,
                "item": item,
            }
        )
        self.send(
            {"type": "response.content_part.added", **where, "part": {"type": "text", "text": ""}}
        )
        text, last, status, details = "", None, "completed", None
        try:
            async with contextlib.aclosing(generate(self.model, ids, params, INTERACTIVE)) as outs:
                async for out in outs:  # leaving early (cancel) aborts the engine request
                    last = out
                    if out.text:
                        text += out.text
                        self.send(
                            {"type": "response.output_text.delta", **where, "delta": out.text}
                        )
            if last is not None and last.finish_reason == "length":
                status, details = (
                    "incomplete",
                    {"type": "incomplete", "reason": "max_output_tokens"},
                )
        except asyncio.CancelledError:
            status, details = "cancelled", {"type": "cancelled", "reason": "client_cancelled"}
        except ApiError as e:
            status, details = (
                "failed",
                {"type": "failed", "error": {"type": e.kind, "code": e.code, "message": e.message}},
            )
        finally:
            with contextlib.suppress(Exception):
                self._finish(rid, item, where, text, last, status, details, into_conversation)
            self.active = None
            if self.queued:
                self.queued = False
                with contextlib.suppress(SessionError):
                    self.create_response({})

    def _finish(
        self, rid, item, where, text, last: Output | None, status, details, into_conversation
    ) -> None:
        self.send({"type": "response.output_text.done", **where, "text": text})
        self.send(
            {"type": "response.content_part.done", **where, "part": {"type": "text", "text": text}}
        )
        done_item = {
            **item,
            "status": "completed" if status == "completed" else "incomplete",
            "content": [{"type": "output_text", "text": text}],
        }
        self.send(
            {
                "type": "response.output_item.done",
                "response_id": rid,
                "output_index": 0,
                "item": done_item,
            }
        )
        if into_conversation and text:
            previous = self.items[-1]["id"] if self.items else None
            self.items.append(done_item)
            self.send(
                {"type": "conversation.item.added", "previous_item_id": previous, "item": done_item}
            )
            self.send(
                {"type": "conversation.item.done", "previous_item_id": previous, "item": done_item}
            )
        usage = None
        if last is not None:
            usage = {
                "total_tokens": last.num_prompt_tokens + last.num_output_tokens,
                "input_tokens": last.num_prompt_tokens,
                "output_tokens": last.num_output_tokens,
                "input_token_details": {
                    "cached_tokens": last.num_cached_tokens,
                    "text_tokens": last.num_prompt_tokens,
                },
                "output_token_details": {"text_tokens": last.num_output_tokens},
            }
        response = {
            "id": rid,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": [done_item],
            "output_modalities": ["text"],
            "usage": usage,
        }
        self.send({"type": "response.done", "response": response})


def _max_tokens(value: Any, where: str) -> int | None:
    if value == "inf":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SessionError(
            "invalid_value",
            "max_output_tokens must be a positive integer or 'inf'",
            f"{where}.max_output_tokens",
        )
    return value


def _message_item(item: Any, param: str) -> dict:
    if not isinstance(item, dict) or item.get("type", "message") != "message":
        raise SessionError("invalid_value", "only message items are served", f"{param}.type")
    role = item.get("role")
    if role not in ROLES:
        raise SessionError(
            "invalid_value", f"role must be one of {', '.join(ROLES)}", f"{param}.role"
        )
    content = item.get("content")
    if not isinstance(content, list) or not content:
        raise SessionError("invalid_value", "content must be a non-empty list", f"{param}.content")
    parts = []
    for i, part in enumerate(content):
        if (
            not isinstance(part, dict)
            or part.get("type") not in TEXT_PARTS
            or not isinstance(part.get("text"), str)
        ):
            raise SessionError(
                "invalid_value",
                "content parts must be text (input_text, output_text); "
                "audio goes to transcription sessions",
                f"{param}.content[{i}]",
            )
        kind = "output_text" if role == "assistant" else "input_text"
        parts.append({"type": kind, "text": part["text"]})
    return {
        "id": item.get("id") or new_id("item"),
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": role,
        "content": parts,
    }


def _text(item: dict) -> str:
    return "".join(p.get("text") or p.get("transcript") or "" for p in item["content"])
