#!/usr/bin/env python
"""Main job: synthesise a Swahili corpus, train an adapter on whisper-base, print held-out WER/CER.

    python recipes/swahili_synth.py [--resume]

Runs offline on a CPU. Same as `python recipes/synth_language.py --language sw`.
"""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "--language", "sw", *sys.argv[1:]]
    runpy.run_path(str(Path(__file__).parent / "synth_language.py"), run_name="__main__")
