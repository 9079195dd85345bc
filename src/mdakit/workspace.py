"""A model and its data, in one place: its card, its training and test splits, what its logits mean.

Every feature that works on "a trained model" starts here: :meth:`Workspace.open` takes a model
directory or a plain ``nn.Module``, and a dataset name, a map-style dataset or a DataLoader of
``(image, label)`` pairs; it checks that the images fit the model and maps dataset classes to logit
rows (:meth:`Workspace.rows`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mdakit.artifacts import ModelCard, load_with_card
from mdakit.data import DatasetInfo, load_dataset, parse_classes, registered_info
from mdakit.errors import MdakitError

DataSpec = Dataset | DataLoader | str


def as_dataset(data: DataSpec, split: str, data_dir: str | Path | None = None) -> Dataset:
    """A dataset name's ``split``, a DataLoader's dataset, or a dataset as it is.

    >>> from torch.utils.data import TensorDataset
    >>> ds = TensorDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]))
    >>> as_dataset(DataLoader(ds), "train") is ds
    True
    """
    if isinstance(data, str):
        return load_dataset(data, split, data_dir)[0]
    return data.dataset if isinstance(data, DataLoader) else data


def logit_rows(logit_classes: Sequence[int], classes: Sequence[int]) -> dict[int, int]:
    """The logit row of each of ``classes`` (dataset labels), for a model whose logits are ``logit_classes``.

    >>> logit_rows([3, 5, 7], [7, 3])
    {7: 2, 3: 0}
    """
    position = {c: i for i, c in enumerate(logit_classes)}
    missing = [c for c in classes if c not in position]
    if missing:
        raise MdakitError(f"the model has no logit for class {missing[0]} (its classes: {list(logit_classes)})")
    return {c: position[c] for c in classes}


def _card_for_module(module: nn.Module, shape: list[int]) -> ModelCard:
    """A card for a user-built module: its logit count read off one forward pass of a zero image, and its
    structure recorded so that its model files rebuild without it (:mod:`mdakit.graph.recorded`)."""
    param = next(module.parameters(), None)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            outputs = module(torch.zeros(1, *shape, device=param.device if param is not None else "cpu")).shape[1]
    except Exception as exc:  # a user's module can raise anything on the wrong input
        raise MdakitError(f"the model does not run on inputs of shape {shape}: {str(exc).splitlines()[0]}") from exc
    finally:
        module.train(was_training)
    return ModelCard(arch=None, input_shape=shape, num_classes=int(outputs), **_recorded(module, shape))


def _heads_reachable(module: nn.Module, card: ModelCard) -> tuple[nn.Module, ModelCard]:
    """``module`` with its ``nn.MultiheadAttention`` layers as equal, cuttable :class:`~mdakit.attention.SelfAttention`
    ones (a copy), and a card that records the conversion; both unchanged when there is none."""
    from mdakit.attention import EDIT_KIND, convert_attention

    converted, paths = convert_attention(module)
    if not paths:
        return module, card
    card = copy.deepcopy(card)
    card.edits = [*card.edits, {"kind": EDIT_KIND, "modules": paths}]
    return converted, card


def _recorded(module: nn.Module, shape: list[int]) -> dict:
    """The card fields recording a user-built module's structure, or saying why it could not be recorded."""
    from mdakit.graph.recorded import record_graph  # the graph layer, needed only for user-built modules

    try:
        return {"edits": [record_graph(module, shape)]}
    except MdakitError as exc:  # not recordable (or not traceable): files of it load with into= only
        return {"provenance": {"not_recorded": str(exc)}}


@dataclass
class Workspace:
    """A model with its card, its training data and (optionally) its test data.

    >>> from torch.utils.data import TensorDataset
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    >>> ws = Workspace.open(net, TensorDataset(torch.zeros(6, 1, 4, 4), torch.tensor([0, 1, 2] * 2)))
    >>> ws.card.input_shape, ws.card.num_classes, ws.rows([2, 0])
    ([1, 4, 4], 3, {2: 2, 0: 0})
    """

    model: nn.Module
    card: ModelCard
    train: Dataset
    test: Dataset | None
    label: str

    @classmethod
    def open(cls, model: nn.Module | str | Path, data: DataSpec | None = None, test_data: DataSpec | None = None,
             input_shape: Sequence[int] | None = None, data_dir: str | Path | None = None) -> Workspace:
        """Load a model directory or wrap a module, and find its training (and test) data.

        ``data`` defaults to the dataset the model's card names; a dataset name also gives the test
        split. A module without a card gets one from ``input_shape`` (default: the data's image shape).
        """
        if isinstance(model, str | Path):
            module, card = load_with_card(model)
            label = str(model)
        else:
            module, card, label = model, None, type(model).__name__
        if data is None:
            if card is None or card.dataset is None:
                raise MdakitError("no data given and the model names no dataset")
            data = card.dataset
        if card is not None and isinstance(data, str) and (known := registered_info(data)) is not None:
            check_shape(card, known)  # before asking for the files of a dataset that cannot fit
        train = as_dataset(data, "train", data_dir)
        if test_data is None and isinstance(data, str):
            test_data = data
        test = as_dataset(test_data, "test", data_dir) if test_data is not None else None
        if len(train) == 0:
            raise MdakitError("the training data holds no images")
        sample_shape = list(train[0][0].shape)
        if card is None:
            card = _card_for_module(module, list(input_shape) if input_shape is not None else sample_shape)
        if sample_shape != list(card.input_shape):
            raise MdakitError(f"the data's images are {sample_shape} but the model takes {list(card.input_shape)}")
        module, card = _heads_reachable(module, card)
        return cls(module, card, train, test, label)

    def classes(self, spec: str | Sequence[int | str]) -> list[int]:
        """Dataset labels of a class list (``"0-2"``, ``"Trouser,Bag"``, ``[0, 1]``) by the model's class names."""
        return parse_classes(spec, self.card.class_names)

    def rows(self, classes: Sequence[int]) -> dict[int, int]:
        """The logit row of each of ``classes`` (see :func:`logit_rows`)."""
        return logit_rows(self.card.logit_classes, classes)


def model_datasets(card: ModelCard, dataset: str | None = None, data_dir: str | Path | None = None
                   ) -> tuple[Dataset, Dataset, DatasetInfo]:
    """Train and test splits of ``dataset`` (default: the card's), checked against the model's input shape."""
    train_data, info = model_split(card, "train", dataset, data_dir)
    test_data, _ = model_split(card, "test", dataset, data_dir)
    return train_data, test_data, info


def model_split(card: ModelCard, split: str, dataset: str | None = None, data_dir: str | Path | None = None
                ) -> tuple[Dataset, DatasetInfo]:
    """One split of ``dataset`` (default: the card's), checked against the model (:func:`check_fits`)."""
    name = dataset or card.dataset
    if name is None:
        raise MdakitError("the model card names no dataset; name one")
    known = registered_info(name)
    if known is not None:  # refuse a dataset of the wrong shape before asking for its files
        check_shape(card, known)
    data, info = load_dataset(name, split, data_dir)
    check_fits(card, info)
    return data, info


def check_shape(card: ModelCard, info: DatasetInfo) -> None:
    """Refuse a dataset whose images do not fit the model's input."""
    if list(info.input_shape) != list(card.input_shape):
        raise MdakitError(f"{info.name} images are {list(info.input_shape)} but the model takes {card.input_shape}")


def check_fits(card: ModelCard, info: DatasetInfo) -> None:
    """Refuse a dataset whose images do not fit the model or that lacks one of its logits' classes."""
    check_shape(card, info)
    if card.logit_classes and max(card.logit_classes) >= info.num_classes:
        raise MdakitError(f"the model has logits for classes up to {max(card.logit_classes)} but {info.name} "
                          f"has {info.num_classes} classes")
