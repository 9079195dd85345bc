"""Datasets: where they live, how to fetch them, and class subsets.

Every dataset here yields ``(image, label)`` with images as float tensors in [0, 1] (C×H×W) and
integer labels; models carry their own normalisation (see :mod:`mdakit.zoo`).

Datasets are registered by name (:mod:`mdakit.data.registry`); the built-in ones
(:mod:`mdakit.data.builtin`) are ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` and
``imagefolder:PATH`` (a tree ``PATH/train/<class>/*`` and ``PATH/test/<class>/*``, or ``val``
instead of ``test``), and the detection canvases ``det-mnist``, ``det-fashion-mnist`` and
``det-mnist-fashion`` (:mod:`mdakit.data.canvas`). Add one with :func:`register_dataset` on its loader.

>>> sorted(BUILTIN)
['cifar10', 'cifar100', 'det-fashion-mnist', 'det-mnist', 'det-mnist-fashion', 'fashion-mnist', 'mnist']
"""

from mdakit.data import builtin  # noqa: F401  (registers the built-in datasets)
from mdakit.data.classes import parse_classes
from mdakit.data.datasets import (
    ClassSubset,
    ClassUnion,
    ImageTensorDataset,
    labels_of,
    make_loader,
    per_class_subset,
    stratified_split,
)
from mdakit.data.fetch import SOURCES, fetch
from mdakit.data.registry import (
    BUILTIN,
    DATASETS,
    SPLITS,
    DatasetEntry,
    DatasetInfo,
    canonical_name,
    data_root,
    dataset_info,
    default_data_dir,
    load_dataset,
    register_dataset,
    registered_info,
)

__all__ = ["BUILTIN", "DATASETS", "SOURCES", "SPLITS", "ClassSubset", "ClassUnion", "DatasetEntry", "DatasetInfo",
           "ImageTensorDataset", "canonical_name", "data_root", "dataset_info", "default_data_dir", "fetch",
           "labels_of", "load_dataset", "make_loader", "parse_classes", "per_class_subset", "register_dataset",
           "registered_info", "stratified_split"]
