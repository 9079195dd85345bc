"""Disassembly benchmarks (issue 3 targets), ratios measured in one run on this machine.

    .venv/bin/python benchmarks/disassembly.py speed      # VGG-16: attribution vs forward, vs partial conv, end to end
    .venv/bin/python benchmarks/disassembly.py accuracy   # every zoo architecture × dataset × class set

Models come from runs/zoo/<arch>-<dataset> (trained by benchmarks/zoo_training.py). Accuracy cells are
cached under runs/bench/disassembly/, so a rerun resumes. Results: benchmarks/results/*.json and
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import ROOT, environment, peak_tensor_bytes, update_report, write_json
from contribution_kernel import naive_contributions
from mdakit.artifacts import load_with_card
from mdakit.attribution.contribution import _row_sign, class_batches, contribution_sums
from mdakit.attribution.kernels import positive_contribution_sum
from mdakit.attribution.samples import select_samples
from mdakit.data import load_dataset
from mdakit.disassemble import disassemble
from mdakit.graph import trace
from mdakit.progress import progress

ARCHS = ["lenet5", "vgg16", "resnet50", "googlenet"]
DATASETS = ["mnist", "fashion-mnist"]
CLASS_SETS = ["0", "1", "0,1,2", "3-9"]
CACHE = ROOT / "runs" / "bench" / "disassembly"


def _median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(model_dir: Path) -> dict:
    model, card = load_with_card(model_dir)
    train, _ = load_dataset(card.dataset, "train")
    graph = trace(model, card.input_shape)
    classes = list(range(10))
    start = time.perf_counter()
    samples = select_samples(model, train, classes, classes, n=50)
    selection_seconds = time.perf_counter() - start
    batches = list(class_batches(train, samples, 64))
    n_images = sum(len(b) for _, b in batches)

    def forward():
        with torch.no_grad():
            for _, images in batches:
                model(images)

    def attribution():
        contribution_sums(graph, batches, graph.layers)

    forward()
    attribution()
    t_fwd, t_att = _median_time(forward), _median_time(attribution)
    m_fwd, m_att = peak_tensor_bytes(forward), peak_tensor_bytes(attribution)

    # the same math by materialising every partial convolution (B×K×N×H×W), at batch 64
    inputs: dict[str, torch.Tensor] = {}
    convs = [layer for layer in graph.layers if layer.kind == "conv"]
    hooks = [model.get_submodule(l.name).register_forward_pre_hook(
        lambda m, a, name=l.name: inputs.__setitem__(name, a[0])) for l in convs]
    with torch.no_grad():
        model(torch.cat([b for _, b in batches])[:64])
    for h in hooks:
        h.remove()
    signs = {l.name: _row_sign(graph, l) for l in convs}

    def ours_layers():
        for l in convs:
            positive_contribution_sum(inputs[l.name], l.module, signs[l.name])

    def naive_layers():
        for l in convs:
            h = naive_contributions(inputs[l.name], l.module)
            if signs[l.name] is not None:
                h = h * signs[l.name][None, :, None]
            h.clamp(min=0).sum(0)

    with torch.no_grad():
        t_ours, t_naive = _median_time(ours_layers), _median_time(naive_layers, repeats=1)
        m_ours, m_naive = peak_tensor_bytes(ours_layers), peak_tensor_bytes(naive_layers)
        worst = 0.0
        for l in convs:
            ref = naive_contributions(inputs[l.name], l.module)
            if signs[l.name] is not None:
                ref = ref * signs[l.name][None, :, None]
            ref = ref.clamp(min=0).sum(0)
            got = positive_contribution_sum(inputs[l.name], l.module, signs[l.name])
            worst = max(worst, float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12)))

    end_to_end = _end_to_end(model_dir, "0,1,2")
    return {
        "model": str(model_dir.relative_to(ROOT)), "images": n_images, "sample_selection_seconds": selection_seconds,
        "attribution_vs_forward": {"forward_seconds": t_fwd, "attribution_seconds": t_att,
                                   "time_ratio": t_att / t_fwd, "forward_peak_mib": m_fwd / 2**20,
                                   "attribution_peak_mib": m_att / 2**20, "memory_ratio": m_att / m_fwd},
        "vs_partial_convolution_batch64": {"ours_seconds": t_ours, "naive_seconds": t_naive,
                                           "speedup": t_naive / t_ours, "ours_peak_mib": m_ours / 2**20,
                                           "naive_peak_mib": m_naive / 2**20, "memory_ratio": m_naive / m_ours,
                                           "max_relative_difference": worst},
        "end_to_end_3_classes": end_to_end,
        "memory_method": "peak of live CPU tensor bytes during the step, from torch.profiler(profile_memory=True) "
                         "allocation events; RSS from /proc/self/status VmHWM, reset per step",
    }


def _end_to_end(model_dir: Path, classes: str) -> dict:
    """Sample selection + attribution + extraction in a fresh process (so RSS is the job's own)."""
    code = (
        "import json, sys; from mdakit.data import load_dataset; from mdakit.disassemble import disassemble\n"
        f"train, _ = load_dataset('{load_with_card(model_dir)[1].dataset}', 'train')\n"
        f"part = disassemble('{model_dir}', train, '{classes}')\n"
        "print(json.dumps(part.report['steps']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    steps = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"steps": steps, "seconds": sum(s["seconds"] for s in steps.values()),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in steps.values())}


def _speed_report(r: dict) -> str:
    a, n, e = r["attribution_vs_forward"], r["vs_partial_convolution_batch64"], r["end_to_end_3_classes"]
    ok = lambda cond: "met" if cond else "**missed**"  # noqa: E731
    return "\n".join([
        f"Model `{r['model']}`; {r['images']} training images (50 per class, 10 classes). {r['memory_method']}.", "",
        "| measure | ours | reference | ratio | target |", "|---|---|---|---|---|",
        f"| attribution vs plain forward, time | {a['attribution_seconds']:.2f} s | {a['forward_seconds']:.2f} s | "
        f"{a['time_ratio']:.2f}× | ≤ 2× {ok(a['time_ratio'] <= 2)} |",
        f"| attribution vs plain forward, peak tensor memory | {a['attribution_peak_mib']:.1f} MiB | "
        f"{a['forward_peak_mib']:.1f} MiB | {a['memory_ratio']:.2f}× | ≤ 2× {ok(a['memory_ratio'] <= 2)} |",
        f"| box-sum vs partial convolutions (batch 64, all conv layers), time | {n['ours_seconds']:.3f} s | "
        f"{n['naive_seconds']:.2f} s | {n['speedup']:.0f}× faster | ≥ 20× {ok(n['speedup'] >= 20)} |",
        f"| box-sum vs partial convolutions, peak tensor memory | {n['ours_peak_mib']:.1f} MiB | "
        f"{n['naive_peak_mib']:.0f} MiB | {n['memory_ratio']:.0f}× less | ≥ 50× {ok(n['memory_ratio'] >= 50)} |",
        f"| end to end, 3-class part (selection + attribution + extraction) | {e['seconds']:.1f} s, "
        f"{e['peak_rss_mb']:.0f} MB RSS | | | ≤ 30 s {ok(e['seconds'] <= 30)}, ≤ 1.5 GB {ok(e['peak_rss_mb'] <= 1536)} |",
        "", f"Largest relative difference between the two formulations: {n['max_relative_difference']:.1e}.",
        "Steps of the end-to-end run: " + ", ".join(f"{k} {v['seconds']:.2f} s / {v['peak_rss_mb']:.0f} MB"
                                                     for k, v in e["steps"].items()) + ".",
    ])


def accuracy(archs: list[str], datasets: list[str], samples: int) -> list[dict]:
    CACHE.mkdir(parents=True, exist_ok=True)
    cells = [(a, d, c) for a in archs for d in datasets for c in CLASS_SETS]
    rows = []
    for arch, dataset, classes in progress(cells, "disassembly cells"):
        model_dir = ROOT / "runs" / "zoo" / f"{arch}-{dataset}"
        if not (model_dir / "card.json").is_file():
            print(f"skipping {arch}/{dataset}: {model_dir} not trained yet", file=sys.stderr)
            continue
        cache = CACHE / f"{arch}-{dataset}-{classes.replace(',', '_')}-n{samples}.json"
        if cache.is_file():
            rows.append(json.loads(cache.read_text()))
            continue
        part = disassemble(model_dir, dataset, classes, samples=samples)
        r = part.report
        row = {"arch": arch, "dataset": dataset, "classes": classes, "samples": samples,
               "part_accuracy": r["part_accuracy"], "original_accuracy": r["original_accuracy"],
               "original_restricted_accuracy": r["original_restricted_accuracy"],
               "params_ratio": r["part_size"]["params"] / r["original_size"]["params"],
               "nonzero_params_ratio": r["part_size"]["nonzero_params"] / r["original_size"]["params"],
               "macs_ratio": r["part_size"]["macs"] / r["original_size"]["macs"],
               "part_params": r["part_size"]["params"], "original_params": r["original_size"]["params"],
               "seconds": {k: v["seconds"] for k, v in r["steps"].items()}, "settings": part.masks.settings}
        cache.write_text(json.dumps(row, indent=2))
        rows.append(row)
    return rows


def _accuracy_report(rows: list[dict]) -> str:
    lines = ["Command: `.venv/bin/python benchmarks/disassembly.py accuracy` (contribution attribution, default "
             "α/β: conv 0.3/0.2, linear 0.4/0.3, 50 samples per class, seed 0). Accuracy on the test images of the "
             "classes; *orig.* uses all logits, *restricted* only the classes' logits (DESIGN §3). Target: part ≥ "
             "restricted − 0.5 points with fewer parameters.", "",
             "| model | dataset | classes | orig. | restricted | part | Δ vs restricted | params ratio | MACs ratio | target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = 100 * (r["part_accuracy"] - r["original_restricted_accuracy"])
        met = delta >= -0.5 and r["params_ratio"] < 1
        lines.append(f"| {r['arch']} | {r['dataset']} | {r['classes']} | {100 * r['original_accuracy']:.2f} | "
                     f"{100 * r['original_restricted_accuracy']:.2f} | {100 * r['part_accuracy']:.2f} | "
                     f"{delta:+.2f} | {r['params_ratio']:.3f} | {r['macs_ratio']:.3f} | "
                     f"{'met' if met else '**missed**'} |")
    met = sum(1 for r in rows if 100 * (r["part_accuracy"] - r["original_restricted_accuracy"]) >= -0.5
              and r["params_ratio"] < 1)
    lines += ["", f"{met} of {len(rows)} cells meet the target."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--model", type=Path, default=ROOT / "runs" / "zoo" / "vgg16-mnist")
    ac = sub.add_parser("accuracy")
    ac.add_argument("--archs", nargs="*", default=ARCHS)
    ac.add_argument("--datasets", nargs="*", default=DATASETS)
    ac.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    env = environment()
    if args.mode == "speed":
        result = speed(args.model.resolve())
        write_json("disassembly_speed", {"environment": env, **result})
        update_report("Disassembly speed and memory (VGG-16)", _speed_report(result) + f"\n\nEnvironment: {env}.")
        print(json.dumps(result, indent=2))
    else:
        rows = accuracy(args.archs, args.datasets, args.samples)
        write_json("disassembly_accuracy", {"environment": env, "cells": rows})
        update_report("Disassembly accuracy (contribution attribution)", _accuracy_report(rows)
                      + f"\n\nEnvironment: {env}.")
        print(_accuracy_report(rows))


if __name__ == "__main__":
    main()
