"""Compiled decoding (``Transcriber(graphs="on")``, inference/graphs.py): a static cache and a compiled step give the
eager decode's answers for every mix of adapters, and a few captured steps serve every batch (CPU: inductor)."""

import pytest
from torch._dynamo.utils import counters

from tests.inference.test_transcriber import AUDIO, LANGS
from whisper_lora.errors import ConfigError
from whisper_lora.inference.graphs import bucket, check_graphs
from whisper_lora.inference.transcriber import Transcriber


def _graphs() -> int:
    """Graphs torch.compile has captured in this process so far."""
    return counters["stats"]["unique_graphs"]


def test_compiled_steps_answer_as_eager_for_every_mix_and_are_reused(tiny_dir, tiny_registry):
    kw = dict(precision="fp32", device="cpu", max_new_tokens=8)
    eager = Transcriber(str(tiny_dir), tiny_registry, row_indexed=True, **kw)
    compiled = Transcriber(str(tiny_dir), tiny_registry, graphs="on", **kw)
    assert compiled.graphs and not eager.graphs

    def same(audios, langs):
        want = [r.text for r in eager.transcribe_batch(audios, langs)]
        assert [r.text for r in compiled.transcribe_batch(audios, langs)] == want, langs

    before = _graphs()
    same(AUDIO, LANGS)  # 6 rows over 3 adapters and the base: padded to 8, compiled
    same(AUDIO[:3], LANGS[:3])  # padded to 4, compiled
    captured = _graphs()
    assert captured > before, "nothing was compiled: transformers skipped compilation"
    # other mixes of adapters, other sizes within the same buckets, the base alone: the captured steps serve them
    same(AUDIO[:4], LANGS[1:5])
    same(AUDIO[:5], LANGS[::-1][:5])
    same(AUDIO, ["en"] * 6)
    same(AUDIO, ["sw"] * 6)
    assert _graphs() == captured, "a new mix of adapters compiled again: its index must be an input of the step"


def test_graph_settings_are_checked_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError) as e:
        Transcriber(str(tmp_path / "no-such-base"), tmp_path, graphs="yes")
    assert "graphs='yes'; valid: auto, on, off" in str(e.value)
    with pytest.raises(ConfigError) as e:
        Transcriber(str(tmp_path / "no-such-base"), tmp_path, graphs="on", precision="int8", mode="hotswap")
    message = str(e.value)
    assert "needs a float base (bf16 or fp32)" in message and "got precision='int8'" in message
    assert "needs mode='routed'" in message
    assert check_graphs("on", "fp32", "routed", False) == [
        "graphs='on' needs row_indexed (peft's adapter_names batches are not compiled); got False"
    ]
    assert check_graphs("auto", "int8", "hotswap", False) == []  # auto never compiles a base it cannot


def test_batches_are_padded_to_a_few_sizes():
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9, 17, 32, 33, 65)] == [1, 2, 4, 8, 8, 16, 32, 32, 64, 96]


def test_the_ray_driver_refuses_bad_graph_settings_before_ray_starts(tmp_path):
    pytest.importorskip("ray")
    from whisper_lora.serving.config import RayConfig, ServerConfig
    from whisper_lora.serving.ray_replica import ReplicaSpec

    with pytest.raises(ConfigError, match="needs a float base"):
        ReplicaSpec(str(tmp_path), {}, ServerConfig(), RayConfig(), graphs="on", precision="int8")
    spec = ReplicaSpec(str(tmp_path), {}, ServerConfig(), RayConfig(), graphs="on", precision="bf16")
    assert spec.transcriber_kwargs()["graphs"] == "on"


def test_the_command_line_passes_graphs_to_the_transcriber(monkeypatch):
    from whisper_lora.cli import build_parser, options

    seen = {}
    monkeypatch.setattr(
        "whisper_lora.inference.transcriber.Transcriber", lambda *args, **kw: seen.update(kw) or "built"
    )
    for argv in (["transcribe", "x.wav", "--graphs", "on"], ["serve", "--graphs", "on"], ["demo", "--graphs", "on"]):
        seen.clear()
        assert options.transcriber(build_parser().parse_args(argv)) == "built"
        assert seen["graphs"] == "on", argv
    seen.clear()
    options.transcriber(build_parser().parse_args(["transcribe", "x.wav"]))
    assert "graphs" not in seen  # the Transcriber's own default (auto)
