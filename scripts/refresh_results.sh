#!/usr/bin/env bash
# Finish a training run, ship its weights and regenerate every number that depends on them.
#
#   bash scripts/refresh_results.sh [CKPT_DIR] [SHARED_DATA]
#
# 0. train, or resume, the shipped recipe to its last epoch (nothing to do where it is finished):
#    one one-cycle run of 80 epochs from scratch (peak lr 0.15, cutout 16, seed 10) in CKPT_DIR;
# 1. export its last checkpoint to weights/ (eval-mode state dict + sha256);
# 2. evaluate it on the 10,000 CIFAR-10 test images (Markdown tables for weights/MODEL_CARD.md,
#    written beside the checkpoint as eval.md / eval.json);
# 3. regenerate the localisation tables in BENCHMARKS.md;
# 4. redraw docs/panel.png, the README's example output.
# The model card's prose and the README's quoted numbers are then updated by hand from these.
set -euo pipefail
# paths given are resolved before the cd below; the default data folder is the checkout's ../shared
CKPT="$(realpath -m "${1:-$HOME/.cache/gradloc-train}")"
SHARED="${2:+$(realpath -m "$2")}"
cd "$(dirname "$0")/.."
SHARED="${SHARED:-$(realpath -m ../shared/data)}"
[ -f "$SHARED/cifar10-jpeg.tar.gz" ] || { echo "error: no cifar10-jpeg.tar.gz in $SHARED" >&2; exit 1; }
mkdir -p "$CKPT"
LOG="$CKPT/refresh.log"
step() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }

step "train: 80 epochs from scratch"
python scripts/train_cifar10.py --data "$SHARED/cifar10-jpeg.tar.gz" --ckpt-dir "$CKPT" --resume \
    --epochs 80 --cutout 16 --seed 10 >> "$CKPT/train.log" 2>&1
step export
python scripts/train_cifar10.py --ckpt-dir "$CKPT" --export weights/wrn16-4_cifar10.pt | tee -a "$LOG"
step evaluate on the CIFAR-10 test split
python scripts/eval_cifar10.py --data "$SHARED/cifar10-jpeg.tar.gz" --markdown --json "$CKPT/eval.json" \
    > "$CKPT/eval.md"
head -3 "$CKPT/eval.md" | tee -a "$LOG"
step localisation benchmarks
python scripts/run_benchmarks.py --shared "$SHARED" --large-n 100 --write BENCHMARKS.md >> "$LOG" 2>&1
step panel
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python -m gradloc.cli localize samples/composite_cat_dog.png --classes cat,dog -o "$TMP" -v | tee -a "$LOG"
cp "$TMP"/vis/*.png docs/panel.png
step done
