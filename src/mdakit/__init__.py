"""mdakit: take trained classifiers apart by class and put the parts together again, without retraining.

The verbs work on any ``nn.Module`` and any map-style dataset of ``(image, label)`` pairs, or on
mdakit model directories and dataset names:

>>> import torch, mdakit
>>> model, data = mdakit.examples.toy_problem()          # a user-built module and a TensorDataset
>>> part = mdakit.disassemble(model, data, [0, 1])        # a smaller classifier for classes 0 and 1
>>> part.model(torch.rand(1, 1, 8, 8)).shape
torch.Size([1, 2])

``disassemble``, ``masks``, ``assemble``, ``compress``, ``decouple`` and ``export`` are in
:mod:`mdakit.api`; models, data and training in :mod:`mdakit.artifacts`, :mod:`mdakit.data`,
:mod:`mdakit.zoo` and :mod:`mdakit.train`.

``import mdakit`` imports no torch: each public name is imported from its module when first used
(PEP 562), so the command line answers ``--help`` and user errors without loading torch.
"""

import importlib
import sys
import types
from typing import Any

from mdakit.edits import register_edit

__version__ = "0.1.0"

_PUBLIC: dict[str, str] = {
    "MdakitError": "mdakit.errors:MdakitError",
    "ModelCard": "mdakit.artifacts:ModelCard",
    "TrainConfig": "mdakit.train:TrainConfig",
    "Workspace": "mdakit.workspace:Workspace",
    "assemble": "mdakit.api:assemble",
    "build_model": "mdakit.zoo:build_model",
    "compress": "mdakit.api:compress",
    "decouple": "mdakit.api:decouple",
    "disassemble": "mdakit.api:disassemble",
    "evaluate": "mdakit.evaluate:evaluate",
    "examples": "mdakit.examples",
    "export": "mdakit.api:export",
    "load": "mdakit.api:load",
    "load_dataset": "mdakit.data:load_dataset",
    "load_with_card": "mdakit.artifacts:load_with_card",
    "masks": "mdakit.api:masks",
    "model_size": "mdakit.metrics:model_size",
    "parse_classes": "mdakit.data:parse_classes",
    "save": "mdakit.artifacts:save",
    "torch": "torch",
    "train": "mdakit.train:train",
}
"""Every public name and where it is defined: ``"module:attr"``, or a module."""

__all__ = sorted(_PUBLIC)

# The built-in structural edits, imported when a model card first needs one (import mdakit stays light).
register_edit("graph", "mdakit.graph.recorded:replay_graph")
register_edit("attention", "mdakit.attention:replay_attention")
register_edit("keep_sets", "mdakit.surgery:replay_keep_sets")
register_edit("padded", "mdakit.padding:replay_padded")
register_edit("decoupled", "mdakit.decoupling.gates:DecoupledNet.from_edit")


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use and kept.

    >>> __getattr__("parse_classes").__module__
    'mdakit.data.classes'
    """
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, _, attr = _PUBLIC[name].partition(":")
    value = importlib.import_module(module_name)
    if attr:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


class _Package(types.ModuleType):
    """The package keeps a public function over its same-named submodule: importing :mod:`mdakit.train`
    or :mod:`mdakit.evaluate` would otherwise set ``mdakit.train`` to the module (the import system
    sets each submodule on its package), where ``mdakit.train`` is the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _PUBLIC.get(name) == f"{value.__name__}:{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
