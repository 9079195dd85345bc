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
"""

import torch

__version__ = "0.1.0"

from mdakit import examples  # noqa: E402
from mdakit.api import assemble, compress, decouple, disassemble, export, load, masks  # noqa: E402
from mdakit.artifacts import ModelCard, load_with_card, save  # noqa: E402
from mdakit.data import load_dataset, parse_classes  # noqa: E402
from mdakit.edits import register_edit  # noqa: E402
from mdakit.errors import MdakitError  # noqa: E402
from mdakit.evaluate import evaluate  # noqa: E402
from mdakit.metrics import model_size  # noqa: E402
from mdakit.train import TrainConfig, train  # noqa: E402
from mdakit.workspace import Workspace  # noqa: E402
from mdakit.zoo import build_model  # noqa: E402

# The built-in structural edits, imported when a model card first needs one (import mdakit stays light).
register_edit("keep_sets", "mdakit.surgery:replay_keep_sets")
register_edit("padded", "mdakit.padding:replay_padded")
register_edit("decoupled", "mdakit.decoupling.gates:DecoupledNet.from_edit")

__all__ = ["MdakitError", "ModelCard", "TrainConfig", "Workspace", "assemble", "build_model", "compress",
           "decouple", "disassemble", "evaluate", "examples", "export", "load", "load_dataset", "load_with_card",
           "masks", "model_size", "parse_classes", "save", "torch", "train"]
