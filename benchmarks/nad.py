"""NAD mask search benchmark (issue 6 targets): per-class search time and sub-architecture accuracy.

    .venv/bin/python benchmarks/nad.py                          # lenet5 and vgg16 on MNIST + Fashion-MNIST
    .venv/bin/python benchmarks/nad.py --archs vgg16 --variants # also the paper loss and 20-epoch runs

Per class: wall and CPU seconds of the search at the default settings, and the class's
sub-architecture (the body cut to the class's masks, every logit kept, physically extracted) against
the original on the class's test images (argmax over all logits, as in the paper's Fig. 2). Each row
also holds one forward+backward step of the unmasked model measured in the same run, so a loaded
machine shows as a slow reference step. Models: runs/zoo/<arch>-<dataset>. Results:
benchmarks/results/nad.json and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace

import torch

from common import RESULTS_DIR, ROOT, environment, update_report, write_json
from mdakit.artifacts import load_with_card
from mdakit.attribution.nad import NADSettings, nad_masks
from mdakit.attribution.samples import select_samples
from mdakit.data import ClassSubset, load_dataset, make_loader
from mdakit.graph import trace
from mdakit.metrics import count_parameters
from mdakit.surgery import keep_sets, rebuild

DATASETS = ["mnist", "fashion-mnist"]
VARIANT_CLASSES = [0, 6]


def _class_images(test, c: int) -> torch.Tensor:
    return torch.cat([b for b, _ in make_loader(ClassSubset(test, [c], remap=False), 512)])


@torch.no_grad()
def _accuracy(model: torch.nn.Module, images: torch.Tensor, row: int) -> float:
    model.eval()
    preds = torch.cat([model(images[i:i + 256]).argmax(1) for i in range(0, len(images), 256)])
    return float((preds == row).float().mean())


def _reference_step(model: torch.nn.Module, shape: list[int], batch: int) -> float:
    x = torch.rand(batch, *shape, requires_grad=True)
    model(x).sum().backward()
    start = time.perf_counter()
    model(x).sum().backward()
    return time.perf_counter() - start


def run_cell(arch: str, dataset: str, settings: NADSettings, classes: list[int], samples: int) -> dict:
    """Search every class of one zoo model; time each class and score its sub-architecture."""
    model, card = load_with_card(ROOT / "runs" / "zoo" / f"{arch}-{dataset}")
    model.eval()
    train, _ = load_dataset(dataset, "train")
    test, _ = load_dataset(dataset, "test")
    graph = trace(model, card.input_shape)
    rows = {c: card.logit_classes.index(c) for c in classes}
    chosen = select_samples(model, train, classes, [rows[c] for c in classes], n=samples)
    reference = _reference_step(model, card.input_shape, settings.batch_size)
    times: dict[int, tuple[float, float]] = {}
    last = [time.process_time()]

    def on_class(c: int, seconds: float) -> None:
        now = time.process_time()
        times[c] = (seconds, now - last[0])
        last[0] = now

    masks = nad_masks(graph, train, chosen, rows, settings, on_class=on_class)
    all_rows = list(range(graph.output_layer.out_size))
    params = count_parameters(model)
    per_class = []
    for c in classes:
        images = _class_images(test, c)
        sub = rebuild(model, keep_sets(graph, masks.per_class[c], all_rows))
        kept = [float(m.outputs.float().mean()) for name, m in masks.per_class[c].items()
                if name != graph.output_layer.name]
        per_class.append({"class": c, "seconds": times[c][0], "cpu_seconds": times[c][1],
                          "original_accuracy": _accuracy(model, images, rows[c]),
                          "sub_accuracy": _accuracy(sub, images, rows[c]), "test_images": len(images),
                          "sub_params_share": count_parameters(sub) / params,
                          "kept_filters_share": statistics.mean(kept)})
    meets = sum(r["sub_accuracy"] >= r["original_accuracy"] for r in per_class)
    return {"arch": arch, "dataset": dataset, "settings": masks.settings, "samples": samples,
            "reference_step_seconds": reference, "classes": per_class,
            "max_seconds": max(r["seconds"] for r in per_class),
            "median_seconds": statistics.median(r["seconds"] for r in per_class),
            "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in per_class),
            "classes_at_least_original": meets, "share_at_least_original": meets / len(per_class)}


def _key(cell: dict) -> tuple:
    """What makes two cells the same measurement: model, data and search settings (not the seed's outcome)."""
    s = cell["settings"]
    return (cell["arch"], cell["dataset"], s["loss"], s["iterations"], s["epochs"], s["batch_size"], s["init"],
            str(s.get("beta_given")), s.get("linear", False))


def _report(cells: list[dict]) -> str:
    lines = ["Command: `.venv/bin/python benchmarks/nad.py --archs lenet5 vgg16 --variants --linear --threads 1` "
             "(a run with fewer architectures replaces only its own rows); per class: search at the settings shown, "
             "then the class's sub-architecture (body cut to its masks, all logits kept, physically extracted) "
             "against the original on the class's test images, argmax over all logits. Targets: ≤ 10 s per "
             "class on VGG-16 (2 CPU cores) and sub ≥ orig. for ≥ 90% of classes. Wall seconds depend on what "
             "else the machine runs (the reference step column is one unmasked forward+backward at the same "
             "batch, measured in the same run); CPU seconds with `--threads 1` do not, and bound the wall "
             "time of an idle 2-core machine. *Masks*: conv = after each conv block (the default; "
             "docs/methods.md#nad-mask-points); conv + FC = also after each hidden fully connected block "
             "(`--nad-linear`).", "",
             "| model | masks | loss | steps | start σ | β | s/class median (max) | CPU s/class | ref. step s | "
             "sub ≥ orig. | orig. acc | sub acc | params kept | filters kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in cells:
        s, cls = cell["settings"], cell["classes"]
        steps = f"{s['epochs']} epochs" if s["epochs"] else f"{s['iterations']} it."
        mean = {key: statistics.mean(r[key] for r in cls) for key in
                ("original_accuracy", "sub_accuracy", "sub_params_share", "kept_filters_share")}
        masks = "conv + FC" if s.get("linear") else "conv"
        lines.append(f"| {cell['arch']}-{cell['dataset']} | {masks} | {s['loss']} | {steps} × {s['batch_size']} | "
                     f"{1 / (1 + math.exp(-s['init'])):.2f} | {s['beta']:g} | "
                     f"{cell['median_seconds']:.1f} ({cell['max_seconds']:.1f}) | {cell['median_cpu_seconds']:.1f} | "
                     f"{cell['reference_step_seconds']:.2f} | {cell['classes_at_least_original']}/{len(cls)} | "
                     f"{mean['original_accuracy']:.2%} | {mean['sub_accuracy']:.2%} | "
                     f"{mean['sub_params_share']:.1%} | {mean['kept_filters_share']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="*", default=["lenet5", "vgg16"])
    parser.add_argument("--datasets", nargs="*", default=DATASETS)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--variants", action="store_true",
                        help="on the last arch's first dataset, also the paper loss and 20 epochs (classes 0 and 6)")
    parser.add_argument("--linear", action="store_true",
                        help="also search every cell with hidden fully connected blocks masked (--nad-linear)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (1 on a shared machine: CPU seconds then bound 2-core wall time)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = environment()
    default = NADSettings()
    jobs = [(arch, dataset, default, list(range(10))) for arch in args.archs for dataset in args.datasets]
    if args.linear:
        jobs += [(arch, dataset, replace(default, linear=True), list(range(10)))
                 for arch in args.archs for dataset in args.datasets]
    if args.variants:
        jobs += [(args.archs[-1], args.datasets[0], variant, VARIANT_CLASSES)
                 for variant in (replace(default, loss="paper"), replace(default, epochs=20))]
    previous = RESULTS_DIR / "nad.json"
    kept = json.loads(previous.read_text())["cells"] if previous.is_file() else []  # cells not rerun this time
    cells = []
    for arch, dataset, settings, classes in jobs:
        cells.append(run_cell(arch, dataset, settings, classes, args.samples))
        print(_report(cells[-1:]).splitlines()[-1], flush=True)
        done = {_key(c) for c in cells}
        merged = [c for c in kept if _key(c) not in done] + cells
        write_json("nad", {"environment": env, "command": sys.argv[1:], "cells": merged})
        update_report("NAD mask search (issue 6)", _report(merged) + f"\n\nEnvironment: {env}.")
    print(json.dumps([{k: v for k, v in c.items() if k != "classes"} for c in cells], indent=2, default=str))


if __name__ == "__main__":
    main()
