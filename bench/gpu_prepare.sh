#!/usr/bin/env bash
# What a GPU run of bench/gpu_session.sh needs beside the checkout, made here (both git-ignored; name them in the
# device run's carry: [".whl", ".gpu"]):
#   .whl/            the Python 3.12 wheels the GPU image lacks (../shared/gpu/prepare_wheels.sh, about 47 MB)
#   .gpu/processor/  whisper-base's tokenizer, feature-extractor and generation configs, without its weights (2-3 MB):
#                    the random checkpoints of OpenAI's shapes take their tokenizer from it
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "$(ls .whl/*.whl 2>/dev/null)" ] || bash ../shared/gpu/prepare_wheels.sh
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
python - <<'PY'
import shutil
from pathlib import Path

from whisper_lora.base.resolve import resolve_base

src, dst = Path(resolve_base("whisper-base")), Path(".gpu/processor")
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.is_file() and f.suffix in (".json", ".txt"):
        shutil.copy(f, dst / f.name)
print(f"{dst}: {sorted(p.name for p in dst.iterdir())}")
PY
du -sh .whl .gpu
