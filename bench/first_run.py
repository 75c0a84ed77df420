#!/usr/bin/env python
"""The README's main command on a fresh clone with an empty cache, timed as a new user would live it.

    python bench/first_run.py [--avx2] [--keep DIR]

Clones this checkout (its committed state) into a new directory, points ``WHISPER_LORA_CACHE`` at a new empty
directory (pip's own cache stays, as on a machine that installed Python packages before), runs the main command
exactly as the README states it (read from the README, so the two cannot drift), and prints a table: the whole
command, the install, then each phase from the job's own progress bars, the held-out result, and whether ``git
status`` stayed clean. ``--avx2`` caps torch, MKL and oneDNN to AVX2 (the CPU class without AVX-512) on an
AVX-512 machine. The table names the CPU.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
BARS = ("synth sw", "train sw", "base", "adapter", "language profile")


def main_command() -> str:
    """The command under "The main job" in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index("**The main job**") :]
    return re.search(r"```bash\n(.+?)\n```", after, re.S).group(1).strip()


def bar_seconds(log: str, name: str) -> float | None:
    """Elapsed time of the last complete tqdm bar called ``name`` (``name: 100%|...| n/n [mm:ss<...``)."""
    found = re.findall(rf"{re.escape(name)}: 100%\|[^|]*\| \d+/\d+ \[(\d+):(\d+)", log)
    return int(found[-1][0]) * 60 + int(found[-1][1]) if found else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--avx2", action="store_true", help="cap torch, MKL and oneDNN to AVX2")
    p.add_argument(
        "--keep", help="clone into this directory and keep it (default: a new temporary one, removed if all went well)"
    )
    a = p.parse_args()
    work = Path(a.keep or tempfile.mkdtemp(prefix="first-run-"))
    clone, cache = work / "clone", work / "cache"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    cache.mkdir()
    env = {**os.environ, "WHISPER_LORA_CACHE": str(cache), **(AVX2 if a.avx2 else {})}
    env.pop("VIRTUAL_ENV", None)
    command = main_command()
    install = command.rsplit("&&", 1)[0] + " && echo INSTALLED $(date +%s.%N)"
    started = time.time()
    out = subprocess.run(
        ["bash", "-c", f"{install} && {command.rsplit('&&', 1)[1]}"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    total = time.time() - started
    log = (out.stdout + out.stderr).replace("\r", "\n")
    (work / "log.txt").write_text(log)
    installed = re.search(r"INSTALLED (\d+\.\d+)", log)
    dirty = subprocess.run(["git", "status", "--short"], cwd=clone, capture_output=True, text=True).stdout.strip()
    cpu = subprocess.run(
        [
            str(clone / ".venv" / "bin" / "python"),
            "-c",
            "from whisper_lora.base.hardware import cpu_info; print(cpu_info().summary())",
        ],
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"device: {cpu}{' (capped to AVX2)' if a.avx2 else ''}")
    print(f"command: {command}")
    print("| phase | seconds |\n|---|---|")
    print(f"| whole command (rc {out.returncode}) | **{total:.0f}** ({total / 60:.1f} min) |")
    if installed:
        print(f"| venv + pip install | {float(installed.group(1)) - started:.0f} |")
    for name in BARS:
        s = bar_seconds(log, name)
        print(f"| {name} | {'-' if s is None else s} |")
    for line in log.splitlines():
        if line.startswith(("trained ", "base ", "adapter ", "relative ")):
            print(f"    {line}")
    print(f"git status: {'clean' if not dirty else dirty}")
    if a.keep or out.returncode or dirty:  # kept to look into: asked for, or something went wrong
        print(f"kept {work} (log: {work / 'log.txt'})")
    else:  # the clone, its venv and the cache take 3.4 GB; only the log is kept
        fd, kept = tempfile.mkstemp(prefix="first-run-", suffix=".log")
        os.close(fd)
        shutil.move(work / "log.txt", kept)
        shutil.rmtree(work)
        print(f"removed {work}; log: {kept}")
    sys.exit(out.returncode)


if __name__ == "__main__":
    main()
