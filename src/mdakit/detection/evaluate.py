"""Detection accuracy: mAP@0.5 and mAP@[.5:.95] (COCO's definitions, computed by torchmetrics with
pycocotools) for chosen classes, on a detector's own classes or restricted to a part's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mdakit.data.canvas import detection_loader
from mdakit.detection.boxes import PostProcess, detect
from mdakit.progress import progress as progress_bar


def only_classes(target: dict[str, torch.Tensor], classes: Sequence[int]) -> dict[str, torch.Tensor]:
    """``target``'s boxes of ``classes`` (every other object is not asked for)."""
    keep = torch.isin(target["labels"], torch.tensor(list(classes), dtype=torch.long, device=target["labels"].device))
    return {k: v[keep] for k, v in target.items()}


@torch.no_grad()
def predict_detections(model: nn.Module, dataset: Dataset, logit_classes: Sequence[int],
                       classes: Sequence[int] | None = None, post: PostProcess = PostProcess(), batch_size: int = 64,
                       device: torch.device | str = "cpu", show_progress: bool = False
                       ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Detections and ground truth of every image of ``dataset``, both for ``classes`` only (default: the
    model's ``logit_classes``): the model's other class channels are not read (restricted), the other
    classes' objects not counted."""
    classes = list(logit_classes) if classes is None else list(classes)
    rows = [list(logit_classes).index(c) for c in classes]
    model.eval().to(device)
    predictions, truths = [], []
    for images, targets in progress_bar(detection_loader(dataset, batch_size), "detection", enabled=show_progress):
        output = model(images.to(device)).cpu()
        predictions += detect(output, images.shape[-1], logit_classes, post, rows)
        truths += [only_classes(t, classes) for t in targets]
    return predictions, truths


def mean_average_precision(predictions: Sequence[dict[str, torch.Tensor]], truths: Sequence[dict[str, torch.Tensor]]
                           ) -> dict[str, Any]:
    """``{"map_50", "map", "images", "objects"}`` of the detections against the ground truth."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    metric.update(list(predictions), list(truths))
    result = metric.compute()
    return {"map_50": float(result["map_50"]), "map": float(result["map"]), "images": len(truths),
            "objects": int(sum(len(t["labels"]) for t in truths))}


def evaluate_detector(model: nn.Module, dataset: Dataset, logit_classes: Sequence[int],
                      classes: Sequence[int] | None = None, post: PostProcess = PostProcess(),
                      device: torch.device | str = "cpu", show_progress: bool = False) -> dict[str, Any]:
    """mAP of ``model`` on ``dataset`` for ``classes`` (default: all its own), reading only their channels.

    >>> from mdakit.data import load_dataset  # doctest: +SKIP
    >>> evaluate_detector(model, load_dataset("det-mnist", "test")[0], range(10))["map_50"]  # doctest: +SKIP
    """
    predictions, truths = predict_detections(model, dataset, logit_classes, classes, post, device=device,
                                             show_progress=show_progress)
    return mean_average_precision(predictions, truths)
