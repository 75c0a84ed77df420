"""Bounded decoding (data/audio.py): limits read from the header and refused before decoding, decoding that stops at
the limit when the header does not know the length, memory within the mono output whatever the file's rate and
channels, and the same samples as before for every normal file."""

import io
import shutil
import subprocess
import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import LIBRIVOX
from whisper_lora.data.audio import (
    BLOCK_BYTES,
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    SAMPLE_RATE,
    AudioError,
    AudioLimits,
    AudioTooLarge,
    AudioUnsupported,
    load_audio,
)
from whisper_lora.errors import ConfigError

CLIP = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"
SERVER_LIMITS = AudioLimits(max_seconds=1800)  # the server's defaults


def silent_flac(rate: int, channels: int, seconds: float, declared: float | None = None) -> bytes:
    """FLAC of silence (a few bytes a second whatever the rate) whose header declares ``declared`` seconds
    (None: the truth; 0: an unknown length, as a FLAC encoded from a pipe has)."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros((min(rate, int(rate * seconds)), channels), np.int16)
        left = int(rate * seconds)
        while left > 0:
            f.write(block[:left])
            left -= len(block)
    return declare_frames(buf.getvalue(), None if declared is None else int(declared * rate))


def declare_frames(flac: bytes, frames: int | None) -> bytes:
    """``flac`` with STREAMINFO's 36-bit total-samples field set to ``frames`` (None: unchanged)."""
    if frames is None:
        return flac
    data = bytearray(flac)
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
    field = int.from_bytes(data[18:26], "big")
    data[18:26] = ((field & ~(2**36 - 1)) | frames).to_bytes(8, "big")
    return bytes(data)


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _peak(fn, *args, **kwargs) -> tuple[object, int, float]:
    """What ``fn`` returned (or raised), the peak of the memory it allocated (tracemalloc) and its seconds."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        out = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - returned for the test to look at
        out = e
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, peak, seconds


def _reference(path) -> np.ndarray:
    """What load_audio returned before decoding was bounded: the whole file, its mean over channels, librosa."""
    import librosa

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate == SAMPLE_RATE:
        return audio
    return librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE).astype(np.float32)


FORMATS = [  # (rate, channels, format, subtype, extension): every container and codec libsndfile reads for us
    (16000, 1, "WAV", "PCM_16", "wav"),
    (22050, 3, "WAV", "FLOAT", "wav"),
    (16000, 8, "WAV", "PCM_U8", "wav"),
    (8000, 1, "WAV", "ULAW", "wav"),
    (44100, 2, "FLAC", "PCM_16", "flac"),
    (48000, 6, "FLAC", "PCM_24", "flac"),
    (96000, 2, "FLAC", "PCM_24", "flac"),
    (44100, 2, "OGG", "VORBIS", "ogg"),
    (48000, 2, "OGG", "OPUS", "opus"),
    (22050, 1, "MP3", "MPEG_LAYER_III", "mp3"),
    (44100, 2, "MP3", "MPEG_LAYER_III", "mp3"),
    (11025, 1, "AIFF", "PCM_16", "aiff"),
    (32000, 17, "WAV", "PCM_16", "wav"),
]


@pytest.mark.parametrize(("rate", "channels", "fmt", "subtype", "ext"), FORMATS)
def test_normal_files_give_the_same_samples_as_before(tmp_path, rate, channels, fmt, subtype, ext):
    noise = (np.random.default_rng(rate + channels).standard_normal((int(rate * 7.3), channels)) * 0.1).astype(
        np.float32
    )
    path = tmp_path / f"clip.{ext}"
    sf.write(path, noise, rate, format=fmt, subtype=subtype)
    got, want = load_audio(path), _reference(path)
    assert got.dtype == np.float32 and np.array_equal(got, want)  # bit for bit: transcripts are compared
    assert np.array_equal(load_audio(path, limits=SERVER_LIMITS), want)


def test_the_shipped_clips_give_the_same_samples_as_before():
    for path in sorted(LIBRIVOX.glob("*.wav")):
        assert np.array_equal(load_audio(path), _reference(path)), path.name


@pytest.mark.parametrize(("rate", "fmt", "ext"), [(16000, "MP3", "mp3"), (44100, "FLAC", "flac")])
def test_a_recording_longer_than_a_block_gives_the_same_samples_as_before(tmp_path, rate, fmt, ext):
    frames = BLOCK_BYTES // 4 + 5 * rate  # one block (262 s at 16 kHz mono) and 5 s more
    noise = (np.random.default_rng(3).standard_normal(frames) * 0.1).astype(np.float32)
    path = tmp_path / f"long.{ext}"
    sf.write(path, noise, rate, format=fmt)
    assert np.array_equal(load_audio(path), _reference(path))


def test_limits_are_validated_at_once():
    with pytest.raises(ConfigError) as e:
        AudioLimits(max_seconds=0, max_sample_rate=10, max_channels=0)
    for problem in ("max_seconds=0", "max_sample_rate=10 must be >= 1000", "max_channels=0 must be >= 1"):
        assert problem in str(e.value)
    assert AudioLimits().max_samples is None and SERVER_LIMITS.max_samples == 1800 * 48_000 * 8
    assert (AudioLimits().max_sample_rate, AudioLimits().max_channels) == (MAX_SAMPLE_RATE, MAX_CHANNELS)


def _many_channels_wav(channels: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((1600, channels), np.int16), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "limit", "words"),
    [  # a FLAC of silence expands ~3,750x at 655,350 Hz x 8 channels: 37 GB of float32 for 1,790 s
        ("rate.flac", lambda: silent_flac(655_350, 8, 5, declared=1790), "max_sample_rate", ["655350 Hz", "192000 Hz"]),
        ("channels.wav", lambda: _many_channels_wav(40), "max_channels", ["40 channels", "at most 32"]),
        ("samples.flac", lambda: silent_flac(192_000, 8, 5, declared=1790), "max_seconds", ["2,749,440,000 samples"]),
        ("long.flac", lambda: silent_flac(16_000, 1, 5, declared=1900), "max_seconds", ["1900.0 s long", "1800 s"]),
    ],
)
def test_the_header_is_refused_before_anything_is_decoded(tmp_path, name, make, limit, words):
    path = _write(tmp_path, name, make())
    error, peak, seconds = _peak(load_audio, path, limits=SERVER_LIMITS)
    assert isinstance(error, AudioTooLarge) and error.limit == limit, error
    assert all(w in str(error) for w in words), str(error)
    assert peak < 2**20 and seconds < 1, (peak, seconds)  # nothing decoded


def test_decoding_memory_is_the_mono_output_not_rate_times_channels(tmp_path):
    # 20 s at 192 kHz x 8: 123 MB as float32 frames x channels (what sf.read allocated), 1.3 MB as 16 kHz mono
    path = _write(tmp_path, "wide.flac", silent_flac(192_000, 8, 20))
    audio, peak, _ = _peak(load_audio, path)
    assert isinstance(audio, np.ndarray) and len(audio) == 20 * SAMPLE_RATE
    assert peak < 2 * audio.nbytes + BLOCK_BYTES * 1.25 + 2**20, f"{peak / 2**20:.0f} MiB"


def test_a_stream_without_its_length_is_decoded_and_stops_at_the_limit(tmp_path):
    speech, _ = sf.read(CLIP, dtype="int16")
    buf = io.BytesIO()
    sf.write(buf, speech, SAMPLE_RATE, format="FLAC")
    known = _write(tmp_path, "known.flac", buf.getvalue())
    unknown = _write(tmp_path, "unknown.flac", declare_frames(buf.getvalue(), 0))  # as `flac -` writes it
    assert sf.info(str(unknown)).frames > 2**62  # libsndfile: "SF_COUNT_MAX frames"
    assert np.array_equal(load_audio(unknown, limits=SERVER_LIMITS), load_audio(known))
    with pytest.raises(AudioTooLarge, match=r"longer than 1 s \(decoding stopped there\); accepted: at most 1 s"):
        load_audio(unknown, limits=AudioLimits(max_seconds=1))
    # 60 s at 192 kHz x 8 of which 10 s of limit allow 38.4 M samples (2.5 s): decoding stops there
    wide = _write(tmp_path, "wide.flac", silent_flac(192_000, 8, 60, declared=0))
    error, peak, seconds = _peak(load_audio, wide, limits=AudioLimits(max_seconds=10))
    assert isinstance(error, AudioTooLarge) and "more than 3,840,000 samples" in str(error), error
    assert peak < BLOCK_BYTES * 1.25 + 2**20 and seconds < 2, (peak, seconds)


def test_a_header_that_declares_less_is_read_as_declared(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, np.full(60 * SAMPLE_RATE, 1000, np.int16), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    at = data.find(b"data")
    data[at + 4 : at + 8] = (2 * SAMPLE_RATE).to_bytes(4, "little")  # 1 s declared, 60 s held
    audio = load_audio(_write(tmp_path, "short.wav", bytes(data)), limits=AudioLimits(max_seconds=2))
    assert len(audio) == SAMPLE_RATE


def test_a_header_no_recording_has_is_an_error(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, np.zeros(100, np.int16), 8000, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    data[24:28] = (300).to_bytes(4, "little")  # 300 Hz
    with pytest.raises(AudioError, match="300 Hz is no recording's"):
        load_audio(_write(tmp_path, "slow.wav", bytes(data)))


WEBM = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm" + bytes(400)  # an EBML header


def test_a_container_no_decoder_reads_is_refused_naming_what_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg
    with pytest.raises(AudioUnsupported) as e:
        load_audio(_write(tmp_path, "talk.webm", WEBM))
    text = str(e.value)
    assert "cannot decode talk.webm" in text and "ffmpeg: not installed" in text
    assert "readable here: wav, flac, ogg (vorbis, opus), mp3, aiff" in text


FFMPEG = shutil.which("ffmpeg")


def _ffmpeg(*args: str) -> bytes:
    return subprocess.run([FFMPEG, "-nostdin", "-v", "error", *args], check=True, capture_output=True).stdout


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed: such containers are refused (test above)")
def test_ffmpeg_decodes_other_containers_within_the_limit(tmp_path):
    path = tmp_path / "talk.webm"  # 20 minutes of low-bitrate Opus: about 900 kB that decode to 230 MB of float32
    _ffmpeg("-f", "lavfi", "-i", "anoisesrc=d=1200:a=0.1", "-ac", "2", "-c:a", "libopus", "-b:a", "6k", str(path))
    error, peak, seconds = _peak(load_audio, path, limits=AudioLimits(max_seconds=30))
    assert isinstance(error, AudioTooLarge) and "longer than 30 s (decoding stopped there)" in str(error), error
    assert peak < 4 * 2**20 + BLOCK_BYTES * 1.25 and seconds < 5, (peak, seconds)
    short = tmp_path / "short.webm"
    _ffmpeg("-f", "lavfi", "-i", "anoisesrc=d=3:a=0.1", "-ac", "2", "-c:a", "libopus", str(short))
    pcm = np.frombuffer(_ffmpeg("-i", str(short), "-f", "s16le", "-"), "<i2").astype(np.float32) / 32768
    import librosa

    want = librosa.resample(pcm.reshape(-1, 2).T.mean(axis=0), orig_sr=48000, target_sr=SAMPLE_RATE)
    assert np.array_equal(load_audio(short), want)  # what librosa's audioread path gave


def test_an_ffmpeg_decode_that_stalls_is_killed_at_its_deadline(tmp_path, monkeypatch):
    """A stand-in ffmpeg that writes a WAV header and a little PCM, then hangs: the read ends at the deadline with
    an error that says so, instead of holding the request (and its worker) forever."""
    import whisper_lora.data.audio as audio

    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    head = io.BytesIO()
    sf.write(head, np.zeros(1600, np.int16), 16000, format="WAV", subtype="PCM_16")
    (tmp_path / "head.wav").write_bytes(head.getvalue()[:-3200] + bytes(3200))
    fake.write_text(f"#!/bin/sh\ncat {tmp_path / 'head.wav'}\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    monkeypatch.setattr(audio, "FFMPEG_SECONDS", 1.0)
    started = time.monotonic()
    with pytest.raises(AudioError, match=r"ffmpeg did not finish within 1 s \(killed\)"):
        load_audio(_write(tmp_path, "talk.webm", WEBM))
    assert time.monotonic() - started < 10


def _spawns(monkeypatch) -> list[list[str]]:
    """Every command ``load_audio`` starts (they are then started as usual)."""
    import whisper_lora.data.audio as audio

    started, popen = [], subprocess.Popen

    def recording(args, *a, **kw):
        started.append(list(args))
        return popen(args, *a, **kw)

    monkeypatch.setattr(audio.subprocess, "Popen", recording)
    return started


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed: nothing could start it")
def test_bytes_that_start_like_no_container_never_start_ffmpeg(tmp_path, monkeypatch):
    """Starting ffmpeg costs about 60 ms of CPU: an upload of random bytes must not buy it (a flood of them took the
    CPU from transcription), and the error still names what is readable."""
    started = _spawns(monkeypatch)
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    noise = b"\x00" + noise[1:]  # no frame sync at the start
    with pytest.raises(AudioUnsupported, match="readable here: wav, flac") as e:
        load_audio(_write(tmp_path, "noise.wav", noise))
    assert started == [] and "ffmpeg: not started: the file starts like none of webm" in str(e.value)


@pytest.mark.parametrize(
    ("head", "container"),
    [
        (WEBM[:64], "matroska"),
        (b"\x00\x00\x00\x20ftypM4A ", "mov"),
        (b"RIFF\x24\x00\x00\x00WAVE", "wav"),
        (b"RF64\xff\xff\xff\xffWAVE", "wav"),
        (b"\x00\x00\x00\x08wide\x00\x00", "mov"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00fLaC", "mp3"),  # a tagged flac: ffmpeg probes past the tag
        (b"ADIF\x00", "aac"),
        (b"#!AMR-WB\n", "amr"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02", "ogg"),
        (b"ID3\x04\x00", "mp3"),
        (b"\xff\xfb\x90\x64", "mp3"),
        (b"\xff\xf1\x50\x80", "mp3"),  # ADTS aac: ffmpeg probes it
        (b"#!AMR\n", "amr"),
        (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9", "asf"),
        (b"\x00\x01\x02\x03", None),
        (b"hello, world", None),
        (b"", None),
    ],
)
def test_container_signatures(head, container):
    from whisper_lora.data.audio import container_signature

    assert container_signature(head) == container


@pytest.mark.skipif(FFMPEG is None or shutil.which("nice") is None, reason="ffmpeg or nice is not installed")
def test_ffmpeg_runs_below_the_process_priority(tmp_path, monkeypatch):
    """A container only ffmpeg reads is decoded by an ffmpeg started through ``nice``: a flood of such uploads waits
    for the CPU instead of slowing transcription down."""
    from whisper_lora.data.audio import FFMPEG_NICE

    path = tmp_path / "short.webm"
    _ffmpeg("-f", "lavfi", "-i", "sine=d=1", "-c:a", "libopus", str(path))
    started = _spawns(monkeypatch)
    assert len(load_audio(path)) == pytest.approx(SAMPLE_RATE, abs=400)
    assert len(started) == 1 and started[0][1:3] == ["-n", str(FFMPEG_NICE)], started
    assert started[0][0].endswith("nice") and started[0][3].endswith("ffmpeg")
