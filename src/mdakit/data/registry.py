"""The dataset registry: names, what a model needs to know about each dataset, and its loader.

A dataset is a loader ``load(split, location) -> (dataset, DatasetInfo)`` registered under a name with
:func:`register_dataset`; ``location`` is the data folder (:func:`default_data_dir` unless one is
given), or, for a dataset registered with ``from_path=True`` and named ``NAME:PATH``, that path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

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


Loader = Callable[[str, Path], tuple[Dataset, DatasetInfo]]
Fetcher = Callable[[str, Path], None]  # (dataset name, data folder): place its files there or raise


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its loader and what is known about it without reading its files.

    ``info`` is None when only the files tell (and ``names_in_files`` when its class names are
    placeholders the files replace); ``from_path`` datasets are named ``NAME:PATH`` and read from the
    user's PATH; ``sources`` are the ways :func:`mdakit.data.fetch` can put its files into a data
    folder, by source name, tried in order.
    """

    name: str
    load: Loader
    info: DatasetInfo | None = None
    aliases: tuple[str, ...] = ()
    names_in_files: bool = False
    from_path: bool = False
    sources: Mapping[str, Fetcher] = field(default_factory=dict)


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, *, info: DatasetInfo | None = None, aliases: tuple[str, ...] = (),
                     names_in_files: bool = False, from_path: bool = False,
                     sources: Mapping[str, Fetcher] | None = None) -> Callable[[Loader], Loader]:
    """Decorator registering a loader as dataset ``name`` (see :class:`DatasetEntry` for the rest)."""

    def wrap(load: Loader) -> Loader:
        DATASETS[name] = DatasetEntry(name, load, info, tuple(aliases), names_in_files, from_path, dict(sources or {}))
        return load

    return wrap


class _Infos(Mapping):
    """The registered datasets' :class:`DatasetInfo`, by name (those known without reading files)."""

    def __getitem__(self, name: str) -> DatasetInfo:
        info = DATASETS[name].info
        if info is None:
            raise KeyError(name)
        return info

    def __iter__(self) -> Iterator[str]:
        return (name for name, entry in DATASETS.items() if entry.info is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


BUILTIN: Mapping[str, DatasetInfo] = _Infos()


def default_data_dir() -> Path:
    """``$MDAKIT_DATA`` if set, else ``~/.cache/mdakit/data``.

    >>> default_data_dir().name in ("data", os.environ.get("MDAKIT_DATA", "data").rstrip("/").split("/")[-1])
    True
    """
    env = os.environ.get("MDAKIT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mdakit" / "data"


def data_root(data_dir: str | Path | None) -> Path:
    """The data folder: ``data_dir`` if given, else :func:`default_data_dir`."""
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def _path_prefix(name: str) -> str | None:
    """The dataset of a ``NAME:PATH`` name, if ``NAME`` is registered as loaded from a path."""
    prefix, sep, _ = name.partition(":")
    return prefix if sep and prefix in DATASETS and DATASETS[prefix].from_path else None


def canonical_name(name: str) -> str:
    """Normalise a dataset name (aliases, case) or raise for an unknown one.

    >>> canonical_name("FMNIST")
    'fashion-mnist'
    """
    if _path_prefix(name) is not None:
        return name
    key = name.strip().lower()
    key = next((entry.name for entry in DATASETS.values() if key in entry.aliases), key)
    if key not in DATASETS or DATASETS[key].from_path:
        known = ", ".join(f"{n}:PATH" if entry.from_path else n for n, entry in DATASETS.items())
        raise MdakitError(f"unknown dataset {name!r}; known: {known}")
    return key


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
    prefix = _path_prefix(key)
    if prefix is not None:
        return DATASETS[prefix].load(split, Path(key.split(":", 1)[1]))
    return DATASETS[key].load(split, data_root(data_dir))


def registered_info(name: str) -> DatasetInfo | None:
    """What the registry knows of a dataset without reading any file (None for datasets only their files
    describe, such as image folders).

    >>> registered_info("cifar10").input_shape
    (3, 32, 32)
    """
    entry = DATASETS.get(canonical_name(name))
    return None if entry is None else entry.info


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """Shape, class names and normalisation of a dataset (reads the files only where needed).

    >>> dataset_info("mnist").num_classes
    10
    """
    key = canonical_name(name)
    entry = DATASETS.get(key)
    if entry is not None and entry.info is not None and not entry.names_in_files:
        return entry.info
    return load_dataset(key, "train", data_dir)[1]
