"""Audio decoding within limits, resampling and the signal checks (16 kHz mono, Whisper's 30 s window).

``load_audio`` is the library's one decoder (CLI, server uploads, demo, corpora). It reads a recording's header
first and refuses, before decoding anything, what its ``AudioLimits`` do not allow (sample rate, channels, declared
length, declared samples); then it decodes block by block, mixes each block down to mono at once and feeds it to a
streaming resampler, counting the frames actually decoded, so a header that lies or has no length still stops at the
limit. Peak memory: about twice the 16 kHz mono output (4 B x 16,000 x seconds: its blocks, then joined) plus one
block (``BLOCK_BYTES``, 16 MiB, and its mono mix), whatever the file's rate and channels.

Decoders, tried in order: libsndfile (wav, flac, ogg vorbis/opus, mp3, aiff, ...), then, for containers it cannot
read (webm, m4a, aac, ...), ffmpeg where it is on ``PATH``: a subprocess whose PCM comes through a pipe, so ffmpeg
waits while the pipe is full and is killed at the limit. It is started only for a file whose first bytes are one of
its containers' signatures (``container_signature``), at a lower CPU priority (``FFMPEG_NICE``): a server flooded with
undecodable uploads keeps its CPU for transcription. Without ffmpeg those containers are refused
(``AudioUnsupported``), never decoded whole.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_lora.errors import ConfigError, DataError

SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30
N_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS  # Whisper's input window
SILENCE_RMS = 1e-4  # below this the clip is treated as silence

MIN_SAMPLE_RATE = 1_000  # lower rates are broken headers, not recordings (telephone speech is 8 kHz)
MAX_SAMPLE_RATE = 192_000  # the highest rate real recorders and masters use (pro field recorders, DVD-Audio)
MAX_CHANNELS = 32  # 4th-order ambisonics has 25, multitrack field recorders 8-32; FLAC and Vorbis stop at 8
SAMPLES_PER_SECOND = 48_000 * 8  # decoding budget (rate x channels) per second of a duration limit: a 48 kHz 7.1
# recording of the full length; a higher rate x channels only for a proportionally shorter recording
BLOCK_BYTES = 2**24  # decoded at a time, as float32 frames x channels
RESAMPLER = "soxr_hq"  # librosa.resample's default, streamed: the same samples as resampling the whole signal
UNKNOWN_FRAMES = 2**62  # libsndfile says SF_COUNT_MAX frames for a stream without its length (FLAC total 0)
LIBSNDFILE_FORMATS = "wav, flac, ogg (vorbis, opus), mp3, aiff"  # what libsndfile reads, as users name it
FFMPEG_DEMUXERS = "matroska,webm,mov,mp4,m4a,aac,mp3,ogg,wav,flac,asf,amr"  # the only containers given to ffmpeg
FFMPEG_FORMATS = "webm, mkv, mp4/m4a, aac, wma, amr"  # the same, as users name them
FFMPEG_SECONDS = 120.0  # wall clock one ffmpeg decode may take (it decodes 30 min of audio in a few seconds)
FFMPEG_NICE = 10  # ffmpeg's CPU priority below the process's own: decoding uploads never starves transcription
SIGNATURE_BYTES = 64  # what ``container_signature`` reads of a file


class AudioError(DataError):
    """A file is missing or could not be decoded (in a corpus, a bad row with its reason)."""


class AudioTooLarge(AudioError):
    """A recording over one of its ``AudioLimits``: ``limit`` names the field (``max_seconds``, ...)."""

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


class AudioUnsupported(AudioError):
    """No decoder here reads this container; the message lists what can be read."""


def rate_and_channel_problems(max_sample_rate: int, max_channels: int) -> list[str]:
    """What is wrong with a sample-rate and channel limit (``AudioLimits`` and the serving configs check theirs)."""
    problems = []
    if not MIN_SAMPLE_RATE <= max_sample_rate:
        problems.append(f"max_sample_rate={max_sample_rate!r} must be >= {MIN_SAMPLE_RATE} Hz")
    if not max_channels >= 1:
        problems.append(f"max_channels={max_channels!r} must be >= 1")
    return problems


@dataclass(frozen=True)
class AudioLimits:
    """What ``load_audio`` decodes at most, checked on the header before decoding and on the frames as they are
    decoded. The defaults accept every real recording of any length."""

    max_seconds: float | None = None  # longest recording (None: no limit, and no decoding budget)
    max_sample_rate: int = MAX_SAMPLE_RATE  # highest sample rate, Hz
    max_channels: int = MAX_CHANNELS  # most channels

    def __post_init__(self) -> None:
        problems = rate_and_channel_problems(self.max_sample_rate, self.max_channels)
        if self.max_seconds is not None and not self.max_seconds > 0:
            problems.append(f"max_seconds={self.max_seconds!r} must be > 0 (or None for no limit)")
        if problems:
            raise ConfigError("invalid audio limits:\n  - " + "\n  - ".join(problems))

    @property
    def max_samples(self) -> int | None:
        """Samples (frames x channels) decoded at most: ``max_seconds`` x ``SAMPLES_PER_SECOND``."""
        return None if self.max_seconds is None else int(self.max_seconds * SAMPLES_PER_SECOND)

    def check_header(self, rate: int, channels: int, frames: int | None) -> None:
        """Refuse a recording by what its header says (``frames`` None: a length it does not know)."""
        if rate < MIN_SAMPLE_RATE:
            raise AudioError(f"a sample rate of {rate} Hz is no recording's; accepted: {MIN_SAMPLE_RATE} Hz or more")
        if rate > self.max_sample_rate:
            message = f"the audio's sample rate is {rate} Hz; accepted: at most {self.max_sample_rate} Hz"
            raise AudioTooLarge(message, "max_sample_rate")
        if channels < 1:
            raise AudioError(f"the audio has {channels} channels; a recording has at least 1")
        if channels > self.max_channels:
            raise AudioTooLarge(
                f"the audio has {channels} channels; accepted: at most {self.max_channels}", "max_channels"
            )
        if frames is not None:
            self.check_length(rate, channels, frames)

    def check_length(self, rate: int, channels: int, frames: int, stopped: bool = False) -> None:
        """Refuse ``frames`` frames over the limits (``stopped``: frames decoded so far, where decoding stops)."""
        seconds = frames / rate
        if self.max_seconds is not None and seconds > self.max_seconds:
            what = (
                f"longer than {self.max_seconds:g} s (decoding stopped there)" if stopped else f"{seconds:.1f} s long"
            )
            raise AudioTooLarge(f"the audio is {what}; accepted: at most {self.max_seconds:g} s", "max_seconds")
        if self.max_samples is not None and frames * channels > self.max_samples:
            held = f"more than {self.max_samples:,}" if stopped else f"{frames * channels:,}"
            raise AudioTooLarge(
                f"the audio holds {held} samples ({channels} channels at {rate} Hz); accepted: at most "
                f"{self.max_samples:,} ({SAMPLES_PER_SECOND:,} a second of the {self.max_seconds:g} s limit: "
                "fewer channels or a lower rate fit a longer recording)",
                "max_seconds",
            )


NO_LIMITS = AudioLimits()


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample float audio with librosa (no-op when the rates match)."""
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    import librosa

    return librosa.resample(audio.astype(np.float32), orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)


def _signal_problem(name: str, size: int, bad: int) -> str | None:
    if size == 0:
        return f"{name} holds no audio samples"
    if bad:
        return f"{name} has {bad} non-finite (NaN or infinite) samples of {size}; refusing to transcribe it"
    return None


def check_signal(audio: np.ndarray, name: str = "audio") -> np.ndarray:
    """Refuse a signal no model should see: no samples, or NaN/inf samples. Returns it as float32."""
    audio = np.asarray(audio, dtype=np.float32)
    problem = _signal_problem(name, audio.size, int(np.count_nonzero(~np.isfinite(audio))))
    if problem:
        raise AudioError(problem)
    return audio


@dataclass
class _Stream:
    """An opened recording: what its header says, and its mono float32 blocks at its own rate."""

    rate: int
    channels: int
    frames: int | None  # as the header declares it; None: not known
    blocks: Iterator[np.ndarray]
    close: Callable[[], None]


class _CannotOpen(Exception):
    """This decoder does not read the file (the next one may)."""


def _libsndfile(path: Path) -> _Stream:
    import soundfile as sf

    class Sequential(sf.SoundFile):
        """Reads front to back: soundfile seeks to where each read ended, which restarts libsndfile's mp3 decoder
        (other samples than one read of the whole file) and fails at the end of a stream without its length."""

        def seekable(self) -> bool:
            return False

    try:
        f = Sequential(str(path))
    except Exception as e:  # noqa: BLE001 - any container or corruption libsndfile refuses
        raise _CannotOpen(getattr(e, "error_string", None) or f"{type(e).__name__}: {e}") from None
    frames = f.frames if 0 <= f.frames < UNKNOWN_FRAMES else None
    if frames is not None:
        try:
            f.seek(0)  # as sf.read does: libsndfile's mp3 decoder starts otherwise without it
        except Exception as e:  # noqa: BLE001 - a stream too damaged to seek in (a flipped byte in a FLAC header)
            f.close()
            raise AudioError(f"cannot decode {path.name}: {getattr(e, 'error_string', None) or e}") from None

    def blocks() -> Iterator[np.ndarray]:
        size, left = max(1, BLOCK_BYTES // (4 * f.channels)), frames  # left None: to the end of the stream
        while left is None or left > 0:  # no further than the header says, as sf.read
            block = f.read(size if left is None else min(size, left), dtype="float32", always_2d=True)
            if not len(block):
                return
            left = None if left is None else left - len(block)
            mono = block.mean(axis=1)  # as sf.read(...).mean(axis=1) on the whole file: the same samples
            del block
            yield mono
            del mono  # one block alive at a time

    return _Stream(f.samplerate, f.channels, frames, blocks(), f.close)


def container_signature(head: bytes) -> str | None:
    """The container (of ``FFMPEG_DEMUXERS``) a file's first bytes announce, or None: ffmpeg is started only for a
    file that starts like one (starting it costs about 60 ms of CPU, which random bytes should not buy; a file crafted
    to start like one still starts it, at ``FFMPEG_NICE``)."""
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # and webm
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"uuid", b"pnot", b"junk", b"udta", b"pict"):
        return "mov"  # and mp4, m4a
    for magic, name in (
        (b"RIFF", "wav"),
        (b"RF64", "wav"),
        (b"BW64", "wav"),
        (b"fLaC", "flac"),
        (b"OggS", "ogg"),
        (b"ID3", "mp3"),  # an ID3 tag may also front flac or aac: ffmpeg probes past it
        (b"#!AMR", "amr"),
        (b"ADIF", "aac"),
        (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "asf"),
    ):
        if head.startswith(magic):
            return name
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mp3"  # an MPEG audio or ADTS (aac) frame sync
    return None


def _ffmpeg(path: Path) -> _Stream:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise _CannotOpen(f"not installed (it would read {FFMPEG_FORMATS})")
    with open(path, "rb") as f:
        head = f.read(SIGNATURE_BYTES)
    if container_signature(head) is None:
        raise _CannotOpen(f"not started: the file starts like none of {FFMPEG_FORMATS}")
    nice = shutil.which("nice")  # a program, not preexec_fn: subprocess then keeps its fast spawn
    prefix = [nice, "-n", str(FFMPEG_NICE)] if nice else []
    err = tempfile.TemporaryFile()  # a file, not a pipe: ffmpeg never blocks on its messages
    # only plain files and the listed containers (no playlists that open other files or URLs); 16-bit PCM of the
    # first audio stream at its own rate and channels, in a WAV header that says them
    proc = subprocess.Popen(
        prefix
        + [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-protocol_whitelist", "file"]
        + ["-format_whitelist", FFMPEG_DEMUXERS, "-i", f"file:{path.absolute()}"]
        + ["-vn", "-sn", "-dn", "-map_metadata", "-1", "-c:a", "pcm_s16le", "-f", "wav", "pipe:1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=err,
    )
    # a decode that takes too long (a crafted file, a stalled process) is killed: the pipe then ends, and says why
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    deadline = threading.Timer(FFMPEG_SECONDS, expire)
    deadline.daemon = True
    deadline.start()

    def close() -> None:
        deadline.cancel()
        if proc.poll() is None:
            proc.kill()  # at the limit, or on an error: ffmpeg decodes no further
        proc.wait()
        proc.stdout.close()
        err.close()

    def said() -> str:
        if expired.is_set():
            return f"ffmpeg did not finish within {FFMPEG_SECONDS:g} s (killed)"
        err.seek(0)
        lines = err.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1].strip() if lines else f"exit status {proc.returncode}"

    try:
        rate, channels = _wav_header(proc.stdout)
    except _CannotOpen as e:
        try:
            proc.wait(timeout=5)  # ffmpeg ends by itself when it decoded nothing: its message says why
        except subprocess.TimeoutExpired:
            pass
        reason = said() if proc.returncode else str(e)
        close()
        raise _CannotOpen(reason) from None

    def blocks() -> Iterator[np.ndarray]:
        frame = 2 * channels
        buf = bytearray(BLOCK_BYTES // 4 // frame * frame)  # int16: half a float32 block
        while got := _fill(proc.stdout, buf):
            if got >= frame:  # as librosa's audioread path: int16 / 32768 (exact), then the mean over channels
                x = np.frombuffer(buf, "<i2", got // frame * channels).astype(np.float32)
                x *= 1.0 / 32768
                mono = np.mean(x.reshape((-1, channels)).T, axis=0) if channels > 1 else x
                del x
                yield mono
                del mono  # one block alive at a time
            if got < len(buf):
                break
        if proc.wait():
            raise AudioError(f"ffmpeg stopped with an error: {said()}")

    return _Stream(rate, channels, None, blocks(), close)


def _fill(pipe, buf: bytearray) -> int:
    """Read into ``buf`` until it is full or the pipe ends; the bytes read."""
    view, got = memoryview(buf), 0
    while got < len(buf) and (n := pipe.readinto(view[got:])):
        got += n
    return got


def _wav_header(pipe) -> tuple[int, int]:
    """Sample rate and channels from the WAV header ffmpeg writes, read up to its data chunk."""
    head = pipe.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
        raise _CannotOpen("no audio stream decoded")
    found = None
    while len(chunk := pipe.read(8)) == 8:
        kind, size = chunk[:4], int.from_bytes(chunk[4:], "little")
        if kind == b"data":
            if found is None:
                break
            return found
        if size > 2**16:
            break
        body = pipe.read(size + size % 2)
        if kind == b"fmt " and len(body) >= 16:
            found = int.from_bytes(body[4:8], "little"), int.from_bytes(body[2:4], "little")
    raise _CannotOpen("an unexpected WAV header from ffmpeg")


DECODERS = (("libsndfile", _libsndfile), ("ffmpeg", _ffmpeg))  # tried in this order


def readable_formats() -> str:
    """The formats ``load_audio`` reads here (libsndfile's, and ffmpeg's where it is installed)."""
    return LIBSNDFILE_FORMATS + (f", {FFMPEG_FORMATS}" if shutil.which("ffmpeg") else "")


def _open(path: Path) -> _Stream:
    reasons = []
    for name, decoder in DECODERS:
        try:
            return decoder(path)
        except _CannotOpen as e:
            reasons.append(f"{name}: {e}")
    raise AudioUnsupported(f"cannot decode {path.name}: {'; '.join(reasons)}; readable here: {readable_formats()}")


def _decode(stream: _Stream, limits: AudioLimits, sr: int) -> tuple[np.ndarray, int, int]:
    """The stream as mono float32 at ``sr``; with its frames and non-finite samples counted at its own rate."""
    limits.check_header(stream.rate, stream.channels, stream.frames)
    resampler = None
    if stream.rate != sr:
        import soxr

        resampler = soxr.ResampleStream(stream.rate, sr, 1, dtype="float32", quality=RESAMPLER)
    out, frames, bad = [], 0, 0
    for block in stream.blocks:
        frames += len(block)
        limits.check_length(stream.rate, stream.channels, frames, stopped=True)
        bad += int(np.count_nonzero(~np.isfinite(block)))
        out.append(block if resampler is None else resampler.resample_chunk(block))
    if resampler is not None:
        out.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    audio = np.concatenate(out) if out else np.zeros(0, np.float32)
    if resampler is not None:  # the length librosa.resample gives
        size = int(np.ceil(frames * (float(sr) / stream.rate)))
        audio = audio[:size] if len(audio) >= size else np.pad(audio, (0, size - len(audio)))
    return audio, frames, bad


def load_audio(
    path: str | Path, sr: int = SAMPLE_RATE, validate: bool = True, limits: AudioLimits = NO_LIMITS
) -> np.ndarray:
    """Decode a recording within ``limits``, mix it down to mono and resample it to ``sr`` (float32).

    Over a limit: ``AudioTooLarge`` (from the header, before decoding, or where decoding reached it); a container
    no decoder here reads: ``AudioUnsupported``; any other failure: ``AudioError``. With ``validate`` (default) an
    empty or non-finite signal raises ``AudioError`` too (see ``check_signal``).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"missing file {path}")
    try:
        opened = _open(path)
    except AudioError:
        raise
    except Exception as e:  # noqa: BLE001 - a decoder that fails while opening, whatever its type
        raise AudioError(f"cannot decode {path.name}: {type(e).__name__}: {e}") from None
    with closing(opened) as stream:
        try:
            audio, frames, bad = _decode(stream, limits, sr)
        except AudioError:
            raise
        except Exception as e:  # noqa: BLE001 - a decoder's failure part-way, whatever its type
            raise AudioError(f"cannot decode {path.name}: {type(e).__name__}: {e}") from None
    problem = _signal_problem(path.name, frames, bad) if validate else None
    if problem:
        raise AudioError(problem)
    return audio


def write_wav(path: str | Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM wav."""
    import soundfile as sf

    sf.write(str(path), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16")


def is_silent(audio: np.ndarray) -> bool:
    """True when the clip carries no signal worth transcribing."""
    return audio.size == 0 or float(np.sqrt(np.mean(np.square(audio)))) < SILENCE_RMS
