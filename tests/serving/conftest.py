"""Ray Serve fixtures: one local Ray cluster for the session (``ray.init(num_cpus=2)``, started on first use), the
clips the Ray tests send, and what the plain ``Transcriber`` answers for them."""

import csv
import io
import os

import pytest
import soundfile as sf
import torch

from tests.conftest import LIBRIVOX, REPO_ADAPTERS
from whisper_lora.data.audio import load_audio
from whisper_lora.data.fillets import DEFAULT_ROOT, build_fillets_manifest
from whisper_lora.data.synth import shipped_sentences, synthesize

REPLICA_THREADS = 1  # serve --ray's default: one CPU, one thread per replica


def wav_bytes(audio) -> bytes:
    """A float WAV: the server decodes exactly the samples the reference was given (16-bit would round them)."""
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster of 2 CPUs (``ray.init(num_cpus=2)``) owned by this process, which joins it to kill
    replicas; the command under test joins it with ``--ray-address``."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def shutdown_serve() -> None:
    """Between services: Serve's HTTP proxy keeps the port of the first ``serve.start``."""
    from ray import serve

    serve.shutdown()


@pytest.fixture(scope="session")
def ray_clips(tmp_path_factory):
    """(name, audio, language, adapter) — synthetic Swahili and Indonesian (held-out sentences and voices), real
    Czech (Fish Fillets, held out; ``cs`` adapts the encoder) and real English (LibriVox, no adapter: the base)."""
    out = []
    for lang in ("sw", "id"):
        for i, (text, voice) in enumerate(zip(shipped_sentences(lang, "test")[:2], ("m2", "f2"), strict=True)):
            out.append((f"{lang}{i}", synthesize(text, lang, voice), lang, lang))
    manifest, _ = build_fillets_manifest(DEFAULT_ROOT, tmp_path_factory.mktemp("cs") / "m.csv")
    rows = [r for r in csv.DictReader(open(manifest, encoding="utf-8")) if r["split"] == "test"]
    for i, row in enumerate(sorted(rows[:40], key=lambda r: -len(r["text"]))[:2]):
        out.append((f"cs{i}", load_audio(row["audio"]), "cs", "cs"))
    out.append(("en0", load_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"), "en", None))
    return out


@pytest.fixture(scope="session")
def ray_reference(ray_clips):
    """What one in-process ``Transcriber`` answers (the command's defaults, the replicas' thread count):
    {(clip, model): (text, language, adapter, route)} for model ``auto`` and the clip's own adapter."""
    from whisper_lora.inference.transcriber import Transcriber

    threads = torch.get_num_threads()
    torch.set_num_threads(REPLICA_THREADS)
    try:
        t = Transcriber(None, REPO_ADAPTERS)
        out = {}
        for name, audio, lang, adapter in ray_clips:
            a = t.transcribe(audio, timestamps=True)  # the tests ask for verbose_json: timestamped decoding
            out[name, "auto"] = (a.text, a.language, a.adapter, a.route)
            if adapter:
                f = t.transcribe(audio, lang, timestamps=True)
                out[name, adapter] = (f.text, f.language, f.adapter, f.route)
        del t
        return out
    finally:
        torch.set_num_threads(threads)


def kill_replica(replica: str) -> str:
    """Kill a ``Decoder`` replica's actor (by the id ``/health`` shows) as a crash would; Serve's controller must
    notice and start another. Returns the actor's name."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(f"#{replica}")]
    assert names, f"no replica {replica}"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]
