"""Threshold calibration: relax the thresholds until the classes' part is accurate enough.

A method that exposes its per-class sums (:class:`~mdakit.attribution.base.SumsAttribution`) keeps
them, and :func:`calibrate_thresholds` thresholds them again at smaller and smaller factors, cutting
the part each time, until its accuracy on held-out training images (:func:`holdout_images`, never
test images) comes within a tolerance of the original's.

It is the default: a disassembly given no thresholds is calibrated within
:data:`~mdakit.defaults.CALIBRATION_TOLERANCE` points (:func:`calibration_plan`), because the paper's
thresholds, tuned on its models, can cut a model they were never tuned on far too deep.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from mdakit.attribution.base import AttributionMethod, ClassSums, available_methods, get_method
from mdakit.attribution.run import AttributionRun, add_cost, samples_used
from mdakit.component_masks import ComponentMasks
from mdakit.data import labels_of, make_loader, stratified_split
from mdakit.defaults import CALIBRATION_TOLERANCE, THRESHOLD_MODES
from mdakit.errors import MdakitError
from mdakit.profiling import measure
from mdakit.surgery import keep_sets, rebuild
from mdakit.workspace import Workspace

CALIBRATION_FACTORS = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05)


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
def holdout_accuracy(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, columns: list[int] | None,
              device: torch.device | str) -> float:
    """Accuracy of ``model`` on held-out ``images`` (argmax over ``columns`` of the logits, or all of them)."""
    model.eval().to(device)
    logits = torch.cat([model(images[i:i + 256].to(device)).cpu() for i in range(0, len(images), 256)])
    if columns is not None:
        logits = logits[:, columns]
    return float((logits.argmax(1) == targets).float().mean())


def calibration_plan(method: AttributionMethod, thresholds: str, settings_given: bool, calibrate: float | None,
                     chunked: bool) -> tuple[float | None, str]:
    """``(tolerance or None, why)``: whether a run calibrates its thresholds, and the reason recorded with it.

    ``calibrate`` (points) always calibrates (and is refused where it cannot run, :func:`check_calibration`);
    else ``thresholds="calibrated"`` calibrates within :data:`~mdakit.defaults.CALIBRATION_TOLERANCE`
    unless thresholds were given (``settings_given``), the method exposes no sums, or the run is chunked;
    ``thresholds="paper"`` never does.

    >>> calibration_plan(get_method("contribution"), "calibrated", False, None, chunked=False)
    (0.5, 'calibrated by default')
    >>> calibration_plan(get_method("contribution"), "paper", False, None, chunked=False)
    (None, "the paper's thresholds")
    >>> calibration_plan(get_method("gradient"), "calibrated", False, None, chunked=False)[1]
    'not calibrated: only contribution attribution is, not gradient'
    """
    if thresholds not in THRESHOLD_MODES:
        raise MdakitError(f"thresholds must be one of {', '.join(THRESHOLD_MODES)}, got {thresholds!r}")
    if calibrate is not None:
        check_calibration(method, calibrate, chunked)
        return calibrate, "calibrated as asked"
    if thresholds == "paper":
        return None, "the paper's thresholds"
    if settings_given:
        return None, "the thresholds given"
    if not method.exposes_sums:
        able = " or ".join(name for name in available_methods() if get_method(name).exposes_sums)
        return None, f"not calibrated: only {able} attribution is, not {method.name}"
    if chunked:
        return None, ("not calibrated: a run in class chunks (an output directory or several processes) keeps one "
                      "chunk's sums at a time")
    return CALIBRATION_TOLERANCE, "calibrated by default"


def check_calibration(method: AttributionMethod, tolerance: float, chunked: bool) -> None:
    """Refuse a calibration that cannot run: a negative ``tolerance``, a method that exposes no sums,
    or a ``chunked`` run (calibration needs every class's sums at once).

    >>> check_calibration(get_method("gradient"), 1.0, chunked=False)
    Traceback (most recent call last):
    mdakit.errors.MdakitError: threshold calibration is only available for contribution attribution
    """
    if not 0 <= tolerance < math.inf:
        raise MdakitError(f"the calibration tolerance must be a non-negative finite number, got {tolerance}")
    if not method.exposes_sums:
        able = [name for name in available_methods() if get_method(name).exposes_sums]
        raise MdakitError(f"threshold calibration is only available for {' or '.join(able)} attribution")
    if chunked:
        raise MdakitError("threshold calibration keeps every class's sums at once; it cannot be combined with "
                          "class chunks, an output directory or several processes")


def calibrate_thresholds(run: AttributionRun, source: Workspace, sums: ClassSums, chosen: dict[int, torch.Tensor],
                         tolerance: float, per_class: int = 300, width_multiple: int = 1
                         ) -> tuple[ComponentMasks, dict[str, Any]]:
    """Relax all thresholds of ``run`` together (factors 1, 0.75, 0.5, ...) until the part's accuracy on
    held-out training images is within ``tolerance`` points of the original's restricted-logit
    accuracy on the same images; the first (smallest part) that does is kept, with what was tried.
    ``sums`` and ``chosen``: the run's per-class sums and selected samples (:meth:`AttributionRun.sums`);
    each part is cut with its widths rounded to ``width_multiple``, as the delivered part will be."""
    images, targets, kind = holdout_images(source, run.classes, chosen, per_class, run.seed)
    if len(images) == 0:
        raise MdakitError("no held-out training images are left to calibrate the thresholds on")
    row_list = [run.rows[c] for c in run.classes]
    reference = holdout_accuracy(source.model, images, targets, row_list, run.device)
    trials = []
    for factor in CALIBRATION_FACTORS:
        candidate = run.method.relaxed(run.settings, factor)
        masks = run.method.masks_from_sums(run.graph, sums, run.rows, candidate)
        part = rebuild(source.model, keep_sets(run.graph, masks.union(run.classes), row_list, width_multiple))
        accuracy = holdout_accuracy(part, images, targets, None, run.device)
        trials.append({"factor": factor, "holdout_accuracy": accuracy})
        if accuracy >= reference - tolerance / 100.0:
            break
    info = {"tolerance_points": tolerance, "holdout_images": len(images), "holdout": kind,
            "reference_accuracy": reference,
            "trials": trials, "chosen_factor": trials[-1]["factor"],
            "met": trials[-1]["holdout_accuracy"] >= reference - tolerance / 100.0}
    return masks, info


def calibrated_masks(run: AttributionRun, source: Workspace, tolerance: float, width_multiple: int = 1
                     ) -> tuple[ComponentMasks, dict]:
    """Every class's masks of ``run`` at calibrated thresholds (:func:`calibrate_thresholds`) and what
    the calibration found; its cost goes to ``run.cost["calibration"]``."""
    chosen, sums = run.sums()
    with measure() as step:
        masks, calibration = calibrate_thresholds(run, source, sums, chosen, tolerance,
                                                  width_multiple=width_multiple)
    add_cost(run.cost, "calibration", step)
    masks.info = samples_used(chosen)
    return masks, calibration
