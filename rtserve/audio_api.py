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
    body, media = render(await run(), fmt)
    return Response(body, media_type=media)


transcriptions = api(transcriptions)
