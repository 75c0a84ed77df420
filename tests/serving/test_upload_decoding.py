"""Uploads that expand when decoded, against a real ``whisper-lora serve`` with its default limits (1,800 s, 192 kHz,
32 channels): refused from their header, or decoding stopped at the limit, with a JSON 4xx in seconds while the
server's peak memory (VmHWM) moves by less than ``RSS_BOUND``; uploads without a decoder here are refused naming
the formats that are read."""

import contextlib
import functools
import io
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.data.test_audio_limits import WEBM, declare_frames, silent_flac
from tests.inference.test_transcriber import AUDIO
from whisper_lora.serving.process import memory_bytes, running, server_pid

RSS_BOUND = 200 * 2**20  # the most an upload below may add to the server's peak memory
FFMPEG = shutil.which("ffmpeg")


@functools.cache
def bomb() -> bytes:
    """The measured one: 60 s of silence at 655,350 Hz x 8 channels, 336 kB of FLAC, 1.26 GB as float32."""
    return silent_flac(655_350, 8, 60)


def _wav(audio: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def _flac(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="FLAC")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tiny_dir, tiny_registry):
    args = ["serve", "--base", str(tiny_dir), "--adapters", str(tiny_registry), "--precision", "fp32"]
    args += ["--device", "cpu", "--max-new-tokens", "8"]  # the default audio limits
    with running(args, timeout=240) as url:
        yield url


def _post(url: str, data: bytes, filename: str, **form) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/audio/transcriptions",
        data={"model": "sw", "response_format": "verbose_json", **form},
        files={"file": (filename, data)},
        timeout=120,
    )


@contextlib.contextmanager
def peak_growth(url: str):
    """Yields a dict whose ``bytes`` is, on exit, how far the server's peak RSS rose above its RSS at entry."""
    pid = server_pid(url)
    (Path("/proc") / str(pid) / "clear_refs").write_text("5")  # peak RSS := RSS now
    before = memory_bytes(pid, "VmRSS")
    out = {}
    yield out
    out["bytes"] = memory_bytes(pid, "VmHWM") - before


def _refused(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text[:300]
    message = r.json()["error"]["message"]
    assert all(w in message for w in words), message


def test_uploads_that_expand_are_refused_from_their_header(server):
    assert _post(server, _wav(AUDIO[1]), "warm.wav").status_code == 200
    served = httpx.get(f"{server}/health").json()["served"]
    assert len(bomb()) < 400_000  # small on the wire
    cases = [
        ("bomb.flac", bomb(), ["655350 Hz", "at most 192000 Hz (--max-sample-rate)"]),
        # the same declaring 1,790 s: within the 1,800 s limit, 37 GB as float32 frames x channels
        ("bomb-1790s.flac", declare_frames(bomb(), 1790 * 655_350), ["655350 Hz", "--max-sample-rate"]),
        # a rate and channels allowed, but 1,790 s of 192 kHz x 8: past the samples of 1,800 s of 48 kHz 7.1
        ("wide.flac", silent_flac(192_000, 8, 5, declared=1790), ["2,749,440,000 samples", "--max-audio-seconds"]),
        ("channels.wav", _wav(np.zeros((1600, 40), np.int16)), ["40 channels", "at most 32 (--max-channels)"]),
        ("long.flac", silent_flac(16_000, 1, 5, declared=1900), ["1900.0 s long", "at most 1800 s"]),
    ]
    with peak_growth(server) as growth:
        for name, data, words in cases:
            started = time.monotonic()
            r = _post(server, data, name)
            _refused(r, 413, *words)
            assert time.monotonic() - started < 5, name
    assert growth["bytes"] < RSS_BOUND, f"peak RSS rose {growth['bytes'] / 2**20:.0f} MiB"
    assert httpx.get(f"{server}/health").json()["served"] == served


def test_a_stream_without_its_length_is_decoded_up_to_the_limit(server):
    speech = (np.clip(AUDIO[1], -1, 1) * 32767).astype(np.int16)
    known = _post(server, _flac(speech), "known.flac")
    unknown = _post(server, declare_frames(_flac(speech), 0), "unknown.flac")  # as `flac -` writes it
    assert known.status_code == unknown.status_code == 200, unknown.text[:300]
    assert unknown.json()["text"] == known.json()["text"]
    assert unknown.json()["duration"] == known.json()["duration"]
    # 1,900 s of silence without its length (94 kB): decoding stops at 1,800 s
    endless = declare_frames(silent_flac(16_000, 1, 1900), 0)
    with peak_growth(server) as growth:
        started = time.monotonic()
        r = _post(server, endless, "endless.flac")
        _refused(r, 413, "longer than 1800 s (decoding stopped there)", "--max-audio-seconds")
        assert time.monotonic() - started < 5
    assert growth["bytes"] < RSS_BOUND, f"peak RSS rose {growth['bytes'] / 2**20:.0f} MiB"


def test_a_header_that_declares_less_is_decoded_as_declared(server):
    data = bytearray(_wav(np.full(60 * 16000, 1000, np.int16)))
    at = data.find(b"data")
    data[at + 4 : at + 8] = (2 * 16000).to_bytes(4, "little")  # 1 s declared, 60 s held
    r = _post(server, bytes(data), "short.wav")
    assert r.status_code == 200 and r.json()["duration"] == 1.0, r.text[:300]


def test_non_finite_samples_at_any_rate_are_a_400(server):
    # at 44.1 kHz they reached the resampler, whose error was not an audio error: a 500
    r = _post(server, _wav(np.full(44100, np.nan, np.float32), 44100, "FLOAT"), "nan.wav")
    _refused(r, 400, "nan.wav has 16000 non-finite (NaN or infinite) samples")  # counted at 16 kHz


@pytest.mark.skipif(FFMPEG is not None, reason="ffmpeg is installed here: the next test decodes such containers")
def test_a_container_without_a_decoder_here_is_refused_naming_the_formats(server):
    _refused(
        _post(server, WEBM, "talk.webm"),
        400,
        "could not decode 'talk.webm' as audio; send wav, flac, ogg (vorbis, opus), mp3, aiff",
    )


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed: such containers are refused (test above)")
def test_ffmpeg_decoding_stops_at_the_limit(server, tmp_path):
    # 32 minutes of Opus in WebM (a minute encoded, then repeated): about 1 MB that decodes to 730 MB as float32
    minute, long = tmp_path / "minute.webm", tmp_path / "long.webm"
    run = [FFMPEG, "-nostdin", "-v", "error"]
    lavfi = ["-f", "lavfi", "-i", "anoisesrc=d=60:a=0.05", "-ac", "2", "-c:a", "libopus", "-b:a", "6k"]
    subprocess.run([*run, *lavfi, str(minute)], check=True)
    subprocess.run([*run, "-stream_loop", "31", "-i", str(minute), "-c", "copy", str(long)], check=True)
    with peak_growth(server) as growth:
        started = time.monotonic()
        r = _post(server, long.read_bytes(), "long.webm")
        _refused(r, 413, "longer than 1800 s (decoding stopped there)")
        seconds = time.monotonic() - started
    assert growth["bytes"] < RSS_BOUND, f"peak RSS rose {growth['bytes'] / 2**20:.0f} MiB"
    assert seconds < 30  # decoding 30 minutes of Opus: the work a legitimate upload of that length costs
    assert _post(server, minute.read_bytes(), "minute.webm").status_code == 200
