"""The transcription form (OpenAI's ``POST /v1/audio/transcriptions`` fields) turned into one ``Request``.

``parse_form`` is the one place that reads the form: a form field named like a ``Request`` field fills it (converted
by the field's type), and three OpenAI fields map onto others: ``file`` (the audio, read by ``read_upload`` within the
limits), ``model`` (the adapter, ``model_adapter``) and ``timestamp_granularities[]`` (``word_timestamps``).
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import fields

import numpy as np
from starlette.datastructures import FormData, UploadFile

from whisper_lora.data.audio import (
    AudioError,
    AudioLimits,
    AudioTooLarge,
    AudioUnsupported,
    check_signal,
    load_audio,
    readable_formats,
)
from whisper_lora.errors import AdapterError, BrokenAdapterError, ConfigError
from whisper_lora.inference.request import ROUTE, Request, RequestError
from whisper_lora.serving.config import ServerConfig
from whisper_lora.serving.errors import ApiError

ROUTER_MODELS = ("auto", "whisper-1")  # model names that route by language
GRANULARITIES = ("segment", "word")
FORM_OVERHEAD = 64 * 2**10  # multipart boundaries and the small form fields, on top of the file
MAX_FIELDS = 32  # form fields accepted in one request
REQUIRED = ("file", "model")
# Request fields a client never sets by name: filled from ``file``, ``model``, ``timestamp_granularities[]``, or
# by the server itself
NOT_FROM_FORM = ("audio", "adapter", "timestamps", "word_timestamps", "num_beams", "options", "decision")
# uploads decoded at once: more wait their turn (each decode holds up to its recording's samples, and CPU)
_DECODING = threading.BoundedSemaphore(max(2, os.cpu_count() or 1))
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
LIMIT_FIELDS = {"max_seconds": "max_audio_seconds"}  # ``AudioLimits`` fields that ``ServerConfig`` names otherwise


def _convert(name: str, annotation: str, value: str):
    """A form field's text as its ``Request`` field's type (an empty value: None where the field allows it)."""
    if value == "" and "None" in annotation:
        return None
    if "bool" in annotation:
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name}={value!r} must be true or false")
        return value.lower() in ("true", "1")
    for kind, word in ((int, "a whole number"), (float, "a number")):
        if kind.__name__ in annotation.replace("None", ""):
            try:
                return kind(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} must be {word}") from None
    return value


def parse_form(form: FormData, request_type: type[Request] = Request) -> Request:
    """The ``Request`` of a transcription form, without its audio and adapter (``read_upload``, ``model_adapter``);
    a ``RequestError`` names every bad field at once."""
    problems: list[tuple[str, str]] = [(k, f"{k} is required") for k in REQUIRED if form.get(k) in (None, "")]
    if form.get("file") not in (None, "") and not isinstance(form["file"], UploadFile):
        problems.append(("file", "file must be an uploaded file (multipart/form-data), not a text field"))
    if form.get("model") is not None and not isinstance(form["model"], str):
        problems.append(("model", "model must be a text field, not a file"))
    kwargs = {}
    for f in fields(request_type):
        if f.name in NOT_FROM_FORM or form.get(f.name) in (None, ""):  # an empty field is an absent one
            continue
        value = form[f.name]
        if not isinstance(value, str):
            problems.append((f.name, f"{f.name} must be a text field, not a file"))
            continue
        try:
            kwargs[f.name] = _convert(f.name, str(f.type), value)
        except ValueError as e:
            problems.append((f.name, str(e)))
    granularities = [g for g in form.getlist("timestamp_granularities[]") if isinstance(g, str)]
    if not set(granularities) <= set(GRANULARITIES):
        bad = sorted(set(granularities) - set(GRANULARITIES))
        problems.append(
            ("timestamp_granularities", f"unknown timestamp_granularities {bad}; valid: {', '.join(GRANULARITIES)}")
        )
    if granularities and form.get("response_format") != "verbose_json":
        problems.append(("timestamp_granularities", "timestamp_granularities needs response_format=verbose_json"))
    try:
        request = request_type(audio=None, word_timestamps="word" in granularities, **kwargs)
    except RequestError as e:
        problems += e.problems
    if problems:
        order = [f.name for f in fields(request_type)]
        raise RequestError(sorted(problems, key=lambda p: order.index(p[0]) if p[0] in order else len(order)))
    return request


def model_adapter(model: str, registry, base_names: tuple[str, ...], adapters: list[str]) -> str | None:
    """The adapter choice a ``model`` name asks for: ``ROUTE`` (the router models), None (the base's name) or an
    adapter's name (an adapter or language name: ``sw``, ``swa``, ``darija``); unknown names are 404s."""
    if model in ROUTER_MODELS:
        return ROUTE
    if model in base_names:
        return None
    try:
        entry = registry.find(model)
    except BrokenAdapterError:
        raise
    except (ConfigError, AdapterError):
        entry = None
    if entry is None:
        valid = ", ".join([base_names[0], *ROUTER_MODELS, *adapters])
        raise ApiError(404, f"unknown model {model!r}; valid models: {valid}", "model", "model_not_found")
    return entry.name


def upload_suffix(filename: str) -> str:
    """The extension decoders go by: the upload's own when it is a plain short one, else ``.bin``."""
    suffix = os.path.splitext(filename or "")[1]
    return suffix if _SUFFIX.match(suffix) else ".bin"


def decode_upload(data: bytes, filename: str, limits: AudioLimits) -> np.ndarray:
    """Decode uploaded bytes to 16 kHz mono within ``limits`` with the library's one decoder
    (``data.audio.load_audio``): over a limit 413 (header checked before decoding), undecodable 400."""
    if not data:
        raise ApiError(400, "the uploaded file is empty", "file")
    shown = (filename or "the upload")[:80]
    with (
        _DECODING,
        tempfile.NamedTemporaryFile(suffix=upload_suffix(filename)) as f,
    ):  # ffmpeg goes by the extension too
        f.write(data)
        f.flush()
        try:
            audio = load_audio(f.name, validate=False, limits=limits)
        except AudioTooLarge as e:
            flag = "--" + LIMIT_FIELDS.get(e.limit, e.limit).replace("_", "-")
            raise ApiError(413, f"{e} ({flag})", "file") from None
        except AudioUnsupported:
            raise ApiError(400, f"could not decode {shown!r} as audio; send {readable_formats()}", "file") from None
        except AudioError as e:  # a decoder's failure part-way, or a header no recording has
            temp = os.path.basename(f.name)
            why = str(e).removeprefix(f"cannot decode {temp}: ").replace(temp, repr(shown))
            raise ApiError(400, f"could not decode {shown!r} as audio: {why}", "file") from None
    try:
        return check_signal(audio, filename or "the upload")  # no samples, NaN or inf
    except AudioError as e:
        raise ApiError(400, str(e), "file") from None


async def read_upload(file: UploadFile, config: ServerConfig, run_in_thread) -> np.ndarray:
    """The uploaded audio as samples, within the size limit and ``config.audio_limits`` (sample rate, channels and
    length refused from the header before decoding; decoding stops at the limits if the header lied)."""
    data = await file.read(config.max_upload_bytes + 1)
    if len(data) > config.max_upload_bytes:
        raise ApiError(413, f"file is larger than the limit of {config.max_upload_bytes} bytes", "file")
    return await run_in_thread(decode_upload, data, file.filename or "", config.audio_limits)
