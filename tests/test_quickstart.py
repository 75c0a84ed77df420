"""The README's quickstart runs as written (so it cannot rot): every command of its block, in order."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_docs import ROOT, quickstart_commands

QUICK = Path("/tmp/wl-quick")  # where the quickstart writes


@pytest.mark.slow
def test_readme_quickstart_runs_as_written():
    shutil.rmtree(QUICK, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("WHISPER_LORA_ADAPTERS", None)
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    outputs = []
    for command in quickstart_commands():
        r = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        outputs.append(r.stdout)
    assert "cs" in outputs[0] and "sw" in outputs[0]  # the shipped adapters are listed
    assert "adapter=base" in outputs[1]  # English has no adapter: the untouched base decoded it
    assert (QUICK / "adapters" / "sw" / "adapter_model.safetensors").is_file()
    assert "held-out test" in outputs[-2] and "sw" in outputs[-1]
    _routed_right_after_train(QUICK / "adapters")
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before, "the quickstart changed the checkout"
    shutil.rmtree(QUICK, ignore_errors=True)


def _routed_right_after_train(registry: Path) -> None:
    """``train`` wrote the adapter's language profile: ``auto`` sends held-out Swahili (sentences and voices
    it never heard) to the new adapter, with no extra step; English stays with the base."""
    from tests.conftest import LIBRIVOX
    from whisper_lora.data.synth import shipped_sentences, synthesize
    from whisper_lora.inference.transcriber import Transcriber

    assert (registry / "sw" / "language_profile.safetensors").is_file()
    t = Transcriber("whisper-base", registry, precision="int8", device="cpu", max_new_tokens=8)
    assert t.routing()["adapters"] == {"sw": {"route": "router"}}
    voices = ("m2", "f2", "m4", "f4")
    clips = [synthesize(s, "sw", v) for s, v in zip(shipped_sentences("sw", "test")[-4:], voices, strict=True)]
    decisions = t.route(clips + [str(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav")])
    assert [d.adapter for d in decisions] == ["sw"] * 4 + [None], decisions
