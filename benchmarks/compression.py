"""Compression against FPGM (seed App. D.2, Table 6), each with and without one epoch of fine-tuning.

    .venv/bin/python benchmarks/compression.py                                  # every cell
    .venv/bin/python benchmarks/compression.py --archs vgg16 --datasets mnist   # one cell

Per zoo model runs/zoo/<arch>-<dataset>: the union of all classes' components (contribution
attribution, default thresholds, 50 samples per class) physically extracted; the same with gradient
attribution ('Grad.'); FPGM through Torch-Pruning at the MACs ratio the contribution method reached (the
largest ratio not above it). Every FPGM-pruned model is first checked against the masked original
(logits within 1e-4 on real test images). Fine-tuning: one epoch of SGD (lr 0.001, momentum 0.9, cosine,
batch 128) on a stratified training subset (``--finetune-images``, 5,000 by default: 500 per class, a
tenth of it held out by mdakit.train), applied to the contribution and FPGM models. Accuracy: the full
test split, argmax over all 10 logits. MACs: FlopCounterMode flops / 2, one input.

Cells are cached under runs/bench/compression/ (a rerun resumes). Results: benchmarks/results/compression.json
and the 'Compression against FPGM' section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from common import ROOT, environment, update_report, write_json
from mdakit.artifacts import load_with_card
from mdakit.compression import compress, fpgm_prune, ratios
from mdakit.data import load_dataset
from mdakit.evaluate import evaluate
from mdakit.graph import trace
from mdakit.metrics import model_size
from mdakit.surgery import MaskedModel
from mdakit.train import TrainConfig, train

ARCHS = ["vgg16", "resnet50", "googlenet"]
DATASETS = ["mnist", "fashion-mnist"]
CACHE = ROOT / "runs" / "bench" / "compression"
NAMES = {"lenet5": "LeNet-5", "vgg16": "VGG-16", "resnet50": "ResNet50", "googlenet": "GoogleNet"}
# Table 6 of the seed: (Orig., Ours acc/rFLOPs/rPara, Grad. acc/rFLOPs/rPara, FPGM acc/rFLOPs/rPara), in %
PUBLISHED = {
    ("mnist", "vgg16"): (99.65, 99.68, 95.28, 62.32, 99.33, 90.99, 94.98, 99.45, 87.79, 90.59),
    ("mnist", "resnet50"): (99.65, 99.62, 99.10, 98.04, 92.71, 93.02, 98.89, 99.61, 47.23, 51.24),
    ("mnist", "googlenet"): (99.77, 99.30, 94.1, 93.82, 99.74, 84.5, 94.14, 98.73, 51.23, 54.87),
    ("fashion-mnist", "vgg16"): (94.23, 93.17, 90.03, 60.3, 91.98, 88.47, 87.73, 94.15, 86.74, 79.25),
    ("fashion-mnist", "resnet50"): (94.10, 93.92, 98.75, 96.13, 93.98, 99.43, 99.11, 93.87, 46.19, 52.31),
    ("fashion-mnist", "googlenet"): (94.74, 94.59, 93.86, 94.45, 94.32, 90.9, 93.5, 94.52, 50.74, 53.67),
}


def _finetune(model: torch.nn.Module, train_data, images: int) -> dict[str, Any]:
    config = TrainConfig(epochs=1, lr=0.001, batch_size=128, train_subset=images, seed=0)
    return train(model, train_data, config, show_progress=False).to_dict()


def _entry(model: torch.nn.Module, original: dict, shape, test, classes) -> dict[str, Any]:
    size = model_size(model, shape)
    return {"size": size, **ratios(original, size), "accuracy": evaluate(model, test, classes).accuracy}


def _cell(arch: str, dataset: str, finetune_images: int, path: Path) -> dict[str, Any]:
    """One model: each step's result is written to ``path`` as soon as it is known."""
    row: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"arch": arch, "dataset": dataset}
    model_dir = ROOT / "runs" / "zoo" / f"{arch}-{dataset}"
    model, card = load_with_card(model_dir)
    shape, classes = card.input_shape, list(card.logit_classes)
    train_data, _ = load_dataset(dataset, "train")
    test, _ = load_dataset(dataset, "test")
    original = model_size(model, shape)

    def save() -> None:
        path.write_text(json.dumps(row, indent=2, default=str))

    if "original" not in row:
        row["original"] = {"size": original, "accuracy": evaluate(model, test, classes).accuracy}
        save()
    compressed = {}
    for method in ("contribution", "gradient"):
        if method not in row or (method == "contribution" and "contribution_ft" not in row):
            start = time.perf_counter()
            compressed[method] = compress(model_dir, dataset, method, thresholds="paper").model
            seconds = time.perf_counter() - start
            if method not in row:
                row[method] = {**_entry(compressed[method], original, shape, test, classes), "seconds": seconds}
                save()
    if "fpgm" not in row or "fpgm_ft" not in row:
        start = time.perf_counter()
        graph = trace(model, shape)
        pruned = fpgm_prune(model, shape, row["contribution"]["macs_ratio"], graph=graph)
        images = torch.stack([test[i][0] for i in range(64)])
        with torch.no_grad():
            diff = float((pruned.model(images) - MaskedModel(graph, pruned.keep).eval()(images)).abs().max())
        if diff > 1e-4:
            raise SystemExit(f"{arch}-{dataset}: Torch-Pruning's model differs from the masked original by {diff}")
        seconds = time.perf_counter() - start
        if "fpgm" not in row:
            row["fpgm"] = {**_entry(pruned.model, original, shape, test, classes), "seconds": seconds,
                           "pruning_ratio": pruned.pruning_ratio, "equivalence_max_abs_diff": diff}
            save()
        compressed["fpgm"] = pruned.model
    for method in ("contribution", "fpgm"):
        key = f"{method}_ft"
        if key not in row:
            tuned = copy.deepcopy(compressed[method])
            fit = _finetune(tuned, train_data, finetune_images)
            row[key] = {**_entry(tuned, original, shape, test, classes), "finetune": fit}
            save()
    return row


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _report(rows: list[dict], finetune_images: int, env: dict) -> str:
    head = ("| dataset | CNN | orig. | ours acc. | ours +ft | rMACs | rPara. | Grad. acc. | rMACs | rPara. | "
            "FPGM acc. | FPGM +ft | rMACs | rPara. | ours ≥ FPGM (no ft) |")
    lines = [f"Command: `.venv/bin/python benchmarks/compression.py --finetune-images {finetune_images}` (zoo models "
             "from runs/zoo; FPGM through Torch-Pruning at the largest MACs ratio not above ours).", "",
             "Measured (all in %; accuracy on the full test split, argmax over all 10 logits; +ft = one epoch "
             f"of fine-tuning on {finetune_images:,} training images):", "", head,
             "|" + "---|" * 15]
    wins = 0
    for r in rows:
        c, g, f = r["contribution"], r.get("gradient"), r["fpgm"]
        win = c["accuracy"] >= f["accuracy"]
        wins += win
        lines.append(f"| {r['dataset']} | {NAMES[r['arch']]} | {_pct(r['original']['accuracy'])} | "
                     f"{_pct(c['accuracy'])} | {_pct(r['contribution_ft']['accuracy'])} | {_pct(c['macs_ratio'])} | "
                     f"{_pct(c['params_ratio'])} | {_pct(g and g['accuracy'])} | {_pct(g and g['macs_ratio'])} | "
                     f"{_pct(g and g['params_ratio'])} | {_pct(f['accuracy'])} | {_pct(r['fpgm_ft']['accuracy'])} | "
                     f"{_pct(f['macs_ratio'])} | {_pct(f['params_ratio'])} | {'yes' if win else '**no**'} |")
    lines += ["", f"Ours ≥ FPGM without fine-tuning in {wins} of {len(rows)} measured cells. With the default "
              "thresholds (conv α 0.3, β 0.2; linear α 0.4, β 0.3) the union of all ten classes keeps most of "
              "each network, so FPGM is matched at a mild compression (its pruning ratio per cell is in the "
              "JSON); the paper's VGG-16 kept 60–62 % of the parameters. Every FPGM model passed the "
              "masked-original check (max |Δlogit| in the JSON). Torch-Pruning 1.6.1 fails on a concat pooled "
              "to 2×2, flattened into a Linear (tests/test_compress.py); none of these networks has that "
              "pattern.", "",
              "Published (seed Table 6, rFLOPs as printed; other hardware, other model variants and training):", "",
              "| dataset | CNN | orig. | ours acc. | rFLOPs | rPara. | Grad. acc. | rFLOPs | rPara. | FPGM acc. | "
              "rFLOPs | rPara. |", "|" + "---|" * 12]
    for (dataset, arch), values in PUBLISHED.items():
        lines.append(f"| {dataset} | {NAMES[arch]} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    missing = [f"{a}-{d}" for d in DATASETS for a in ARCHS
               if not any(r["arch"] == a and r["dataset"] == d for r in rows)]
    if missing:
        lines += ["", f"Not measured yet: {', '.join(missing)} (run `.venv/bin/python benchmarks/compression.py`)."]
    lines += ["", f"Environment: {env}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS, choices=list(NAMES))
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--finetune-images", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    CACHE.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        for arch in args.archs:
            path = CACHE / f"{arch}-{dataset}-ft{args.finetune_images}.json"
            if not (path.is_file() and "fpgm_ft" in json.loads(path.read_text())):
                _cell(arch, dataset, args.finetune_images, path)
                print(f"done {arch}-{dataset}", flush=True)
    rows = [json.loads(p.read_text()) for d in DATASETS for a in NAMES
            for p in [CACHE / f"{a}-{d}-ft{args.finetune_images}.json"] if p.is_file()]
    rows = [r for r in rows if "fpgm_ft" in r]
    env = environment()
    write_json("compression", {"environment": env, "finetune_images": args.finetune_images,
                               "published_table6": {f"{d}/{a}": v for (d, a), v in PUBLISHED.items()},
                               "rows": rows})
    update_report("Compression against FPGM (seed Table 6)", _report(rows, args.finetune_images, env))


if __name__ == "__main__":
    main()
