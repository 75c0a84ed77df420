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
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before, "the quickstart changed the checkout"
    shutil.rmtree(QUICK, ignore_errors=True)
