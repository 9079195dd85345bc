"""Does disentanglement occur? Each class's sub-architecture on its own class's test images (NAD Fig. 2).

A class's sub-architecture (:mod:`mdakit.analysis.subarch`) is the original network with only that
class's channels kept — dropped channels are zeroed by hooks, not cut out — and **all logits kept**,
so its accuracy is the argmax over every logit, on the test images of its class only. Beside it, the
original model on the same images. Accuracies are binned into ten 10-point bins, [0, 10], (10, 20],
..., (90, 100], and the histogram counts classes per bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from mdakit.analysis.subarch import class_images, sub_architecture
from mdakit.component_masks import ComponentMasks
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph
from mdakit.progress import progress

BIN_LABELS = ["[0, 10]"] + [f"({lo}, {lo + 10}]" for lo in range(10, 100, 10)]


def accuracy_bin(accuracy: float) -> int:
    """The index (0-9) of the 10-point bin holding ``accuracy`` (a fraction): [0, 10] is bin 0,
    (10, 20] bin 1, ..., (90, 100] bin 9.

    >>> [accuracy_bin(a) for a in (0.0, 0.1, 0.1001, 0.95, 1.0)]
    [0, 0, 1, 9, 9]
    """
    if not 0.0 <= accuracy <= 1.0:
        raise MdakitError(f"an accuracy must lie in [0, 1], got {accuracy}")
    return max(0, math.ceil(round(accuracy * 100, 6) / 10) - 1)


def histogram(accuracies: Sequence[float]) -> list[int]:
    """How many accuracies fall into each of the ten bins of :func:`accuracy_bin`.

    >>> histogram([0.05, 0.97, 1.0])
    [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    """
    counts = [0] * 10
    for accuracy in accuracies:
        counts[accuracy_bin(accuracy)] += 1
    return counts


@dataclass
class AccuracyResult:
    """Per-class Top-1 accuracy of the original model and of each class's sub-architecture."""

    classes: list[int]
    original: dict[int, float]
    sub_architecture: dict[int, float]
    images: dict[int, int]

    def to_dict(self) -> dict:
        orig, sub = [self.original[c] for c in self.classes], [self.sub_architecture[c] for c in self.classes]
        return {"classes": self.classes, "bins": BIN_LABELS,
                "per_class": {str(c): {"original": self.original[c], "sub_architecture": self.sub_architecture[c],
                                       "images": self.images[c]} for c in self.classes},
                "original_histogram": histogram(orig), "sub_architecture_histogram": histogram(sub),
                "original_mean": sum(orig) / len(orig), "sub_architecture_mean": sum(sub) / len(sub),
                "share_at_least_original": sum(s >= o for s, o in zip(sub, orig)) / len(orig)}


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, row: int, device: torch.device | str,
              batch_size: int = 256) -> float:
    model.eval().to(device)
    predicted = torch.cat([model(images[i:i + batch_size].to(device)).argmax(1).cpu()
                           for i in range(0, len(images), batch_size)])
    return float((predicted == row).float().mean())


def sub_architecture_accuracy(graph: ChannelGraph, masks: ComponentMasks, test: Dataset,
                              logit_classes: Sequence[int], classes: Sequence[int] | None = None,
                              per_class: int | None = None, seed: int = 0, device: torch.device | str = "cpu",
                              show_progress: bool = False) -> AccuracyResult:
    """Accuracy of each class's sub-architecture and of the original on that class's test images.

    ``logit_classes[i]`` is the dataset label of logit ``i``; ``per_class`` caps the test images per
    class (a seeded random choice; default: all of them).

    >>> from mdakit.analysis.subarch import whole_network_masks
    >>> from mdakit.data import ImageTensorDataset
    >>> from mdakit.graph import trace
    >>> from mdakit.zoo import build_model
    >>> graph = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> test = ImageTensorDataset(torch.randint(0, 255, (8, 1, 28, 28), dtype=torch.uint8), torch.arange(8) % 2)
    >>> result = sub_architecture_accuracy(graph, whole_network_masks(graph, [0, 1]), test, range(10))
    >>> result.original == result.sub_architecture, result.images
    (True, {0: 4, 1: 4})
    """
    logit_classes = [int(c) for c in logit_classes]
    chosen = list(masks.classes if classes is None else classes)
    masks.subset(chosen)
    missing = [c for c in chosen if c not in logit_classes]
    if missing:
        raise MdakitError(f"the model has no logit for class {missing[0]}")
    original, sub, counts = {}, {}, {}
    for cls in progress(chosen, "sub-architecture accuracy", enabled=show_progress):
        images = class_images(test, cls, per_class, seed)
        row = logit_classes.index(cls)
        original[cls] = _accuracy(graph.model, images, row, device)
        sub[cls] = _accuracy(sub_architecture(graph, masks, cls), images, row, device)
        counts[cls] = len(images)
    return AccuracyResult(chosen, original, sub, counts)
