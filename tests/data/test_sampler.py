import random
import statistics

import pytest

from whisper_lora.data.sampler import batch_indices


def _durations(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.lognormvariate(1.1, 0.5) for _ in range(n)]  # real-corpus-like: mostly 2-5 s, a long tail


@pytest.mark.parametrize("by_duration", [False, True])
def test_each_utterance_once_per_epoch_and_same_batches_for_the_same_step(by_duration):
    d = _durations(203)  # 25 batches of 8, 3 utterances wait for another epoch
    epoch = [batch_indices(d, 8, 3, step, by_duration) for step in range(25)]
    flat = [i for b in epoch for i in b]
    assert all(len(b) == 8 for b in epoch)
    assert len(flat) == len(set(flat)) == 200
    assert epoch == [batch_indices(list(d), 8, 3, step, by_duration) for step in range(25)]  # a resume sees the same
    second = [batch_indices(d, 8, 3, step, by_duration) for step in range(25, 50)]
    assert second != epoch  # a new permutation every epoch


def test_batches_by_duration_pad_less_and_keep_the_order_random():
    d = _durations()
    steps = range(2 * (len(d) // 8))

    def mean_longest(by_duration):
        return statistics.mean(max(d[i] for i in batch_indices(d, 8, 0, s, by_duration)) for s in steps)

    random_longest, bucketed_longest = mean_longest(False), mean_longest(True)
    assert bucketed_longest < 0.75 * random_longest
    assert bucketed_longest < 1.1 * statistics.mean(d) + 0.5
    first = [statistics.mean(d[i] for i in batch_indices(d, 8, 0, s, True)) for s in range(10)]
    assert first != sorted(first) and first != sorted(first, reverse=True)  # batches are shuffled, not ascending


def test_a_corpus_smaller_than_a_batch_is_one_batch():
    assert sorted(batch_indices([1.0, 3.0, 2.0], 8, 0, 5, True)) == [0, 1, 2]
