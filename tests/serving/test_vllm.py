"""vLLM serves the shipped base and adapters as whisper-lora's own Transcriber decodes them (CPU, in CI).

vLLM runs in its own environment (``.venv-vllm``, made by the README's test command); ``transcribe_with_vllm`` drives
it in a subprocess. One ``generate`` call mixes two adapters and the plain base.

Two fp32 engines on one CPU add in different orders, so a greedy decode can take another branch where the model's two
best next tokens are nearly tied. A transcript may therefore differ only where our own model scores vLLM's token within
``TIE`` nats of ours at the first token where the two differ; anything else fails.
"""

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import LIBRIVOX, REPO_ADAPTERS
from whisper_lora.base.resolve import resolve_base
from whisper_lora.data.synth import shipped_sentences, synthesize
from whisper_lora.inference.scoring import score
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.registry.catalog import AdapterRegistry
from whisper_lora.serving.vllm.client import transcribe_with_vllm
from whisper_lora.serving.vllm.export import plan_vllm

N = 4  # held-out sentences per adapter language (test split, voices never trained on)
TIE = 1.0  # nats: the largest log-probability gap a float-rounding branch may cross


@pytest.fixture(scope="module")
def clips():
    out = []
    for lang in ("sw", "id"):
        for text, voice in zip(shipped_sentences(lang, "test")[:N], ("m2", "f2", "m3", "f3"), strict=True):
            out.append((synthesize(text, lang, voice), lang, text))
    audio, sr = sf.read(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav", dtype="float32")
    assert sr == 16000
    out.append((audio, "en", None))  # no English adapter: the plain base serves it
    return out


def first_divergence_gap(model, processor, audio: np.ndarray, language: str, ours: str, theirs: str) -> float:
    """log p(our token) - log p(vLLM's token) under ``model`` at the first token where the two transcripts differ."""
    tok = processor.tokenizer
    a = tok(" " + ours, add_special_tokens=False).input_ids + [tok.eos_token_id]
    b = tok(" " + theirs, add_special_tokens=False).input_ids + [tok.eos_token_id]
    j = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
    prompt = tok.convert_tokens_to_ids(
        ["<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>"]
    )
    feats = processor.feature_extractor([audio], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        logits = model(input_features=feats, decoder_input_ids=torch.tensor([prompt + a[:j]])).logits[0, -1]
    logp = torch.log_softmax(logits.float(), -1)
    return float(logp[a[j]] - logp[b[j]])


@pytest.mark.slow
def test_vllm_matches_the_transcriber_on_a_mixed_batch(clips):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    registry = AdapterRegistry(REPO_ADAPTERS)
    base = resolve_base("whisper-base")
    plan = plan_vllm(registry, ["sw", "id"], base=base)
    audio = [c for c, _, _ in clips]
    langs = [lang for _, lang, _ in clips]
    adapters = [lang if lang in plan.adapters else None for lang in langs]
    n = len(clips)
    # one engine, one generate: every clip with its adapter (English: the base), then every clip on the plain base
    served = transcribe_with_vllm(
        plan,
        audio + audio[:-1],
        [{"language": lg, "adapter": ad} for lg, ad in zip(langs, adapters, strict=True)]
        + [{"language": lg, "adapter": None} for lg in langs[:-1]],
    )
    vllm_adapted, vllm_plain = served["texts"][:n], served["texts"][n:]

    t = Transcriber("whisper-base", registry, precision="fp32", device="cpu", max_new_tokens=128)
    ours = t.transcribe_batch(audio, langs)
    assert [o.adapter for o in ours] == adapters
    ours_plain = t.transcribe_batch(audio[:-1], langs[:-1], adapter=[None] * (n - 1))

    processor = WhisperProcessor.from_pretrained(base)
    model = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(base), REPO_ADAPTERS / "sw", "sw")
    model.load_adapter(str(REPO_ADAPTERS / "id"), "id")
    model.eval()
    pairs = [(i, adapters[i], ours[i].text, vllm_adapted[i]) for i in range(n)]
    pairs += [(i, None, ours_plain[i].text, vllm_plain[i]) for i in range(n - 1)]
    gaps = []
    for i, adapter, mine, theirs in pairs:
        if mine == theirs:
            continue
        if adapter is None:
            with model.disable_adapter():
                gaps.append(first_divergence_gap(model, processor, audio[i], langs[i], mine, theirs))
        else:
            model.set_adapter(adapter)
            gaps.append(first_divergence_gap(model, processor, audio[i], langs[i], mine, theirs))
    print(
        f"\nvLLM {served['vllm']} vs Transcriber: {len(pairs) - len(gaps)}/{len(pairs)} identical, near-tie gaps {gaps}"
    )
    assert all(abs(g) <= TIE for g in gaps), (gaps, pairs)
    assert len(gaps) <= len(pairs) // 4, pairs  # near-ties are the exception, equal text the rule

    for lang in ("sw", "id"):
        idx = [i for i in range(n) if langs[i] == lang]
        refs = [clips[i][2] for i in idx]
        vllm_wer = score(refs, [vllm_adapted[i] for i in idx], lang).wer
        plain_wer = score(refs, [vllm_plain[i] for i in idx], lang).wer
        ours_wer = score(refs, [ours[i].text for i in idx], lang).wer
        print(f"{lang}: WER vLLM {vllm_wer:.3f}, Transcriber {ours_wer:.3f}, vLLM without the adapter {plain_wer:.3f}")
        assert vllm_wer < plain_wer, (lang, vllm_wer, plain_wer)  # vLLM applies the adapter, and only where asked
