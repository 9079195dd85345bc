"""CIFAR-10 and CIFAR-100 from their official python-version batch files, unpickled safely."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mdakit.data.datasets import ImageTensorDataset
from mdakit.errors import MdakitError


@dataclass(frozen=True)
class CifarFiles:
    """Where a CIFAR variant keeps its batches and which keys hold its labels and class names."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: str
    meta_file: str
    names_key: str


CIFAR10_FILES = CifarFiles("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           "labels", "batches.meta", "label_names")
CIFAR100_FILES = CifarFiles("cifar-100-python", ("train",), ("test",), "fine_labels", "meta", "fine_label_names")


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR's python batches while refusing every global but NumPy's array rebuilders."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            raw = _CifarUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise MdakitError(f"{path} is not a readable CIFAR batch file: {exc}") from exc
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def load_cifar(files: CifarFiles, name: str, split: str, root: Path) -> tuple[ImageTensorDataset, tuple[str, ...]]:
    """A split of a CIFAR variant under ``root``, with the class names its meta file holds.

    >>> load_cifar(CIFAR10_FILES, "cifar10", "test", Path("/nonexistent"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: cifar10 is not in /nonexistent (missing /nonexistent/cifar-10-batches-py/test_batch); ...
    """
    folder = root / files.folder
    batches = files.train if split == "train" else files.test
    missing = [f for f in [*batches, files.meta_file] if not (folder / f).is_file()]
    if missing:
        raise MdakitError(
            f"{name} is not in {root} (missing {folder / missing[0]}); get it with: "
            f"mdakit data fetch {name} --data-dir {root}  (needs internet), or unpack the official "
            f"python-version archive so that {folder} holds its batch files"
        )
    images, labels = [], []
    for f in batches:
        batch = _read_cifar_batch(folder / f)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(int(v) for v in batch[files.label_key])
    names = tuple(str(n.decode() if isinstance(n, bytes) else n)
                  for n in _read_cifar_batch(folder / files.meta_file)[files.names_key])
    ds = ImageTensorDataset(torch.from_numpy(np.concatenate(images)), torch.tensor(labels))
    return ds, names
