#!/usr/bin/env python
"""Czech adapter on real recorded speech: Fish Fillets NG voice acting (Debian packages).

    apt-get install fillets-ng-data fillets-ng-data-cs   # or: apt-get download + dpkg-deb -x
    python recipes/czech_fillets.py [--root /usr/share/games/fillets-ng] [--limit-train N] [--limit-test 120]

Builds a manifest (whole levels held out for dev/test), trains, prints the before/after table.
"""

import argparse
import csv
import sys
from pathlib import Path

from whisper_lora.cli import main as cli
from whisper_lora.data.fillets import DEFAULT_ROOT, build_fillets_manifest

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT))
    p.add_argument("--config", default=str(Path(__file__).parent / "configs" / "cs_fillets.yaml"))
    p.add_argument("--manifest", default="data/cs_fillets/manifest.csv")
    p.add_argument("--limit-train", type=int, default=10**9, help="training lines kept (default: all 1451)")
    p.add_argument("--limit-test", type=int, default=120, help="held-out lines scored")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    manifest, counts = build_fillets_manifest(a.root, a.manifest)
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    limits = {"train": a.limit_train, "test": a.limit_test, "dev": 10**9}
    kept, seen = [], {"train": 0, "dev": 0, "test": 0}
    for r in rows:  # keep the first N of each split (the manifest is in level order)
        if seen[r["split"]] < limits[r["split"]]:
            kept.append(r)
            seen[r["split"]] += 1
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    print(f"manifest {manifest}: available {counts}, kept {seen}")
    sys.exit(cli(["train", "--config", a.config, "--data", str(manifest)] + (["--resume"] if a.resume else [])))
