"""Class-specific parts of detectors (issue 26): mAP, size, measured speed and exactness, one run.

    .venv/bin/python benchmarks/detection.py                          # every detector and class set
    .venv/bin/python benchmarks/detection.py --models fcos-lite-det-mnist --classes 0,1

The detectors are trained by ``mdakit train`` (commands in the "Detectors" section of RESULTS.md) into
runs/zoo/<name>. For each detector and class set the part is cut as a user gets it
(``mdakit.disassemble(model, "det-mnist", classes)``: contribution attribution, thresholds calibrated on
held-out canvases within 1 point of mAP@0.5) and reported against the original restricted to the same
classes on the 2,000 test canvases, with its parameters, MACs and time against the original (mdakit's
interleaved latency measurement). Each part is also checked against the masked original on 64 test
canvases (the map before decoding, and the decoded boxes and scores). Cells are cached under
runs/bench/detection/ (a rerun resumes); results go to benchmarks/results/detection.json and the
"Detectors" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from common import ROOT, environment, update_report, write_json
from mdakit.artifacts import load_with_card
from mdakit.data import load_dataset
from mdakit.detection.boxes import BOX_CHANNELS, decode_boxes
from mdakit.disassembly import disassemble
from mdakit.graph import trace
from mdakit.latency import LatencySettings
from mdakit.surgery import MaskedModel

MODELS = ["fcos-lite-det-mnist", "fcos-lite64-det-mnist"]
CLASS_SETS = ["0,1", "3,8", "0,1,2", "4,7,9"]
ASSEMBLIES = [("fcos-lite-det-mnist", "0-4", "fcos-lite-det-fashion-mnist", "5-9"),
              ("fcos-lite-det-mnist", "0,1,2", "fcos-lite-det-fashion-mnist", "3-9")]
"""(digits detector, its part's classes, garments detector, its part's classes) of the assembly cells."""
TARGET_ASSEMBLY_POINTS = 2.0
CACHE = ROOT / "runs" / "bench" / "detection"
TIMING = LatencySettings(seconds=1.0, min_rounds=7)
TARGET_POINTS, TARGET_MACS, TARGET_SPEEDUP = 1.0, 0.5, 1.5


@torch.no_grad()
def _exactness(model_dir: str, part: Any) -> dict[str, float]:
    """Largest differences between the part and the masked original on 64 test canvases."""
    model, card = load_with_card(model_dir)
    test, _ = load_dataset(card.dataset, "test")
    images = torch.stack([test[i][0] for i in range(64)])
    masked = MaskedModel(trace(model.eval(), card.input_shape), part.keep).eval()
    got, want = part.model.eval()(images), masked(images)
    stride = images.shape[-1] / got.shape[-1]
    return {"map_max_abs_diff": float((got - want).abs().max()),
            "box_max_abs_diff_px": float((decode_boxes(got, stride) - decode_boxes(want, stride)).abs().max()),
            "score_max_abs_diff": float((got[:, BOX_CHANNELS:].sigmoid() - want[:, BOX_CHANNELS:].sigmoid())
                                        .abs().max())}


def _cell(name: str, classes: str) -> dict[str, Any]:
    model_dir = ROOT / "runs" / "zoo" / name
    _, card = load_with_card(model_dir)
    part = disassemble(model_dir, card.dataset, classes, latency=TIMING)
    report = part.report
    return {"model": name, "dataset": card.dataset, "width": card.arch_kwargs.get("width", 32), "classes": classes,
            "part_map_50": report["part_map_50"], "part_map": report["part_map"],
            "original_restricted_map_50": report["original_restricted_map_50"],
            "original_restricted_map": report["original_restricted_map"],
            "macs_ratio": report["part_size"]["macs"] / report["original_size"]["macs"],
            "params_ratio": report["part_size"]["params"] / report["original_size"]["params"],
            "calibration": report["calibration"], "steps": report["steps"], "latency": report["latency"],
            "exactness": _exactness(str(model_dir), part), "test_objects": report["test_objects"]}


def _assembly_cell(digits: str, digit_classes: str, garments: str, garment_classes: str) -> dict[str, Any]:
    from mdakit.detection.assembly import assemble_detectors, evaluate_detector_assembly

    parts = [disassemble(ROOT / "runs" / "zoo" / name, None, classes, latency=False)
             for name, classes in ((digits, digit_classes), (garments, garment_classes))]
    row: dict[str, Any] = {"parts": [f"{digits} {{{digit_classes}}}", f"{garments} {{{garment_classes}}}"],
                           "part_map_50": [p.report["part_map_50"] for p in parts]}
    for rescale in ("calibrated", "none"):
        joined = assemble_detectors(parts, rescale=rescale)
        row[rescale] = evaluate_detector_assembly(joined)
    return row


def _assembly_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| parts | originals' mean mAP@0.5 | assembly, own canvases | Δ points | assembly, mixed canvases | "
             "no rescaling, own | no rescaling, mixed |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mean, cal, raw = r["calibrated"]["originals_mean_map_50"], r["calibrated"], r["none"]
        lines.append(f"| {' + '.join(r['parts'])} | {100 * mean:.2f} | {100 * cal['assembled']['map_50']:.2f} | "
                     f"{100 * (cal['assembled']['map_50'] - mean):+.2f} | {100 * cal['mixed']['map_50']:.2f} | "
                     f"{100 * raw['assembled']['map_50']:.2f} | {100 * raw['mixed']['map_50']:.2f} |")
    return "\n".join(lines)


def _speedup(latency: dict[str, Any], runtime: str, threads: int, batch: int) -> float | None:
    for row in latency["rows"]:
        if row["runtime"] == runtime and row["threads"] == threads and row["batch"] == batch:
            return row["speedup"]
    return None


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| detector | classes | part mAP@0.5 | orig. restricted | Δ points | part mAP | orig. mAP | params | MACs "
             "| speed-up b1 1t | b64 1t | ORT b1 1t | calib. factor | max |Δ| map |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = 100 * (r["part_map_50"] - r["original_restricted_map_50"])
        speed = [_speedup(r["latency"], rt, 1, b) for rt, b in (("eager", 1), ("eager", 64), ("onnxruntime", 1))]
        lines.append(
            f"| {r['model']} (width {r['width']}) | {{{r['classes']}}} | {100 * r['part_map_50']:.2f} | "
            f"{100 * r['original_restricted_map_50']:.2f} | {delta:+.2f} | {100 * r['part_map']:.2f} | "
            f"{100 * r['original_restricted_map']:.2f} | {r['params_ratio']:.3f} | {r['macs_ratio']:.3f} | "
            + " | ".join("–" if s is None else f"{s:.2f}×" for s in speed)
            + f" | {r['calibration']['chosen_factor']:g} | {r['exactness']['map_max_abs_diff']:.1e} |")
    return "\n".join(lines)


def _targets(rows: list[dict[str, Any]], assemblies: list[dict[str, Any]]) -> list[str]:
    notes = []
    for r in assemblies:
        cal = r["calibrated"]
        if cal["assembled"]["map_50"] < cal["originals_mean_map_50"] - TARGET_ASSEMBLY_POINTS / 100:
            notes.append(f"- assembly {' + '.join(r['parts'])}: more than {TARGET_ASSEMBLY_POINTS:g} points below "
                         "the originals' mean.")
    for r in rows:
        cell = f"{r['model']} {{{r['classes']}}}"
        if r["part_map_50"] < r["original_restricted_map_50"] - TARGET_POINTS / 100:
            notes.append(f"- {cell}: mAP@0.5 more than {TARGET_POINTS:g} point below the restricted original.")
        if r["macs_ratio"] > TARGET_MACS:
            notes.append(f"- {cell}: {r['macs_ratio']:.2f} of the MACs (target ≤ {TARGET_MACS}).")
        speed = _speedup(r["latency"], "eager", 1, 1)
        if speed is not None and speed < TARGET_SPEEDUP:
            notes.append(f"- {cell}: {speed:.2f}× at batch 1, one thread (target ≥ {TARGET_SPEEDUP}×).")
        if r["exactness"]["map_max_abs_diff"] > 1e-4:
            notes.append(f"- {cell}: the part differs from the masked original by "
                         f"{r['exactness']['map_max_abs_diff']:.1e}.")
    return notes


def _training(models: list[str]) -> str:
    lines = ["| detector | params | MACs | test mAP@0.5 | test mAP | training time | command |",
             "|---|---|---|---|---|---|---|"]
    for name in models:
        _, card = load_with_card(ROOT / "runs" / "zoo" / name)
        m = card.metrics
        lines.append(f"| {name} | {m['params']:,} | {m['macs']:,} | {100 * m['test_map_50']:.2f} | "
                     f"{100 * m['test_map']:.2f} | {card.training['result']['seconds'] / 60:.1f} min | "
                     f"`{card.training['command']}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--classes", nargs="*", default=CLASS_SETS)
    parser.add_argument("--no-assembly", action="store_true", help="Skip the assembly cells.")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        for classes in args.classes:
            cache = CACHE / f"{name}-{classes.replace(',', '_')}.json"
            if not cache.is_file():
                print(f"disassembling {name} {{{classes}}}", flush=True)
                cache.write_text(json.dumps(_cell(name, classes), indent=2, default=str))
            rows.append(json.loads(cache.read_text()))
    assemblies = []
    for cell in ([] if args.no_assembly else ASSEMBLIES):
        cache = CACHE / ("assembly-" + "-".join(c.replace(",", "_") for c in cell) + ".json")
        if not cache.is_file():
            print(f"assembling {cell}", flush=True)
            cache.write_text(json.dumps(_assembly_cell(*cell), indent=2, default=str))
        assemblies.append(json.loads(cache.read_text()))
    env = {**environment(), "latency_machine": rows[0]["latency"]["environment"] if rows else None}
    write_json("detection", {"environment": env, "settings": TIMING.__dict__, "rows": rows,
                             "assemblies": assemblies})
    trained = sorted({r["model"] for r in rows} | {cell[i] for cell in ([] if args.no_assembly else ASSEMBLIES)
                                                   for i in (0, 2)})
    seconds = {step: max(r["steps"].get(step, {}).get("seconds", 0.0) for r in rows)
               for step in ("sample_selection", "attribution", "calibration", "extraction")}
    body = ("Written by `.venv/bin/python benchmarks/detection.py`. Detectors of `mdakit.detection.model` (the zoo's "
            "`fcos-lite`) trained on `det-mnist` canvases by the commands below; parts cut as a user gets them "
            "(`mdakit disassemble MODEL --classes ...`: contribution attribution, thresholds calibrated on 500 "
            "canvases of held-out training objects to stay within 1 point of mAP@0.5 of the original restricted "
            "to the part's classes), evaluated on the 2,000 test canvases (torchmetrics/pycocotools mAP; objects "
            "of other classes stay in the images and are not asked for). Speed-ups: the original's time per "
            "image over the part's, interleaved, median (`b1 1t`: batch 1, one thread; ORT: ONNX Runtime). "
            "`max |Δ| map`: the part against the masked original on 64 test canvases, before decoding.\n\n"
            f"Environment: {env}.\n\nTraining:\n\n{_training(trained)}\n\n"
            f"Parts:\n\n{_table(rows)}\n\n"
            "Assemblies of a digits part and a garments part (`mdakit assemble DIGITS GARMENTS --rescale calibrated`; "
            "parallel layout, Platt rescaling per class fitted on 300 held-out training canvases of each dataset). "
            "\"Own canvases\": the union of both datasets' test canvases, mAP over all the assembly's classes; "
            "\"mixed\": `det-mnist-fashion` test canvases, digits and garments on one canvas. The reference is "
            "the mean over the two parts of the mAP@0.5 of the detector each was cut from, restricted to the "
            f"part's classes, on its own test canvases:\n\n{_assembly_table(assemblies)}\n\n"
            f"Longest step over the cells (seconds): {', '.join(f'{k} {v:.1f}' for k, v in seconds.items())}.\n\n"
            "Against the targets (mAP@0.5 ≥ restricted original − 1 point, ≤ 0.5 of the MACs, ≥ 1.5× at batch 1):"
            "\n\n" + "\n".join(_targets(rows, assemblies) or ["- every target met."]) + "\n")
    update_report("Detectors (issue 26)", body)
    print(_table(rows))


if __name__ == "__main__":
    main()
