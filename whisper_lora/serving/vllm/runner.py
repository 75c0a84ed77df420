"""Transcribe clips with vLLM's offline engine over registry adapters; runs inside the vLLM environment.

Run by path (it imports neither whisper_lora nor its dependencies, only vLLM and numpy):

    .venv-vllm/bin/python whisper_lora/serving/vllm/runner.py job.json result.json

``job.json``: ``{"llm": VllmPlan.llm_kwargs() plus engine options, "adapters": {"sw": "/abs/adapters/sw"},
"audio": "clips.npz" (arrays "0", "1", ... at 16 kHz), "requests": [{"language": "sw", "adapter": "sw" | null}],
"max_tokens": 128}``. ``result.json``: ``{"texts": [...], "token_ids": [[...]], "load_s": ..., "generate_s": ..., "vllm": version}``.
All requests go to one ``generate`` call, so a batch mixes adapters (and the plain base where ``adapter`` is null).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def prompt(audio, language: str) -> dict:
    """Whisper's decoder prompt for a forced language, plain transcription, no timestamps."""
    return {
        "encoder_prompt": {"prompt": "", "multi_modal_data": {"audio": (audio, 16000)}},
        "decoder_prompt": f"<|startoftranscript|><|{language}|><|transcribe|><|notimestamps|>",
    }


def main(job_path: str, out_path: str) -> int:
    import numpy as np
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    job = json.loads(open(job_path).read())
    clips = np.load(job["audio"])
    t0 = time.perf_counter()
    llm = LLM(**job["llm"])
    load_s = time.perf_counter() - t0
    ids = {name: i + 1 for i, name in enumerate(job["adapters"])}
    prompts, loras = [], []
    for i, r in enumerate(job["requests"]):
        prompts.append(prompt(clips[str(i)].astype(np.float32), r["language"]))
        name = r.get("adapter")
        loras.append(LoRARequest(name, ids[name], job["adapters"][name]) if name else None)
    params = SamplingParams(temperature=0.0, max_tokens=int(job.get("max_tokens", 128)), skip_special_tokens=True)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
    generate_s = time.perf_counter() - t0
    result = {
        "texts": [o.outputs[0].text.strip() for o in outs],
        "token_ids": [list(o.outputs[0].token_ids) for o in outs],
        "load_s": round(load_s, 2),
        "generate_s": round(generate_s, 3),
        "vllm": vllm.__version__,
    }
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out_path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} job.json result.json")
    sys.exit(main(sys.argv[1], sys.argv[2]))
