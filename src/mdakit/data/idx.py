"""Datasets in the IDX format of MNIST, in torchvision's folder layout (``root/<Class>/raw``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mdakit.data.datasets import ImageTensorDataset
from mdakit.errors import MdakitError

if TYPE_CHECKING:
    import torchvision

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_idx(reader: type[torchvision.datasets.MNIST], name: str, split: str, root: Path) -> ImageTensorDataset:
    """A split of an IDX dataset read by torchvision's ``reader`` class (MNIST, FashionMNIST) from ``root``.

    >>> import torchvision
    >>> load_idx(torchvision.datasets.MNIST, "mnist", "test", Path("/nowhere"))
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: mnist is not in /nowhere; get it with: mdakit data fetch mnist --data-dir /nowhere
    """
    try:
        ds = reader(str(root), train=(split == "train"), download=False)
    except RuntimeError as exc:
        raise MdakitError(
            f"{name} is not in {root}; get it with: mdakit data fetch {name} --data-dir {root}"
        ) from exc
    return ImageTensorDataset(ds.data.unsqueeze(1).contiguous(), ds.targets)
