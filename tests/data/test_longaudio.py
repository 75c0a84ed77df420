import numpy as np
import pytest

from whisper_lora.data.longaudio import join_clips, start_errors


def test_join_clips_knows_every_boundary():
    a, b = np.ones(16000, np.float32), np.ones(8000, np.float32)
    j = join_clips([a, b], ["one", "two"], pause=2.0, lead=0.5)
    assert j.starts == (0.5, 3.5) and j.ends == (1.5, 4.0) and j.duration == 4.0
    assert j.audio[:8000].max() == 0 and j.audio[8000 : 8000 + 16000].min() == 1
    assert j.audio[int(1.5 * 16000) : int(3.5 * 16000)].max() == 0
    with pytest.raises(ValueError, match="one text per clip"):
        join_clips([a], ["x", "y"])


def test_start_errors_take_the_nearest_segment():
    assert start_errors([0.0, 3.0, 9.0], [0.5, 3.5]) == [0.5, 0.5]
    assert start_errors([], [1.0]) == [float("inf")]
