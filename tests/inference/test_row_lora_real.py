"""Row-indexed LoRA on the real whisper-base (int8, as served) with the shipped adapters (``cs`` adapts the encoder
too): a batch mixing the three adapters and base rows gives the text of each clip alone, and logits within rounding
of peft's ``adapter_names`` path (whose texts are the same but where rounding decides: one clip of eight here). Clips: synthetic Swahili and Indonesian (held-out sentences), real
Czech (Fish Fillets) and real English (LibriVox, the base)."""

from pathlib import Path

import pytest
import torch

from tests.conftest import LIBRIVOX, REPO_ADAPTERS
from whisper_lora.data.audio import load_audio
from whisper_lora.data.fillets import DEFAULT_ROOT
from whisper_lora.data.synth import shipped_sentences, synthesize
from whisper_lora.inference import row_lora
from whisper_lora.inference.transcriber import Transcriber

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clips():
    out = []
    for lang in ("sw", "id"):
        for text, voice in zip(shipped_sentences(lang, "test")[:2], ("m2", "f2"), strict=True):
            out.append((synthesize(text, lang, voice), lang, lang))
    czech = sorted(Path(DEFAULT_ROOT, "sound").glob("*/cs/*.ogg"))[100:102]
    assert len(czech) == 2, "needs Debian's fillets-ng-data-cs"
    out += [(load_audio(p), "cs", "cs") for p in czech]
    out += [(load_audio(p), "en", None) for p in sorted(LIBRIVOX.glob("*.wav"))[:2]]
    return out


@pytest.fixture(scope="module")
def transcriber():
    return Transcriber(
        "whisper-base", REPO_ADAPTERS, precision="int8", device="cpu", max_new_tokens=48, row_indexed=True
    )


def test_mixed_batch_texts_equal_each_clip_alone(transcriber, clips, monkeypatch):
    audio, langs, adapters = (list(x) for x in zip(*clips, strict=True))
    alone = [transcriber.transcribe(a, lang, adapter=ad).text for a, lang, ad in clips]
    used = []
    real_rows = row_lora.RowLoRA.rows
    monkeypatch.setattr(row_lora.RowLoRA, "rows", lambda self, names: used.append(names) or real_rows(self, names))
    assert [r.text for r in transcriber.transcribe_batch(audio, langs, adapter=adapters)] == alone
    assert any(names and None in names and len(set(names)) == 4 for names in used), "not the row-indexed path"
    assert all(alone)
    # peft's layers give the same texts but where rounding decides between two tokens
    transcriber._pool.row_indexed = False
    try:
        peft = [r.text for r in transcriber.transcribe_batch(audio, langs, adapter=adapters)]
    finally:
        transcriber._pool.row_indexed = True
    assert sum(a != b for a, b in zip(peft, alone, strict=True)) <= 1, (peft, alone)


def test_logits_within_rounding_of_pefts_adapter_names(clips):
    """On the fp32 base: an int8 base quantises each layer's activations, so any rounding difference in a LoRA term
    may move a value across a quantisation step there."""
    t = Transcriber("whisper-base", REPO_ADAPTERS, precision="fp32", device="cpu")
    audio, _, adapters = (list(x) for x in zip(*clips, strict=True))
    pool = t._pool
    for name in {a for a in adapters if a}:
        pool.attach(t.registry.get(name))
    names = [pool._names[a] if a else None for a in adapters]
    feats = t.features(audio)
    start = t.processor.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|transcribe|>"])
    ids = torch.tensor([start + [440 + 13 * i for i in range(6)]] * len(audio))
    model = pool.peft.eval()
    with torch.no_grad():
        want = model(input_features=feats, decoder_input_ids=ids, adapter_names=[n or "__base__" for n in names]).logits
        with pool._row_lora().rows(names):
            got = model(input_features=feats, decoder_input_ids=ids).logits
    assert (got - want).abs().max() < 1e-4 * want.abs().max(), (got - want).abs().max() / want.abs().max()
    assert (want[0] - want[-1]).abs().max() > 0.1  # the adapters matter
