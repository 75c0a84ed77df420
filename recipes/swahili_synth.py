#!/usr/bin/env python
"""Main job: synthesise a Swahili corpus, train an adapter on whisper-base, print held-out WER/CER.

    python recipes/swahili_synth.py [--config recipes/configs/sw_synth.yaml] [--resume]

Runs offline on a CPU. A thin script: all logic lives in the whisper_lora package.
"""

import argparse
import sys
from pathlib import Path

from whisper_lora.cli import main as cli

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(Path(__file__).parent / "configs" / "sw_synth.yaml"))
    p.add_argument("--data", default="data/sw_synth")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    if not (Path(a.data) / "texts" / "train.csv").exists():
        rc = cli(["synth", "--language", "sw", "--out", a.data])
        if rc:
            sys.exit(rc)
    sys.exit(cli(["train", "--config", a.config, "--data", a.data] + (["--resume"] if a.resume else [])))
