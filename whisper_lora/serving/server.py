"""OpenAI-compatible transcription API (``POST /v1/audio/transcriptions``) over one base and many adapters.

``model`` picks the adapter, as in vLLM: an adapter or language name (``sw``, ``swa``, ``darija``)
uses that adapter; the base's name uses the untouched base; ``auto`` or ``whisper-1`` routes by
``language`` (or by Whisper's language ID when it is omitted or ``auto``).

Requests go through ``scheduler.Scheduler`` (short clips micro-batched, long recordings interleaved
with them step by step), behind ``limits.Guard`` (keys, body size, concurrency). Every failure is an
OpenAI-style JSON error without server paths or tracebacks (those go to the server log).
"""

import asyncio
import logging
import os
import re
import tempfile
import time
from dataclasses import replace
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from whisper_lora.data.audio import SAMPLE_RATE, AudioError, check_signal, load_audio
from whisper_lora.errors import AdapterError, BrokenAdapterError, ConfigError, WhisperLoraError
from whisper_lora.inference.formats import TIMED_FORMATS, to_srt, to_vtt, verbose_json
from whisper_lora.inference.transcriber import AUTO, ROUTE, Transcriber
from whisper_lora.languages import resolve_language
from whisper_lora.serving.config import ServerConfig
from whisper_lora.serving.engine import Engine, LocalEngine, Unavailable
from whisper_lora.serving.limits import Guard, audio_seconds, error_body, public
from whisper_lora.serving.scheduler import Cancelled, QueueFull

log = logging.getLogger("whisper_lora")

ROUTER_MODELS = ("auto", "whisper-1")
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
FORM_OVERHEAD = 64 * 2**10  # multipart boundaries and the small form fields, on top of the file
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str = "invalid_request_error",
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def upload_suffix(filename: str) -> str:
    """The extension decoders go by: the upload's own when it is a plain short one, else ``.bin``."""
    suffix = os.path.splitext(filename or "")[1]
    return suffix if _SUFFIX.match(suffix) else ".bin"


def decode_upload(data: bytes, filename: str) -> np.ndarray:
    """Decode uploaded bytes to 16 kHz mono with the library's one decoder (``data.audio.load_audio``)."""
    if not data:
        raise ApiError(400, "the uploaded file is empty", "file")
    with tempfile.NamedTemporaryFile(suffix=upload_suffix(filename)) as f:  # librosa's backends use the extension
        f.write(data)
        f.flush()
        try:
            audio = load_audio(f.name, validate=False)
        except AudioError:
            shown = (filename or "the upload")[:80]
            raise ApiError(400, f"could not decode {shown!r} as audio; send wav, flac, ogg or mp3", "file") from None
    try:
        return check_signal(audio, filename or "the upload")  # no samples, NaN or inf
    except AudioError as e:
        raise ApiError(400, str(e), "file") from None


def check_duration(seconds: float, config: ServerConfig) -> None:
    limit = config.max_audio_seconds
    if limit is not None and seconds > limit:
        raise ApiError(
            413,
            f"the audio is {seconds:.1f} s long; this server accepts at most {limit:g} s (--max-audio-seconds)",
            "file",
        )


def create_app(engine: Transcriber | Engine, config: ServerConfig | None = None):
    """The FastAPI application over an ``Engine`` (``serving/engine.py``); a ``Transcriber`` is served in this
    process through the scheduler (``LocalEngine``). The Ray Serve ingress builds the same app over its replicas."""
    config = config or ServerConfig()
    if isinstance(engine, Transcriber):
        engine = LocalEngine(engine, config)
    name = engine.base_info.name
    base_name = name.rstrip("/").rsplit("/", 1)[-1] if "/" in name else name  # a path's last part, or the short name
    app = FastAPI(title="whisper-lora", description=__doc__)
    app.state.engine = engine
    app.add_middleware(
        Guard,
        max_body=config.max_upload_bytes + FORM_OVERHEAD,
        keys=config.api_keys,
        max_requests=config.max_connections,
    )
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )

    def err(status, message, param=None, code="invalid_request_error", headers=None):
        return Response(error_body(status, message, param, code), status, headers, media_type="application/json")

    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return err(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, e: StarletteHTTPException):  # unknown route, wrong method
        return err(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):  # the traceback goes to the log, never to the client
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return err(
            500, f"internal server error ({type(e).__name__}); the server log has the details", code="server_error"
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_, e: RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in x["loc"][1:]) + f" ({x['msg']})" for x in e.errors())
        return err(400, f"bad request: {fields}")

    @app.exception_handler(WhisperLoraError)
    async def _library_error(_, e: WhisperLoraError):
        return err(400, str(e))

    @app.exception_handler(Unavailable)
    async def _unavailable(_, e: Unavailable):  # replicas died or none is running (Ray Serve)
        return err(503, str(e), code="server_unavailable", headers={"Retry-After": str(e.retry_after)})

    @app.exception_handler(BrokenAdapterError)
    async def _broken_adapter(_, e: BrokenAdapterError):  # the server's registry is at fault, not the request
        return err(503, str(e), "model", "adapter_unavailable")

    def refresh() -> None:
        if config.reload_seconds is not None:
            engine.refresh(config.reload_seconds)

    @app.get("/health")
    async def health():
        await run_in_threadpool(refresh)
        status = await engine.status()
        degraded = status.pop("degraded", False) or bool(engine.broken_adapters())
        return {
            "status": "degraded" if degraded else "ok",
            "base": base_name,
            "precision": engine.base_info.precision,
            "adapters": engine.adapters(),
            "adapter_versions": {e.name: e.version for e in engine.registry.entries()},
            "broken_adapters": [{"name": b.name, "reason": public(b.reason)} for b in engine.broken_adapters()],
            "routing": engine.routing(),
            "limits": config.public(),
            **status,
        }

    @app.get("/v1/models")
    def models():
        refresh()
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
            for m in (*ROUTER_MODELS, *engine.adapters())
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
                "reason": public(b.reason),
            }
            for b in engine.broken_adapters()
        ]
        return {"object": "list", "data": data}

    def pick_adapter(model: str) -> str | None:
        if model in ROUTER_MODELS:
            return ROUTE
        if model in (base_name, engine.base_info.name):
            return None
        try:
            entry = engine.registry.find(model)
        except BrokenAdapterError:
            raise
        except (ConfigError, AdapterError):
            entry = None
        if entry is None:
            valid = ", ".join([base_name, *ROUTER_MODELS, *engine.adapters()])
            raise ApiError(404, f"unknown model {model!r}; valid models: {valid}", "model", "model_not_found")
        return entry.name

    async def answer(request: Request, pending) -> object:
        """The request's result; cancelled when the client goes away or ``request_timeout`` passes (504)."""
        task = asyncio.ensure_future(pending.result())
        deadline = None if config.request_timeout is None else time.monotonic() + config.request_timeout

        def stop() -> None:
            pending.cancel()
            task.cancel()

        while True:
            try:
                done, _ = await asyncio.wait({task}, timeout=0.25)
            except asyncio.CancelledError:  # the handler itself was cancelled (Ray Serve: the client went away)
                stop()
                raise
            if done:
                try:
                    return task.result()
                except Cancelled:
                    raise ApiError(499, "the request was cancelled", code="cancelled") from None
            if await request.is_disconnected():
                stop()
                log.info("client went away: request cancelled")
                raise ApiError(499, "the client closed the connection", code="cancelled")
            if deadline is not None and time.monotonic() > deadline:
                stop()
                raise ApiError(
                    504,
                    f"the transcription took longer than {config.request_timeout:g} s (--request-timeout); "
                    "send shorter audio or retry when the server is less busy",
                    code="timeout",
                )

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: Request,
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
                    engine.options.with_temperature(temperature),
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
        declared = audio_seconds(data)  # from the container header: nothing decoded yet
        if declared is not None:
            check_duration(declared, config)
        audio = await run_in_threadpool(decode_upload, data, file.filename or "")
        check_duration(len(audio) / SAMPLE_RATE, config)  # containers without a readable header
        started = time.perf_counter()
        try:
            pending = engine.submit(audio, lang, adapter, timed, options)
        except QueueFull as e:
            raise ApiError(503, str(e), code="server_busy", headers={"Retry-After": str(e.retry_after)}) from None
        try:
            result = await answer(request, pending)
        except QueueFull as e:  # a replica's own queue was full (Ray Serve)
            raise ApiError(503, str(e), code="server_busy", headers={"Retry-After": str(e.retry_after)}) from None
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
        engine.close()

    return app


def serve(
    transcriber: Transcriber, host: str = "127.0.0.1", port: int = 8000, config: ServerConfig | None = None
) -> None:
    """Run the API with uvicorn (blocking)."""
    import uvicorn

    config = config or ServerConfig()
    uvicorn.run(
        create_app(transcriber, config),
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=config.keep_alive_seconds,
    )
