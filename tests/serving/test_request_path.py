"""Adding a request parameter: a new ``Request`` field travels from the HTTP form to the decode call, carried by the
engine and the scheduler without either knowing it (issue 31: one request object through the runtime)."""

from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from tests.inference.test_transcriber import AUDIO
from tests.serving.conftest import wav_bytes
from whisper_lora.inference.request import Request
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.serving.config import ServerConfig
from whisper_lora.serving.server import create_app


@dataclass(frozen=True)
class TaggedRequest(Request):
    """A request with one parameter more, defined by this test only."""

    tag: str = ""  # a label the client sends as a form field
    repeats: int = 1  # a typed one: the form's text becomes an int


@pytest.fixture(scope="module")
def transcriber(tiny_dir, tiny_registry):
    return Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8)


def test_a_new_request_field_reaches_the_decode_call(transcriber, monkeypatch):
    alone = transcriber.transcribe(AUDIO[0], "sw")
    seen = []
    real = Transcriber.transcribe_requests

    def spy(self, requests, gate=None, done=None):
        seen.extend(requests)
        return real(self, requests, gate, done)

    monkeypatch.setattr(Transcriber, "transcribe_requests", spy)
    app = create_app(transcriber, ServerConfig(), request_type=TaggedRequest)
    with TestClient(app) as client:
        data = {"model": "auto", "language": "sw", "tag": "batch-7", "repeats": "3", "response_format": "text"}
        r = client.post("/v1/audio/transcriptions", data=data, files={"file": ("a.wav", wav_bytes(AUDIO[0]))})
        assert r.status_code == 200, r.text
        assert r.text == alone.text
        bad = client.post(
            "/v1/audio/transcriptions",
            data={"model": "auto", "repeats": "many", "temperature": "2"},
            files={"file": ("a.wav", wav_bytes(AUDIO[0]))},
        )
    assert len(seen) == 1 and type(seen[0]) is TaggedRequest
    assert (seen[0].tag, seen[0].repeats, seen[0].language, seen[0].response_format) == ("batch-7", 3, "sw", "text")
    assert bad.status_code == 400  # every bad field at once, the first one named
    error = bad.json()["error"]
    assert "repeats='many' must be a whole number" in error["message"] and "temperature=2.0" in error["message"]
    assert error["param"] == "temperature"  # field order: temperature comes before repeats


def test_a_form_without_file_or_model_names_both_and_empty_fields_are_absent(transcriber):
    with TestClient(create_app(transcriber)) as client:
        r = client.post("/v1/audio/transcriptions", data={"language": "sw", "model": ""})
        empty = client.post(  # as FastAPI's form parsing did: an empty field is a field not sent
            "/v1/audio/transcriptions",
            data={"model": "sw", "language": "", "response_format": "", "temperature": "", "prompt": ""},
            files={"file": ("a.wav", wav_bytes(AUDIO[1]))},
        )
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "file is required" in message and "model is required" in message
    assert empty.status_code == 200 and empty.json() == {
        "text": transcriber.transcribe(AUDIO[1], "auto", adapter="sw").text
    }
