"""Disassembly: cut from a trained classifier the part that some classes rely on.

``disassemble(model, data, classes)`` selects each class's samples, attributes, computes keep-sets
from the union of the classes' masks, extracts a physically smaller model whose logits are those of
``classes`` in the order given, and reports accuracy, size, MACs, time and peak memory per step.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mdakit.artifacts import ModelCard, save
from mdakit.attribution.base import MethodSettings, get_method
from mdakit.attribution.jobs import attribute_in_chunks, check_chunks, is_chunked
from mdakit.attribution.run import AttributionRun
from mdakit.budget import Budget, budget_line, budgeted_masks, check_budget
from mdakit.calibration import calibrated_masks, calibration_plan, check_calibration
from mdakit.component_masks import ComponentMasks
from mdakit.data import ClassSubset, parse_classes
from mdakit.distributed import World
from mdakit.errors import MdakitError
from mdakit.evaluate import evaluate_logits, predict_logits
from mdakit.graph import ChannelGraph, trace
from mdakit.latency import LatencySettings, compare_latency, latency_settings
from mdakit.metrics import model_size
from mdakit.profiling import measure
from mdakit.surgery import KeepSets, apply_kernel_masks, check_width_multiple, keep_sets, rebuild
from mdakit.workspace import Workspace
from mdakit.zoo import is_detector


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


def _describe(source: Workspace, run: AttributionRun, thresholds: str, masks: ComponentMasks,
              calibration: dict[str, Any] | None = None, budget: dict[str, Any] | None = None) -> None:
    """Fill in what the whole run knows: class names, samples and seed, how the thresholds were chosen, the
    model and the logit rows."""
    names = source.card.class_names
    masks.class_names = {c: names[c] for c in run.classes if c < len(names)}
    masks.settings.update(samples=run.samples, seed=run.seed, thresholds=thresholds, calibration=calibration,
                          **({"budget": budget} if budget else {}))
    masks.info = {"source": source.label, "rows": run.rows, "input_shape": list(source.card.input_shape),
                  "samples_used": {c: masks.info["samples_used"][c] for c in run.classes}}


def compute_masks(source: Workspace, classes: Sequence[int], method: str = "contribution", samples: int = 50,
                  settings: MethodSettings | None = None, seed: int = 0, device: torch.device | str = "cpu",
                  graph: ChannelGraph | None = None, calibrate: float | None = None, show_progress: bool = False,
                  *, thresholds: str = "paper", thresholds_given: bool | None = None,
                  class_chunk: int | None = None, out: str | Path | None = None, world: World | None = None,
                  work_dir: str | Path | None = None, force: bool = False, budget: Budget | str | None = None,
                  width_multiple: int = 1) -> tuple[ComponentMasks, ChannelGraph, dict[str, Any]]:
    """Per-class masks of ``classes`` (dataset labels) by the registered ``method``, and the cost of each step.

    ``settings``: the method's (default: its defaults; :meth:`~mdakit.attribution.base.AttributionMethod.settings_for`);
    ``seed`` seeds the sample selection and, for NAD, the mask search.

    Thresholds: per-class masks alone use the paper's (``thresholds="paper"``, the default here: they are
    what the analyses compare, and a run in class chunks gives the same). With ``thresholds="calibrated"``
    (the default of :func:`disassemble` and :func:`~mdakit.compression.compress`, which cut a part) and no
    ``settings``, a method that exposes its sums (contribution) is relaxed until the classes' part stays
    within :data:`~mdakit.defaults.CALIBRATION_TOLERANCE` points of the original restricted to them, on
    held-out training images (:func:`~mdakit.calibration.calibrate_thresholds`). ``calibrate`` (points)
    calibrates with that tolerance, also from given ``settings``
    (:func:`~mdakit.calibration.calibration_plan`; ``thresholds_given`` overrides whether ``settings`` count as
    thresholds the user chose). The masks' settings record which it was.

    Many classes: ``class_chunk`` selects samples and attributes that many classes at a time. With
    ``out`` the masks are written there as they finish (:func:`~mdakit.attribution.jobs.attribute_in_chunks`:
    resumable, split across the ranks of ``world``, default chunk :data:`~mdakit.distributed.DEFAULT_CHUNK`)
    and returned lazily loaded, so memory is set by the chunk, not by the number of classes. A
    class's samples and masks do not depend on the chunk or rank that computes it.

    A ``budget`` (:class:`~mdakit.budget.Budget` or ``"macs=0.3"``) replaces the calibration: the thresholds
    are searched for the most accurate part within it (:func:`~mdakit.budget.search_budget`), within
    ``calibrate`` points too when that is given. Calibration and search cut their candidate parts with
    widths rounded to ``width_multiple``, as the delivered part is.
    """
    attribution = get_method(method)
    world = world or World()
    given = settings is not None if thresholds_given is None else thresholds_given
    chunked = is_chunked(class_chunk, out, world)
    if budget is not None:
        budget = Budget.parse(budget)
        check_budget(attribution, chunked)
        if calibrate is not None:
            check_calibration(attribution, calibrate, chunked)
        tolerance, how = None, f"searched for the budget {budget.kind} ≤ {budget.ratio:g}"
    else:
        tolerance, how = calibration_plan(attribution, thresholds, given, calibrate, chunked)
    settings = attribution.settings_for(settings, seed)
    check_chunks(attribution, settings, class_chunk, out, world)
    class_list = parse_classes(list(classes), source.card.class_names)
    rows = source.rows(class_list)
    cost: dict[str, Any] = {}
    with measure() as step:
        graph = graph or trace(source.model, source.card.input_shape)
    cost["trace"] = step.to_dict()
    run = AttributionRun(attribution, settings, source.model, graph, source.train, class_list, rows, samples=samples,
                         seed=seed, device=world.device(device), show_progress=show_progress, cost=cost)
    if budget is not None:
        masks, search = budgeted_masks(run, source, budget, calibrate, width_multiple)
        _describe(source, run, how, masks, budget=search)
        if not search["met"] or search["tolerance_met"] is False:
            warnings.warn(budget_line(search), stacklevel=2)
    elif tolerance is None:
        masks = attribute_in_chunks(run, class_chunk, out=out, world=world, work_dir=work_dir, source=source.label,
                                    finish=partial(_describe, source, run, how), force=force)
    else:
        masks, calibration = calibrated_masks(run, source, tolerance, width_multiple)
        _describe(source, run, how, masks, calibration)
        if not calibration["met"]:
            warnings.warn(unmet_warning(calibration), stacklevel=2)
    return masks, graph, cost


def unmet_warning(calibration: Mapping[str, Any]) -> str:
    """The line that says a calibration could not keep the part within its tolerance."""
    best = calibration["trials"][-1]
    return (f"the part could not be kept within {calibration['tolerance_points']:g} points of the original "
            f"restricted to its classes: on {calibration['holdout_images']} held-out images it reaches "
            f"{best['holdout_accuracy']:.1%} against {calibration['reference_accuracy']:.1%} at the loosest "
            f"thresholds tried (factor {best['factor']:g})")


def threshold_summary(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What a report says of the thresholds: how they were chosen and, if calibrated, the outcome.

    >>> threshold_summary({"thresholds": "the paper's thresholds", "calibration": None})
    {'thresholds': "the paper's thresholds", 'calibration': None}
    """
    calibration = settings.get("calibration")
    summary = None if not calibration else {
        key: calibration[key] for key in ("tolerance_points", "met", "chosen_factor", "reference_accuracy",
                                          "holdout_images", "holdout")}
    if summary is not None:
        summary["holdout_accuracy"] = calibration["trials"][-1]["holdout_accuracy"]
    searched = {"budget": settings["budget"]} if settings.get("budget") else {}
    return {"thresholds": settings.get("thresholds"), "calibration": summary, **searched}


def extract(source: Workspace, graph: ChannelGraph, masks: ComponentMasks, classes: Sequence[int],
            kernel_masks: bool = False, width_multiple: int = 1) -> tuple[nn.Module, KeepSets, int]:
    """Physically extract the part for ``classes`` from the union of their masks (every kept width rounded
    up to a multiple of ``width_multiple``, :func:`~mdakit.surgery.round_widths`)."""
    class_list = list(classes)
    union = masks.union(class_list)
    rows = list(source.rows(class_list).values())
    keep = keep_sets(graph, union, rows, width_multiple)
    part = rebuild(source.model, keep).eval()
    zeroed = apply_kernel_masks(part, keep, union) if kernel_masks else 0
    return part, keep, zeroed


def width_rounding(source: Workspace, graph: ChannelGraph, masks: ComponentMasks, classes: Sequence[int],
                   multiple: int) -> dict[str, Any]:
    """``{"width_rounding": ...}``: the multiple and the size the part would have without rounding, when
    widths are rounded; else nothing."""
    if multiple == 1:
        return {}
    unrounded, _, _ = extract(source, graph, masks, classes)
    return {"width_rounding": {"multiple": multiple, "unrounded_size": model_size(unrounded, source.card.input_shape)}}


def timed(part: nn.Module, source: Workspace, device: torch.device | str,
          latency: bool | LatencySettings | None) -> dict[str, Any]:
    """``{"latency": ...}``, the part timed against the source's model, or nothing when ``latency`` says not to."""
    settings = latency_settings(latency)
    if settings is None:
        return {}
    return {"latency": compare_latency(part, source.model, source.card.input_shape, settings, device)}


def disassemble(model: nn.Module | str | Path, data: Dataset | DataLoader | str | None, classes: Sequence[int] | str,
                method: str = "contribution", *, samples: int = 50, settings: MethodSettings | None = None,
                kernel_masks: bool = False, calibrate: float | None = None, thresholds: str = "calibrated",
                thresholds_given: bool | None = None, test_data: Dataset | DataLoader | str | None = None,
                input_shape: Sequence[int] | None = None, seed: int = 0, device: torch.device | str = "cpu",
                data_dir: str | Path | None = None, show_progress: bool = False,
                latency: bool | LatencySettings | None = None, width_multiple: int = 1,
                budget: Budget | str | None = None) -> Part:
    """Cut the part of ``model`` that ``classes`` rely on into a smaller classifier for them.

    ``model``: an ``nn.Module`` or a model directory; ``data``: a map-style dataset or DataLoader of
    ``(image, label)`` training pairs, or a dataset name (then its test split is used for the report).
    ``method``: a registered attribution method (:func:`~mdakit.attribution.base.available_methods`).
    Thresholds (:func:`compute_masks`): given no ``settings``, contribution attribution is calibrated so the
    part stays within 0.5 points of the original restricted to ``classes`` on held-out training images
    (a warning and ``report["calibration"]["met"]`` say when it cannot); ``thresholds="paper"`` uses the
    paper's values; ``calibrate``: another tolerance in points.
    ``latency``: time the part against the original (:func:`~mdakit.latency.compare_latency`; on by default,
    ``False`` skips it) into ``report["latency"]`` and the card's metrics. ``width_multiple``: round every
    kept width up to a multiple of it with the layer's next-strongest filters (e.g. 8, for the runtime's
    kernels); the report's ``width_rounding`` says what that cost in parameters and MACs. ``budget``
    (``"macs=0.3"``, ``"params=0.2"``, ``"latency=0.4"``: ratios to the original) searches the thresholds for the
    most accurate part within it on held-out training images; ``report["budget"]`` records the search.

    >>> part = disassemble("runs/zoo/lenet5-mnist", "mnist", "0-2")  # doctest: +SKIP
    >>> part.report["part_accuracy"], part.report["part_size"]["params"]  # doctest: +SKIP
    """
    check_width_multiple(width_multiple)
    source = Workspace.open(model, data, test_data, input_shape, data_dir)
    class_list = parse_classes(classes, source.card.class_names)
    if is_detector(source.card.arch):
        from mdakit.detection.disassembly import disassemble_detector

        if budget is not None or kernel_masks:
            raise MdakitError("a detector's part is cut by calibrated or given thresholds; a budget and kernel "
                              "masks are not available for detectors")

        return disassemble_detector(source, class_list, method, samples=samples, settings=settings,
                                    thresholds=thresholds, thresholds_given=thresholds_given, calibrate=calibrate,
                                    seed=seed, device=device,
                                    latency=latency, width_multiple=width_multiple)
    masks, graph, cost = compute_masks(source, class_list, method, samples, settings, seed, device,
                                       calibrate=calibrate, show_progress=show_progress, thresholds=thresholds,
                                       thresholds_given=thresholds_given, budget=budget,
                                       width_multiple=width_multiple)
    with measure() as step:
        part, keep, zeroed = extract(source, graph, masks, class_list, kernel_masks, width_multiple)
    cost["extraction"] = step.to_dict()
    report: dict[str, Any] = {"classes": class_list, "method": method, "steps": cost,
                              "original_size": model_size(source.model, source.card.input_shape),
                              "part_size": model_size(part, source.card.input_shape), "kernels_zeroed": zeroed,
                              **width_rounding(source, graph, masks, class_list, width_multiple),
                              **_accuracies(source, part, class_list, device),
                              **threshold_summary(masks.settings),
                              **timed(part, source, device, latency)}
    card = copy.deepcopy(source.card)
    card.logit_classes = class_list
    card.edits = [*card.edits, keep.to_dict()]
    card.provenance = {**card.provenance, "disassembled_from": source.label, "method": method,
                       "settings": masks.settings, "kernel_masks": kernel_masks, "width_multiple": width_multiple}
    card.metrics = {k: v for k, v in report.items() if k != "classes"}
    return Part(part, card, masks, keep, report)
