#!/usr/bin/env bash
# Every GPU measurement of issues 32 and 33 in one run, about 5 minutes on an H100/H200 (run bench/gpu_prepare.sh here
# first; on the device: carry [".whl", ".gpu"], command `OUT=$OUT bash bench/gpu_session.sh`):
#   1. bench/gpu_decode.py: a batch of 16 windows spread over 1-8 adapters plus base rows, large-v3 shape, bf16; last
#      (--graphs), the base, 1 and 8 adapters row-indexed and a merged adapter decoded as Transcriber(graphs="on")
#      decodes: a static KV cache and a compiled step (CUDA graphs), each compiled on its first call;
#   2. bench/gpu_train.py: training steps, large-v3 shape, int8 and bf16 at batches 8 and 32, SDPA back-ends without
#      cuDNN (auto) and torch's own choice, against PEFT's recipe.
# The random checkpoint is built first; then each part has its own deadline, so one that runs long leaves the other its
# time, and gpu_decode.py writes its JSON after every row. Results go to $OUT.
# A CPU check of the same script: SHAPE=tiny DECODE="--precision fp32 --batch 4 --tokens 8 --repeats 1"
#   TRAIN="--batches 2 --precisions fp32 --steps 2 --warmup 1 --no-reference" bash bench/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
if ! python3 -c "import bitsandbytes, librosa, jiwer" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
PROC=${PROC:-.gpu/processor}
SHAPE=${SHAPE:-large-v3}
ROOT=$(mktemp -d)
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU") | tee "$OUT/device.txt"
start=$(date +%s)
# the random checkpoint, once, before either deadline starts (written whole or not at all: memory.build_with_processor)
timeout "${BUILD_SECONDS:-180}" python3 -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path
from memory import build_with_processor; print(build_with_processor('$SHAPE', Path('$ROOT') / 'bases', '$PROC'))" \
  || { echo "building the $SHAPE checkpoint failed or ran out of time"; exit 1; }
echo "checkpoint built after $(( $(date +%s) - start )) s"
# shellcheck disable=SC2086
timeout "${DECODE_SECONDS:-150}" python3 bench/gpu_decode.py --shape "$SHAPE" --processor "$PROC" --root "$ROOT" \
  ${DECODE:---graphs} --json "$OUT/gpu_decode.json" > "$OUT/gpu_decode.log" 2>&1
echo "gpu_decode: exit $? after $(( $(date +%s) - start )) s"; tail -20 "$OUT/gpu_decode.log"
# shellcheck disable=SC2086
timeout "${TRAIN_SECONDS:-240}" python3 bench/gpu_train.py --shapes "$SHAPE" --processor "$PROC" --root "$ROOT" \
  ${TRAIN:---batches 8 32 --precisions int8 bf16 --attention auto torch --steps 4 --warmup 2} \
  --json "$OUT/gpu_train.json" \
  > "$OUT/gpu_train.log" 2>&1
echo "gpu_train: exit $? after $(( $(date +%s) - start )) s"; tail -20 "$OUT/gpu_train.log"
rm -rf "$ROOT"
