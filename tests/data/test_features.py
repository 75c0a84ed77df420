"""Labels for training: plain, or framed by timestamp tokens for a stable share of the corpus."""

import pytest
from transformers import WhisperProcessor

from whisper_lora.data.features import featurize, label_ids, wants_timestamps
from whisper_lora.data.readers import load_corpus


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return WhisperProcessor.from_pretrained(tiny_dir).tokenizer


def test_timestamped_labels_frame_the_text(tokenizer):
    ids = tokenizer.convert_tokens_to_ids
    plain = label_ids(tokenizer, "habari yako", "sw")
    timed = label_ids(tokenizer, "habari yako", "sw", (0.0, 3.427))
    assert plain[:3] == [ids("<|sw|>"), ids("<|transcribe|>"), ids("<|notimestamps|>")]
    assert timed[:3] == [ids("<|sw|>"), ids("<|transcribe|>"), ids("<|0.00|>")]
    assert timed[-2:] == [ids("<|3.42|>"), ids("<|endoftext|>")]  # 20 ms steps
    assert timed[3:-2] == plain[3:-1]  # same text tokens
    assert label_ids(tokenizer, "x", "sw", (0.0, 45.0))[-2] == ids("<|30.00|>")  # clamped to the window


def test_the_timestamped_share_is_stable_and_about_right():
    ids = [f"utt{i}" for i in range(2000)]
    chosen = [wants_timestamps(i, 0.5) for i in ids]
    assert 0.45 < sum(chosen) / len(ids) < 0.55
    assert chosen == [wants_timestamps(i, 0.5) for i in ids]  # the same utterances every run
    assert not any(wants_timestamps(i, 0.0) for i in ids) and all(wants_timestamps(i, 1.0) for i in ids)


def test_featurize_times_the_chosen_utterances_by_their_duration(sw_corpus, tiny_dir):
    processor = WhisperProcessor.from_pretrained(tiny_dir)
    records, _ = load_corpus(sw_corpus, "sw", splits=("train",))
    examples, _ = featurize(records["train"][:6], processor, timestamp_share=1.0)
    begin = processor.tokenizer.convert_tokens_to_ids("<|0.00|>")
    for e in examples:
        assert e.labels[2] == begin
        assert abs((e.labels[-2] - begin) * 0.02 - e.duration) <= 0.011
