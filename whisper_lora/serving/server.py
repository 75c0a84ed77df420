"""OpenAI-compatible transcription API (``POST /v1/audio/transcriptions``) over one base and many adapters.

``model`` picks the adapter, as in vLLM: an adapter or language name (``sw``, ``swa``, ``darija``)
uses that adapter; the base's name uses the untouched base; ``auto`` or ``whisper-1`` routes by
``language`` (or by Whisper's language ID when it is omitted or ``auto``).
"""

import os
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from whisper_lora.data.audio import AudioError, check_signal, load_audio
from whisper_lora.errors import AdapterError, BrokenAdapterError, ConfigError, WhisperLoraError
from whisper_lora.inference.formats import TIMED_FORMATS, to_srt, to_vtt, verbose_json
from whisper_lora.inference.transcriber import AUTO, ROUTE, Transcriber
from whisper_lora.languages import resolve_language
from whisper_lora.serving.batcher import MicroBatcher

ROUTER_MODELS = ("auto", "whisper-1")
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and batching of the HTTP server."""

    max_upload_bytes: int = 25 * 2**20  # larger uploads get 413 (OpenAI's limit is 25 MB)
    max_batch: int = 8  # requests decoded together
    max_wait_ms: float = 10.0  # how long the first request waits for company


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def decode_upload(data: bytes, filename: str) -> np.ndarray:
    """Decode uploaded bytes to 16 kHz mono with the library's one decoder (``data.audio.load_audio``)."""
    if not data:
        raise ApiError(400, "the uploaded file is empty", "file")
    suffix = os.path.splitext(filename or "")[1] or ".bin"  # librosa's backends go by the extension
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(data)
        f.flush()
        try:
            audio = load_audio(f.name, validate=False)
        except AudioError:
            raise ApiError(
                400, f"could not decode {filename or 'the upload'} as audio; send wav, flac, ogg or mp3", "file"
            ) from None
    try:
        return check_signal(audio, filename or "the upload")  # no samples, NaN or inf
    except AudioError as e:
        raise ApiError(400, str(e), "file") from None


def create_app(transcriber: Transcriber, config: ServerConfig | None = None):
    """The FastAPI application; one ``Transcriber`` serves every request through a micro-batcher."""
    config = config or ServerConfig()
    batcher = MicroBatcher(transcriber, config.max_batch, config.max_wait_ms)
    base_name = (
        transcriber.base_info.name.rstrip("/").rsplit("/", 1)[-1]
        if "/" in transcriber.base_info.name
        else (transcriber.base_info.name)
    )  # a path's last part, or the short name / hub id's name
    app = FastAPI(title="whisper-lora", description=__doc__)
    app.state.batcher = batcher

    def err(status, message, param=None, code="invalid_request_error"):
        return JSONResponse({"error": {"message": message, "type": code, "param": param, "code": status}}, status)

    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return err(e.status, e.message, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_, e: RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in x["loc"][1:]) + f" ({x['msg']})" for x in e.errors())
        return err(400, f"bad request: {fields}")

    @app.exception_handler(WhisperLoraError)
    async def _library_error(_, e: WhisperLoraError):
        return err(400, str(e))

    @app.exception_handler(BrokenAdapterError)
    async def _broken_adapter(_, e: BrokenAdapterError):  # the server's registry is at fault, not the request
        return err(503, str(e), "model", "adapter_unavailable")

    @app.get("/health")
    def health():
        return {
            "status": "degraded" if transcriber.broken_adapters() else "ok",
            "base": base_name,
            "precision": transcriber.base_info.precision,
            "adapters": transcriber.adapters(),
            "broken_adapters": [b.to_dict() for b in transcriber.broken_adapters()],
            "routing": transcriber.routing(),
            "batches": batcher.batches,
            "served": batcher.served,
        }

    @app.get("/v1/models")
    def models():
        now = int(time.time())
        data = [{"id": base_name, "object": "model", "created": now, "owned_by": "whisper-lora", "root": base_name}]
        data += [
            {
                "id": m,
                "object": "model",
                "created": now,
                "owned_by": "whisper-lora",
                "root": base_name,
                "parent": base_name,
            }
            for m in (*ROUTER_MODELS, *transcriber.adapters())
        ]
        data += [
            {
                "id": b.name,
                "object": "model",
                "created": now,
                "owned_by": "whisper-lora",
                "root": base_name,
                "parent": base_name,
                "status": "broken",
                "reason": b.reason,
            }
            for b in transcriber.broken_adapters()
        ]
        return {"object": "list", "data": data}

    def pick_adapter(model: str) -> str | None:
        if model in ROUTER_MODELS:
            return ROUTE
        if model in (base_name, transcriber.base_info.name):
            return None
        try:
            entry = transcriber.registry.find(model)
        except BrokenAdapterError:
            raise
        except (ConfigError, AdapterError):
            entry = None
        if entry is None:
            valid = ", ".join([base_name, *ROUTER_MODELS, *transcriber.adapters()])
            raise ApiError(404, f"unknown model {model!r}; valid models: {valid}", "model", "model_not_found")
        return entry.name

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        language: Annotated[str | None, Form()] = None,
        response_format: Annotated[str, Form()] = "json",
        prompt: Annotated[str | None, Form()] = None,  # initial prompt of timestamped decoding
        temperature: Annotated[float | None, Form()] = None,  # first temperature of the fallback ladder
        timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
    ):
        if response_format not in FORMATS:
            raise ApiError(
                400, f"unsupported response_format {response_format!r}; valid: {', '.join(FORMATS)}", "response_format"
            )
        granularities = set(timestamp_granularities or ["segment"])
        if not granularities <= set(GRANULARITIES):
            bad = sorted(granularities - set(GRANULARITIES))
            raise ApiError(
                400,
                f"unknown timestamp_granularities {bad}; valid: {', '.join(GRANULARITIES)}",
                "timestamp_granularities",
            )
        if timestamp_granularities and response_format != "verbose_json":
            raise ApiError(400, "timestamp_granularities needs response_format=verbose_json", "timestamp_granularities")
        if temperature is not None and not 0 <= temperature <= 1:
            raise ApiError(400, f"temperature={temperature!r} must be between 0 and 1", "temperature")
        words = "word" in granularities
        options = None
        if prompt or temperature is not None or words:
            try:
                options = replace(
                    transcriber.decoding.options.with_temperature(temperature),
                    prompt=prompt or None,
                    word_timestamps=words,
                )
            except ConfigError as e:
                raise ApiError(400, str(e)) from None
        timed = response_format in TIMED_FORMATS or options is not None
        lang = (language or AUTO).strip().lower()
        if lang != AUTO:
            try:
                resolve_language(lang)
            except ConfigError as e:
                raise ApiError(400, str(e), "language") from None
        adapter = pick_adapter(model)
        data = await file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise ApiError(413, f"file is larger than the limit of {config.max_upload_bytes} bytes", "file")
        audio = await run_in_threadpool(decode_upload, data, file.filename or "")
        started = time.perf_counter()
        result = await run_in_threadpool(batcher.submit, audio, lang, adapter, None, timed, options)
        if response_format == "text":
            return PlainTextResponse(result.text)
        if response_format == "json":
            return {"text": result.text}
        if response_format == "srt":
            return Response(to_srt(result), media_type="application/x-subrip")
        if response_format == "vtt":
            return Response(to_vtt(result), media_type="text/vtt")
        return {**verbose_json(result, words), "processing_seconds": round(time.perf_counter() - started, 3)}

    @app.on_event("shutdown")
    def _stop():
        batcher.close()

    return app


def serve(
    transcriber: Transcriber, host: str = "127.0.0.1", port: int = 8000, config: ServerConfig | None = None
) -> None:
    """Run the API with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(create_app(transcriber, config), host=host, port=port, log_level="info")
