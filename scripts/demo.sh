#!/usr/bin/env bash
# The main job on a small real default: LeNet-5 on MNIST and on Fashion-MNIST, trained once (a rerun
# reuses the saved models) and evaluated on their test splits; then parts for a few classes are cut
# from each (contribution attribution, thresholds calibrated on held-out training images) and an MNIST
# part is assembled with a Fashion-MNIST part into one classifier; the classes' sub-networks are compared
# (contribution and NAD masks) and everything lands in one HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
MDAKIT=.venv/bin/mdakit
OUT=runs/demo
mkdir -p "$OUT"
for ds in mnist fashion-mnist; do
  if [ ! -f "$OUT/lenet5-$ds/card.json" ]; then
    $MDAKIT train --arch lenet5 --dataset "$ds" --epochs 5 --batch-size 32 --seed 0 --out "$OUT/lenet5-$ds"
  else
    echo "reusing $OUT/lenet5-$ds" >&2
  fi
  $MDAKIT eval "$OUT/lenet5-$ds"
done
$MDAKIT disassemble "$OUT/lenet5-mnist" --classes 0,1,2 --calibrate 0.25 --out "$OUT/part-mnist-012" --force
$MDAKIT disassemble "$OUT/lenet5-fashion-mnist" --classes Trouser,Bag --calibrate 0.25 --out "$OUT/part-fashion-trouser-bag" --force
$MDAKIT eval "$OUT/part-fashion-trouser-bag"
$MDAKIT disassemble "$OUT/lenet5-fashion-mnist" --classes 0,1,2 --calibrate 0.25 --out "$OUT/part-fashion-012" --force
# one classifier over digits 0-2 and garments 0-2, from two models trained on different datasets
$MDAKIT assemble "$OUT/part-mnist-012" "$OUT/part-fashion-012" --rescale paper --out "$OUT/assembled" --force
# which classes' sub-networks overlap, and whether the model confuses the classes that share the most
for method in contribution nad; do
  $MDAKIT analyze "$OUT/lenet5-mnist" --method "$method" --per-class 200 --out "$OUT/analysis-mnist-$method" --force
done
# one self-contained HTML page over the whole run: cards, accuracies, sizes, routes, similarity, patterns
$MDAKIT report "$OUT" --out "$OUT/report.html" --force >/dev/null
echo "report: $(realpath "$OUT/report.html")"
