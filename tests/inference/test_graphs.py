"""Compiled decoding (``Transcriber(graphs="on")``, inference/graphs.py): a static cache and a compiled step give the
eager decode's answers for every mix of adapters, and a few captured steps serve every batch (CPU: inductor)."""

import pytest
import torch
from torch._dynamo.utils import counters

from tests.inference.test_transcriber import AUDIO, LANGS
from whisper_lora.errors import ConfigError
from whisper_lora.inference.graphs import bucket, check_graphs
from whisper_lora.inference.transcriber import Transcriber


def _graphs() -> int:
    """Graphs torch.compile has captured in this process so far."""
    return counters["stats"]["unique_graphs"]


def test_compiled_steps_answer_as_eager_for_every_mix_and_are_reused(tiny_dir, tiny_registry, monkeypatch):
    import whisper_lora.inference.decode as decode

    kw = dict(precision="fp32", device="cpu", max_new_tokens=8)
    eager = Transcriber(str(tiny_dir), tiny_registry, row_indexed=True, **kw)
    compiled = Transcriber(str(tiny_dir), tiny_registry, graphs="on", **kw)
    assert compiled.graphs and not eager.graphs
    calls = []  # rows of every generate call that ran with the compiled settings
    real = decode.compile_generation
    monkeypatch.setattr(decode, "compile_generation", lambda gen, model: calls.append(1) or real(gen, model))

    def same(audios, langs):
        calls.clear()
        want = [r.text for r in eager.transcribe_batch(audios, langs)]
        assert [r.text for r in compiled.transcribe_batch(audios, langs)] == want, langs
        assert calls, f"{langs}: decoded eagerly"

    before = _graphs()
    same(AUDIO, ["sw"] * 6)  # one adapter loaded: 6 rows padded to 8, compiled
    same(AUDIO, LANGS)  # two more adapters loaded: the stacks are rebuilt, the step compiled again
    same(AUDIO[:3], LANGS[:3])  # padded to 4, compiled
    captured = _graphs()
    assert captured > before, "nothing was compiled: transformers skipped compilation"
    # other mixes of the loaded adapters, other sizes within the same buckets, the base alone: the captured steps
    # serve them (a recompile would raise)
    with torch.compiler.set_stance("fail_on_recompile"):
        same(AUDIO[:4], LANGS[1:5])
        same(AUDIO[:5], LANGS[::-1][:5])
        same(AUDIO, ["en"] * 6)
        same(AUDIO, ["ary", "sw", "ary", "cs", "sw", "cs"])
    assert _graphs() == captured


def test_only_the_base_and_row_indexed_adapters_may_run_compiled(tiny_dir, tiny_registry):
    """A compiled step captured with peft's own adapter layers (or its adapter_names hooks) would serve the wrong
    adapters; ``graph_safe`` says no there."""
    from whisper_lora.base.model import load_base_model
    from whisper_lora.inference.pool import make_pool
    from whisper_lora.registry.catalog import AdapterRegistry

    registry = AdapterRegistry(tiny_registry)
    sw, cs = registry.get("sw"), registry.get("cs")
    feats = torch.zeros(2, 1)

    def asked(pool, entries):
        return pool.decode(feats, ["sw", "cs"], entries, lambda m, f, langs, names: [pool.graph_safe()] * len(f))

    for row_indexed in (True, False):
        loaded = load_base_model(str(tiny_dir), "fp32", "cpu")
        pool = make_pool("routed", loaded.model, 8, loaded.processor.tokenizer, row_indexed)
        assert asked(pool, [None, None]) == [True, True]  # no adapter loaded yet: the plain base
        assert asked(pool, [sw, cs]) == [row_indexed] * 2  # peft's adapter_names: never compiled
        assert asked(pool, [sw, sw]) == [row_indexed] * 2  # peft's one active adapter: never compiled
        assert asked(pool, [None, None]) == [row_indexed] * 2  # peft's layers disabled: eager too
        assert not pool.graph_safe()  # outside a decode: nothing is running


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
