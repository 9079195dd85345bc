"""Assembly benchmark (issue 4 targets): MNIST + Fashion-MNIST parts joined into one classifier.

    .venv/bin/python benchmarks/assembly.py [--archs lenet5 vgg16]

For each architecture and pair of class sets, one part is cut from the MNIST model and one from the
Fashion-MNIST model (runs/zoo/, contribution attribution, thresholds calibrated within 0.25 points on
the models' validation splits), then assembled with every rescaling option. Accuracy is on the union of
the parts' test images, argmax over all logits (DESIGN §3); *orig.* is the mean of the original models'
accuracies on their own classes. Logits are computed once per part; each rescaling is the affine map
its fit produced (fitted on training images only). Cells are cached under runs/bench/assembly/.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import torch

from common import ROOT, environment, update_report, write_json
from mdakit.artifacts import load_with_card
from mdakit.assemble import assemble
from mdakit.data import ClassSubset, load_dataset
from mdakit.disassemble import disassemble
from mdakit.evaluate import evaluate_logits, predict_logits
from mdakit.metrics import model_size
from mdakit.progress import progress

PAIRS = [("0", "0"), ("0,1,2", "0,1,2"), ("0,1,2", "3-9"), ("0-9", "0,1,2")]
RESCALES = ("none", "paper", "calibrated")
CACHE = ROOT / "runs" / "bench" / "assembly"


def _cell(arch: str, mnist_classes: str, fashion_classes: str, tolerance: float) -> dict:
    parts, tests, originals = [], [], []
    for dataset, classes in (("mnist", mnist_classes), ("fashion-mnist", fashion_classes)):
        model_dir = ROOT / "runs" / "zoo" / f"{arch}-{dataset}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            part = disassemble(model_dir, load_dataset(dataset, "train")[0], classes, calibrate=tolerance)
        parts.append(part)
        test, _ = load_dataset(dataset, "test")
        tests.append(ClassSubset(test, part.card.logit_classes, remap=True))
        originals.append(model_dir)
    # logits of every part on every part's test images, computed once
    raw, labels, offset = [], [], 0
    for p, subset in enumerate(tests):
        raw.append(torch.cat([predict_logits(part.model, subset)[0] for part in parts], 1))
        labels.append(subset.targets + offset)
        offset += len(parts[p].card.logit_classes)
    logits, labels = torch.cat(raw), torch.cat(labels)
    orig = []
    for part, model_dir in zip(parts, originals):
        model, card = load_with_card(model_dir)
        original_logits, original_labels = predict_logits(model, ClassSubset(
            load_dataset(card.dataset, "test")[0], part.card.logit_classes, remap=False))
        orig.append(evaluate_logits(original_logits, original_labels, card.logit_classes,
                                    part.card.logit_classes).accuracy)
    row = {"arch": arch, "mnist_classes": mnist_classes, "fashion_classes": fashion_classes,
           "test_images": len(labels), "orig": sum(orig) / len(orig), "orig_per_part": orig,
           "part_accuracy_alone": [p.report.get("part_accuracy") for p in parts], "rescale": {}}
    for rescale in RESCALES:
        model, card = assemble([(p.model, p.card) for p in parts], rescale=rescale)
        scaled = logits * model.scale + model.shift
        predicted = scaled.argmax(1)
        row["rescale"][rescale] = {"accuracy": float((predicted == labels).float().mean()),
                                   "fit": {k: v for k, v in card.fit.items() if k != "samples"}}
    parallel, card = assemble([(p.model, p.card) for p in parts])
    padded, _ = assemble([(p.model, p.card) for p in parts], layout="padded")
    images = torch.stack([tests[0][i][0] for i in range(min(64, len(tests[0])))])
    with torch.no_grad():
        row["padded_max_abs_difference"] = float((padded(images) - parallel(images)).abs().max())
    row["sizes"] = {"parts": [model_size(p.model, card.input_shape) for p in parts],
                    "parallel": model_size(parallel, card.input_shape),
                    "padded": model_size(padded, card.input_shape)}
    return row


def run(archs: list[str], tolerance: float) -> list[dict]:
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch, (a, b) in progress([(arch, pair) for arch in archs for pair in PAIRS], "assembly cells"):
        if not all((ROOT / "runs" / "zoo" / f"{arch}-{d}" / "card.json").is_file() for d in ("mnist", "fashion-mnist")):
            print(f"skipping {arch}: models not trained yet", file=sys.stderr)
            continue
        cache = CACHE / f"{arch}-{a.replace(',', '_')}+{b.replace(',', '_')}-t{tolerance}.json"
        if not cache.is_file():
            cache.write_text(json.dumps(_cell(arch, a, b, tolerance), indent=2))
        rows.append(json.loads(cache.read_text()))
    return rows


def report(rows: list[dict], tolerance: float) -> str:
    lines = ["Command: `.venv/bin/python benchmarks/assembly.py`. Parts: contribution attribution with thresholds "
             f"calibrated within {tolerance} points on each model's validation split. Accuracy on the union of the "
             "parts' test images, argmax over all logits; *orig.* = mean of the original models on their own "
             "classes. Rescaling fitted on training images only. Target: best option ≥ orig. − 1 point.", "",
             "| model | MNIST | Fashion | images | orig. | none | paper (Eq. 11) | calibrated | best − orig. | "
             "parallel MACs = Σ parts | padded MACs (params, non-zero) | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    met = 0
    for r in rows:
        acc = {k: v["accuracy"] for k, v in r["rescale"].items()}
        best = max(acc.values())
        ok = 100 * (best - r["orig"]) >= -1.0
        met += ok
        sizes = r["sizes"]
        macs_sum = sum(p["macs"] for p in sizes["parts"])
        lines.append(
            f"| {r['arch']} | {r['mnist_classes']} | {r['fashion_classes']} | {r['test_images']} | "
            f"{100 * r['orig']:.2f} | {100 * acc['none']:.2f} | {100 * acc['paper']:.2f} | "
            f"{100 * acc['calibrated']:.2f} | {100 * (best - r['orig']):+.2f} | "
            f"{sizes['parallel']['macs']:,} = {macs_sum:,} {'✓' if sizes['parallel']['macs'] == macs_sum else '✗'} | "
            f"{sizes['padded']['macs']:,} ({sizes['padded']['params']:,}, {sizes['padded']['nonzero_params']:,}) | "
            f"{'met' if ok else '**missed**'} |")
    lines += ["", f"{met} of {len(rows)} cells meet the target. Padded and parallel layouts give the same logits "
              f"(largest difference {max((r['padded_max_abs_difference'] for r in rows), default=0):.1e})."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="*", default=["lenet5", "vgg16"])
    parser.add_argument("--tolerance", type=float, default=0.25)
    args = parser.parse_args()
    rows = run(args.archs, args.tolerance)
    write_json("assembly", {"environment": environment(), "cells": rows})
    text = report(rows, args.tolerance)
    update_report("Assembly (MNIST + Fashion-MNIST)", text + f"\n\nEnvironment: {environment()}.")
    print(text)


if __name__ == "__main__":
    main()
