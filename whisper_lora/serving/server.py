"""OpenAI-compatible transcription API (``POST /v1/audio/transcriptions``) over one base and many adapters.

``model`` picks the adapter, as in vLLM: an adapter or language name (``sw``, ``swa``, ``darija``)
uses that adapter; the base's name uses the untouched base; ``auto`` or ``whisper-1`` routes by
``language`` (or by Whisper's language ID when it is omitted or ``auto``).

The form becomes one ``Request`` (``form.py``), which goes to an ``Engine`` (``engine.py``: this process's
scheduler, or Ray Serve replicas) behind ``limits.Guard`` (keys, body size and deadline, concurrency); ``serve``
runs it on uvicorn with the socket limits of ``connections.py``. Every failure is an OpenAI-style JSON error without
server paths or tracebacks (``errors.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from whisper_lora.inference.formats import TABLE, render, verbose_json
from whisper_lora.inference.request import Request, Transcription
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.serving.config import ServerConfig
from whisper_lora.serving.engine import Engine, LocalEngine, Pending
from whisper_lora.serving.errors import ApiError, install_error_handlers
from whisper_lora.serving.form import (
    FORM_OVERHEAD,
    MAX_FIELDS,
    ROUTER_MODELS,
    model_adapter,
    parse_form,
    read_upload,
    upload_suffix,
)
from whisper_lora.serving.limits import Guard, api_key_ok, public
from whisper_lora.serving.scheduler import Cancelled

__all__ = ["ServerConfig", "create_app", "serve", "upload_suffix"]

log = logging.getLogger("whisper_lora")

# what /health tells a caller without a key (when the server has keys): its status, its limits and these counters;
# adapters, versions, routing, replicas (nodes, pids, devices) only with a key
PUBLIC_COUNTERS = ("in_flight", "served", "cancelled", "rejected", "batches", "long_yields", "replica_failures")


def create_app(engine: Transcriber | Engine, config: ServerConfig | None = None, request_type=Request):
    """The FastAPI application over an ``Engine`` (``serving/engine.py``); a ``Transcriber`` is served in this
    process through the scheduler (``LocalEngine``); ``serve --ray`` builds the same app over its replicas.
    ``request_type``: the ``Request`` (sub)class forms are parsed into (``form.parse_form``)."""
    config = config or ServerConfig()
    if isinstance(engine, Transcriber):
        engine = LocalEngine(engine, config)
    name = engine.base_info.name
    base_name = name.rstrip("/").rsplit("/", 1)[-1] if "/" in name else name  # a path's last part, or the short name
    app = FastAPI(title="whisper-lora", description=__doc__)
    app.state.engine = engine
    _add_middleware(app, config)
    install_error_handlers(app)

    def refresh() -> None:
        if config.reload_seconds is not None:
            engine.refresh(config.reload_seconds)

    @app.get("/health")
    async def health(http: HttpRequest):
        await run_in_threadpool(refresh)
        full = not config.api_keys or api_key_ok(http.headers.get("authorization"), config.api_keys)
        return _health(engine, base_name, config, await engine.status(), full)

    @app.get("/v1/models")
    def models():
        refresh()
        return _models(engine, base_name)

    @app.post("/v1/audio/transcriptions", openapi_extra=_FORM_SCHEMA)
    async def transcriptions(http: HttpRequest):
        form = await http.form(max_files=1, max_fields=MAX_FIELDS)
        try:
            request = parse_form(form, request_type)
            adapter = model_adapter(form["model"], engine.registry, (base_name, name), engine.adapters())
            audio = await read_upload(form["file"], config, run_in_threadpool)
        finally:
            await form.close()
        request = replace(request, audio=audio, adapter=adapter)
        started = time.perf_counter()
        result = await answer(http, engine.submit(request), config.request_timeout)
        return respond(result, request, started)

    @app.on_event("shutdown")
    def _stop():
        engine.close()

    return app


def _add_middleware(app: FastAPI, config: ServerConfig) -> None:
    app.add_middleware(
        Guard,
        max_body=config.max_upload_bytes + FORM_OVERHEAD,
        keys=config.api_keys,
        max_requests=config.max_connections,
        body_timeout=config.body_timeout_seconds,
        body_min_rate=config.body_min_rate,
    )
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )


def _health(engine: Engine, base_name: str, config: ServerConfig, status: dict, full: bool = True) -> dict:
    """The health document: all of it (``full``: no keys, or a valid one), else the status, limits and
    ``PUBLIC_COUNTERS``; every text in it without server paths (``limits.public``)."""
    degraded = status.pop("degraded", False) or bool(engine.broken_adapters())
    state = "degraded" if degraded else "ok"
    if not full:
        return _without_paths(
            {"status": state, "limits": config.public(), **{k: status[k] for k in PUBLIC_COUNTERS if k in status}}
        )
    return _without_paths(
        {
            "status": state,
            "base": base_name,
            "precision": engine.base_info.precision,
            "graphs": engine.graphs,
            "adapters": engine.adapters(),
            "adapter_versions": {e.name: e.version for e in engine.registry.entries()},
            "broken_adapters": [{"name": b.name, "reason": b.reason} for b in engine.broken_adapters()],
            "routing": engine.routing(),
            "limits": config.public(),
            **status,
        }
    )


def _without_paths(doc):
    """``doc`` with every text in it, at any depth, through ``limits.public``."""
    if isinstance(doc, str):
        return public(doc)
    if isinstance(doc, dict):
        return {k: _without_paths(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_without_paths(v) for v in doc]
    return doc


def _models(engine: Engine, base_name: str) -> dict:
    now = int(time.time())
    card = {"object": "model", "created": now, "owned_by": "whisper-lora", "root": base_name}
    data = [{"id": base_name, **card}]
    data += [{"id": m, **card, "parent": base_name} for m in (*ROUTER_MODELS, *engine.adapters())]
    data += [
        {"id": b.name, **card, "parent": base_name, "status": "broken", "reason": public(b.reason)}
        for b in engine.broken_adapters()
    ]
    return {"object": "list", "data": data}


async def answer(http: HttpRequest, pending: Pending, timeout: float | None) -> Transcription:
    """The request's result; cancelled when the client goes away or ``timeout`` passes (504)."""
    task = asyncio.ensure_future(pending.result())
    deadline = None if timeout is None else time.monotonic() + timeout

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
        if await http.is_disconnected():
            stop()
            log.info("client went away: request cancelled")
            raise ApiError(499, "the client closed the connection", code="cancelled")
        if deadline is not None and time.monotonic() > deadline:
            stop()
            raise ApiError(
                504,
                f"the transcription took longer than {timeout:g} s (--request-timeout); "
                "send shorter audio or retry when the server is less busy",
                code="timeout",
            )


def respond(result: Transcription, request: Request, started: float) -> Response:
    """The document ``request.response_format`` asks for (``formats.TABLE``)."""
    fmt = TABLE[request.response_format]
    if fmt.name == "json":
        return JSONResponse({"text": result.text})
    if fmt.name == "text":
        return PlainTextResponse(result.text)
    if fmt.name == "verbose_json":
        body = verbose_json(result, request.word_timestamps)
        return JSONResponse({**body, "processing_seconds": round(time.perf_counter() - started, 3)})
    return Response(render(result, fmt.name), media_type=fmt.media_type)


_FORM_SCHEMA = {  # the form as OpenAPI documents it (the handler reads it itself: form.parse_form)
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "model"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "model": {"type": "string"},
                        "language": {"type": "string"},
                        "response_format": {"type": "string", "enum": list(TABLE)},
                        "prompt": {"type": "string"},
                        "temperature": {"type": "number"},
                        "timestamp_granularities[]": {"type": "array", "items": {"type": "string"}},
                    },
                }
            }
        },
    }
}


def serve(
    engine: Transcriber | Engine, host: str = "127.0.0.1", port: int = 8000, config: ServerConfig | None = None
) -> None:
    """Run the API with uvicorn (blocking) over a ``Transcriber`` (this process decodes) or an ``Engine`` (``serve
    --ray``: Ray Serve replicas decode)."""
    import uvicorn

    from whisper_lora.serving.connections import ensure_open_files, protocol

    config = config or ServerConfig()
    ensure_open_files(config.max_open_connections)
    uvicorn.run(
        create_app(engine, config),
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=config.keep_alive_seconds,
        http=protocol(config.header_timeout_seconds, config.max_open_connections),  # header deadline, socket cap
    )
