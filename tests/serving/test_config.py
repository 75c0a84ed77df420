"""The Ray settings are validated in one place, and a replica refuses a registry it cannot see or that differs."""

import shutil

import pytest

from tests.conftest import REPO_ADAPTERS
from whisper_lora.errors import ConfigError
from whisper_lora.registry.catalog import AdapterRegistry
from whisper_lora.serving.config import RayConfig, ServerConfig


def test_ray_settings_are_validated_together():
    with pytest.raises(ConfigError) as e:
        RayConfig(replicas=0, min_replicas=3, max_loaded=0, multiplex="sometimes", cpus_per_replica=0, retries=-1)
    text = str(e.value)
    for bad in (
        "replicas=0",
        "max_loaded=0",
        "both min_replicas and max_replicas",
        "multiplex='sometimes'",
        "valid: auto, always, never",
        "cpus_per_replica=0",
        "retries=-1",
    ):
        assert bad in text, bad
    with pytest.raises(ConfigError, match="need 0 <= min_replicas <= max_replicas"):
        RayConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ConfigError, match="ship_adapters"):
        RayConfig(ship_adapters=True, registry_path="/shared/adapters")


def test_autoscaling_multiplexing_and_threads():
    assert RayConfig().autoscaling is None
    auto = RayConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=2)
    assert auto.autoscaling == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2}
    assert not RayConfig(max_loaded=3).multiplexed(3) and RayConfig(max_loaded=3).multiplexed(4)
    assert RayConfig(multiplex="always").multiplexed(1) and not RayConfig(multiplex="never").multiplexed(99)
    assert RayConfig(cpus_per_replica=0.5).threads == 1 and RayConfig(cpus_per_replica=4).threads == 4


def test_a_replica_refuses_a_registry_it_cannot_see_or_that_differs(tiny_registry, tmp_path):
    from whisper_lora.serving.ray_replica import ReplicaSpec, visible_registry

    copy = tmp_path / "adapters"
    shutil.copytree(tiny_registry, copy)
    digest = AdapterRegistry(tiny_registry).digest()
    assert AdapterRegistry(copy).digest() == digest  # content, not inodes or mtimes: equal across machines
    ray_config = RayConfig(app_name="test-config")  # no deployment of this name stored a digest in a Ray cluster
    spec = ReplicaSpec(str(copy), digest, ServerConfig(), ray_config)
    assert visible_registry(spec) == copy
    with pytest.raises(ConfigError, match=r"cannot see the adapter registry /nowhere/adapters; every node must"):
        visible_registry(ReplicaSpec("/nowhere/adapters", digest, ServerConfig(), ray_config))
    (copy / "cs" / "adapter_model.safetensors").write_bytes(b"another adapter")
    shutil.rmtree(copy / "ary")
    with pytest.raises(ConfigError, match=r"reads different adapters .* \(differ: ary, cs\); .*--ship-adapters"):
        visible_registry(spec)


def test_serve_ray_says_what_is_wrong_before_starting_anything(capsys, monkeypatch):
    import sys

    from whisper_lora.cli import main

    assert main(["serve", "--ray", "--replicas", "3", "--min-replicas", "1", "--max-replicas", "2"]) == 2
    assert "replicas=3 with autoscaling" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray Serve not installed
    for name in [m for m in sys.modules if m.startswith("whisper_lora.serving.ray_")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["serve", "--ray", "--adapters", str(REPO_ADAPTERS)]) == 2
    assert "install it: pip install 'whisper-lora[ray]'" in capsys.readouterr().err
