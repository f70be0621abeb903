"""OpenAI-compatible `POST /v1/audio/transcriptions`: a whole file in, its transcript out."""

from __future__ import annotations

import asyncio

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from audio.decode import AudioFormatError
from engine.streaming import StreamOptions
from rtserve.chat_api import ApiError
from rtserve.config import MAX_UPLOAD_BYTES
from rtserve.openai_api import api
from rtserve.server import UnknownModel
from rtserve.session import SessionError
from rtserve.transcribe import FORMATS, load_audio, render, stream_events, transcribe


async def transcriptions(request: Request) -> Response:
    server = request.app.state.server
    if int(request.headers.get("content-length") or 0) > MAX_UPLOAD_BYTES:
        raise ApiError(413, f"the upload is over {MAX_UPLOAD_BYTES} bytes", code="file_too_large")
    try:
        form = await request.form(max_files=1, max_part_size=MAX_UPLOAD_BYTES)
    except Exception as e:  # not multipart, or malformed
        raise ApiError(400, f"send multipart/form-data with a `file`: {e}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "`file` is required", param="file")
    fmt = str(form.get("response_format") or "json")
    if fmt not in FORMATS:
        raise ApiError(
            400, f"response_format must be one of {', '.join(FORMATS)}", param="response_format"
        )
    try:
        model = server.asr_model(form.get("model") or None)
    except UnknownModel as e:
        raise ApiError(404, str(e), "not_found_error", "model", "model_not_found") from None
    words = _wants_words(form, fmt, model)
    options = StreamOptions(form.get("language") or None, form.get("prompt") or None)
    data = await upload.read()
    try:
        samples = await asyncio.to_thread(load_audio, data)
    except AudioFormatError as e:
        raise ApiError(400, f"the file could not be decoded: {e}", param="file") from None

    async def run(on_text=None):
        try:
            return await transcribe(
                model, samples, server.config.limits, server.metrics, options, on_text
            )
        except SessionError as e:
            raise ApiError(400, e.message, param=e.param) from None

    if str(form.get("stream", "false")).lower() == "true":
        return StreamingResponse(stream_events(run), media_type="text/event-stream")
    body, media = render(await run(), fmt, words)
    return Response(body, media_type=media)


GRANULARITIES = ("segment", "word")


def _wants_words(form, fmt: str, model) -> bool:
    """timestamp_granularities[]: segments are always in verbose_json; words when asked for,
    from a model that times its words."""
    asked = [str(g) for key in ("timestamp_granularities[]", "timestamp_granularities")
             for g in form.getlist(key)]  # fmt: skip
    param = "timestamp_granularities"
    if any(g not in GRANULARITIES for g in asked):
        raise ApiError(400, f"{param} takes {' and '.join(GRANULARITIES)}", param=param)
    if asked and fmt != "verbose_json":
        raise ApiError(400, f"{param} needs response_format verbose_json", param=param)
    if "word" in asked and not getattr(model, "word_timestamps", False):
        raise ApiError(400, f"model {model.name!r} does not give word timestamps", param=param)
    return "word" in asked


transcriptions = api(transcriptions)
