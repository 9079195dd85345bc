"""mdakit: take trained CNN classifiers apart by class and put the parts together again.

>>> import mdakit
>>> model = mdakit.build_model("lenet5", (1, 28, 28), 10)
>>> model(mdakit.torch.zeros(1, 1, 28, 28)).shape
torch.Size([1, 10])
"""

import torch

__version__ = "0.1.0"

from mdakit.artifacts import ModelCard, load, load_with_card, save  # noqa: E402
from mdakit.data import load_dataset, parse_classes  # noqa: E402
from mdakit.edits import register_edit  # noqa: E402
from mdakit.errors import MdakitError  # noqa: E402
from mdakit.evaluate import evaluate  # noqa: E402
from mdakit.metrics import model_size  # noqa: E402
from mdakit.train import TrainConfig, train  # noqa: E402
from mdakit.zoo import build_model  # noqa: E402

# The built-in structural edits, imported when a model card first needs one (import mdakit stays light).
register_edit("keep_sets", "mdakit.surgery:replay_keep_sets")
register_edit("padded", "mdakit.padding:replay_padded")
register_edit("decoupled", "mdakit.decoupling.gates:DecoupledNet.from_edit")

__all__ = ["ModelCard", "MdakitError", "TrainConfig", "build_model", "evaluate", "load", "load_dataset",
           "load_with_card", "model_size", "parse_classes", "save", "torch", "train"]
