"""Crafted and mutated uploads for the abuse suite (``test_abuse.py``) and ``bench/serve_load.py --scenario abuse``.

Every upload is made here from a seed (nothing binary is committed). ``crafted()`` must each be refused with a JSON 4xx;
``mutated()`` (valid files with bytes flipped or cut) may decode (200) or be refused (4xx), but never give a 5xx.
"""

from __future__ import annotations

import functools
import io
import random
import struct

import numpy as np
import soundfile as sf

SR = 16_000


def _encode(audio: np.ndarray, fmt: str, subtype: str | None = None, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + rng.normal(0, 0.05, t.size))).astype(np.float32)


def valid(clip: np.ndarray | None = None) -> dict[str, tuple[bytes, str]]:
    """Small valid uploads in every container libsndfile writes: name -> (bytes, filename); ``clip`` (16 kHz): what
    they hold (default: 2 s of a tone)."""
    clip = _speechlike(2.0) if clip is None else clip
    return {
        "wav": (_encode(clip, "WAV", "PCM_16"), "a.wav"),
        "flac": (_encode(clip, "FLAC"), "a.flac"),
        "ogg": (_encode(clip, "OGG", "VORBIS"), "a.ogg"),
        "opus": (_encode(clip, "OGG", "OPUS", 48_000), "a.opus"),
        "mp3": (_encode(clip, "MP3", "MPEG_LAYER_III"), "a.mp3"),
    }


def _wav_header(channels: int, rate: int, bits: int, data_bytes: int, fmt_tag: int = 1) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    return (
        b"RIFF"
        + struct.pack("<I", (36 + data_bytes) & 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes & 0xFFFFFFFF)
    )


@functools.lru_cache(maxsize=2)
def huge_rate_flac(seconds: float = 60.0) -> bytes:
    """Silence at 655,350 Hz x 8 channels: a few hundred KB on the wire, gigabytes once decoded as floats."""
    rate, channels = 655_350, 8
    buf = io.BytesIO()
    block = np.zeros((rate, channels), np.int16)
    with sf.SoundFile(buf, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds)):
            f.write(block)
    return buf.getvalue()


def crafted() -> dict[str, tuple[bytes, str]]:
    """Uploads no server should decode: name -> (bytes, filename). Each must get a JSON 4xx."""
    rng = random.Random(35)
    noise = bytes(rng.getrandbits(8) for _ in range(4096))
    ok = valid()
    nan = np.full(SR, np.nan, np.float32)
    inf = np.full(SR, np.inf, np.float32)
    return {
        "empty": (b"", "a.wav"),
        "random bytes": (noise, "a.wav"),
        "random after RIFF/WAVE": (b"RIFF\x00\x00\x00\x00WAVE" + noise, "a.wav"),
        "random after fLaC": (b"fLaC" + noise, "a.flac"),
        "random after OggS": (b"OggS" + noise, "a.ogg"),
        "random after ID3": (b"ID3\x04\x00\x00\x00\x00\x00\x00" + noise, "a.mp3"),
        "random after mp3 frame sync": (b"\xff\xfb\x90\x64" + noise, "a.mp3"),
        "random after EBML (webm)": (b"\x1a\x45\xdf\xa3" + noise, "a.webm"),
        "random after ftyp (m4a)": (b"\x00\x00\x00\x20ftypM4A " + noise, "a.m4a"),
        "wav header only": (_wav_header(1, SR, 16, 0), "a.wav"),
        "wav at 0 Hz": (_wav_header(1, 0, 16, 4096) + noise, "a.wav"),
        "wav with 0 channels": (_wav_header(0, SR, 16, 4096) + noise, "a.wav"),
        "wav with 1000 channels": (_wav_header(1000, SR, 16, 4096) + noise, "a.wav"),
        "wav at 4 GHz": (_wav_header(1, 4_000_000_000, 16, 4096) + noise, "a.wav"),
        "wav of NaN": (_encode(nan, "WAV", "FLOAT"), "a.wav"),
        "wav of inf": (_encode(inf, "WAV", "FLOAT"), "a.wav"),
        "wav of no frames": (_encode(np.zeros(0, np.float32), "WAV", "PCM_16"), "a.wav"),
        "flac at 655 kHz x 8 channels": (huge_rate_flac(), "a.flac"),
        **{f"{name} cut after its header": (data[:60], fn) for name, (data, fn) in ok.items() if name != "wav"},
    }


def mutated(seed: int = 0, count: int = 20, clip: np.ndarray | None = None) -> dict[str, tuple[bytes, str]]:
    """Valid uploads with bytes flipped or cut at random places, and headers declaring more than the file holds: each
    may decode (what it holds, as a truncated recording) or be refused, never a 5xx."""
    rng = random.Random(seed)
    ok = list(valid(clip).items())
    noise = bytes(rng.getrandbits(8) for _ in range(4096))
    out = {
        "wav declaring 2 GB, holding 4 KB": (_wav_header(1, SR, 16, 2**31) + noise, "a.wav"),
        "wav cut after 8 samples": (ok[0][1][0][:60], "a.wav"),
    }
    for k in range(count):
        name, (data, filename) = ok[k % len(ok)]
        data = bytearray(data)
        if k % 3 == 0:
            data = data[: rng.randrange(len(data) // 10, len(data))]
            what = "cut"
        else:
            for _ in range(rng.randrange(1, 12)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            what = "flipped"
        out[f"{name} {what} #{k}"] = (bytes(data), filename)
    return out
