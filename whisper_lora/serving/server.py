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
from dataclasses import dataclass, field, replace
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
from whisper_lora.serving import KEY_ENV
from whisper_lora.serving.limits import Guard, audio_seconds, error_body, public
from whisper_lora.serving.scheduler import Cancelled, QueueFull, Scheduler

log = logging.getLogger("whisper_lora")

ROUTER_MODELS = ("auto", "whisper-1")
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
FORM_OVERHEAD = 64 * 2**10  # multipart boundaries and the small form fields, on top of the file
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


@dataclass(frozen=True)
class ServerConfig:
    """Limits, keys and batching of the HTTP server (``whisper-lora serve`` flags in brackets)."""

    max_upload_bytes: int = 25 * 2**20  # [--max-upload-mb] larger uploads get 413 (OpenAI's limit is 25 MB)
    max_audio_seconds: float | None = 1800.0  # [--max-audio-seconds] longer recordings get 413; None: no limit
    max_batch: int = 8  # [--max-batch] short requests decoded together
    max_wait_ms: float = 10.0  # [--max-wait-ms] how long the first short request waits for company
    max_queue: int = 64  # [--max-queue] requests in flight (queued or decoding); past it 503 + Retry-After
    max_connections: int = 128  # [--max-connections] HTTP requests in progress (uploads included); past it 503
    request_timeout: float | None = 900.0  # [--request-timeout] seconds from upload to answer; past it 504
    slice_ms: float = 200.0  # a long recording keeps the model at least this long before short ones go
    quantum_ms: float = 2000.0  # long recordings take turns this often
    reload_seconds: float | None = 2.0  # look for adapters changed on disk at most this often; None: never
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # [--api-key] empty: no key needed
    cors_origins: tuple[str, ...] = ()  # [--cors-origin] browser origins allowed; empty: CORS off
    keep_alive_seconds: float = 5.0  # idle keep-alive connections are closed after this

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_keys", tuple(k for k in self.api_keys if k))
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        problems = []
        for name in ("max_upload_bytes", "max_batch", "max_queue", "max_connections"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 1")
        for name in ("max_audio_seconds", "request_timeout", "reload_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name}={value!r} must be > 0 (or None for no limit)")
        for name in ("max_wait_ms", "slice_ms", "quantum_ms", "keep_alive_seconds"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 0")
        if any(len(k) < 8 or k.strip() != k for k in self.api_keys):
            problems.append("every API key must be at least 8 characters, without surrounding spaces")
        if problems:
            raise ConfigError("invalid server settings:\n  - " + "\n  - ".join(problems))

    @staticmethod
    def keys_from_env() -> tuple[str, ...]:
        """Keys in ``$WHISPER_LORA_API_KEY`` (comma-separated)."""
        return tuple(k.strip() for k in os.environ.get(KEY_ENV, "").split(",") if k.strip())

    def public(self) -> dict:
        """The limits as ``/health`` reports them (never the keys)."""
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_audio_seconds": self.max_audio_seconds,
            "max_queue": self.max_queue,
            "max_connections": self.max_connections,
            "request_timeout": self.request_timeout,
            "auth": bool(self.api_keys),
        }


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


def create_app(transcriber: Transcriber, config: ServerConfig | None = None):
    """The FastAPI application; one ``Transcriber`` serves every request through the scheduler."""
    config = config or ServerConfig()
    scheduler = Scheduler(
        transcriber,
        config.max_batch,
        config.max_wait_ms,
        config.max_queue,
        config.slice_ms,
        config.quantum_ms,
        config.reload_seconds,
    )
    base_name = (
        transcriber.base_info.name.rstrip("/").rsplit("/", 1)[-1]
        if "/" in transcriber.base_info.name
        else (transcriber.base_info.name)
    )  # a path's last part, or the short name / hub id's name
    app = FastAPI(title="whisper-lora", description=__doc__)
    app.state.scheduler = scheduler
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

    @app.exception_handler(BrokenAdapterError)
    async def _broken_adapter(_, e: BrokenAdapterError):  # the server's registry is at fault, not the request
        return err(503, str(e), "model", "adapter_unavailable")

    def refresh() -> None:
        if config.reload_seconds is not None:
            transcriber.refresh_adapters(config.reload_seconds)

    @app.get("/health")
    def health():
        refresh()
        return {
            "status": "degraded" if transcriber.broken_adapters() else "ok",
            "base": base_name,
            "precision": transcriber.base_info.precision,
            "adapters": transcriber.adapters(),
            "adapter_versions": {e.name: e.version for e in transcriber.registry.entries()},
            "broken_adapters": [{"name": b.name, "reason": public(b.reason)} for b in transcriber.broken_adapters()],
            "routing": transcriber.routing(),
            "limits": config.public(),
            **scheduler.stats(),
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
                "reason": public(b.reason),
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

    async def answer(request: Request, job) -> object:
        """The job's result; cancelled when the client goes away or ``request_timeout`` passes (504)."""
        future = asyncio.wrap_future(job.future)
        deadline = None if config.request_timeout is None else time.monotonic() + config.request_timeout
        while True:
            done, _ = await asyncio.wait({future}, timeout=0.25)
            if done:
                try:
                    return future.result()
                except Cancelled:
                    raise ApiError(499, "the request was cancelled", code="cancelled") from None
            if await request.is_disconnected():
                job.cancel()
                log.info("client went away: request cancelled")
                raise ApiError(499, "the client closed the connection", code="cancelled")
            if deadline is not None and time.monotonic() > deadline:
                job.cancel()
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
        declared = audio_seconds(data)  # from the container header: nothing decoded yet
        if declared is not None:
            check_duration(declared, config)
        audio = await run_in_threadpool(decode_upload, data, file.filename or "")
        check_duration(len(audio) / SAMPLE_RATE, config)  # containers without a readable header
        started = time.perf_counter()
        try:
            job = scheduler.submit(audio, lang, adapter, timed, options)
        except QueueFull as e:
            raise ApiError(503, str(e), code="server_busy", headers={"Retry-After": str(e.retry_after)}) from None
        result = await answer(request, job)
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
        scheduler.close()

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
