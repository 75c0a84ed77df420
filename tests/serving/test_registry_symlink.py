"""A registry behind a symlink, repointed while a real ``whisper-lora serve`` serves it (the way deployments switch
adapter sets): the server follows the link on its next look at the disk, and a target that vanished is an empty
registry, never a 500."""

import io
import shutil
import time

import httpx
import soundfile as sf

from tests.conftest import make_tiny_adapter
from tests.inference.test_transcriber import AUDIO
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.serving.process import running


def _wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, AUDIO[1], 16000, format="WAV")
    return buf.getvalue()


def _transcribe(url: str, model: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/transcriptions", data={"model": model}, files={"file": ("a.wav", _wav())})


def _ok(url: str, path: str) -> dict:
    r = httpx.get(f"{url}{path}", timeout=30)
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    return r.json()


def _wait_for(url: str, adapters: list[str]) -> None:
    """Poll /health (every answer a 200) until it serves ``adapters``; the server looks at most every 2 s."""
    deadline = time.monotonic() + 20
    while _ok(url, "/health")["adapters"] != adapters:
        assert time.monotonic() < deadline, f"/health never served {adapters}"
        time.sleep(0.3)


def test_a_repointed_registry_symlink_is_served_and_a_vanished_one_is_empty(tiny_dir, tiny_registry, tmp_path):
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    shutil.copytree(tiny_registry, v1)  # ary, cs, sw
    make_tiny_adapter(tiny_dir, v2, "sw", seed=77)  # another set: new sw weights, and id
    make_tiny_adapter(tiny_dir, v2, "id", seed=78)
    ref = shutil.copytree(v2, tmp_path / "ref")
    expected = Transcriber(str(tiny_dir), ref, precision="fp32", device="cpu", max_new_tokens=8)
    want = {lang: expected.transcribe(AUDIO[1], lang, adapter=lang).text for lang in ("id", "sw")}
    link = tmp_path / "adapters"
    link.symlink_to(v1)
    args = ["serve", "--base", str(tiny_dir), "--adapters", str(link), "--precision", "fp32", "--device", "cpu"]
    with running([*args, "--max-new-tokens", "8"], timeout=240) as url:
        assert _ok(url, "/health")["adapters"] == ["ary", "cs", "sw"]
        assert _transcribe(url, "cs").status_code == 200  # an adapter of v1 in memory
        new = tmp_path / "adapters.new"
        new.symlink_to(v2)
        new.replace(link)  # repointed atomically
        shutil.rmtree(v1)
        _wait_for(url, ["id", "sw"])
        models = {m["id"] for m in _ok(url, "/v1/models")["data"]}
        assert {"id", "sw"} <= models and not {"ary", "cs"} & models
        for lang in ("id", "sw"):
            r = _transcribe(url, lang)
            assert r.status_code == 200 and r.json()["text"] == want[lang], r.text[:300]
        assert _transcribe(url, "cs").status_code == 404  # gone with v1, and said so
        shutil.rmtree(v2)  # the link now leads nowhere
        _wait_for(url, [])
        assert _ok(url, "/v1/models")["data"] and _transcribe(url, "sw").status_code == 404
        assert _ok(url, "/health")["status"] == "ok"
