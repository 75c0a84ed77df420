"""Saving an adapter survives kill -9 at every write point: the directory then validates as the old adapter or the
new one, and nothing is left beside it. The killed children import only the registry modules (``light``)."""

import shutil
import signal

import pytest

from tests.conftest import run_python
from whisper_lora.atomic import FAULT_ENV, FAULT_POINTS
from whisper_lora.registry.adapter_io import load_adapter, read_metadata, validate_adapter
from whisper_lora.registry.catalog import AdapterRegistry

# saves the adapter in argv[1] into argv[2] with save_adapter; argv[3] says where the child is killed
WRITER = """
import os, shutil, signal, sys
from pathlib import Path
from whisper_lora.registry import adapter_io

src, out, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class Trained:
    '''Stands in for the trained PeftModel: save_pretrained writes the PEFT files of the adapter in src.'''

    def save_pretrained(self, directory, **kwargs):
        shutil.copy(src / "adapter_config.json", directory)
        if point == "peft-files":  # killed between peft's two files
            die()
        shutil.copy(src / "adapter_model.safetensors", directory)


if point == "metadata":  # killed after the weights and whisper_lora.json, before the model card
    adapter_io.write_hub_files = lambda *args: die()
adapter_io.save_adapter(Trained(), out, adapter_io.read_metadata(src))
"""

# where the child is killed -> which adapter the directory holds once recovered
SURVIVOR = {
    "peft-files": "old",
    "metadata": "old",
    "begun": "old",
    "written": "old",
    "committed": "new",
    "moved-old": "new",
    "swapped": "new",
}


def test_every_write_point_is_tested():
    assert set(FAULT_POINTS) <= set(SURVIVOR)


@pytest.mark.parametrize("point", list(SURVIVOR))
def test_kill_9_while_saving_an_adapter_leaves_the_old_or_the_new_one(tiny_registry, tmp_path, point):
    out = tmp_path / "sw"
    shutil.copytree(tiny_registry / "sw", out)  # the adapter being replaced
    new = tiny_registry / "cs"  # the one being saved
    env = {FAULT_ENV: f"sw:{point}"} if point in FAULT_POINTS else {}
    child = run_python(WRITER, str(new), str(out), point, env=env, light=True)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert any(p.name.startswith(".sw.") for p in tmp_path.iterdir())  # the write was left half done

    meta = validate_adapter(out)  # finishes or undoes the interrupted write, then every check passes
    expected = {"old": tiny_registry / "sw", "new": new}[SURVIVOR[point]]
    assert meta.language == read_metadata(expected).language
    weights = "adapter_model.safetensors"
    assert (out / weights).read_bytes() == (expected / weights).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["sw"]  # leftovers and lock file cleaned


def test_loading_an_adapter_finishes_a_committed_write(tiny_registry, tiny_dir, tmp_path):
    from whisper_lora.base.model import load_base_model

    out = tmp_path / "sw"
    shutil.copytree(tiny_registry / "sw", out)
    child = run_python(
        WRITER, str(tiny_registry / "cs"), str(out), "moved-old", env={FAULT_ENV: "sw:moved-old"}, light=True
    )
    assert child.returncode == -signal.SIGKILL and not out.exists()  # killed with neither adapter in place
    load_adapter(load_base_model(str(tiny_dir), "fp32", "cpu").model, out)
    assert read_metadata(out).language == "cs"


def test_the_registry_finishes_an_adapter_killed_between_its_renames(tiny_registry, tmp_path):
    root = tmp_path / "adapters"
    shutil.copytree(tiny_registry, root)
    env = {FAULT_ENV: "sw:moved-old"}
    child = run_python(WRITER, str(tiny_registry / "cs"), str(root / "sw"), "moved-old", env=env, light=True)
    assert child.returncode == -signal.SIGKILL and not (root / "sw").exists()
    registry = AdapterRegistry(root)
    assert registry.names() == ["ary", "cs", "sw"] and registry.get("sw").language == "cs"  # the new one
    assert sorted(p.name for p in root.iterdir()) == ["ary", "cs", "sw"]
