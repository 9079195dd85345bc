"""A budget instead of thresholds: the most accurate part whose MACs, parameters or measured latency stay
within a ratio of the original's.

The thresholds are searched as calibration searches them (:mod:`mdakit.calibration`): every class's sums
are thresholded again at a grid of factors, from stricter than the paper's (smaller parts) to looser,
each part cut and scored on held-out training images (never test images). A part's cost only grows as
the thresholds loosen, so the walk stops at the first part over the budget; among those within it the
most accurate is kept (ties: the smaller). With a tolerance as well, the smallest part within the
budget that is also within the tolerance is kept (the tolerance bound: a smaller part already holds);
when none is, the most accurate within the budget (the budget bound) and the report says the tolerance
was missed.

>>> Budget.parse("macs=0.3")
Budget(kind='macs', ratio=0.3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mdakit.attribution.base import AttributionMethod, ClassSums, available_methods, get_method
from mdakit.attribution.run import AttributionRun, add_cost, samples_used
from mdakit.calibration import holdout_accuracy, holdout_images
from mdakit.component_masks import ComponentMasks
from mdakit.errors import MdakitError
from mdakit.latency import LatencySettings, compare_latency
from mdakit.metrics import count_macs, count_parameters
from mdakit.profiling import measure
from mdakit.surgery import keep_sets, rebuild
from mdakit.workspace import Workspace

BUDGET_KINDS = ("macs", "params", "latency")
BUDGET_FACTORS = (5.0, 3.5, 2.5, 2.0, 1.6, 1.3, 1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05)
"""Threshold factors tried, strictest first (thresholds are capped at 1, so 5 leaves only the strongest)."""
LATENCY_PROBE = LatencySettings(runtimes=("eager",), batches=(1,), threads=(1,), seconds=0.2, min_rounds=7)
"""How a candidate's latency is measured in the search: PyTorch eager, batch 1, one thread, interleaved with
the original."""


@dataclass(frozen=True)
class Budget:
    """The part's cost as a ratio of the original's: ``kind`` is macs, params or latency."""

    kind: str
    ratio: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise MdakitError(f"unknown budget {self.kind!r}; available: {', '.join(BUDGET_KINDS)}")
        if not (isinstance(self.ratio, int | float) and math.isfinite(self.ratio) and 0 < self.ratio <= 1):
            raise MdakitError(f"a budget is a ratio to the original in (0, 1], got {self.kind}={self.ratio}")

    @classmethod
    def parse(cls, text: str | Budget) -> Budget:
        """``"macs=0.3"``, ``"params=0.2"`` or ``"latency=0.4"``.

        >>> Budget.parse("speed=2")
        Traceback (most recent call last):
        ...
        mdakit.errors.MdakitError: unknown budget 'speed'; available: macs, params, latency
        """
        if isinstance(text, Budget):
            return text
        kind, sep, value = str(text).partition("=")
        try:
            ratio = float(value)
        except ValueError:
            ratio = math.nan
        if not sep or math.isnan(ratio):
            raise MdakitError(f"a budget reads KIND=RATIO, e.g. macs=0.3, got {text!r}")
        return cls(kind.strip(), ratio)

    def __str__(self) -> str:
        return f"{self.kind} ≤ {self.ratio:g}× the original"


def check_budget(method: AttributionMethod, chunked: bool) -> None:
    """Refuse a budget search that cannot run: a method without per-class sums or a run in class chunks.

    >>> from mdakit.attribution.base import get_method
    >>> check_budget(get_method("nad"), chunked=False)
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: a budget searches the thresholds of contribution attribution, not nad
    """
    if not method.exposes_sums:
        able = " or ".join(name for name in available_methods() if get_method(name).exposes_sums)
        raise MdakitError(f"a budget searches the thresholds of {able} attribution, not {method.name}")
    if chunked:
        raise MdakitError("a budget search keeps every class's sums at once; it cannot be combined with class "
                          "chunks, an output directory or several processes")


def cost_ratio(budget: Budget, part: nn.Module, original: nn.Module, input_shape: list[int],
               device: torch.device | str) -> float:
    """The part's cost over the original's, in the budget's measure."""
    if budget.kind == "macs":
        return count_macs(part, input_shape) / count_macs(original, input_shape)
    if budget.kind == "params":
        return count_parameters(part) / count_parameters(original)
    row = compare_latency(part, original, input_shape, LATENCY_PROBE, device)["rows"][0]
    return 1.0 / row["speedup"]


def _choose(fitting: list[dict[str, Any]], reference: float, tolerance: float | None) -> tuple[dict, str]:
    if tolerance is not None:
        holding = [t for t in fitting if t["holdout_accuracy"] >= reference - tolerance / 100.0]
        if holding:
            return holding[0], "tolerance"
    return max(fitting, key=lambda t: t["holdout_accuracy"]), "budget"


def search_budget(run: AttributionRun, source: Workspace, sums: ClassSums, chosen: dict[int, torch.Tensor],
                  budget: Budget, tolerance: float | None = None, width_multiple: int = 1,
                  per_class: int = 300) -> tuple[ComponentMasks, dict[str, Any]]:
    """Masks of the most accurate part within ``budget`` (module docstring), and the search: every trial's
    factor, cost ratio and held-out accuracy, the chosen factor, whether the budget (``met``) and the
    tolerance (``tolerance_met``) hold, and which one ``bound`` the choice."""
    images, targets, kind = holdout_images(source, run.classes, chosen, per_class, run.seed)
    if len(images) == 0:
        raise MdakitError("no held-out training images are left to search the thresholds on")
    rows = [run.rows[c] for c in run.classes]
    shape = list(source.card.input_shape)
    reference = holdout_accuracy(source.model, images, targets, rows, run.device)
    trials, masks_of = [], {}
    for factor in BUDGET_FACTORS:
        masks = run.method.masks_from_sums(run.graph, sums, run.rows, run.method.relaxed(run.settings, factor))
        part = rebuild(source.model, keep_sets(run.graph, masks.union(run.classes), rows, width_multiple))
        trial = {"factor": factor, "cost_ratio": cost_ratio(budget, part, source.model, shape, run.device)}
        if trial["cost_ratio"] > budget.ratio and trials:
            trials.append(trial)
            break
        trial["holdout_accuracy"] = holdout_accuracy(part, images, targets, None, run.device)
        trials.append(trial)
        masks_of[factor] = masks
        if trial["cost_ratio"] > budget.ratio:  # even the strictest thresholds leave the part over budget
            break
    fitting = [t for t in trials if "holdout_accuracy" in t and t["cost_ratio"] <= budget.ratio]
    best, bound = _choose(fitting, reference, tolerance) if fitting else (trials[0], "budget")
    info = {"budget": {"kind": budget.kind, "ratio": budget.ratio}, "met": bool(fitting),
            "chosen_factor": best["factor"], "cost_ratio": best["cost_ratio"],
            "holdout_accuracy": best["holdout_accuracy"], "reference_accuracy": reference,
            "tolerance_points": tolerance, "bound": bound,
            "tolerance_met": None if tolerance is None else best["holdout_accuracy"] >= reference - tolerance / 100,
            "holdout_images": len(images), "holdout": kind, "trials": trials}
    info["summary"] = budget_line(info)
    return masks_of[best["factor"]], info


def budgeted_masks(run: AttributionRun, source: Workspace, budget: Budget, tolerance: float | None = None,
                   width_multiple: int = 1) -> tuple[ComponentMasks, dict[str, Any]]:
    """Every class's masks of ``run`` searched to ``budget`` (:func:`search_budget`) and the search; its cost
    goes to ``run.cost["budget_search"]``."""
    chosen, sums = run.sums()
    with measure() as step:
        masks, info = search_budget(run, source, sums, chosen, budget, tolerance, width_multiple)
    add_cost(run.cost, "budget_search", step)
    masks.info = samples_used(chosen)
    return masks, info


def budget_line(info: dict[str, Any]) -> str:
    """One line on a budget search's outcome.

    >>> budget_line({"budget": {"kind": "macs", "ratio": 0.3}, "met": True, "cost_ratio": 0.28, "bound": "budget",
    ...              "chosen_factor": 0.75, "holdout_accuracy": 0.97, "reference_accuracy": 0.99,
    ...              "tolerance_points": None, "tolerance_met": None, "holdout_images": 600})
    'budget macs ≤ 0.3: 0.280 reached (thresholds × 0.75), 97.00% vs 99.00% of the original on 600 held-out images'
    """
    budget = Budget(**info["budget"])
    line = (f"budget {budget.kind} ≤ {budget.ratio:g}: {info['cost_ratio']:.3f} "
            f"{'reached' if info['met'] else 'NOT reached even at the strictest thresholds'} "
            f"(thresholds × {info['chosen_factor']:g}), {100 * info['holdout_accuracy']:.2f}% vs "
            f"{100 * info['reference_accuracy']:.2f}% of the original on {info['holdout_images']} held-out images")
    if info["tolerance_points"] is not None:
        line += (f"; the {info['tolerance_points']:g}-point tolerance bound (a smaller part holds)"
                 if info["bound"] == "tolerance" else
                 f"; the budget bound: the {info['tolerance_points']:g}-point tolerance is NOT met within it")
    return line
