"""The tables commands print without ``--json``: each built from the result the command emits."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from mdakit.cli.output import pct


def table(title: str, *columns: str, right: Sequence[str] = (), caption: str | None = None) -> Table:
    """A table with ``columns`` (those in ``right`` right-aligned) and an optional caption.

    >>> [c.header for c in table("t", "layer", "value", right=["value"]).columns]
    ['layer', 'value']
    """
    built = Table(title=title, caption=caption)
    for column in columns:
        built.add_column(column, justify="right" if column in right else "left")
    return built


def _count(n: int) -> str:
    return f"{n:,}"


def size_caption(size: Mapping[str, int]) -> str:
    """Parameters (non-zero ones too) and MACs, as a caption.

    >>> size_caption({"params": 1200, "nonzero_params": 1000, "macs": 45000})
    '1,200 params (1,000 non-zero), 45,000 MACs'
    """
    return f"{size['params']:,} params ({size['nonzero_params']:,} non-zero), {size['macs']:,} MACs"


def training_table(title: str, test_accuracy: float, result: Any, size: Mapping[str, int]) -> Table:
    """``mdakit train``: test and validation accuracy, best epoch, size and time of a trained model."""
    built = table(title, "test acc", "val acc", "best epoch", "params", "MACs", "train time")
    built.add_row(pct(test_accuracy), pct(result.best_val_accuracy), str(result.best_epoch),
                  _count(size["params"]), _count(size["macs"]), f"{result.seconds:.0f} s")
    return built


def detector_training_table(title: str, evaluation: Mapping[str, Any], result: Any, size: Mapping[str, int]) -> Table:
    """``mdakit train`` of a detector: test mAP, held-out mAP@0.5, best epoch, size and time."""
    built = table(title, "test mAP@0.5", "test mAP", "val mAP@0.5", "best epoch", "params", "MACs", "train time")
    built.add_row(pct(evaluation["map_50"]), pct(evaluation["map"]), pct(result.best_val_accuracy),
                  str(result.best_epoch), _count(size["params"]), _count(size["macs"]), f"{result.seconds:.0f} s")
    return built


def detector_evaluation_table(title: str, evaluation: Mapping[str, Any], classes: Sequence[int],
                              size: Mapping[str, int]) -> Table:
    """``mdakit eval`` of a detector: mAP over its classes."""
    built = table(title, "classes", "mAP@0.5", "mAP@[.5:.95]", "objects",
                  caption=f"{evaluation['images']} canvases; {size['params']:,} params, {size['macs']:,} MACs")
    built.add_row(", ".join(str(c) for c in classes), pct(evaluation["map_50"]), pct(evaluation["map"]),
                  str(evaluation["objects"]))
    return built


def evaluation_table(title: str, evaluation: Any, class_names: Sequence[str], size: Mapping[str, int]) -> Table:
    """``mdakit eval``: accuracy per class and overall."""
    built = table(title, "class", "accuracy", right=["accuracy"],
                  caption=f"{evaluation.num_samples} images; {size['params']:,} params, {size['macs']:,} MACs")
    for c, acc in evaluation.per_class_accuracy.items():
        built.add_row(f"{c} {class_names[int(c)]}", pct(acc))
    built.add_row("all", pct(evaluation.accuracy))
    return built


def layers_table(title: str, layers: Sequence[Mapping[str, Any]], caption: str) -> Table:
    """``mdakit info`` on a model: one row per leaf module."""
    built = table(title, "layer", "type", "params", "settings", caption=caption)
    for layer in layers:
        built.add_row(layer["name"], layer["type"], _count(layer["params"]), layer["detail"])
    return built


def logits_table(title: str, logits: Sequence[Mapping[str, Any]], caption: str) -> Table:
    """``mdakit info`` on an assembled model: where each logit comes from."""
    built = table(title, "logit", "part", "dataset", "label", "class", caption=caption)
    for i, logit in enumerate(logits):
        built.add_row(str(i), *(str(logit.get(k, "")) for k in ("part", "dataset", "label", "name")))
    return built


def threshold_line(report: Mapping[str, Any]) -> str:
    """How the thresholds were chosen, and a calibration's outcome on its held-out images.

    >>> threshold_line({"thresholds": "calibrated by default", "calibration": {"tolerance_points": 0.5, "met": True,
    ...     "chosen_factor": 0.75, "holdout_accuracy": 0.98, "reference_accuracy": 0.985, "holdout_images": 600}})
    'thresholds calibrated by default (× 0.75): 98.00% vs 98.50% of the original on 600 held-out images'
    """
    if report.get("budget"):
        return report["budget"]["summary"]
    calibration = report.get("calibration")
    how = report.get("thresholds") or "as given"
    if not calibration:
        return f"thresholds: {how}"
    outcome = "" if calibration["met"] else f" — NOT within {calibration['tolerance_points']:g} points"
    return (f"thresholds {how} (× {calibration['chosen_factor']:g}): {pct(calibration['holdout_accuracy'])} "
            f"vs {pct(calibration['reference_accuracy'])} of the original on {calibration['holdout_images']} "
            f"held-out images{outcome}")


def rounding_note(report: Mapping[str, Any], size: Mapping[str, int]) -> str:
    """What rounding the kept widths up cost, against the part it would be without (empty when not rounded).

    >>> rounding_note({"width_rounding": {"multiple": 8, "unrounded_size": {"params": 100, "macs": 1000}}},
    ...               {"params": 120, "macs": 1100})
    '; widths rounded up to multiples of 8: +20 params (+20.0%), +100 MACs (+10.0%)'
    """
    rounding = report.get("width_rounding")
    if not rounding:
        return ""
    before = rounding["unrounded_size"]
    extra = [f"+{size[k] - before[k]:,} {label} (+{size[k] / before[k] - 1:.1%})"
             for k, label in (("params", "params"), ("macs", "MACs"))]
    return f"; widths rounded up to multiples of {rounding['multiple']}: " + ", ".join(extra)


def part_table(title: str, report: Mapping[str, Any], out: Path) -> Table:
    """``mdakit disassemble``: the original (all and restricted logits) against the part, and each step's cost."""
    osz, psz = report["original_size"], report["part_size"]
    steps = ", ".join(f"{k} {v['seconds']:.2f} s" + (f" / {v['peak_rss_mb']:.0f} MB" if v["peak_rss_mb"] else "")
                      for k, v in report["steps"].items())
    built = table(title, "model", "accuracy", "params", "non-zero", "MACs",
                  caption=f"{threshold_line(report)}{rounding_note(report, psz)}; saved to {out}; "
                          f"time / peak RSS: {steps}")
    built.add_row("original, all logits", pct(report["original_accuracy"]), _count(osz["params"]),
                  _count(osz["nonzero_params"]), _count(osz["macs"]))
    built.add_row("original, restricted logits", pct(report["original_restricted_accuracy"]), "", "", "")
    built.add_row("part", pct(report["part_accuracy"]), f"{psz['params']:,} ({psz['params'] / osz['params']:.1%})",
                  _count(psz["nonzero_params"]), f"{psz['macs']:,} ({psz['macs'] / osz['macs']:.1%})")
    return built


def detector_part_table(title: str, report: Mapping[str, Any], out: Path) -> Table:
    """``mdakit disassemble`` of a detector: the original restricted to the part's classes against the part."""
    osz, psz = report["original_size"], report["part_size"]
    built = table(title, "model", "mAP@0.5", "mAP@[.5:.95]", "params", "MACs",
                  caption=f"{threshold_line(report)}; {report.get('test_images', 0)} test canvases, "
                          f"{report.get('test_objects', 0)} objects of these classes; saved to {out}")
    built.add_row("original, restricted to the classes", pct(report["original_restricted_map_50"]),
                  pct(report["original_restricted_map"]), _count(osz["params"]), _count(osz["macs"]))
    built.add_row("part", pct(report["part_map_50"]), pct(report["part_map"]),
                  f"{psz['params']:,} ({psz['params'] / osz['params']:.1%})",
                  f"{psz['macs']:,} ({psz['macs'] / osz['macs']:.1%})")
    return built


def detector_assembly_table(report: Mapping[str, Any], title: str) -> Table:
    """``mdakit assemble`` of detector parts: the assembly's mAP beside its parts' originals."""
    built = table(title, "model", "test canvases", "mAP@0.5", "mAP@[.5:.95]")
    for i, original in enumerate(report.get("originals", [])):
        built.add_row(f"original of part {i}, restricted", f"{original['images']} (its own)",
                      pct(original["map_50"]), pct(original["map"]))
    built.add_row("assembly", f"{report['assembled']['images']} (the parts' own)", pct(report["assembled"]["map_50"]),
                  pct(report["assembled"]["map"]))
    if "mixed" in report:
        mixed = report["mixed"]
        built.add_row("assembly", f"{mixed['images']} ({mixed['dataset']}, objects mixed)", pct(mixed["map_50"]),
                      pct(mixed["map"]))
    return built


def masks_table(title: str, kept: Mapping[str, Mapping[str, int]], classes: Sequence[int],
                widths: Mapping[str, int], out: Path, shown: int = 12) -> Table:
    """``mdakit masks`` and ``mdakit info`` on masks: kept filters of each layer (of ``widths`` filters) for the
    first ``shown`` classes (``--json`` lists all)."""
    first = classes[:shown]
    built = table(title, "layer", *(f"class {c}" for c in first), right=[f"class {c}" for c in first])
    for name, width in widths.items():
        built.add_row(name, *(f"{kept[str(c)][name]}/{width}" for c in first))
    if len(first) < len(classes):
        built.caption = f"{len(classes) - len(first)} more classes in {out} (--json lists all)"
    return built


def assembly_table(report: Mapping[str, Any], names: Sequence[str], title: str) -> Table:
    """``mdakit assemble`` and ``mdakit eval`` on an assembled model: each part, then the whole."""
    caption = (f"{report['num_images']} test images, argmax over all logits; orig. = the model each part was cut "
               "from (all its logits) on the same images, pooled over the parts on the assembled row; "
               "-> j = share of images classified into part j")
    for p in report["originals_missing"]:
        caption += f"; part {p}: {report['parts'][p]['original']}"
    built = table(title, "part", "dataset", "classes", "accuracy", "orig.", *(f"-> {j}" for j in range(len(names))),
                  "MACs", caption=caption)
    for entry in report["parts"]:
        orig = entry["original_accuracy"]
        built.add_row(names[entry["part"]], str(entry["dataset"]), ",".join(map(str, entry["classes"])),
                      pct(entry["accuracy"]), "n/a" if orig is None else pct(orig),
                      *(pct(share) for share in entry["into_parts"]), _count(entry["size"]["macs"]))
    orig = report["original_accuracy"]
    built.add_row("assembled", "", "", pct(report["accuracy"]), "n/a" if orig is None else pct(orig),
                  *("" for _ in names), _count(report["size"]["macs"]))
    return built


def compressed_table(title: str, report: Mapping[str, Any], out: Path) -> Table:
    """``mdakit compress``: the original against the compressed model."""
    osz, csz = report["original_size"], report["compressed_size"]
    built = table(title, "model", "accuracy", "params", "MACs",
                  caption=f"{threshold_line(report)}{rounding_note(report, csz)}; saved to {out}")
    built.add_row("original", pct(report["original_accuracy"]) if "original_accuracy" in report else "n/a",
                  _count(osz["params"]), _count(osz["macs"]))
    built.add_row("compressed", pct(report["accuracy"]) if "accuracy" in report else "n/a",
                  f"{csz['params']:,} ({report['params_ratio']:.1%})", f"{csz['macs']:,} ({report['macs_ratio']:.1%})")
    return built


def measures_table(title: str, rows: Mapping[str, str], caption: str | None = None) -> Table:
    """Two columns, a measure and its value (``mdakit analyze``, ``mdakit paths``)."""
    built = table(title, "measure", "value", right=["value"], caption=caption)
    for measure, value in rows.items():
        built.add_row(measure, value)
    return built


def analysis_rows(summary: Mapping[str, Any]) -> dict[str, str]:
    """``mdakit analyze``: the sub-architecture analyses' headline numbers.

    >>> rows = analysis_rows({"accuracy_original_mean": 0.9, "accuracy_sub_architecture_mean": 0.8,
    ...                       "similarity_mean": 0.5, "hit_rate_last_layer": None,
    ...                       "misclassification": {"mistaken": 0.1, "other": 0.05, "difference": 0.05}})
    >>> rows["accuracy, sub-architectures"], rows["hit rate, last conv layer (chance 0.25)"]
    ('80.00%', 'n/a')
    """
    mis = summary["misclassification"]
    rows = {"accuracy, original (mean over classes)": pct(summary["accuracy_original_mean"]),
            "accuracy, sub-architectures": pct(summary["accuracy_sub_architecture_mean"]),
            "similarity (mean over layers)": f"{summary['similarity_mean']:.3f}"}
    scores = {"hit rate, last conv layer (chance 0.25)": summary["hit_rate_last_layer"],
              **{f"misclassification: {key}": mis[key] for key in ("mistaken", "other", "difference")}}
    return rows | {label: "n/a" if value is None else f"{value:.4f}" for label, value in scores.items()}


def paths_rows(summary: Mapping[str, Any]) -> dict[str, str]:
    """``mdakit paths``: accuracy, gate density, filter states and how well the paths separate classes.

    >>> rows = paths_rows({"accuracy": 0.9, "gate_density": 0.25,
    ...                    "filter_states": {"energetic": 1, "dynamic": 2, "silent": 3},
    ...                    "tsne": {"silhouette_2d": float("nan"), "neighbour_agreement": 0.5}})
    >>> rows["energetic / dynamic / silent filters"], rows["t-SNE silhouette / 10-NN same class"]
    ('1 / 2 / 3', 'undefined / 0.500')
    """
    states, tsne = summary["filter_states"], summary["tsne"]
    silhouette = tsne["silhouette_2d"]
    silhouette_text = "undefined" if silhouette is None or math.isnan(silhouette) else f"{silhouette:.3f}"
    return {"accuracy": pct(summary["accuracy"]), "gate density": pct(summary["gate_density"]),
            "energetic / dynamic / silent filters": f"{states['energetic']} / {states['dynamic']} / {states['silent']}",
            "t-SNE silhouette / 10-NN same class": f"{silhouette_text} / {tsne['neighbour_agreement']:.3f}"}


def decoupled_table(title: str, report: Mapping[str, Any], caption: str) -> Table:
    """``mdakit decouple``: the original against the decoupled model, its gate density and filter states."""
    states = [sum(s[k] for s in report["test_filter_states"].values()) for k in ("silent", "energetic", "dynamic")]
    built = table(title, "model", "test acc", "gate density", "silent / energetic / dynamic filters", caption=caption)
    built.add_row("original", pct(report["original_test_accuracy"]), "", "")
    built.add_row("decoupled", pct(report["test_accuracy"]), pct(report["test_gate_density"]["all"]),
                  " / ".join(map(str, states)))
    return built


def settled_table(title: str, report: Mapping[str, Any], out: Path) -> Table:
    """``mdakit settle``: test accuracy before and after, and the gate density."""
    before = report["test_accuracy_before"]
    built = table(title, "model", "test acc", "gate density", caption=f"saved to {out}")
    built.add_row("before", pct(before) if before is not None else "?", "")
    built.add_row("settled", pct(report["test_accuracy"]), pct(report["test_gate_density"]["all"]))
    return built


def detection_table(title: str, attacks: Mapping[str, Mapping[str, Any]], size: str, out: Path) -> Table:
    """``mdakit detect``: ROC AUC (mean ± std over runs) per attack, classifier and feature set."""
    features = list(next(iter(attacks.values())))
    built = table(title, "attack", "classifier", *features, right=features, caption=f"written to {out}")
    for method, entry in attacks.items():
        for clf in next(iter(entry.values()))["auc"]:
            built.add_row(method, clf, *(f"{e['auc'][clf][size]['mean']:.3f} ± {e['auc'][clf][size]['std']:.3f}"
                                         for e in entry.values()))
    return built


def patterns_table(title: str, layers: Sequence[Mapping[str, Any]]) -> Table:
    """``mdakit patterns``: per layer, the drawn unit and how alike its patterns are within and between classes."""
    built = table(title, "layer", "unit", "cosine within class", "cosine between classes")
    for e in layers:
        built.add_row(e["layer"], str(e["unit"]), *("n/a" if v is None else f"{v:.3f}" for v in (
            e["total_cosine_within_class"], e["total_cosine_between_classes"])))
    return built


def latency_table(latency: Mapping[str, Any], macs_ratio: float | None = None) -> Table:
    """Milliseconds per image of the result and its original in each timed setting, and the speed-up.

    >>> t = latency_table({"labels": ["part", "original"], "environment": {"cpu": "x", "torch": "2"},
    ...     "rows": [{"runtime": "eager", "device": "cpu", "threads": 1, "batch": 1,
    ...               "ms_per_image": {"part": 1.0, "original": 3.0}, "speedup": 3.0}]}, 0.25)
    >>> t.row_count, t.caption
    (1, 'median of interleaved passes on x (torch 2); MACs promise 4.00×')
    """
    mine, theirs = latency["labels"]
    built = table("measured latency", "runtime", "device", "threads", "batch", f"{mine} ms/image",
                  f"{theirs} ms/image", "speed-up", right=["threads", "batch", f"{mine} ms/image",
                                                            f"{theirs} ms/image", "speed-up"])
    for row in latency["rows"]:
        ms = row["ms_per_image"]
        built.add_row(row["runtime"], row["device"], str(row["threads"]), str(row["batch"]), f"{ms[mine]:.3g}",
                      f"{ms[theirs]:.3g}", f"{row['speedup']:.2f}×")
    env = latency.get("environment")
    notes = [f"median of interleaved passes on {env['cpu']} (torch {env['torch']})"] if env else []
    if macs_ratio:
        notes.append(f"MACs promise {1 / macs_ratio:.2f}×")
    notes += [f"{runtime} not timed: {why}" for runtime, why in latency.get("skipped", {}).items()]
    built.caption = "; ".join(notes)
    return built


def with_latency(human: Any, report: Mapping[str, Any], macs_ratio: float | None = None) -> Any:
    """``human`` followed by the latency table when ``report`` holds a timing, else ``human`` alone."""
    if "latency" not in report:
        return human
    return Group(human, latency_table(report["latency"], macs_ratio))
