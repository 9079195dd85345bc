"""What assembly takes: parts (model directories, :class:`~mdakit.disassembly.Part` objects or
``(module, ModelCard)`` pairs) and, per part, the data to fit or evaluate on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from mdakit.artifacts import ModelCard, load_with_card, read_card
from mdakit.assembly.files import is_assembled
from mdakit.data import load_dataset
from mdakit.disassembly import Part
from mdakit.errors import MdakitError, UserBuiltModuleError

PartSpec = str | Path | Part | tuple[nn.Module, ModelCard]
DataSpec = Mapping[int, Dataset | str] | Sequence[Dataset | str | None] | None


def _load_part(path: str | Path, index: int) -> tuple[nn.Module, ModelCard]:
    if is_assembled(path):
        raise MdakitError(f"{path} is an assembled model; assemble its parts ({Path(path) / 'part-0'}, ...) instead")
    card = read_card(path)[0]
    if not card.rebuildable:
        raise UserBuiltModuleError(f"part {index} ({path})", "load it with load_with_card(path, into=<that "
                                   "module>) and pass the (module, card) pair",
                                   why=card.provenance.get("not_recorded"))
    return load_with_card(path)


def resolve_part(part: PartSpec, index: int) -> tuple[nn.Module, ModelCard, str | None]:
    """The module, card and source directory (None for a part given in memory) of one part.

    >>> module, card, source = resolve_part((nn.Linear(2, 3), ModelCard(None, [2], 3)), 0)
    >>> card.logit_classes, source
    ([0, 1, 2], None)
    """
    if isinstance(part, str | Path):
        return *_load_part(part, index), str(part)
    if isinstance(part, Part):
        return part.model, part.card, None
    if isinstance(part, tuple) and len(part) == 2 and isinstance(part[0], nn.Module) and isinstance(part[1], ModelCard):
        return part[0], part[1], None
    raise MdakitError(f"part {index}: expected a model directory, a Part or a (module, ModelCard) pair, "
                      f"got {type(part).__name__}")


def check_width(module: nn.Module, card: ModelCard, index: int) -> None:
    """Refuse a part whose module returns another number of logits than its card names classes.

    >>> check_width(nn.Linear(2, 3), ModelCard(None, [2], 10, logit_classes=[4, 5]), 1)
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: part 1 returns 3 logits but its card names 2 classes
    """
    param = next(module.parameters(), None)
    module.eval()
    with torch.no_grad():
        width = module(torch.zeros(1, *card.input_shape, device=param.device if param is not None else "cpu")).shape[1]
    if width != len(card.logit_classes):
        raise MdakitError(f"part {index} returns {width} logits but its card names {len(card.logit_classes)} classes")


def part_datasets(spec: DataSpec, cards: Sequence[ModelCard], split: str, data_dir: str | Path | None
                  ) -> list[Dataset]:
    """One dataset per part: given (a dataset or a name) or, by default, the split of the part's dataset.

    ``spec`` is a list or a mapping part index -> dataset or dataset name; a dataset name is loaded
    once however many parts use it.

    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]))
    >>> len(part_datasets({0: data}, [ModelCard(None, [1, 2, 2], 2)], "train", None))
    1
    """
    if isinstance(spec, Dataset):
        raise MdakitError("pass one dataset per part: a list, or a mapping part index -> dataset")
    given = dict(spec) if isinstance(spec, Mapping) else dict(enumerate(spec or []))
    loaded: dict[str, Dataset] = {}
    out = []
    for p, card in enumerate(cards):
        item = given.get(p)
        if item is None:
            if card.dataset is None:
                raise MdakitError(f"part {p} names no dataset: pass its {split} data")
            item = card.dataset
        if isinstance(item, str):
            if item not in loaded:
                loaded[item] = load_dataset(item, split, data_dir)[0]
            item = loaded[item]
        shape = list(item[0][0].shape)
        if shape != list(card.input_shape):
            raise MdakitError(f"part {p}'s {split} images are {shape} but it takes {list(card.input_shape)}")
        out.append(item)
    return out
