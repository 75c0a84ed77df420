import math

from whisper_lora.inference.scoring import normalize_arabic, normalizer_for, score


def test_arabic_normalisation_strips_diacritics_and_unifies_alef():
    assert normalize_arabic("أَحْمَد إلى آخر") == "احمد الى اخر"
    assert normalizer_for("ary")("السَّلامُ، عليكم!") == normalizer_for("ary")("السلام عليكم")


def test_english_normaliser_only_for_english():
    assert normalizer_for("en")("Mr. Smith has two cats!") == "mister smith has 2 cats"
    assert normalizer_for("sw")("Habari, Yako!") == "habari yako"


def test_scores_orthographic_and_normalised():
    s = score(["Habari yako.", "Asante sana"], ["habari yako", "asante sana"], "sw")
    assert s.wer == 0.0 and s.cer == 0.0 and s.wer_orthographic > 0 and s.n == 2
    s = score(["habari yako", "!!!"], ["habari", "x"], "sw")  # a reference that normalises to empty is dropped
    assert s.n == 1 and math.isclose(s.wer, 0.5)


def test_an_adapter_that_leaves_the_encoder_untouched_decodes_from_the_bases_encoder_outputs(tiny_dir, sw_corpus):
    """Scoring base then adapter: the adapter pass reuses the base's encoder outputs (no encoder run), and its texts
    are those of a pass that encodes again; an adapter with LoRA in the encoder encodes itself."""
    import torch

    from whisper_lora.base.model import load_base_model
    from whisper_lora.data.prepare import prepare_splits
    from whisper_lora.inference.scoring import reuses_encoder, transcribe_examples
    from whisper_lora.training.lora import LoraSpec, apply_lora

    def adapter(stacks):
        base = load_base_model(str(tiny_dir), "fp32", "cpu")
        torch.manual_seed(0)
        model = apply_lora(base.model, LoraSpec(r=4, stacks=stacks)).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)  # an adapter that changes something
        return model, base.processor

    model, processor = adapter(("decoder_self", "decoder_cross"))
    examples = prepare_splits(str(sw_corpus), "sw", processor, splits=("test",), progress=False)["test"]
    assert reuses_encoder(model, len(examples)) and not reuses_encoder(model, 10_000)
    calls = []
    model.get_encoder().register_forward_hook(lambda *_: calls.append(1))
    states = {}
    with model.disable_adapter():
        base = transcribe_examples(model, processor, examples, "sw", encoder_states=states)
    encoded = len(calls)
    reused = transcribe_examples(model, processor, examples, "sw", encoder_states=states)
    assert encoded > 0 and len(calls) == encoded, "the adapter pass ran the encoder again"
    assert reused == transcribe_examples(model, processor, examples, "sw") != base
    assert not reuses_encoder(adapter(("encoder_self", "decoder_self"))[0], len(examples))
