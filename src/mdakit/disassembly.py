"""Disassembly: cut from a trained classifier the part that some classes rely on.

``disassemble(model, data, classes)`` selects each class's samples, attributes, computes keep-sets
from the union of the classes' masks, extracts a physically smaller model whose logits are those of
``classes`` in the order given, and reports accuracy, size, MACs, time and peak memory per step.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from mdakit.artifacts import ModelCard, save
from mdakit.attribution.contribution import ContributionSettings, class_sums, contribution_masks, masks_from_sums
from mdakit.attribution.gradient import GradientSettings, gradient_masks
from mdakit.attribution.nad import NADSettings, nad_masks
from mdakit.attribution.samples import select_samples
from mdakit.component_masks import ComponentMasks
from mdakit.data import ClassSubset, labels_of, make_loader, parse_classes, stratified_split
from mdakit.distributed import DEFAULT_CHUNK, World, in_chunks, run_per_class, state_digest
from mdakit.errors import MdakitError
from mdakit.evaluate import evaluate_logits, predict_logits
from mdakit.graph import ChannelGraph, trace
from mdakit.metrics import model_size
from mdakit.profiling import StepCost, measure
from mdakit.surgery import KeepSets, apply_kernel_masks, keep_sets, rebuild
from mdakit.workspace import Workspace

METHODS = ("contribution", "gradient", "nad")
CALIBRATION_FACTORS = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05)


@dataclass
class Part:
    """A disassembled classifier: the smaller model, its card, the masks it came from, and a report."""

    model: nn.Module
    card: ModelCard
    masks: ComponentMasks
    keep: KeepSets
    report: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Save as a standard model file (``mdakit load/eval/info`` accept it)."""
        return save(self.model, path, self.card, force=force)


def _accuracies(source: Workspace, part: nn.Module, classes: list[int], device: torch.device | str) -> dict[str, Any]:
    if source.test is None:
        return {}
    subset = ClassSubset(source.test, classes, remap=False)
    logits, labels = predict_logits(source.model, subset, device=device)
    part_logits, _ = predict_logits(part, subset, device=device)
    logit_classes = source.card.logit_classes
    return {"part_accuracy": evaluate_logits(part_logits, labels, classes, classes).accuracy,
            "original_accuracy": evaluate_logits(logits, labels, logit_classes, classes).accuracy,
            "original_restricted_accuracy": evaluate_logits(logits, labels, logit_classes, classes, True).accuracy,
            "test_images": len(labels)}


def holdout_images(source: Workspace, classes: list[int], chosen: dict[int, torch.Tensor], per_class: int, seed: int
             ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Held-out images of ``classes`` (labels in class order): the model's own validation split when its
    card records how it was carved (never trained on), else training images not selected for attribution."""
    labels = labels_of(source.train)
    config = source.card.training.get("config", {})
    candidates, kind = torch.arange(len(labels)), "unselected training images"
    if config.get("val_fraction") and config.get("train_subset") is None and len(labels) > 1:
        _, val = stratified_split(source.train, config["val_fraction"], seed=config.get("seed", 0))
        candidates, kind = torch.tensor(val.indices, dtype=torch.long), "the model's validation split"
    generator = torch.Generator().manual_seed(seed + 1)
    picked, targets = [], []
    for i, c in enumerate(classes):
        pool = candidates[labels[candidates] == c]
        pool = pool[~torch.isin(pool, chosen[c])]
        pool = pool[torch.randperm(len(pool), generator=generator)[:per_class]]
        picked.append(pool)
        targets.append(torch.full((len(pool),), i))
    idx = torch.cat(picked).tolist()
    images = torch.cat([b for b, _ in make_loader(Subset(source.train, idx), 512)]) if idx else torch.zeros(0)
    return images, torch.cat(targets), kind


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, columns: list[int] | None,
              device: torch.device | str) -> float:
    model.eval().to(device)
    logits = torch.cat([model(images[i:i + 256].to(device)).cpu() for i in range(0, len(images), 256)])
    if columns is not None:
        logits = logits[:, columns]
    return float((logits.argmax(1) == targets).float().mean())


def calibrate_thresholds(source: Workspace, graph: ChannelGraph, sums: dict, rows: dict[int, int], classes: list[int],
                         chosen: dict[int, torch.Tensor], settings: ContributionSettings, tolerance: float,
                         seed: int = 0, per_class: int = 300, device: torch.device | str = "cpu"
                         ) -> tuple[ContributionSettings, ComponentMasks, dict[str, Any]]:
    """Relax all thresholds together (factors 1, 0.75, 0.5, ...) until the part's accuracy on held-out
    training images (never test images) is within ``tolerance`` points of the original's
    restricted-logit accuracy on the same images; the first (smallest part) that does is kept. The
    held-out images are the model's validation split where its card records it, never test images."""
    images, targets, kind = holdout_images(source, classes, chosen, per_class, seed)
    if len(images) == 0:
        raise MdakitError("no held-out training images are left to calibrate the thresholds on")
    row_list = [rows[c] for c in classes]
    reference = _accuracy(source.model, images, targets, row_list, device)
    trials = []
    for factor in CALIBRATION_FACTORS:
        candidate = settings.scaled(factor)
        masks = masks_from_sums(graph, sums, rows, candidate)
        part = rebuild(source.model, keep_sets(graph, masks.union(classes), row_list))
        accuracy = _accuracy(part, images, targets, None, device)
        trials.append({"factor": factor, "holdout_accuracy": accuracy})
        if accuracy >= reference - tolerance / 100.0:
            break
    info = {"tolerance_points": tolerance, "holdout_images": len(images), "holdout": kind,
            "reference_accuracy": reference,
            "trials": trials, "chosen_factor": trials[-1]["factor"],
            "met": trials[-1]["holdout_accuracy"] >= reference - tolerance / 100.0}
    return candidate, masks, info


def _attribute(method: str, graph: ChannelGraph, train: Dataset, chosen: dict[int, torch.Tensor],
               rows: dict[int, int], settings: ContributionSettings | NADSettings, device: torch.device | str,
               show_progress: bool) -> ComponentMasks:
    """Masks of the classes in ``chosen`` by ``method`` (calibration aside)."""
    if method == "nad":
        return nad_masks(graph, train, chosen, rows, settings, device, show_progress)
    if method == "gradient":
        return gradient_masks(graph, train, chosen, rows, GradientSettings(batch_size=settings.batch_size), device,
                              show_progress)
    return contribution_masks(graph, train, chosen, rows, settings, device, show_progress)


def _add_cost(cost: dict[str, Any], name: str, step: StepCost) -> None:
    """Add a chunk's step to ``cost``: seconds add up, the peak RSS is the largest."""
    entry = cost.setdefault(name, {"seconds": 0.0, "peak_rss_mb": None, "peak_is_step": step.peak_is_step})
    entry["seconds"] += step.seconds
    if step.peak_rss_mb is not None:
        entry["peak_rss_mb"] = max(entry["peak_rss_mb"] or 0.0, step.peak_rss_mb)


def compute_masks(source: Workspace, classes: Sequence[int], method: str = "contribution", samples: int = 50,
                  settings: ContributionSettings | NADSettings | None = None, seed: int = 0,
                  device: torch.device | str = "cpu", graph: ChannelGraph | None = None,
                  calibrate: float | None = None, show_progress: bool = False, *, class_chunk: int | None = None,
                  out: str | Path | None = None, world: World | None = None, work_dir: str | Path | None = None,
                  force: bool = False) -> tuple[ComponentMasks, ChannelGraph, dict[str, Any]]:
    """Per-class masks of ``classes`` (dataset labels) and the cost of each step.

    ``method="nad"`` takes :class:`NADSettings` (default: ``NADSettings()``) and runs with ``seed``.

    ``calibrate`` (points of accuracy) relaxes the thresholds until the classes' part stays within
    that tolerance of the original on held-out training images (see :func:`calibrate_thresholds`).

    Many classes: ``class_chunk`` selects samples and attributes that many classes at a time. With
    ``out`` the masks are written there as they finish (:func:`mdakit.distributed.run_per_class`:
    resumable, split across the ranks of ``world``, default chunk :data:`~mdakit.distributed.DEFAULT_CHUNK`)
    and returned lazily loaded, so memory is set by the chunk, not by the number of classes. A
    class's samples and masks do not depend on the chunk or rank that computes it.
    """
    if method not in METHODS:
        raise MdakitError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    if isinstance(settings, NADSettings) and method != "nad":
        raise MdakitError(f"NAD settings were given for method {method!r}")
    if method == "nad":
        settings = dataclasses.replace(settings if isinstance(settings, NADSettings) else NADSettings(), seed=seed)
    settings = settings or ContributionSettings()
    settings.validate()
    world = world or World()
    if calibrate is not None and calibrate < 0:
        raise MdakitError(f"the calibration tolerance must be non-negative, got {calibrate}")
    if calibrate is not None and method != "contribution":
        raise MdakitError("threshold calibration is only available for contribution attribution")
    if class_chunk is not None and class_chunk < 1:
        raise MdakitError(f"the class chunk must be at least 1, got {class_chunk}")
    chunked = class_chunk is not None or out is not None or world.size > 1
    if calibrate is not None and chunked:
        raise MdakitError("threshold calibration keeps every class's sums at once; it cannot be combined with "
                          "class chunks, an output directory or several processes")
    if world.size > 1 and out is None:
        raise MdakitError("several processes need an output directory to gather their classes' masks in")
    if method == "nad" and settings.beta == "auto" and chunked:
        raise MdakitError("NAD's β 'auto' is chosen on the first class; with class chunks or several processes "
                          "pass a number (e.g. the β an unchunked run chose)")
    class_list = parse_classes(list(classes), source.card.class_names)
    rows = source.rows(class_list)
    row_list = [rows[c] for c in class_list]
    position = {c: i for i, c in enumerate(class_list)}
    cost: dict[str, Any] = {}
    with measure() as step:
        graph = graph or trace(source.model, source.card.input_shape)
    cost["trace"] = step.to_dict()

    def chunk_masks(chunk: list[int]) -> ComponentMasks:
        last = max(position[c] for c in chunk) + 1  # later classes cannot change the earlier ones' samples
        only = None if len(chunk) == len(class_list) else set(chunk)
        with measure() as step:
            chosen = select_samples(source.model, source.train, class_list[:last], row_list[:last], n=samples,
                                    seed=seed, device=world.device(device), only=only)
        _add_cost(cost, "sample_selection", step)
        with measure() as step:
            masks = _attribute(method, graph, source.train, chosen, rows, settings, world.device(device),
                               show_progress)
        _add_cost(cost, "attribution", step)
        masks.info = {"samples_used": {c: len(v) for c, v in chosen.items()}}
        return masks

    def describe(masks: ComponentMasks, calibration: dict[str, Any] | None = None) -> None:
        masks.class_names = {c: source.card.class_names[c] for c in class_list if c < len(source.card.class_names)}
        masks.settings.update(samples=samples, seed=seed, calibration=calibration)
        masks.info = {"source": source.label, "rows": rows, "input_shape": list(source.card.input_shape),
                      "samples_used": {c: masks.info["samples_used"][c] for c in class_list}}

    if out is not None:
        fingerprint = {"source": source.label, "weights": state_digest(source.model), "train_images": len(source.train),
                       "classes": class_list, "method": method, "samples": samples, "seed": seed,
                       "settings": settings.to_dict()}
        masks = run_per_class(class_list, chunk_masks, out, chunk=class_chunk or DEFAULT_CHUNK, world=world,
                              work_dir=work_dir, fingerprint=fingerprint, finish=describe, force=force)
        return masks, graph, cost
    if calibrate is None:
        parts = [chunk_masks(chunk) for chunk in in_chunks(class_list, class_chunk or len(class_list))]
        masks = ComponentMasks({c: m for part in parts for c, m in part.per_class.items()}, parts[0].method,
                               parts[0].settings,
                               info={"samples_used": {c: n for p in parts for c, n in p.info["samples_used"].items()}})
        describe(masks)
        return masks, graph, cost
    with measure() as step:
        chosen = select_samples(source.model, source.train, class_list, row_list, n=samples, seed=seed, device=device)
    cost["sample_selection"] = step.to_dict()
    with measure() as step:
        sums = class_sums(graph, source.train, chosen, settings, device, show_progress)
    cost["attribution"] = step.to_dict()
    with measure() as step:
        settings, masks, calibration = calibrate_thresholds(source, graph, sums, rows, class_list, chosen,
                                                            settings, calibrate, seed, device=device)
    cost["calibration"] = step.to_dict()
    masks.info = {"samples_used": {c: len(v) for c, v in chosen.items()}}
    describe(masks, calibration)
    return masks, graph, cost


def extract(source: Workspace, graph: ChannelGraph, masks: ComponentMasks, classes: Sequence[int],
            kernel_masks: bool = False) -> tuple[nn.Module, KeepSets, int]:
    """Physically extract the part for ``classes`` from the union of their masks."""
    class_list = list(classes)
    union = masks.union(class_list)
    rows = list(source.rows(class_list).values())
    keep = keep_sets(graph, union, rows)
    part = rebuild(source.model, keep).eval()
    zeroed = apply_kernel_masks(part, keep, union) if kernel_masks else 0
    return part, keep, zeroed


def disassemble(model: nn.Module | str | Path, data: Dataset | DataLoader | str | None, classes: Sequence[int] | str,
                method: str = "contribution", *, samples: int = 50, settings: ContributionSettings | None = None,
                kernel_masks: bool = False, calibrate: float | None = None,
                test_data: Dataset | DataLoader | str | None = None,
                input_shape: Sequence[int] | None = None, seed: int = 0, device: torch.device | str = "cpu",
                data_dir: str | Path | None = None, show_progress: bool = False) -> Part:
    """Cut the part of ``model`` that ``classes`` rely on into a smaller classifier for them.

    ``model``: an ``nn.Module`` or a model directory; ``data``: a map-style dataset or DataLoader of
    ``(image, label)`` training pairs, or a dataset name (then its test split is used for the report).
    ``calibrate``: accuracy tolerance in points for :func:`calibrate_thresholds` (default: the
    thresholds in ``settings`` are used as they are).

    >>> part = disassemble("runs/zoo/lenet5-mnist", "mnist", "0-2")  # doctest: +SKIP
    >>> part.report["part_accuracy"], part.report["part_size"]["params"]  # doctest: +SKIP
    """
    source = Workspace.open(model, data, test_data, input_shape, data_dir)
    class_list = parse_classes(classes, source.card.class_names)
    masks, graph, cost = compute_masks(source, class_list, method, samples, settings, seed, device,
                                       calibrate=calibrate, show_progress=show_progress)
    with measure() as step:
        part, keep, zeroed = extract(source, graph, masks, class_list, kernel_masks)
    cost["extraction"] = step.to_dict()
    report: dict[str, Any] = {"classes": class_list, "method": method, "steps": cost,
                              "original_size": model_size(source.model, source.card.input_shape),
                              "part_size": model_size(part, source.card.input_shape), "kernels_zeroed": zeroed,
                              **_accuracies(source, part, class_list, device)}
    card = copy.deepcopy(source.card)
    card.logit_classes = class_list
    card.edits = [*card.edits, keep.to_dict()]
    card.provenance = {**card.provenance, "disassembled_from": source.label, "method": method,
                       "settings": masks.settings, "kernel_masks": kernel_masks}
    card.metrics = {k: v for k, v in report.items() if k != "classes"}
    return Part(part, card, masks, keep, report)
