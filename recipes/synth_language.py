#!/usr/bin/env python
"""Any language with an espeak-ng voice and shipped sentence lists (sw, id): synthesise, train, report.

python recipes/synth_language.py --language id [--config recipes/configs/id_synth.yaml]
"""

import argparse
import sys
from pathlib import Path

from whisper_lora.cli import main as cli

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--language", required=True)
    p.add_argument("--config", help="default: recipes/configs/<language>_synth.yaml")
    p.add_argument("--data", help="default: data/<language>_synth")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    config = a.config or str(Path(__file__).parent / "configs" / f"{a.language}_synth.yaml")
    data = a.data or f"data/{a.language}_synth"
    if not (Path(data) / "texts" / "train.csv").exists():
        rc = cli(["synth", "--language", a.language, "--out", data])
        if rc:
            sys.exit(rc)
    sys.exit(cli(["train", "--config", config, "--data", data] + (["--resume"] if a.resume else [])))
