"""Why does a network misjudge? Similarity of the true and the mistaken class's sub-architectures
(NAD §4.3, Table 1 and Fig. 5).

For every test image the original model misclassifies as another analysed class, compare the
similarity (mean over layers of the Jaccard similarity, :func:`mdakit.analysis.similarity.similarity_matrix`)
of the true class's sub-architecture with the mistaken class's ("mistaken") and with each of the other
classes ("other": mean over the analysed classes except the true and the mistaken one). Means are over
mistaken images. ``difference = mistaken - other``; positive means mistakes go to classes whose
sub-architectures resemble the true class's. Mistakes into classes without masks are counted apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from mdakit.data import ClassSubset
from mdakit.errors import MdakitError
from mdakit.evaluate import predict_logits


def most_similar(similarity: torch.Tensor, classes: Sequence[int], names: Mapping[int, str] | None = None,
                 k: int = 3) -> dict[int, list[dict]]:
    """Per class, the ``k`` other classes with the most similar sub-architectures, most similar first.

    >>> s = torch.tensor([[1.0, 0.2, 0.9], [0.2, 1.0, 0.5], [0.9, 0.5, 1.0]])
    >>> [(e["class"], e["name"]) for e in most_similar(s, [0, 1, 2], {0: "zero", 1: "one", 2: "two"}, k=1)[0]]
    [(2, 'two')]
    """
    names = names or {}
    out = {}
    for i, cls in enumerate(classes):
        others = [j for j in range(len(classes)) if j != i]
        order = sorted(others, key=lambda j: (-float(similarity[i, j]), j))[:k]
        out[cls] = [{"class": classes[j], "name": names.get(classes[j], str(classes[j])),
                     "similarity": float(similarity[i, j])} for j in order]
    return out


@dataclass
class MisclassificationStats:
    """Table 1 of NAD for one model: mean similarity true–mistaken vs true–other classes."""

    mistaken: float | None
    other: float | None
    mistakes: int

    @property
    def difference(self) -> float | None:
        return None if self.mistaken is None or self.other is None else self.mistaken - self.other

    def to_dict(self) -> dict:
        return {"mistaken": self.mistaken, "other": self.other, "difference": self.difference,
                "mistakes": self.mistakes}


def misclassification_stats(similarity: torch.Tensor, confusion: torch.Tensor) -> MisclassificationStats:
    """Mean similarity of true and mistaken class, and of true and every other class, over the
    mistakes of a ``confusion`` matrix (rows true, columns predicted, both in the order of
    ``similarity``'s classes). ``other`` needs at least three classes.

    >>> s = torch.tensor([[1.0, 0.8, 0.2], [0.8, 1.0, 0.4], [0.2, 0.4, 1.0]])
    >>> confusion = torch.tensor([[5, 2, 0], [0, 5, 1], [0, 0, 5]])  # 0→1 twice, 1→2 once
    >>> stats = misclassification_stats(s, confusion)
    >>> round(stats.mistaken, 4), round(stats.other, 4), round(stats.difference, 4), stats.mistakes
    (0.6667, 0.4, 0.2667, 3)
    """
    n = len(similarity)
    if similarity.shape != (n, n) or confusion.shape != (n, n):
        raise MdakitError(f"similarity {list(similarity.shape)} and confusion {list(confusion.shape)} must be "
                          "square and of the same size")
    counts = confusion.double().clone()
    counts.fill_diagonal_(0)
    mistakes = int(counts.sum())
    if mistakes == 0:
        return MisclassificationStats(None, None, 0)
    s = similarity.double()
    mistaken = float((counts * s).sum() / mistakes)
    if n < 3:
        return MisclassificationStats(mistaken, None, mistakes)
    # mean over o ∉ {t, p} of s[t, o] = (Σ_{o≠t} s[t, o] − s[t, p]) / (n − 2)
    row_sums = s.sum(1) - s.diagonal()
    other_of_pair = (row_sums[:, None] - s) / (n - 2)
    return MisclassificationStats(mistaken, float((counts * other_of_pair).sum() / mistakes), mistakes)


@torch.no_grad()
def confusion_among(model: nn.Module, test: Dataset, classes: Sequence[int], logit_classes: Sequence[int],
                    device: torch.device | str = "cpu", show_progress: bool = False) -> tuple[torch.Tensor, int]:
    """The original model's confusion among ``classes`` on their test images (argmax over all logits;
    rows true, columns predicted, in ``classes`` order), and how many images it assigns to a class
    outside ``classes``.

    >>> from mdakit.data import ImageTensorDataset
    >>> ds = ImageTensorDataset(torch.zeros(3, 1, 1, 1, dtype=torch.uint8), torch.tensor([0, 1, 2]))
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(1, 3))
    >>> with torch.no_grad():
    ...     _ = model[1].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))  # always predicts class 1
    >>> confusion_among(model, ds, [0, 1], [0, 1, 2])
    (tensor([[0, 1],
            [0, 1]]), 0)
    """
    classes, logit_classes = [int(c) for c in classes], [int(c) for c in logit_classes]
    logits, labels = predict_logits(model, ClassSubset(test, classes, remap=False), device=device,
                                    show_progress=show_progress)
    predicted = torch.tensor(logit_classes)[logits.argmax(1)]
    index = {c: i for i, c in enumerate(classes)}
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    outside = 0
    for t, p in zip(labels.tolist(), predicted.tolist()):
        if p in index:
            confusion[index[t], index[p]] += 1
        else:
            outside += 1
    return confusion, outside


def misclassification_analysis(model: nn.Module, test: Dataset, similarity: torch.Tensor, classes: Sequence[int],
                               logit_classes: Sequence[int], names: Mapping[int, str] | None = None, k: int = 3,
                               device: torch.device | str = "cpu", show_progress: bool = False) -> dict:
    """Table 1 (mistaken vs other similarity, overall and per true class) and Fig. 5 (each class's
    ``k`` most similar classes) for ``model`` on the test images of ``classes``; ``similarity`` is
    :func:`~mdakit.analysis.similarity.similarity_matrix` of the same classes.

    >>> from mdakit.data import ImageTensorDataset
    >>> ds = ImageTensorDataset(torch.zeros(3, 1, 1, 1, dtype=torch.uint8), torch.tensor([0, 1, 2]))
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(1, 3))
    >>> with torch.no_grad():
    ...     _ = model[1].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))  # always predicts class 1
    >>> s = torch.tensor([[1.0, 0.8, 0.2], [0.8, 1.0, 0.4], [0.2, 0.4, 1.0]])
    >>> report = misclassification_analysis(model, ds, s, [0, 1, 2], [0, 1, 2])
    >>> round(report["overall"]["mistaken"], 4), round(report["overall"]["other"], 4)
    (0.6, 0.2)
    """
    classes = [int(c) for c in classes]
    if len(classes) < 2 or similarity.shape != (len(classes), len(classes)):
        raise MdakitError("the misclassification analysis needs a similarity matrix of at least two classes")
    confusion, outside = confusion_among(model, test, classes, logit_classes, device, show_progress)
    per_class = {}
    for i, cls in enumerate(classes):
        only = torch.zeros_like(confusion)
        only[i] = confusion[i]
        row = confusion[i].clone()
        row[i] = 0
        per_class[str(cls)] = {**misclassification_stats(similarity, only).to_dict(),
                               "most_confused_with": classes[int(row.argmax())] if row.sum() else None}
    return {"classes": classes, "overall": misclassification_stats(similarity, confusion).to_dict(),
            "per_class": per_class, "mistakes_outside_classes": outside, "confusion": confusion.tolist(),
            "similarity": similarity.tolist(), "most_similar": {str(c): v for c, v in
                                                                 most_similar(similarity, classes, names, k).items()}}
