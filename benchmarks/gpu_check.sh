#!/usr/bin/env bash
# Every GPU check of featstore extract in one run, sized for a short allocation (4-5 minutes on an H200
# with 16 cores): the device decoder against the CPU decoder on CUDA (tests), then the pipeline with each
# decoder and the bare model side by side, bf16, batch 256, on the 0.5 µm/px JPEG mosaics and on a
# TCGA-like 40x slide read at 0.5 µm/px. Prints one table; rows also go to $OUT/gpu_results.md, to be
# copied into benchmarks/RESULTS.md.
#   bash benchmarks/gpu_check.sh            (PY=python OUT=bench-out INPUTS=$OUT/inputs to override)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-bench-out}
INPUTS=${INPUTS:-$OUT/inputs}  # the built slides (~300 MB): keep them off a folder that is copied back
mkdir -p "$OUT" "$INPUTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
# A failing step is reported and the others still run, so one short allocation shows every problem at once.
failed=0
"$PY" -m pytest -q -p no:cacheprovider tests/test_device_decode.py || failed=1
for input in "pyramid --mosaic 5 --copies 8" "tcga40x --copies 2"; do
  for decoder in cpu gpu; do
    # shellcheck disable=SC2086  # $input holds several arguments
    "$PY" benchmarks/extract_throughput.py --input $input --device cuda --batch-size 256 --precision bf16 \
      --decoder "$decoder" --inputs-dir "$INPUTS" --results "$OUT/gpu_results.md" 2>&1 | tail -5 || failed=1
  done
done
cat "$OUT/gpu_results.md" || failed=1
exit "$failed"
