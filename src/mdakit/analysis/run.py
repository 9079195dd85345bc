"""All analyses of one model's sub-architectures, written as JSON + PNG into one directory.

``analyze(path, out)`` takes a masks directory (:meth:`ComponentMasks.save`; its ``info["source"]``
names the model) or a model directory (masks are then computed for the chosen classes with
``method``), runs :mod:`accuracy <mdakit.analysis.accuracy>`, :mod:`similarity
<mdakit.analysis.similarity>`, :mod:`hit rate <mdakit.analysis.hit_rate>` and :mod:`misclassification
<mdakit.analysis.misclassification>`, and writes ``<analysis>.json`` and ``<analysis>.png`` for each,
plus ``summary.json`` (and ``masks/`` when they were computed), atomically: all files go to a
temporary directory that is renamed to ``out`` at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mdakit.analysis.accuracy import sub_architecture_accuracy
from mdakit.analysis.hit_rate import mosaic_hit_rate
from mdakit.analysis.misclassification import misclassification_analysis
from mdakit.analysis.plots import plot_accuracy, plot_layers, plot_similarity_matrix
from mdakit.analysis.similarity import layer_similarity, similarity_matrix
from mdakit.analysis.subarch import check_masks
from mdakit.component_masks import MASKS_JSON, ComponentMasks
from mdakit.data import parse_classes
from mdakit.disassembly import compute_masks
from mdakit.errors import MdakitError, OptionError
from mdakit.files import check_output, finite, write_directory, write_json
from mdakit.graph import ChannelGraph, trace
from mdakit.workspace import Workspace

ANALYSES = ("accuracy", "similarity", "hit_rate", "misclassification")


@dataclass
class Target:
    """A model, its test data and the per-class masks of the classes to analyse."""

    source: Workspace
    masks: ComponentMasks
    graph: ChannelGraph
    computed: bool


def load_target(path: str | Path, dataset: str | None = None, classes: str | Sequence[int] | None = None,
                method: str = "contribution", samples: int = 50, seed: int = 0, data_dir: str | Path | None = None,
                device: torch.device | str = "cpu", show_progress: bool = False) -> Target:
    """Read masks (and the model they record) or load a model and compute masks of ``classes``
    (default: all the masks' classes, or all the model's). At least four classes are needed (the
    hit rate tiles four); every problem raises :class:`MdakitError` before any long computation."""
    path = Path(path)
    if not path.exists():
        raise MdakitError(f"{path} does not exist")
    from_masks = (path / MASKS_JSON).is_file()
    masks = ComponentMasks.load(path) if from_masks else None
    if masks is not None:
        recorded = masks.info.get("source")
        if not recorded:
            raise MdakitError(f"the masks in {path} record no source model")
        if not Path(recorded).exists():
            raise MdakitError(f"the masks' source model {recorded} does not exist (relative to {Path.cwd()})")
        source = Workspace.open(recorded, dataset, data_dir=data_dir)
    else:
        source = Workspace.open(path, dataset, data_dir=data_dir)
    default = masks.classes if masks is not None else source.card.logit_classes
    chosen = parse_classes(classes, source.card.class_names) if classes is not None else list(default)
    if len(chosen) < 4:
        raise MdakitError(f"the analyses need at least four classes (the hit rate tiles four), got {chosen}")
    if masks is not None:
        masks = masks.subset(chosen)
        graph = trace(source.model, source.card.input_shape)
        check_masks(graph, masks)
    else:
        masks, graph, _ = compute_masks(source, chosen, method, samples, seed=seed, device=device,
                                        show_progress=show_progress, thresholds="paper")  # as the papers analyse
    return Target(source, masks, graph, computed=not from_masks)


def run_analyses(target: Target, per_class: int | None = None, mosaics: int = 200, top: float = 0.05,
                 seed: int = 0, device: torch.device | str = "cpu", show_progress: bool = False) -> dict[str, dict]:
    """The four analyses as JSON-ready dicts (``per_class`` caps the test images per class of the
    accuracy analysis; the misclassification analysis uses every test image of the classes)."""
    source, masks, graph = target.source, target.masks, target.graph
    classes, card = masks.classes, source.card
    names = {c: card.class_names[c] for c in classes}
    layers = [layer.name for layer in graph.layers if layer is not graph.output_layer]
    results: dict[str, dict] = {}

    start = time.perf_counter()
    accuracy = sub_architecture_accuracy(graph, masks, source.test, card.logit_classes, classes, per_class, seed,
                                         device, show_progress).to_dict()
    results["accuracy"] = {**accuracy, "per_class_limit": per_class, "seconds": time.perf_counter() - start}

    start = time.perf_counter()
    per_layer = layer_similarity(masks, classes, layers)
    matrix = similarity_matrix(masks, classes, layers)
    results["similarity"] = {"layers": layers, "per_layer": per_layer,
                             "mean": sum(per_layer.values()) / len(per_layer), "part": "outputs (kept filters)",
                             "seconds": time.perf_counter() - start}

    start = time.perf_counter()
    hits = mosaic_hit_rate(graph, masks, source.test, classes, mosaics, top, seed, device=device,
                           show_progress=show_progress).to_dict()
    results["hit_rate"] = {**hits, "seconds": time.perf_counter() - start}

    start = time.perf_counter()
    mis = misclassification_analysis(source.model, source.test, matrix, classes, card.logit_classes, names,
                                     device=device, show_progress=show_progress)
    results["misclassification"] = {**mis, "class_names": {str(c): n for c, n in names.items()},
                                    "seconds": time.perf_counter() - start}
    meta = {"source": source.label, "dataset": card.dataset, "method": masks.method, "classes": classes,
            "class_names": {str(c): n for c, n in names.items()}, "mask_settings": masks.settings}
    return {name: {**meta, **result} for name, result in results.items()}


def summarize(results: dict[str, dict]) -> dict[str, Any]:
    """The headline numbers of :func:`run_analyses`' results.

    >>> r = {"accuracy": {"source": "m", "original_mean": 0.9, "sub_architecture_mean": 0.95,
    ...                   "share_at_least_original": 1.0},
    ...      "similarity": {"mean": 0.5}, "hit_rate": {"hit_rate": {"a": 0.3, "b": 0.6}},
    ...      "misclassification": {"overall": {"difference": 0.02}}}
    >>> summarize(r)["hit_rate_best_layer"]
    'b'
    """
    hit = results["hit_rate"]["hit_rate"]
    measured = {name: value for name, value in hit.items() if not math.isnan(value)}
    best = max(measured, key=measured.get) if measured else None
    meta = {k: v for k, v in results["accuracy"].items() if k in ("source", "dataset", "method", "classes")}
    return {**meta,
            "accuracy_original_mean": results["accuracy"]["original_mean"],
            "accuracy_sub_architecture_mean": results["accuracy"]["sub_architecture_mean"],
            "share_classes_sub_at_least_original": results["accuracy"]["share_at_least_original"],
            "similarity_mean": results["similarity"]["mean"],
            "hit_rate_last_layer": list(hit.values())[-1], "hit_rate_best_layer": best,
            "hit_rate_best": measured[best] if best else None,
            "misclassification": results["misclassification"]["overall"]}


def _plot(name: str, result: dict, path: Path) -> None:
    title = f"{result['source']} ({result['method']})"
    if name == "accuracy":
        plot_accuracy(result, path, f"Per-class accuracy: {title}")
    elif name == "similarity":
        plot_layers(result["per_layer"], path, "mean Jaccard similarity", f"Similarity: {title}")
    elif name == "hit_rate":
        plot_layers(result["hit_rate"], path, "hit rate", f"Hit rate, {result['mosaics']} mosaics: {title}",
                    reference=result["chance"])
    else:
        labels = [f"{c} {result['class_names'][str(c)]}" for c in result["classes"]]
        plot_similarity_matrix(result["similarity"], labels, path, f"Similarity of sub-architectures\n{title}")


def write_analyses(results: dict[str, dict], out: str | Path, masks: ComponentMasks | None = None,
                   force: bool = False) -> Path:
    """Write ``<name>.json`` + ``<name>.png`` per analysis, ``summary.json`` and, if given, ``masks/``
    into ``out``, atomically (a temporary sibling directory renamed at the end)."""
    def write(tmp: Path) -> None:
        for name, result in results.items():
            write_json(tmp / f"{name}.json", result)
            _plot(name, result, tmp / f"{name}.png")
        write_json(tmp / "summary.json", summarize(results))
        if masks is not None:
            masks.save(tmp / "masks")

    return write_directory(out, force, write)


def analyze(path: str | Path, out: str | Path, dataset: str | None = None,
            classes: str | Sequence[int] | None = None, method: str = "contribution", samples: int = 50,
            per_class: int | None = None, mosaics: int = 200, seed: int = 0, data_dir: str | Path | None = None,
            device: torch.device | str = "cpu", force: bool = False, show_progress: bool = False) -> dict[str, Any]:
    """Run every analysis on a masks or model directory and write them into ``out``; returns the summary.

    >>> summary = analyze("runs/zoo/lenet5-mnist", "runs/analysis/lenet5-mnist")  # doctest: +SKIP
    >>> summary["misclassification"]["difference"] > 0  # doctest: +SKIP
    True
    """
    check_output(out, force, [path])
    if per_class is not None and per_class < 1:
        raise OptionError(f"{{0}} must be at least 1 test image per class, got {per_class}", "per_class")
    if mosaics < 1:
        raise OptionError(f"{{0}} must be at least 1, got {mosaics}", "mosaics")
    target = load_target(path, dataset, classes, method, samples, seed, data_dir, device, show_progress)
    results = run_analyses(target, per_class, mosaics, seed=seed, device=device, show_progress=show_progress)
    write_analyses(results, out, target.masks if target.computed else None, force=force)
    return finite(summarize(results))
