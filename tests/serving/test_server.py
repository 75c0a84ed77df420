"""The HTTP API through real clients against a real server process on loopback."""

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.inference.test_transcriber import AUDIO
from whisper_lora.serving.process import running

CASES = [("sw", None), ("cs", None), ("ary", None), ("auto", "en"), ("auto", "sw"), ("whisper-tiny-random", "cs")]


def _wav(audio: np.ndarray, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype=subtype)
    return buf.getvalue()


WAVS = [_wav(a) for a in AUDIO]


@pytest.fixture(scope="module")
def server(tiny_dir, tiny_registry):
    args = [
        "serve",
        "--base",
        str(tiny_dir),
        "--adapters",
        str(tiny_registry),
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--max-new-tokens",
        "8",
        "--max-upload-mb",
        "1",
    ]
    with running(args, timeout=240) as url:
        yield url


def _post(url, wav, model, language=None, fmt="verbose_json", filename="a.wav"):
    data = {"model": model, "response_format": fmt}
    if language:
        data["language"] = language
    return httpx.post(f"{url}/v1/audio/transcriptions", data=data, files={"file": (filename, wav)}, timeout=120)


def test_health_and_models(server):
    health = httpx.get(f"{server}/health").json()
    assert health["adapters"] == ["ary", "cs", "sw"]
    # tiny random base: no routing background, so Whisper's language ID routes every adapter, and says why
    routing = health["routing"]["adapters"]
    assert set(routing) == {"ary", "cs", "sw"} and {r["route"] for r in routing.values()} == {"whisper-lid"}
    assert all("routing background" in r["reason"] or "language profile" in r["reason"] for r in routing.values())
    ids = [m["id"] for m in httpx.get(f"{server}/v1/models").json()["data"]]
    assert ids[0] == "whisper-tiny-random" and {"sw", "cs", "ary", "auto"} <= set(ids)


def test_formats_and_routing(server):
    r = _post(server, WAVS[0], "sw").json()  # verbose_json: decoded with timestamps, for its segments
    assert r["adapter"] == "sw" and r["language"] == "swahili" and r["language_code"] == "sw"
    assert isinstance(r["segments"], list) and r["duration"] > 0
    plain = _post(server, WAVS[0], "sw", fmt="json").json()
    assert list(plain) == ["text"] and plain["text"]
    text = _post(server, WAVS[0], "sw", fmt="text")
    assert text.headers["content-type"].startswith("text/plain") and text.text == plain["text"]
    assert _post(server, WAVS[0], "swahili").json()["adapter"] == "sw"  # aliases name adapters too
    routed = _post(server, WAVS[0], "auto", "cs").json()
    assert routed["adapter"] == "cs" and routed["language_probability"] is None and routed["route"] == "forced"
    base = _post(server, WAVS[0], "whisper-tiny-random", "sw").json()
    assert base["adapter"] is None


def test_official_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed")
    out = client.audio.transcriptions.create(model="cs", file=("clip.wav", WAVS[1]), response_format="verbose_json")
    assert out.text == _post(server, WAVS[1], "cs").json()["text"]
    assert [m.id for m in client.models.list()][0] == "whisper-tiny-random"
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="de", file=("clip.wav", WAVS[1]))


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        ({"wav": b""}, 400, "empty"),
        ({"wav": b"RIFF\x00\x00\x00\x00WAVEjunk" * 10, "filename": "x.wav"}, 400, "could not decode"),
        ({"wav": b"\x00" * (2**20 + 10)}, 413, "larger than the limit"),
        ({"wav": _wav(np.full(16000, np.nan, np.float32), "FLOAT")}, 400, "16000 non-finite (NaN or infinite)"),
        ({"model": "klingon"}, 404, "unknown model 'klingon'; valid models: whisper-tiny-random, auto"),
        ({"language": "xx"}, 400, "unknown language 'xx'"),
        ({"fmt": "docx"}, 400, "unsupported response_format 'docx'; valid: json, text, srt, vtt, verbose_json"),
    ],
)
def test_bad_input_gets_a_clear_4xx(server, kwargs, status, message):
    args = {"wav": WAVS[0], "model": "sw", **kwargs}
    r = _post(
        server,
        args.pop("wav"),
        args.pop("model"),
        args.pop("language", None),
        args.pop("fmt", "verbose_json"),
        args.pop("filename", "a.wav"),
    )
    assert r.status_code == status and message in r.json()["error"]["message"]
    assert httpx.get(f"{server}/health").status_code == 200


def test_missing_fields_are_400(server):
    r = httpx.post(f"{server}/v1/audio/transcriptions", data={"model": "sw"}, timeout=30)
    assert r.status_code == 400 and "file" in r.json()["error"]["message"]


def test_concurrent_mixed_load_equals_isolated(server):
    expected = {}
    for i, (model, lang) in enumerate(CASES):  # isolated, one at a time
        expected[i] = _post(server, WAVS[i % len(WAVS)], model, lang).json()["text"]
    before = httpx.get(f"{server}/health").json()
    jobs = [i % len(CASES) for i in range(50)]

    def one(i):
        model, lang = CASES[i]
        t = time.perf_counter()
        r = _post(server, WAVS[i % len(WAVS)], model, lang)
        return i, r.status_code, r.json().get("text"), time.perf_counter() - t

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, jobs))
    assert all(code == 200 for _, code, _, _ in results)
    assert all(text == expected[i] for i, _, text, _ in results)
    after = httpx.get(f"{server}/health").json()
    assert after["served"] - before["served"] == 50
    assert after["batches"] - before["batches"] < 50  # requests really shared decode calls


def test_a_broken_adapter_is_reported_and_the_rest_serve(tiny_dir, tiny_registry, tmp_path):
    import shutil

    root = tmp_path / "reg"
    shutil.copytree(tiny_registry, root)
    (root / "cs" / "whisper_lora.json").write_text("{not json")
    args = ["serve", "--base", str(tiny_dir), "--adapters", str(root), "--precision", "fp32", "--device", "cpu"]
    with running([*args, "--max-new-tokens", "8"], timeout=240) as url:
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "degraded" and health["adapters"] == ["ary", "sw"]
        assert [b["name"] for b in health["broken_adapters"]] == ["cs"]
        assert "whisper_lora.json is malformed" in health["broken_adapters"][0]["reason"]
        models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert models["cs"]["status"] == "broken" and "malformed" in models["cs"]["reason"]
        assert _post(url, WAVS[0], "sw").status_code == 200
        for model, lang in (("cs", None), ("auto", "cs")):  # asked by name or routed by language
            r = _post(url, WAVS[0], model, lang)
            assert r.status_code == 503, r.text
            assert "adapter 'cs' is broken: " in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"response_format": "json", "timestamp_granularities[]": "word"}, "needs response_format=verbose_json"),
        ({"timestamp_granularities[]": "phoneme"}, "unknown timestamp_granularities ['phoneme']; valid: segment, word"),
        ({"temperature": "1.5"}, "temperature=1.5 must be between 0 and 1"),
    ],
)
def test_timestamp_fields_are_honoured_or_refused(server, extra, message):
    data = {"model": "sw", "response_format": "verbose_json", **extra}
    r = httpx.post(f"{server}/v1/audio/transcriptions", data=data, files={"file": ("a.wav", WAVS[0])}, timeout=120)
    assert r.status_code == 400 and message in r.json()["error"]["message"]
