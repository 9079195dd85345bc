"""Image folders: a tree ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (or ``val`` for ``test``)."""

from __future__ import annotations

from pathlib import Path

import torch

from mdakit.data.datasets import ImageTensorDataset
from mdakit.data.registry import DatasetInfo
from mdakit.errors import MdakitError


def _split_dir(root: Path, split: str) -> Path:
    candidates = ["train"] if split == "train" else ["test", "val"]
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    raise MdakitError(f"image folder {root} has no {' or '.join(candidates)}/ subfolder "
                      f"(expected {root}/train/<class>/... and {root}/test/<class>/...)")


def load_imagefolder(split: str, path: Path) -> tuple[ImageTensorDataset, DatasetInfo]:
    """A split of the image folder at ``path``: RGB images at the size of the first training image,
    classes named by the training subfolders, normalisation measured on up to 1,000 training images.

    >>> load_imagefolder("train", Path("/nonexistent"))
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: image folder /nonexistent does not exist
    """
    import torchvision

    root = Path(path).expanduser()
    if not root.is_dir():
        raise MdakitError(f"image folder {root} does not exist")
    train_dir = _split_dir(root, "train")
    first = torchvision.datasets.ImageFolder(str(train_dir))
    if len(first) == 0:
        raise MdakitError(f"image folder {train_dir} holds no images")
    width, height = first.loader(first.samples[0][0]).size
    transform = torchvision.transforms.Compose([
        torchvision.transforms.Lambda(lambda im: im.convert("RGB")),
        torchvision.transforms.Resize((height, width)),
        torchvision.transforms.PILToTensor(),
    ])
    folder = torchvision.datasets.ImageFolder(str(_split_dir(root, split)), transform=transform)
    if split != "train" and folder.classes != first.classes:
        raise MdakitError(f"image folder {root}: test classes {folder.classes} differ from train classes "
                          f"{first.classes}")
    images = torch.stack([img for img, _ in folder]) if len(folder) else torch.zeros(
        0, 3, height, width, dtype=torch.uint8)
    ds = ImageTensorDataset(images, torch.tensor(folder.targets, dtype=torch.long))
    stats_images = images if split == "train" else torch.stack(
        [transform(first.loader(p)) for p, _ in first.samples[:1000]])
    sample = stats_images[:1000].float() / 255.0
    mean = tuple(float(v) for v in sample.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in sample.std(dim=(0, 2, 3)))
    info = DatasetInfo(f"imagefolder:{root}", (3, height, width), tuple(first.classes), mean, std)
    return ds, info
