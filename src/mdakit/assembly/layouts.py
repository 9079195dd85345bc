"""Layouts: how parts are joined into one classifier, and what they must share for it.

A layout is a check (refusing parts it cannot join, with a message that says why) and a builder that
turns the parts side by side, already rescaled, into the assembled network:

- ``parallel``: every part runs on the shared raw input and their logits are concatenated; any
  modules with the same input shape join, zoo architectures or not;
- ``padded``: one network of the parts' architecture whose layers hold every part's filters side by
  side (:mod:`mdakit.padding`), with the rescaling folded into its last layer; it merges layer by
  layer, so the parts need the same zoo architecture and constructor arguments.

Every layout also refuses a class of one dataset in two parts. Add a layout with
:func:`register_layout` on its builder. Files (:mod:`mdakit.assembly.files`) store every assembly as
its parts and rescaling, and a padded one also as its merged network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from mdakit.artifacts import ModelCard
from mdakit.assembly.card import class_name
from mdakit.assembly.models import AssembledModel, PaddedAssembly, fold_rescaling
from mdakit.errors import MdakitError
from mdakit.padding import merge_padded

Check = Callable[[Sequence[ModelCard]], None]
Builder = Callable[[AssembledModel, Sequence[int]], nn.Module]


@dataclass(frozen=True)
class Layout:
    """A way to join parts: ``check(cards)`` refuses parts it cannot join; ``build(model, input_shape)``
    turns the rescaled parts side by side into the assembled network."""

    check: Check
    build: Builder


LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str, check: Check) -> Callable[[Builder], Builder]:
    """Decorator registering a layout's builder under ``name``, with the check its parts must pass."""

    def wrap(build: Builder) -> Builder:
        LAYOUTS[name] = Layout(check, build)
        return build

    return wrap


def _arch_label(card: ModelCard) -> str:
    if card.arch is None:
        return f"a user-built {card.edits[0].get('class_name', 'module')}"
    return f"{card.arch} {card.arch_kwargs}" if card.arch_kwargs else str(card.arch)


def same_input_shape(cards: Sequence[ModelCard]) -> None:
    """Refuse parts whose input shapes differ (every layout feeds all parts one input).

    >>> a = ModelCard(None, [1, 28, 28], 10)
    >>> same_input_shape([a, ModelCard(None, [3, 32, 32], 10)])
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: parts have different input shapes: [1, 28, 28] (part 0) vs [3, 32, 32] (part 1)
    """
    first = list(cards[0].input_shape)
    for p, card in enumerate(cards):
        if list(card.input_shape) != first:
            raise MdakitError(f"parts have different input shapes: {first} (part 0) vs {list(card.input_shape)} "
                              f"(part {p})")


def _recorded(card: ModelCard) -> Mapping | None:
    """The recorded structure of a user-built module's card (its first edit), None for a zoo architecture."""
    return card.edits[0] if card.arch is None else None


def same_architecture(cards: Sequence[ModelCard]) -> None:
    """Refuse parts that are not of one zoo architecture with the same constructor arguments.

    >>> lenet, vgg = ModelCard("lenet5", [1, 28, 28], 10), ModelCard("vgg16", [1, 28, 28], 10)
    >>> same_architecture([lenet, lenet])
    >>> same_architecture([lenet, vgg])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: parts have different architectures: lenet5 (part 0) vs vgg16 (part 1); ...
    """
    first = cards[0]
    for p, card in enumerate(cards):
        if not card.rebuildable:
            raise MdakitError(f"part {p} is of a user-built module its card could not record; the padded layout "
                              "merges parts of one architecture layer by layer: use the parallel layout")
        if (card.arch, card.arch_kwargs, _recorded(card)) != (first.arch, first.arch_kwargs, _recorded(first)):
            raise MdakitError(f"parts have different architectures: {_arch_label(first)} (part 0) "
                              f"vs {_arch_label(card)} (part {p}); the padded layout merges parts of one "
                              "architecture layer by layer (the parallel layout joins any)")


def one_part_per_class(cards: Sequence[ModelCard]) -> None:
    """Refuse a class of one dataset in two parts (parts naming no dataset are not compared)."""
    seen: dict[tuple[str, int], int] = {}
    for p, card in enumerate(cards):
        for c in card.logit_classes:
            key = (card.dataset, int(c))
            if card.dataset is not None and key in seen:
                raise MdakitError(f"class {c} ({class_name(card, c)}) of {card.dataset} is in part {seen[key]} and "
                                  f"part {p}: each class may appear in one part only")
            seen[key] = p


def check_compatible(cards: Sequence[ModelCard], layout: str = "parallel") -> None:
    """Refuse parts that ``layout`` cannot join: different input shapes, what the layout needs besides
    (see :data:`LAYOUTS`), or a class of one dataset in two parts.

    >>> a = ModelCard("lenet5", [1, 28, 28], 10, dataset="mnist")
    >>> b = ModelCard("lenet5", [3, 32, 32], 10, dataset="cifar10")
    >>> check_compatible([a, b])
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: parts have different input shapes: [1, 28, 28] (part 0) vs [3, 32, 32] (part 1)
    >>> check_compatible([a, ModelCard(None, [1, 28, 28], 10, dataset="fashion-mnist")], "parallel")
    """
    if layout not in LAYOUTS:
        raise MdakitError(f"unknown layout {layout!r}; available: {', '.join(LAYOUTS)}")
    same_input_shape(cards)
    LAYOUTS[layout].check(cards)
    one_part_per_class(cards)


def _no_further_check(cards: Sequence[ModelCard]) -> None:
    """The parallel layout needs nothing besides one input shape."""


@register_layout("parallel", check=_no_further_check)
def parallel(model: AssembledModel, input_shape: Sequence[int]) -> AssembledModel:
    """The parts side by side, as they are."""
    return model


@register_layout("padded", check=same_architecture)
def padded(model: AssembledModel, input_shape: Sequence[int]) -> PaddedAssembly:
    """One merged network of the parts' architecture, with the rescaling folded into its last layer."""
    device = model.scale.device
    modules = list(model.parts)
    merged = merge_padded([m.cpu() for m in modules], input_shape)
    fold_rescaling(merged, input_shape, model.scale.cpu(), model.shift.cpu())
    return PaddedAssembly(merged.to(device), modules, model.sizes)
