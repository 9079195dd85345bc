"""Datasets in memory and views of them: class subsets, class unions, splits, loaders and labels.

Every dataset here yields ``(image, label)`` with images as float tensors in [0, 1] (C×H×W) and
integer labels; models carry their own normalisation (see :mod:`mdakit.zoo`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mdakit.errors import MdakitError


class ImageTensorDataset(Dataset):
    """uint8 images (N×C×H×W) and labels held in memory, served as float [0, 1] tensors.

    >>> ds = ImageTensorDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))
    >>> ds[1][0].shape, ds[1][1]
    (torch.Size([1, 4, 4]), 1)
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape N×C×H×W")
        if len(images) != len(targets):
            raise ValueError("images and targets differ in length")
        self.images = images
        self.targets = targets.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255.0), int(self.targets[index])


def labels_of(dataset: Dataset | DataLoader) -> torch.Tensor:
    """Labels of a dataset as a LongTensor, read from ``.targets`` where present.

    >>> labels_of(ImageTensorDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([3, 1])))
    tensor([3, 1])
    """
    if isinstance(dataset, DataLoader):
        dataset = dataset.dataset
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.long)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


class ClassSubset(Dataset):
    """The samples of chosen classes, with labels remapped to 0..len(classes)-1 in the given order.

    >>> base = ImageTensorDataset(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([5, 2, 5]))
    >>> sub = ClassSubset(base, [5])
    >>> len(sub), sub[1][1], sub.targets.tolist()
    (2, 0, [0, 0])
    """

    def __init__(self, dataset: Dataset, classes: Sequence[int], remap: bool = True):
        labels = labels_of(dataset)
        self.dataset = dataset
        self.classes = list(classes)
        self.remap = remap
        keep = torch.isin(labels, torch.tensor(self.classes, dtype=torch.long))
        self.indices = torch.nonzero(keep).flatten()
        lut = torch.full((int(labels.max()) + 1 if len(labels) else 1,), -1, dtype=torch.long)
        for i, c in enumerate(self.classes):
            if c < len(lut):
                lut[c] = i if remap else c
        self.targets = lut[labels[self.indices]]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, _ = self.dataset[int(self.indices[index])]
        return image, int(self.targets[index])


class ClassUnion(Dataset):
    """Several datasets' chosen classes side by side, labels offset by the class counts before.

    The label layout of an assembled model: dataset i's ``classes[i][k]`` gets label
    ``sum(len(classes[j]) for j < i) + k``.

    >>> a = ImageTensorDataset(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2]))
    >>> union = ClassUnion([a, a], [[2], [0, 1]])
    >>> len(union), union.targets.tolist()
    (3, [0, 1, 2])
    """

    def __init__(self, datasets: Sequence[Dataset], classes: Sequence[Sequence[int]]):
        if len(datasets) != len(classes):
            raise MdakitError(f"{len(datasets)} datasets but {len(classes)} class lists")
        self.subsets = [ClassSubset(d, c, remap=True) for d, c in zip(datasets, classes, strict=True)]
        offsets = torch.tensor([0] + [len(c) for c in classes]).cumsum(0)[:-1].tolist()
        self.owner = torch.cat([torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(self.subsets)])
        self.local = torch.cat([torch.arange(len(s)) for s in self.subsets])
        self.targets = torch.cat([s.targets + o for s, o in zip(self.subsets, offsets, strict=True)])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, _ = self.subsets[int(self.owner[index])][int(self.local[index])]
        return image, int(self.targets[index])


def stratified_split(dataset: Dataset, val_fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    """Split into (train, validation) keeping each class's share; deterministic under ``seed``.

    >>> base = ImageTensorDataset(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.tensor([0] * 5 + [1] * 5))
    >>> tr, va = stratified_split(base, 0.2)
    >>> len(tr), len(va), sorted(labels_of(va).tolist())
    (8, 2, [0, 1])
    """
    if not 0.0 < val_fraction < 1.0:
        raise MdakitError(f"validation fraction must be in (0, 1), got {val_fraction}")
    labels = labels_of(dataset)
    generator = torch.Generator().manual_seed(seed)
    train_idx: list[torch.Tensor] = []
    val_idx: list[torch.Tensor] = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val = int(round(len(idx) * val_fraction))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    train = torch.sort(torch.cat(train_idx)).values.tolist()
    val = torch.sort(torch.cat(val_idx)).values.tolist()
    return Subset(dataset, train), Subset(dataset, val)


def per_class_subset(dataset: Dataset, per_class: int, seed: int = 0) -> Subset:
    """A seeded random subset with at most ``per_class`` samples of each class.

    >>> base = ImageTensorDataset(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 0, 1, 1, 1]))
    >>> len(per_class_subset(base, 2))
    4
    """
    labels = labels_of(dataset)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return Subset(dataset, torch.sort(torch.cat(chosen)).values.tolist())


def make_loader(data: Dataset | DataLoader, batch_size: int = 256, shuffle: bool = False,
                generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader over a dataset (a DataLoader given is returned unchanged).

    >>> make_loader(ImageTensorDataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4))).batch_size
    256
    """
    if isinstance(data, DataLoader):
        return data
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)
