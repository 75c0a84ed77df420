"""Auto language routing with the real whisper-base and the shipped adapters."""

import csv

import pytest
import torch

from tests.conftest import LIBRIVOX
from tests.conftest import REPO_ADAPTERS as SHIPPED
from whisper_lora.data.audio import load_audio
from whisper_lora.data.fillets import DEFAULT_ROOT, build_fillets_manifest
from whisper_lora.data.synth import shipped_sentences, synthesize
from whisper_lora.inference.generation import decoding_config
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.registry.catalog import AdapterRegistry
from whisper_lora.registry.language_profile import PROFILE_FILE

SPANISH = (  # not in bench/sentences: the bench and the tests hear different Spanish
    "Mañana por la mañana vamos al mercado a comprar fruta.",
    "La película empezó tarde porque se fue la luz.",
    "Mi vecina tiene dos perros y un gato muy viejo.",
    "¿A qué hora sale el último autobús para el centro?",
)


@pytest.fixture(scope="module")
def transcriber():
    return Transcriber("whisper-base", AdapterRegistry(SHIPPED), precision="fp32", device="cpu", max_new_tokens=64)


@pytest.fixture(scope="module")
def czech_clip(tmp_path_factory):
    """A held-out line of real Czech speech (Debian's fillets-ng-data-cs, installed by .ci/run)."""
    manifest, _ = build_fillets_manifest(DEFAULT_ROOT, tmp_path_factory.mktemp("cs") / "m.csv")
    rows = [r for r in csv.DictReader(open(manifest, encoding="utf-8")) if r["split"] == "test"]
    return max(rows[:40], key=lambda r: len(r["text"]))  # a longer line: a clearer language signal


@pytest.mark.slow
def test_auto_routes_czech_to_its_adapter_and_english_to_the_base(transcriber, czech_clip):
    english = str(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav")
    cs, en = transcriber.transcribe_batch([czech_clip["audio"], english], "auto")
    assert (cs.language, cs.adapter, cs.route) == ("cs", "cs", "router") and cs.language_probability >= 0.5
    assert (en.language, en.adapter, en.route) == ("en", None, "router") and en.language_probability > 0.9
    assert "young man" in en.text.lower()
    explicit = transcriber.transcribe(czech_clip["audio"], "cs")
    assert cs.text == explicit.text and explicit.route == "forced"  # auto gives what asking for Czech gives


@pytest.mark.slow
def test_router_reaches_the_adapters_whisper_language_id_misses(transcriber):
    """Held-out synthetic Swahili and Indonesian (test sentences, voices never used in training): whisper-base's
    own language ID calls them Japanese or Thai; the router, learnt from the adapters' training speech,
    sends them to their adapters."""
    clips, want = [], []
    for lang in ("sw", "id"):
        for i, (sentence, voice) in enumerate(
            zip(shipped_sentences(lang, "test")[:4], ("m2", "f2", "m4", "f4"), strict=True)
        ):
            clips.append(synthesize(sentence, lang, voice, 140 + 10 * i, 50))
            want.append(lang)
    decisions = transcriber.route(clips)
    got = [d.adapter for d in decisions]
    assert sum(g == w for g, w in zip(got, want, strict=True)) >= 7, got
    whisper = [code for code, _ in transcriber.detect_language(clips)]
    assert sum(c == w for c, w in zip(whisper, want, strict=True)) <= 2, whisper  # what auto did before


@pytest.mark.slow
def test_languages_without_an_adapter_go_to_the_untouched_base(transcriber):
    """Real English (LibriVox, in no background) and synthetic Spanish (a language in no background
    and no adapter) are decoded by the base, in Whisper's language."""
    english = [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
    spanish = [synthesize(s, "es", v) for s, v in zip(SPANISH, ("m2", "f2", "m4", "f4"), strict=True)]
    decisions = transcriber.route(english + spanish)
    assert all(d.adapter is None for d in decisions), decisions
    assert [d.language for d in decisions[: len(english)]] == ["en"] * len(english)


@pytest.mark.slow
def test_adapter_without_a_profile_falls_back_to_whisper_language_id(tmp_path, caplog):
    import logging
    import shutil

    for name in ("cs", "id"):
        shutil.copytree(SHIPPED / name, tmp_path / name)
    (tmp_path / "id" / PROFILE_FILE).unlink()  # as adapters trained before profiles existed
    with caplog.at_level(logging.WARNING, logger="whisper_lora"):
        t = Transcriber("whisper-base", tmp_path, precision="int8", device="cpu", max_new_tokens=8)
    routing = t.routing()["adapters"]
    assert routing["cs"] == {"route": "router", "hard_negatives": ["sk"]}  # Slovak, in the shipped background
    assert routing["id"]["route"] == "whisper-lid" and "whisper-lora adapters profile" in routing["id"]["reason"]
    assert "adapter id" in caplog.text


@pytest.mark.slow
def test_shipped_adapters_are_small_safetensors_with_metrics():
    reg = AdapterRegistry(SHIPPED)
    assert {"sw", "id", "cs"} <= set(reg.names())
    for e in reg.entries():
        assert sum(f.stat().st_size for f in e.path.iterdir()) < 10e6, e.name
        m = e.metadata.metrics
        assert m["adapter"]["wer"] < m["base"]["wer"] and m["adapter"]["cer"] < m["base"]["cer"], e.name
        assert e.metadata.base["name"] == "whisper-base"


def _teacher_forced(t, feats, langs, entries, ids, width=None):
    """Log-probs of the tokens ``ids[i]`` (prompt + text) for each row, decoded with ``entries[i]``; the
    decoder input is padded (eos) to ``width`` tokens (default: the longest row)."""
    eos = t.model.generation_config.eos_token_id
    dec = torch.full((len(ids), width or max(len(x) for x in ids)), eos)
    for i, x in enumerate(ids):
        dec[i, : len(x)] = x

    def forward(model, f, _langs, names):
        kw = {"adapter_names": names} if names else {}
        with torch.no_grad():
            logp = model(input_features=f, decoder_input_ids=dec[rows], **kw).logits.float().log_softmax(-1)
        return [logp[j, : len(ids[i]) - 1].gather(-1, dec[i, 1 : len(ids[i]), None])[:, 0] for j, i in enumerate(rows)]

    rows = list(range(len(ids)))
    return t._pool.decode(feats, langs, entries, forward)


@pytest.mark.slow
def test_int8_mixed_batch_equals_isolated_on_the_real_base(czech_clip):
    """With LLM.int8's batch-wide outlier columns (threshold 6) a neighbour can change a result;
    the Transcriber's default threshold 0 quantises rows independently. Checked teacher-forced: every
    token of each isolated transcript gets the same log-prob in the mixed batch, and a wrong routing
    does not. The isolated rows get the batch's decoder width: over another number of padded
    positions the kernels can round differently in the last bit, and the int8 base turns such
    differences into visible ones (up to 0.74 in a token's log-prob on 5 of 12 sets of clips),
    which is a property of teacher forcing at two widths, not of routing (greedy decoding steps
    every row at the same width)."""
    # 30 s windows for every row (the shipped cs would encode trimmed): the rows below are fed windows directly
    t = Transcriber(
        "whisper-base", AdapterRegistry(SHIPPED), precision="int8", device="cpu", max_new_tokens=64, trimmed=False
    )
    clips = [
        synthesize(x, lang, v)
        for lang in ("sw", "id")
        for x, v in zip(shipped_sentences(lang, "test")[:2], ("m2", "f2"), strict=True)
    ]
    clips += [load_audio(czech_clip["audio"]), load_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav")]
    langs = ["sw", "sw", "id", "id", "cs", "en"]
    mixed = t.transcribe_batch(clips, langs)
    assert [m.adapter for m in mixed] == ["sw", "sw", "id", "id", "cs", None]
    alone = [t.transcribe(c, lang) for c, lang in zip(clips, langs, strict=True)]
    entries = [t.registry.find(m.adapter) if m.adapter else None for m in mixed]
    feats = t.features(clips)
    gen = decoding_config(t.model, 1, 64)

    def generate(model, f, lg, _names):
        return [model.generate(input_features=f, generation_config=gen, task="transcribe", language=lg)[0]]

    ids = [t._pool.decode(feats[i : i + 1], langs[i : i + 1], entries[i : i + 1], generate)[0] for i in range(6)]
    assert [t.processor.decode(x, skip_special_tokens=True).strip() for x in ids] == [a.text for a in alone]
    together = _teacher_forced(t, feats, langs, entries, ids)
    width = max(len(x) for x in ids)  # each row alone, its decoder input padded as in the batch
    isolated = [
        _teacher_forced(t, feats[i : i + 1], langs[i : i + 1], entries[i : i + 1], ids[i : i + 1], width)[0]
        for i in range(6)
    ]
    gaps = [round(float((m - a).abs().max()), 5) for m, a in zip(together, isolated, strict=True)]
    assert max(gaps) < 1e-3, f"mixed batch vs each row alone, max |d log-prob| per row: {gaps}"
    swapped = _teacher_forced(t, feats, langs, entries[::-1], ids)  # sw<->base/cs rows get another adapter
    assert all((swapped[i] - isolated[i]).abs().max() > 1.0 for i in (0, 1, 4, 5))
    same = sum(m.text == a.text for m, a in zip(mixed, alone, strict=True))
    assert same >= 5  # greedy texts: equal except a rare near-tie (all 6 on the machines we measured)
