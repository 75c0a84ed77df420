"""Saving an adapter survives kill -9 at every write point: the directory then validates as the old adapter or the
new one, and nothing is left beside it. The killed children import only the registry modules (``light``). In-place
updates of an adapter's metadata and card take turns with its writers (its lock), and scores of replaced weights are
refused."""

import json
import shutil
import signal
import threading
import time

import pytest

from tests.conftest import REPO_ADAPTERS, make_tiny_adapter, run_python
from whisper_lora.atomic import FAULT_ENV, FAULT_POINTS, target_lock
from whisper_lora.errors import AdapterError
from whisper_lora.registry.adapter_io import (
    METADATA_FILE,
    load_adapter,
    read_metadata,
    update_metrics,
    validate_adapter,
    weights_digest,
)
from whisper_lora.registry.card import make_hub_ready
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


def _push(adapter):
    import huggingface_hub

    from whisper_lora.registry.publish import push_adapter

    class Hub:  # nothing reaches the hub
        def __init__(self, token=None):
            pass

        def create_repo(self, *args, **kw):
            pass

        def upload_folder(self, **kw):
            return "https://huggingface.co/me/sw/commit/abc"

    real, huggingface_hub.HfApi = huggingface_hub.HfApi, Hub
    try:
        push_adapter(adapter, "me/sw")
    finally:
        huggingface_hub.HfApi = real


IN_PLACE = {
    "update_metrics": lambda d: update_metrics(d, {"split": "test"}),
    "make_hub_ready (adapters card)": make_hub_ready,
    "push_adapter (reads one version)": _push,
}


@pytest.mark.parametrize("operation", list(IN_PLACE))
def test_in_place_updates_wait_for_the_adapters_writer(tmp_path, operation):
    """A writer (``save_adapter``, ``remove_directory``) holds the adapter's lock: a metadata or card update waits
    for it instead of writing into the adapter that is being replaced."""
    adapter = shutil.copytree(REPO_ADAPTERS / "sw", tmp_path / "sw")
    done = threading.Event()
    errors = []

    def update():
        try:
            IN_PLACE[operation](adapter)
        except BaseException as e:  # noqa: B036 - reported by the test thread
            errors.append(e)
        done.set()

    with target_lock(adapter):  # as save_adapter holds it while it writes and swaps
        worker = threading.Thread(target=update)
        worker.start()
        time.sleep(0.5)
        assert not done.is_set(), "the update did not wait for the writer's lock"
    worker.join(30)
    assert done.is_set() and not errors, errors


def test_scores_of_replaced_weights_are_refused(tiny_dir, tmp_path):
    adapter = make_tiny_adapter(tiny_dir, tmp_path, "sw", seed=1)
    loaded = weights_digest(adapter)
    make_hub_ready(adapter)  # metadata and card rewritten: the same weights
    assert weights_digest(adapter) == loaded
    update_metrics(adapter, {"split": "test", "note": 1}, scored=loaded)
    assert read_metadata(adapter).metrics == {"split": "test", "note": 1}
    make_tiny_adapter(tiny_dir, tmp_path, "sw", seed=2)  # retrained and saved meanwhile
    before = (adapter / METADATA_FILE).read_text()
    with pytest.raises(AdapterError, match="was replaced after its weights were loaded .* not written; evaluate it"):
        update_metrics(adapter, {"split": "test", "note": 2}, scored=loaded)
    assert (adapter / METADATA_FILE).read_text() == before and json.loads(before)["metrics"] == {}
