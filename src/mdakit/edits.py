"""Structural edits: the registry that replays a model card's changes of architecture.

A card's ``edits`` are dicts with a ``kind`` (``keep_sets`` from disassembly, ``padded`` from a padded
assembly, ``decoupled`` from decoupling, ...). Loading a model file builds the card's architecture,
then replays every edit in order with the function registered for its kind,
``replay(module, edit) -> module`` (in place or a new module), before the weights are loaded.

Each feature registers its kind next to the code that makes it (``register_edit(kind, replay)``).
The model-file layer imports no feature: a kind may also be registered as a ``"module:attr"`` string,
imported the first time a card needs it, which is how :mod:`mdakit` registers the built-in kinds
without importing :mod:`mdakit.decoupling` and the others up front.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mdakit.errors import MdakitError

if TYPE_CHECKING:
    from torch import nn

Replay = Callable[["nn.Module", Mapping[str, Any]], "nn.Module"]
_REPLAYS: dict[str, Replay | str] = {}


def _name(replay: Replay | str) -> str:
    """``"module:attr"`` of a function (``attr`` may be dotted, e.g. a classmethod), or the lazy name itself."""
    if isinstance(replay, str):
        return replay
    return f"{getattr(replay, '__module__', '')}:{getattr(replay, '__qualname__', '')}"


def register_edit(kind: str, replay: Replay | str) -> None:
    """Replay edits of ``kind`` with ``replay``: a function, or ``"module:attr"`` imported on first use.

    A kind registered again must name the same function: a feature's module registers its function
    when the lazy entry for it is first used, and that function then replaces the entry.

    >>> register_edit("doctest_identity", lambda module, edit: module)
    >>> "doctest_identity" in edit_kinds()
    True
    """
    if isinstance(replay, str) and ":" not in replay:
        raise MdakitError(f"a lazily registered edit is 'module:attr', got {replay!r}")
    current = _REPLAYS.get(kind)
    if current is not None and _name(current) != _name(replay):
        raise MdakitError(f"structural edit {kind!r} is already registered ({_name(current)})")
    if current is None or not isinstance(replay, str):
        _REPLAYS[kind] = replay


def edit_kinds() -> list[str]:
    """The registered kinds of structural edit.

    >>> {"keep_sets", "padded", "decoupled"} <= set(edit_kinds())
    True
    """
    return sorted(_REPLAYS)


def replay_of(kind: str) -> Replay:
    """The function that replays edits of ``kind``, importing its module if it was registered lazily.

    >>> replay_of("decoupled").__qualname__
    'DecoupledNet.from_edit'
    """
    if not isinstance(kind, str):
        raise MdakitError(f"the card holds a structural edit without a 'kind' (got {kind!r})")
    entry = _REPLAYS.get(kind)
    if entry is None:
        raise MdakitError(f"this mdakit cannot rebuild models with structural edit {kind!r}")
    if isinstance(entry, str):
        module_name, attr = entry.split(":", 1)
        module = importlib.import_module(module_name)
        _REPLAYS[kind] = functools.reduce(getattr, attr.split("."), module)
    return _REPLAYS[kind]


def apply_edits(module: nn.Module | None, edits: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Replay structural edits, in order, on a freshly built module (weights are loaded afterwards).

    ``module`` is None for a user-built module's card, whose first edit builds the module it records.

    >>> from mdakit.zoo import build_model
    >>> head = {"net.classifier.5": {"in": list(range(84)), "out": [3, 7]}}
    >>> apply_edits(build_model("lenet5", (1, 28, 28), 10), [{"kind": "keep_sets", "layers": head}]).net.classifier[5]
    Linear(in_features=84, out_features=2, bias=True)
    """
    for edit in edits:
        replay = replay_of(edit.get("kind"))
        try:
            module = replay(module, edit)
        except (KeyError, AttributeError, IndexError, TypeError) as exc:
            raise MdakitError(f"the card's structural edits do not fit the architecture: {exc}") from exc
    return module
