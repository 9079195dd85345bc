"""Accuracy, per-class accuracy and confusion matrices, with restricted logits (docs/methods.md#evaluation-protocol).

A model's logit ``i`` stands for the dataset label ``logit_classes[i]``. A full model has
``logit_classes = range(num_classes)``; a part cut for classes S has ``logit_classes = S``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mdakit.data import ClassSubset, make_loader
from mdakit.errors import MdakitError
from mdakit.progress import progress as progress_bar


@dataclass
class Evaluation:
    """Accuracy of a model on the test images of some classes."""

    accuracy: float
    num_samples: int
    classes: list[int]
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]
    restricted: bool

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def predict_logits(model: nn.Module, data: Dataset | DataLoader, device: torch.device | str = "cpu",
                   batch_size: int = 256, show_progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and labels of a dataset, in order.

    >>> from mdakit.data import ImageTensorDataset
    >>> ds = ImageTensorDataset(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0]))
    >>> logits, labels = predict_logits(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), ds)
    >>> logits.shape, labels.tolist()
    (torch.Size([3, 2]), [0, 1, 0])
    """
    model.eval()
    model.to(device)
    outs, labels = [], []
    for images, targets in progress_bar(make_loader(data, batch_size), "evaluate", enabled=show_progress):
        outs.append(model(images.to(device)).float().cpu())
        labels.append(torch.as_tensor(targets))
    if not outs:
        raise MdakitError("no images to evaluate on")
    return torch.cat(outs), torch.cat(labels).long()


def evaluate(model: nn.Module, data: Dataset, logit_classes: Sequence[int] | None = None,
             classes: Sequence[int] | None = None, restrict_logits: bool = False, device: torch.device | str = "cpu",
             show_progress: bool = False) -> Evaluation:
    """Evaluate on the images of ``classes`` (default: every class the model has a logit for).

    ``logit_classes`` names the class of each logit (a part's card holds them: ``card.logit_classes``);
    by default logit ``i`` is class ``i``. ``restrict_logits`` takes the argmax over the logits of
    ``classes`` only (the honest reference for a part cut for those classes); otherwise over all of the
    model's logits.

    >>> from mdakit.data import ImageTensorDataset
    >>> ds = ImageTensorDataset(torch.zeros(4, 1, 1, 1, dtype=torch.uint8), torch.tensor([0, 1, 2, 2]))
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(1, 3))
    >>> evaluate(model, ds, classes=[2], restrict_logits=True).accuracy
    1.0
    """
    if logit_classes is None:
        logit_classes = range(_logit_count(model, data, device))
    logit_classes = [int(c) for c in logit_classes]
    classes = list(logit_classes) if classes is None else [int(c) for c in classes]
    _check_classes(logit_classes, classes)
    subset = ClassSubset(data, classes, remap=False)
    if len(subset) == 0:
        raise MdakitError(f"the dataset has no images of classes {classes}")
    logits, labels = predict_logits(model, subset, device=device, show_progress=show_progress)
    return evaluate_logits(logits, labels, logit_classes, classes, restrict_logits)


def _logit_count(model: nn.Module, data: Dataset, device: torch.device | str) -> int:
    """How many logits ``model`` gives (one forward pass on the first image of ``data``)."""
    if len(data) == 0:
        raise MdakitError("the dataset is empty")
    with torch.no_grad():
        return int(model.eval().to(device)(data[0][0][None].float().to(device)).shape[-1])


def _check_classes(logit_classes: list[int], classes: list[int]) -> None:
    missing = [c for c in classes if c not in logit_classes]
    if missing:
        raise MdakitError(f"the model has no logit for class {missing[0]} (its classes: {logit_classes})")


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor, logit_classes: Sequence[int],
                    classes: Sequence[int], restrict_logits: bool = False) -> Evaluation:
    """:func:`evaluate` on logits already computed for the images of ``classes``.

    >>> evaluate_logits(torch.tensor([[0.0, 2.0], [3.0, 1.0]]), torch.tensor([1, 1]), [0, 1], [1]).accuracy
    0.5
    """
    logit_classes, classes = [int(c) for c in logit_classes], [int(c) for c in classes]
    _check_classes(logit_classes, classes)
    if logits.shape[1] != len(logit_classes):
        raise MdakitError(f"the model returns {logits.shape[1]} logits but {len(logit_classes)} classes were named")
    columns = [logit_classes.index(c) for c in classes] if restrict_logits else list(range(len(logit_classes)))
    column_classes = torch.tensor([logit_classes[i] for i in columns])
    predicted = column_classes[logits[:, columns].argmax(dim=1)]
    correct = predicted == labels
    per_class = {str(c): float(correct[labels == c].float().mean()) for c in classes}
    index = {c: i for i, c in enumerate(logit_classes)}
    confusion = torch.zeros(len(classes), len(logit_classes), dtype=torch.long)
    row = {c: i for i, c in enumerate(classes)}
    for t, p in zip(labels.tolist(), predicted.tolist()):
        confusion[row[t], index[p]] += 1
    return Evaluation(accuracy=float(correct.float().mean()), num_samples=len(labels), classes=classes,
                      per_class_accuracy=per_class, confusion=confusion.tolist(), restricted=restrict_logits)
