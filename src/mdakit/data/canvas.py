"""Detection datasets made offline: objects from MNIST and Fashion-MNIST pasted on larger canvases.

A :class:`CanvasDetection` item is ``(image, target)``: a ``1×S×S`` float image in [0, 1] holding one to
four objects at random scales and positions, and ``{"boxes": N×4 (x1, y1, x2, y2 in pixels), "labels": N}``
with each box the tight box of its object's pixels (the rows and columns above :data:`INK`) after scaling.
A canvas is a pure function of its index and the dataset's seed (no files are written; the source
images come from the cached MNIST and Fashion-MNIST files), so two runs see the same canvases.

The training split's source images are cut once, seeded, into a *fit* pool (90 %) and a *held-out* pool
(10 %): training canvases draw objects from the fit pool only, and :meth:`CanvasDetection.holdout` builds
canvases from the held-out pool for model selection and threshold calibration; test canvases draw from
the source datasets' test splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

INK = 0.25
"""A pixel brighter than this fraction of its object's brightest pixel belongs to the object's box."""
HOLDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class CanvasSpec:
    """How canvases are drawn: side length, objects per canvas, object side lengths (pixels, inclusive
    ranges) and the largest IoU a new object's box may have with one already placed."""

    size: int = 64
    objects: tuple[int, int] = (1, 4)
    scale: tuple[int, int] = (16, 32)
    max_iou: float = 0.1
    tries: int = 20


@dataclass(frozen=True)
class ObjectPool:
    """Source objects: uint8 images (M×h×w), their canvas labels, and the indices a dataset may draw from."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def of_classes(self, classes: Sequence[int]) -> ObjectPool:
        """The same pool restricted to objects of ``classes``."""
        keep = torch.isin(self.labels[self.indices], torch.tensor(list(classes), dtype=torch.long))
        return replace(self, indices=self.indices[keep])


def pool_from(sources: Sequence[tuple[torch.Tensor, torch.Tensor, int]]) -> ObjectPool:
    """One pool from several ``(images N×1×h×w uint8, labels, label offset)`` sources; every object drawable.

    >>> pool = pool_from([(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), 10)])
    >>> pool.labels.tolist(), pool.indices.tolist()
    ([10, 11], [0, 1])
    """
    images = torch.cat([imgs.reshape(len(imgs), *imgs.shape[-2:]) for imgs, _, _ in sources])
    labels = torch.cat([lbl.long() + offset for _, lbl, offset in sources])
    return ObjectPool(images, labels, torch.arange(len(labels)))


def split_pool(pool: ObjectPool, seed: int, fraction: float = HOLDOUT_FRACTION) -> tuple[ObjectPool, ObjectPool]:
    """The fit and held-out pools of a training pool (disjoint, seeded)."""
    order = pool.indices[torch.randperm(len(pool.indices), generator=torch.Generator().manual_seed(seed))]
    cut = int(round(len(order) * (1 - fraction)))
    return replace(pool, indices=order[:cut].sort().values), replace(pool, indices=order[cut:].sort().values)


def box_iou(box: np.ndarray, boxes: list[np.ndarray]) -> float:
    """Largest IoU of ``box`` with any of ``boxes`` (0 for none).

    >>> box_iou(np.array([0, 0, 2, 2]), [np.array([1, 0, 3, 2])])
    0.3333333333333333
    """
    best = 0.0
    for other in boxes:
        w = min(box[2], other[2]) - max(box[0], other[0])
        h = min(box[3], other[3]) - max(box[1], other[1])
        if w <= 0 or h <= 0:
            continue
        inter = w * h
        union = (box[2] - box[0]) * (box[3] - box[1]) + (other[2] - other[0]) * (other[3] - other[1]) - inter
        best = max(best, inter / union)
    return float(best)


def scaled_object(image: torch.Tensor, side: int) -> tuple[torch.Tensor, np.ndarray] | None:
    """``image`` (uint8 h×w) scaled to ``side``×``side`` in [0, 1], and its ink's tight box inside that
    square (x1, y1, x2, y2, exclusive ends); None when it has no ink."""
    scaled = F.interpolate(image[None, None].float() / 255.0, size=(side, side), mode="bilinear",
                           antialias=True, align_corners=False)[0, 0].clamp_(0, 1)
    peak = float(scaled.max())
    if peak <= 0:
        return None
    rows = torch.nonzero((scaled > INK * peak).any(1)).flatten()
    cols = torch.nonzero((scaled > INK * peak).any(0)).flatten()
    return scaled, np.array([int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1])


class CanvasDetection(Dataset):
    """``length`` canvases drawn from ``pool`` under ``spec``, canvas ``i`` a function of ``(seed, i)``.

    >>> pool = pool_from([(torch.full((3, 1, 28, 28), 255, dtype=torch.uint8), torch.tensor([0, 1, 2]), 0)])
    >>> ds = CanvasDetection(pool, length=5, seed=0)
    >>> image, target = ds[3]
    >>> image.shape, target["boxes"].shape[1], bool((ds[3][1]["boxes"] == target["boxes"]).all())
    (torch.Size([1, 64, 64]), 4, True)
    """

    def __init__(self, pool: ObjectPool, length: int, seed: int, spec: CanvasSpec = CanvasSpec(),
                 holdout_pool: ObjectPool | None = None):
        if len(pool.indices) == 0:
            raise ValueError("the object pool is empty")
        self.pool = pool
        self.length = length
        self.seed = seed
        self.spec = spec
        self.holdout_pool = holdout_pool

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        spec = self.spec
        canvas = torch.zeros(spec.size, spec.size)
        boxes: list[np.ndarray] = []
        labels: list[int] = []
        for _ in range(int(rng.integers(spec.objects[0], spec.objects[1] + 1))):
            obj = int(self.pool.indices[int(rng.integers(len(self.pool.indices)))])
            side = int(rng.integers(spec.scale[0], spec.scale[1] + 1))
            drawn = scaled_object(self.pool.images[obj], side)
            if drawn is None:
                continue
            scaled, ink = drawn
            for _ in range(spec.tries):
                x, y = (int(v) for v in rng.integers(0, spec.size - side + 1, size=2))
                box = ink + np.array([x, y, x, y])
                if box_iou(box, boxes) <= spec.max_iou:
                    canvas[y:y + side, x:x + side] = torch.maximum(canvas[y:y + side, x:x + side], scaled)
                    boxes.append(box)
                    labels.append(int(self.pool.labels[obj]))
                    break
        target = {"boxes": torch.tensor(np.array(boxes, dtype=np.float32).reshape(-1, 4)),
                  "labels": torch.tensor(labels, dtype=torch.long)}
        return canvas[None], target

    def of_classes(self, classes: Sequence[int], length: int, seed: int) -> CanvasDetection:
        """Canvases whose objects are all of ``classes``, drawn from the same pool (e.g. one class's
        canvases for attribution)."""
        return CanvasDetection(self.pool.of_classes(classes), length, seed, self.spec)

    def holdout(self, length: int, seed: int) -> CanvasDetection:
        """Canvases drawn from the training split's held-out pool (never in a training canvas)."""
        if self.holdout_pool is None:
            raise ValueError("this split has no held-out pool (only the training split has one)")
        return CanvasDetection(self.holdout_pool, length, seed, self.spec)


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]
                      ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack a batch's images; keep its targets as a list (their numbers of boxes differ)."""
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


def detection_loader(dataset: Dataset, batch_size: int, shuffle: bool = False,
                     generator: torch.Generator | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader of ``(images, targets)`` batches over a detection dataset."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                       collate_fn=collate_detection)


def is_detection(dataset: Dataset) -> bool:
    """Whether ``dataset`` yields ``(image, {"boxes", "labels"})`` pairs (a subset of one included)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return isinstance(dataset, CanvasDetection)
