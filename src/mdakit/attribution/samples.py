"""Which training images stand for a class: the N it classifies correctly with the most confidence."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from mdakit.data import labels_of, make_loader
from mdakit.errors import MdakitError


@torch.no_grad()
def select_samples(model: nn.Module, dataset: Dataset, classes: Sequence[int], rows: Sequence[int],
                   n: int = 50, pool_factor: int = 2, seed: int = 0, device: torch.device | str = "cpu",
                   batch_size: int = 256, only: Collection[int] | None = None) -> dict[int, torch.Tensor]:
    """Per class, indices into ``dataset`` of the ``n`` correctly classified images with the highest
    softmax probability on their true label.

    Candidates come from a seeded random pool of ``pool_factor * n`` images per class, grown (by
    the same amount again) only while too few of them are classified correctly, so the cost does
    not grow with the dataset. ``rows[i]`` is the logit of ``classes[i]``. A class with no correctly
    classified image raises :class:`MdakitError`.

    ``only``: select just these classes; the others still advance the seeded generator (cheaply, with
    no forward pass), so a class gets the same samples whichever chunk or process selects it.

    >>> from mdakit.data import ImageTensorDataset
    >>> ds = ImageTensorDataset(torch.zeros(4, 1, 1, 2, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].bias.copy_(torch.tensor([1.0, 0.0]))
    >>> select_samples(model, ds, [0], [0], n=1)[0].tolist()
    [0]
    """
    if n < 1:
        raise MdakitError(f"the number of samples per class must be positive, got {n}")
    labels = labels_of(dataset)
    generator = torch.Generator().manual_seed(seed)
    model.eval().to(device)
    chosen: dict[int, torch.Tensor] = {}
    for cls, row in zip(classes, rows):
        members = torch.nonzero(labels == cls).flatten()
        if len(members) == 0:
            raise MdakitError(f"the dataset has no training images of class {cls}")
        members = members[torch.randperm(len(members), generator=generator)]
        if only is not None and cls not in only:
            continue
        step = max(n * pool_factor, n)
        scored_idx, scored_p = [], []
        start = 0
        while start < len(members):
            pool = members[start:start + step]
            start += step
            for images, _ in make_loader(Subset(dataset, pool.tolist()), batch_size):
                logits = model(images.to(device)).float().cpu()
                correct = logits.argmax(1) == row
                scored_p.append(torch.softmax(logits, 1)[:, row].masked_fill(~correct, -1.0))
            scored_idx.append(pool)
            if int((torch.cat(scored_p) >= 0).sum()) >= n:
                break
        idx, p = torch.cat(scored_idx), torch.cat(scored_p)
        if int((p >= 0).sum()) == 0:
            raise MdakitError(f"class {cls} has no correctly classified training image among {len(idx)} examined; "
                              "the model cannot be disassembled for it")
        order = torch.argsort(p, descending=True, stable=True)
        keep = order[: min(n, int((p >= 0).sum()))]
        chosen[cls] = idx[keep]
    return chosen
