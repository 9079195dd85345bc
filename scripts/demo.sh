#!/usr/bin/env bash
# The main job on a small real default: LeNet-5 on MNIST and on Fashion-MNIST, trained (once; a
# rerun reuses the saved models) and evaluated on their test splits.
set -euo pipefail
cd "$(dirname "$0")/.."
MDAKIT=.venv/bin/mdakit
OUT=runs/demo
mkdir -p "$OUT"
for ds in mnist fashion-mnist; do
  if [ ! -f "$OUT/lenet5-$ds/card.json" ]; then
    $MDAKIT train --arch lenet5 --dataset "$ds" --epochs 5 --seed 0 --out "$OUT/lenet5-$ds"
  else
    echo "reusing $OUT/lenet5-$ds" >&2
  fi
  $MDAKIT eval "$OUT/lenet5-$ds"
done
