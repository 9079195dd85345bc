"""Measured speed of parts against their originals (issue 24), every ratio from one interleaved run.

    .venv/bin/python benchmarks/latency.py                                  # VGG-16 and ResNet-50 on MNIST
    .venv/bin/python benchmarks/latency.py --archs vgg16 --classes 0 0,1,2  # a subset

For each model (runs/zoo/<arch>-mnist, trained by benchmarks/zoo_training.py) and class set, the part is
cut as a user gets it (contribution attribution, thresholds calibrated by default), with widths as cut
and rounded up to multiples of 8, and timed against the original by mdakit's own latency measurement
(batch 1 and 64, one and all threads, PyTorch eager and ONNX Runtime; both models interleaved in one
process, median pass). The rounded part is also timed against the unrounded one, so what rounding buys
is one ratio too. Cells are cached under runs/bench/latency/ (a rerun resumes); results go to
benchmarks/results/latency.json and the "Measured latency of parts" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from common import ROOT, environment, update_report, write_json
from mdakit.disassembly import disassemble
from mdakit.latency import LatencySettings, compare_latency

ARCHS = ["vgg16", "resnet50"]
CLASS_SETS = ["0", "0,1,2"]
WIDTHS = [1, 8]
CACHE = ROOT / "runs" / "bench" / "latency"
TIMING = LatencySettings(seconds=1.0, min_rounds=7)
SETTINGS = [(runtime, threads, batch) for runtime in ("eager", "onnxruntime") for threads in ("1", "all")
            for batch in (1, 64)]
TARGET_BATCH1 = 2.5
"""VGG-16 1-class parts: at least this speed-up at batch 1, one thread."""
TARGET_MACS_SHARE = 0.8
"""At batch 64, a part's measured speed-up should reach this share of the speed-up its MACs promise."""


def _cell(arch: str, classes: str, width: int) -> dict[str, Any]:
    model_dir = ROOT / "runs" / "zoo" / f"{arch}-mnist"
    part = disassemble(model_dir, "mnist", classes, width_multiple=width, latency=TIMING)
    report = part.report
    row = {"arch": arch, "classes": classes, "width_multiple": width,
           "macs_ratio": report["part_size"]["macs"] / report["original_size"]["macs"],
           "params_ratio": report["part_size"]["params"] / report["original_size"]["params"],
           "part_accuracy": report["part_accuracy"],
           "original_restricted_accuracy": report["original_restricted_accuracy"],
           "latency": report["latency"]}
    if width > 1:
        plain = disassemble(model_dir, "mnist", classes, latency=False)
        row["rounded_vs_unrounded"] = compare_latency(
            part.model, plain.model, part.card.input_shape,
            LatencySettings(threads=(1,), seconds=1.0, min_rounds=7), labels=("rounded", "unrounded"))
        unrounded = report["width_rounding"]["unrounded_size"]["macs"]
        row["unrounded_macs_ratio"] = unrounded / report["original_size"]["macs"]
    return row


def _speedups(latency: dict[str, Any]) -> dict[tuple[str, str, int], float]:
    every = max(r["threads"] for r in latency["rows"])
    return {(r["runtime"], "all" if r["threads"] == every and every > 1 else "1", r["batch"]): r["speedup"]
            for r in latency["rows"]}


def _table(rows: list[dict[str, Any]]) -> str:
    head = " | ".join(f"{rt} {th}t b{b}" for rt, th, b in SETTINGS)
    lines = [f"| model | classes | widths | MACs | params | part acc. | restricted acc. | MACs promise | {head} |",
             "|" + "---|" * (8 + len(SETTINGS))]
    for row in rows:
        speed = _speedups(row["latency"])
        promise = 1 / row["macs_ratio"]
        cells = []
        for key in SETTINGS:
            value = speed.get(key)
            if value is None and key[1] == "all":  # one thread is every thread on this machine
                value = speed.get((key[0], "1", key[2]))
            low = key[2] == 64 and value is not None and value < TARGET_MACS_SHARE * promise
            flag = " (< 0.8× promise)" if low else ""
            cells.append("—" if value is None else f"{value:.2f}×{flag}")
        widths = "as cut" if row["width_multiple"] == 1 else f"×{row['width_multiple']}"
        lines.append(f"| {row['arch']} | {row['classes']} | {widths} | {row['macs_ratio']:.3f} | "
                     f"{row['params_ratio']:.3f} | {100 * row['part_accuracy']:.2f}% | "
                     f"{100 * row['original_restricted_accuracy']:.2f}% | {promise:.2f}× | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rounding_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | classes | MACs unrounded → ×8 | rounded vs unrounded: eager b1 | eager b64 | ORT b1 "
             "| ORT b64 |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "rounded_vs_unrounded" not in row:
            continue
        speed = _speedups(row["rounded_vs_unrounded"])
        cells = [f"{speed[(rt, '1', b)]:.2f}×" if (rt, "1", b) in speed else "—"
                 for rt in ("eager", "onnxruntime") for b in (1, 64)]
        lines.append(f"| {row['arch']} | {row['classes']} | {row['unrounded_macs_ratio']:.3f} → "
                     f"{row['macs_ratio']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    notes = []
    for row in rows:
        speed = _speedups(row["latency"])
        if row["arch"] == "vgg16" and "," not in row["classes"] and "-" not in row["classes"]:
            for runtime in ("eager", "onnxruntime"):
                value = speed[(runtime, "1", 1)]
                verdict = "met" if value >= TARGET_BATCH1 else "NOT met"
                notes.append(f"- VGG-16 {{{row['classes']}}} (widths {row['width_multiple']}), {runtime}, batch 1, one "
                             f"thread: {value:.2f}× (target ≥ {TARGET_BATCH1}×: {verdict}; MACs "
                             f"{row['macs_ratio']:.2f}×).")
        promise = 1 / row["macs_ratio"]
        for (runtime, threads, batch), value in speed.items():
            if batch == 64 and value < TARGET_MACS_SHARE * promise:
                notes.append(f"- {row['arch']} {{{row['classes']}}} (widths {row['width_multiple']}), {runtime}, "
                             f"{threads} thread(s), batch 64: {value:.2f}× of a {promise:.2f}× promise "
                             f"({value / promise:.2f}, below {TARGET_MACS_SHARE}).")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="*", default=ARCHS)
    parser.add_argument("--classes", nargs="*", default=CLASS_SETS)
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch in args.archs:
        for classes in args.classes:
            for width in WIDTHS:
                cache = CACHE / f"{arch}-{classes.replace(',', '_')}-w{width}.json"
                if not cache.is_file():
                    print(f"timing {arch} {{{classes}}} widths {width}", flush=True)
                    cache.write_text(json.dumps(_cell(arch, classes, width), indent=2, default=str))
                rows.append(json.loads(cache.read_text()))
    env = {**environment(), "latency_machine": rows[0]["latency"]["environment"] if rows else None}
    write_json("latency", {"environment": env, "settings": TIMING.__dict__, "rows": rows})
    body = (f"Written by `.venv/bin/python benchmarks/latency.py`. Parts cut as a user gets them (contribution, "
            "thresholds calibrated by default) from `runs/zoo/<arch>-mnist`, timed against the original by "
            "`mdakit.latency` (interleaved passes, median; 1 s per model and setting, at least 7 passes). Each "
            "cell: the original's time per image over the part's. `1t`/`all t`: one thread / every thread "
            f"({torch.get_num_threads()} here). Flags mark batch-64 speed-ups below {TARGET_MACS_SHARE}× what "
            "the MACs promise.\n\n"
            f"Environment: {env}.\n\n{_table(rows)}\n\n"
            "What rounding kept widths up to multiples of 8 costs and buys (rounded part against the unrounded "
            f"one, interleaved, one thread):\n\n{_rounding_table(rows)}\n\n"
            "Against the targets:\n\n" + "\n".join(_targets(rows) or ["- every target met."]) + "\n")
    update_report("Measured latency of parts (issue 24)", body)
    print(_table(rows))


if __name__ == "__main__":
    main()
