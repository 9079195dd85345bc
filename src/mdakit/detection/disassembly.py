"""Disassembling a detector: the part of a dense detector that some classes rely on, with their boxes.

The detector's map is one convolution's output (:mod:`mdakit.detection.model`), so the classifier's
machinery applies once three things are said for detection:

- **Samples.** Class ``c``'s samples are training canvases whose objects are all of class ``c`` (drawn
  from the fit pool, seeded by ``(seed, c)``) on which the original finds every object
  (:func:`finds_all`): the detection counterpart of "correctly classified".
- **Rows.** The walk back starts from class ``c``'s row *and* the four box rows, so the box branch keeps
  what class ``c``'s boxes need; the part keeps the box rows and its classes' rows.
- **Calibration.** The thresholds are relaxed (as for classifiers) until the part's mAP@0.5 on canvases
  of held-out training objects, all classes present, is within ``tolerance`` points of the original's
  restricted to the part's classes (:data:`DETECTION_TOLERANCE` by default).

- **Sums.** Contributions are taken where the class's objects are, and a box row counts both signs
  (:mod:`mdakit.detection.attribution`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torchvision.ops import box_iou

from mdakit.attribution.contribution import ContributionMethod, ContributionSettings
from mdakit.calibration import CALIBRATION_FACTORS
from mdakit.data.canvas import CanvasDetection, collate_detection
from mdakit.detection.attribution import detector_sums
from mdakit.detection.boxes import detect
from mdakit.detection.evaluate import evaluate_detector
from mdakit.detection.model import BOX_CHANNELS
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph, trace
from mdakit.latency import compare_latency, latency_settings
from mdakit.metrics import model_size
from mdakit.profiling import measure
from mdakit.surgery import keep_sets, rebuild
from mdakit.workspace import Workspace

if TYPE_CHECKING:
    from mdakit.component_masks import ComponentMasks
    from mdakit.disassembly import Part
    from mdakit.latency import LatencySettings
    from mdakit.surgery import KeepSets

DETECTION_TOLERANCE = 1.0
"""Points of mAP@0.5 a part may lose against the original restricted to its classes, by default."""
FOUND_IOU, FOUND_SCORE = 0.5, 0.3
HOLDOUT_CANVASES = 500
CANDIDATES_PER_SAMPLE = 3


def finds_all(detections: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> bool:
    """Whether every object of ``target`` has a detection of its class with IoU ≥ 0.5 and score ≥ 0.3.

    >>> box = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    >>> finds_all({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([2])},
    ...           {"boxes": box, "labels": torch.tensor([2])})
    True
    """
    confident = detections["scores"] >= FOUND_SCORE
    boxes, labels = detections["boxes"][confident], detections["labels"][confident]
    if len(target["labels"]) == 0:
        return True
    if len(labels) == 0:
        return False
    iou = box_iou(target["boxes"], boxes)
    same = target["labels"][:, None] == labels[None, :]
    return bool(((iou >= FOUND_IOU) & same).any(1).all())


@torch.no_grad()
def select_canvases(model: nn.Module, train: CanvasDetection, classes: Sequence[int], logit_classes: Sequence[int],
                    samples: int, seed: int, device: torch.device | str
                    ) -> dict[int, tuple[CanvasDetection, torch.Tensor]]:
    """Per class, its candidate canvases and the first ``samples`` of them on which ``model`` finds every
    object (see the module's notes)."""
    model.eval().to(device)
    selected = {}
    for c in classes:
        candidates = train.of_classes([c], samples * CANDIDATES_PER_SAMPLE, seed=seed * 1_000_003 + c)
        hits: list[int] = []
        for start in range(0, len(candidates), 64):
            images, targets = collate_detection([candidates[i] for i in range(start, min(start + 64, len(candidates)))])
            detections = detect(model(images.to(device)).cpu(), images.shape[-1], logit_classes)
            hits += [start + i for i, (d, t) in enumerate(zip(detections, targets)) if finds_all(d, t)]
            if len(hits) >= samples:
                break
        if not hits:
            raise MdakitError(f"the detector finds no canvas of class {c}'s objects completely; it cannot be "
                              "attributed")
        selected[c] = (candidates, torch.tensor(hits[:samples], dtype=torch.long))
    return selected


def detector_rows(source: Workspace, classes: Sequence[int]) -> dict[int, list[int]]:
    """Each class's needed map rows: the four box rows and its own class row.

    The walk back from them keeps what the class's scores and its boxes need."""
    return {c: [*range(BOX_CHANNELS), BOX_CHANNELS + r] for c, r in source.rows(classes).items()}


def part_rows(rows: dict[int, list[int]], classes: Sequence[int]) -> list[int]:
    """The part's map rows in order: the box rows, then its classes' rows in the order given."""
    return [*range(BOX_CHANNELS), *(rows[c][-1] for c in classes)]


def _cut(source: Workspace, graph: ChannelGraph, masks: ComponentMasks, classes: list[int],
         rows: dict[int, list[int]], width_multiple: int) -> tuple[nn.Module, KeepSets]:
    keep = keep_sets(graph, masks.union(classes), part_rows(rows, classes), width_multiple)
    return rebuild(source.model, keep).eval(), keep


def calibrate_detector(source: Workspace, graph: ChannelGraph, sums: dict, classes: list[int],
                       rows: dict[int, list[int]], settings: ContributionSettings, tolerance: float, seed: int,
                       width_multiple: int, device: torch.device | str) -> tuple[ComponentMasks, dict[str, Any]]:
    """Relax the thresholds (factors 1, 0.75, 0.5, ...) until the part's mAP@0.5 on held-out canvases is within
    ``tolerance`` points of the original's restricted to ``classes``; the first part that is, with the trials."""
    method = ContributionMethod()
    holdout = source.train.holdout(HOLDOUT_CANVASES, seed=seed + 7)
    reference = evaluate_detector(source.model, holdout, source.card.logit_classes, classes, device=device)["map_50"]
    trials = []
    for factor in CALIBRATION_FACTORS:
        masks = method.masks_from_sums(graph, sums, rows, method.relaxed(settings, factor))
        part, _ = _cut(source, graph, masks, classes, rows, width_multiple)
        score = evaluate_detector(part, holdout, classes, device=device)["map_50"]
        trials.append({"factor": factor, "holdout_accuracy": score})
        if score >= reference - tolerance / 100.0:
            break
    return masks, {"tolerance_points": tolerance, "holdout_images": len(holdout),
                   "holdout": "canvases of the training split's held-out objects", "metric": "map_50",
                   "reference_accuracy": reference, "trials": trials, "chosen_factor": trials[-1]["factor"],
                   "met": trials[-1]["holdout_accuracy"] >= reference - tolerance / 100.0}


def detection_accuracies(source: Workspace, part: nn.Module, classes: list[int], device: torch.device | str
                         ) -> dict[str, Any]:
    """mAP of the part and of the original restricted to ``classes`` on the test canvases."""
    if source.test is None:
        return {}
    part_map = evaluate_detector(part, source.test, classes, device=device)
    original = evaluate_detector(source.model, source.test, source.card.logit_classes, classes, device=device)
    return {"part_map_50": part_map["map_50"], "part_map": part_map["map"],
            "original_restricted_map_50": original["map_50"], "original_restricted_map": original["map"],
            "test_images": part_map["images"], "test_objects": part_map["objects"]}


def disassemble_detector(source: Workspace, classes: list[int], method: str = "contribution", *, samples: int = 50,
                         settings: ContributionSettings | None = None, thresholds: str = "calibrated",
                         thresholds_given: bool | None = None, calibrate: float | None = None, seed: int = 0,
                         device: torch.device | str = "cpu",
                         latency: bool | LatencySettings | None = None, width_multiple: int = 1) -> Part:
    """The part of a zoo detector that ``classes`` rely on (see the module's notes): a smaller detector whose
    map holds the four box channels and one channel per class of ``classes``, in that order.

    Thresholds: calibrated on held-out canvases within :data:`DETECTION_TOLERANCE` points of mAP@0.5 unless
    ``settings`` are given (``thresholds_given`` overrides whether they count as chosen) or
    ``thresholds="paper"``; ``calibrate``: another tolerance in points.

    >>> part = disassemble("runs/zoo/fcos-lite-det-mnist", "det-mnist", "0-2")  # doctest: +SKIP
    >>> part.report["part_map_50"], part.report["original_restricted_map_50"]  # doctest: +SKIP
    """
    from mdakit.disassembly import Part, threshold_summary

    if method != "contribution":
        raise MdakitError(f"detectors are disassembled by contribution attribution only, not {method}")
    if not isinstance(source.train, CanvasDetection):
        raise MdakitError("a detector is disassembled on a detection dataset (det-mnist, det-fashion-mnist, "
                          "det-mnist-fashion)")
    contribution = ContributionMethod()
    given = settings is not None if thresholds_given is None else thresholds_given
    settings = contribution.settings_for(settings, seed)
    tolerance = calibrate if calibrate is not None else (
        None if thresholds == "paper" or given else DETECTION_TOLERANCE)
    rows = detector_rows(source, classes)
    cost: dict[str, Any] = {}
    with measure() as step:
        graph = trace(source.model, source.card.input_shape)
    cost["trace"] = step.to_dict()
    with measure() as step:
        canvases = select_canvases(source.model, source.train, classes, source.card.logit_classes, samples, seed,
                                   device)
    cost["sample_selection"] = step.to_dict()
    with measure() as step:
        sums = detector_sums(graph, canvases, settings, device)
    cost["attribution"] = step.to_dict()
    calibration = None
    with measure() as step:
        if tolerance is None:
            masks = contribution.masks_from_sums(graph, sums, rows, settings)
        else:
            masks, calibration = calibrate_detector(source, graph, sums, classes, rows, settings, tolerance, seed,
                                                    width_multiple, device)
    cost["calibration" if calibration else "thresholds"] = step.to_dict()
    how = ("the paper's thresholds" if thresholds == "paper" and calibrate is None else
           "the thresholds given" if tolerance is None else "calibrated")
    masks.settings.update(samples=samples, seed=seed, thresholds=how, calibration=calibration)
    masks.info = {"source": source.label, "rows": rows, "input_shape": list(source.card.input_shape),
                  "samples_used": {c: len(chosen) for c, (_, chosen) in canvases.items()}}
    with measure() as step:
        part, keep = _cut(source, graph, masks, classes, rows, width_multiple)
    cost["extraction"] = step.to_dict()
    timing = latency_settings(latency)
    report: dict[str, Any] = {
        "classes": classes, "method": method, "task": "detection", "steps": cost,
        "original_size": model_size(source.model, source.card.input_shape),
        "part_size": model_size(part, source.card.input_shape),
        **detection_accuracies(source, part, classes, device), **threshold_summary(masks.settings),
        **({"latency": compare_latency(part, source.model, source.card.input_shape, timing, device)}
           if timing is not None else {})}
    card = copy.deepcopy(source.card)
    card.logit_classes = list(classes)
    card.edits = [*card.edits, keep.to_dict()]
    card.provenance = {**card.provenance, "disassembled_from": source.label, "method": method,
                       "settings": masks.settings, "width_multiple": width_multiple}
    card.metrics = {k: v for k, v in report.items() if k != "classes"}
    return Part(part, card, masks, keep, report)

