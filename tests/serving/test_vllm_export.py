"""Which registry adapters vLLM can serve exactly, and the `vllm serve` arguments for them."""

import json
import shlex

import pytest

from tests.conftest import make_tiny_adapter
from whisper_lora.cli import main as cli
from whisper_lora.errors import AdapterError
from whisper_lora.registry.catalog import AdapterRegistry
from whisper_lora.serving.vllm.export import adapted_modules, plan_vllm, vllm_modules
from whisper_lora.training.lora import LoraSpec

SERVABLE = LoraSpec(
    r=4, alpha=8, targets=("q", "k", "v", "out"), stacks=("decoder_self", "decoder_cross"), cross_targets=("q", "out")
)


@pytest.fixture(scope="module")
def mixed_registry(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("vllm-registry")
    make_tiny_adapter(tiny_dir, root, "sw", 0, spec=SERVABLE)
    make_tiny_adapter(
        tiny_dir, root, "id", 1, spec=LoraSpec(r=16, alpha=32, targets=("q", "fc1"), stacks=("decoder_self",))
    )
    make_tiny_adapter(tiny_dir, root, "cs", 2)  # q, v in every stack: encoder and cross-attention k/v included
    return root


def test_servable_adapter_maps_to_vllm_runtime_modules(mixed_registry):
    assert "model.decoder.layers.0.self_attn.k_proj" in adapted_modules(mixed_registry / "sw")
    assert vllm_modules(mixed_registry / "sw") == [
        f"model.decoder.layers.{i}.{m}"
        for i in (0, 1)
        for m in ("encoder_attn.out_proj", "encoder_attn.q_proj", "self_attn.out_proj", "self_attn.qkv_proj")
    ]


def test_encoder_side_lora_is_refused_with_the_reason_and_the_fix(mixed_registry):
    with pytest.raises(AdapterError) as e:
        vllm_modules(mixed_registry / "cs")
    msg = str(e.value)
    assert "adapter 'cs' cannot be served by vLLM" in msg
    assert "cross-attention k/v, encoder layers" in msg and "cross_targets [q, out]" in msg


def test_plan_unions_modules_rounds_the_rank_and_lists_every_adapter(mixed_registry):
    plan = plan_vllm(AdapterRegistry(mixed_registry), ["sw", "id"], base="/models/whisper-base")
    assert plan.max_lora_rank == 16 and plan.adapters == {
        "sw": str(mixed_registry / "sw"),
        "id": str(mixed_registry / "id"),
    }
    assert "model.decoder.layers.1.mlp.fc1" in plan.target_modules
    assert not any("encoder" in m and "encoder_attn" not in m for m in plan.target_modules)
    args = plan.serve_args()
    assert args[:6] == ["/models/whisper-base", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "16"]
    i = args.index("--lora-modules")
    assert args[i + 1 : i + 3] == [f"sw={mixed_registry / 'sw'}", f"id={mixed_registry / 'id'}"]
    assert shlex.split(plan.command())[2:] == args
    assert plan.llm_kwargs()["lora_target_modules"] == plan.target_modules


def test_cli_prints_args_and_refuses_unservable_adapters(mixed_registry, capsys):
    assert cli(["adapters", "vllm-args", "--adapters", str(mixed_registry), "--languages", "sw", "--command"]) == 0
    out = capsys.readouterr().out.strip()
    base = json.loads((mixed_registry / "sw" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert out.startswith(f"vllm serve {base} --enable-lora") and f"sw={mixed_registry / 'sw'}" in out
    assert cli(["adapters", "vllm-args", "--adapters", str(mixed_registry)]) == 2
    err = capsys.readouterr().err
    assert "adapter 'cs' cannot be served by vLLM" in err and "servable: id, sw" in err
    assert cli(["adapters", "vllm-args", "--adapters", str(mixed_registry), "--languages", "xx"]) == 2
    assert "no usable adapter for ['xx']" in capsys.readouterr().err


def test_zero_adapter_serves_the_base_through_a_real_slot(mixed_registry, tmp_path):
    from safetensors.torch import load_file

    plan = plan_vllm(AdapterRegistry(mixed_registry), ["sw"], base="b", base_adapter=tmp_path / "zero")
    zero = load_file(str(tmp_path / "zero" / "adapter_model.safetensors"))
    real = load_file(str(mixed_registry / "sw" / "adapter_model.safetensors"))
    assert zero.keys() == real.keys() and all(v.shape == real[k].shape and not v.any() for k, v in zero.items())
    assert plan.served == {"sw": str(mixed_registry / "sw"), "base": str((tmp_path / "zero").resolve())}
    args = plan.serve_args()
    assert args[args.index("--max-loras") + 1] == "2" and f"base={(tmp_path / 'zero').resolve()}" in args
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind
