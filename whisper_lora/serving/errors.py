"""Every failure of the HTTP API as an OpenAI-style JSON error, installed on an app by one function.

Tracebacks go to the server log, never to the client; messages carry no server paths (``limits.public``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from whisper_lora.errors import BrokenAdapterError, WhisperLoraError
from whisper_lora.inference.request import RequestError
from whisper_lora.serving.engine import Unavailable
from whisper_lora.serving.limits import error_body
from whisper_lora.serving.scheduler import QueueFull

log = logging.getLogger("whisper_lora")


class ApiError(Exception):
    """An error answered as it is: status, message, the form field at fault, OpenAI's error code, headers."""

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


def error_response(
    status: int, message: str, param: str | None = None, code: str = "invalid_request_error", headers=None
) -> Response:
    return Response(error_body(status, message, param, code), status, headers, media_type="application/json")


def busy(e: QueueFull) -> ApiError:
    """503 + Retry-After for a full queue (this process's, or a replica's)."""
    return ApiError(503, str(e), code="server_busy", headers={"Retry-After": str(e.retry_after)})


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a request can raise to its JSON error."""

    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return error_response(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, e: StarletteHTTPException):  # unknown route, wrong method, a malformed form
        code = "not_found" if e.status_code == 404 else "invalid_request_error"
        return error_response(e.status_code, str(e.detail), code=code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):  # the traceback goes to the log, never to the client
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        message = f"internal server error ({type(e).__name__}); the server log has the details"
        return error_response(500, message, code="server_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(_, e: RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in x["loc"][1:]) + f" ({x['msg']})" for x in e.errors())
        return error_response(400, f"bad request: {fields}")

    @app.exception_handler(RequestError)
    async def _bad_request(_, e: RequestError):  # every bad field of the form, the first one named as param
        return error_response(400, str(e), e.field)

    @app.exception_handler(WhisperLoraError)
    async def _library_error(_, e: WhisperLoraError):
        return error_response(400, str(e))

    @app.exception_handler(QueueFull)
    async def _busy(_, e: QueueFull):
        e = busy(e)
        return error_response(e.status, e.message, code=e.code, headers=e.headers)

    @app.exception_handler(Unavailable)
    async def _unavailable(_, e: Unavailable):  # replicas died or none is running (Ray Serve)
        return error_response(503, str(e), code="server_unavailable", headers={"Retry-After": str(e.retry_after)})

    @app.exception_handler(BrokenAdapterError)
    async def _broken_adapter(_, e: BrokenAdapterError):  # the server's registry is at fault, not the request
        return error_response(503, str(e), "model", "adapter_unavailable")
