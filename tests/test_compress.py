"""Compression (union of all classes, every logit kept) and the FPGM baseline through Torch-Pruning, whose
pruned models must equal our masked original (docs/methods.md#compression) before any benchmark uses them."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from mdakit.artifacts import load_with_card
from mdakit.cli import run
from mdakit.compression import _prune_once, compress, fpgm_prune
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.surgery import MaskedModel, rebuild
from mdakit.zoo import build_model
from nets import ConcatPoolNet, ResidualNet, randomize_batchnorm

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def images(mnist_test):
    test, _ = mnist_test
    return torch.stack([test[i][0] for i in range(0, 800, 100)])


def test_compress_keeps_every_logit_and_equals_the_masked_original(tiny_lenet_dir, mnist_test, images, tmp_path):
    test, _ = mnist_test
    small = compress(tiny_lenet_dir, "mnist", samples=10, test_data=Subset(test, range(500)))
    r = small.report
    assert small.card.logit_classes == list(range(10)) and small.model(images).shape == (8, 10)
    assert 0 < r["macs_ratio"] <= 1 and 0 < r["params_ratio"] < 1
    assert r["compressed_size"]["params"] < r["original_size"]["params"]
    assert abs(r["accuracy"] - r["original_accuracy"]) < 0.05
    original, _ = load_with_card(tiny_lenet_dir)
    reference = MaskedModel(trace(original, SHAPE), small.keep).eval()
    with torch.no_grad():
        assert (small.model(images) - reference(images)).abs().max() <= 1e-4
    loaded, card = load_with_card(small.save(tmp_path / "small"))
    with torch.no_grad():
        assert (loaded(images) - small.model(images)).abs().max() <= 1e-6
    assert card.provenance["compressed_from"] == str(tiny_lenet_dir)


def test_cli_compress(tiny_lenet_dir, tmp_path, capsys):
    out = tmp_path / "small"
    assert run(["compress", str(tiny_lenet_dir), "--dataset", "mnist", "--out", str(out), "--samples", "5",
                "--method", "gradient", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "gradient" and report["macs_ratio"] <= 1 and out.is_dir()
    assert run(["compress", str(tiny_lenet_dir), "--out", str(out)]) == 2
    bad = tmp_path / "bad"
    assert run(["compress", str(tiny_lenet_dir), "--out", str(bad), "--method", "magic"]) == 2
    assert "unknown method" in capsys.readouterr().err and not bad.exists()


# --------------------------------------------------------------------------- Torch-Pruning equivalence

def _check_pruned(model, shape, images, ratio):
    pytest.importorskip("torch_pruning")
    model = randomize_batchnorm(model).eval()
    graph = trace(model, shape)
    pruned = _prune_once(model, graph, shape, ratio)
    with torch.no_grad():
        got = pruned.model(images)
        assert (got - MaskedModel(graph, pruned.keep).eval()(images)).abs().max() <= 1e-4
        assert (got - rebuild(model, pruned.keep).eval()(images)).abs().max() <= 1e-4
    assert pruned.macs_ratio < 1
    return pruned


class BranchNet(nn.Module):
    """A stem, two branches concatenated, adaptive-pooled to ``pool``×``pool``, flattened into a Linear."""

    def __init__(self, pool: int):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.a, self.b = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 8, 1)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(pool), nn.Linear(14 * pool * pool, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.fc(torch.flatten(self.pool(y), 1))


def test_concat_pool_flatten_linear_offsets(images):
    torch.manual_seed(0)
    pruned = _check_pruned(BranchNet(1), SHAPE, images, 0.5)
    a, b = pruned.keep.layers["a"]["out"], pruned.keep.layers["b"]["out"]
    assert len(a) == 3 and len(b) == 4 and pruned.keep.layers["fc"]["in"] == a + [6 + c for c in b]


@pytest.mark.parametrize("net", [BranchNet(2), ConcatPoolNet()], ids=["stem", "input"])
def test_concat_pool_2x2_flatten_linear_is_never_silently_wrong(net, images):
    """Torch-Pruning 1.6.1 mis-maps the flattened features of a concat pooled to 2×2 (it indexes past a
    branch's filters; docs/methods.md#compression). Its result must pass the masked-original check or be
    refused, never used."""
    torch.manual_seed(0)
    try:
        pruned = _check_pruned(net, SHAPE, images, 0.5)
    except MdakitError as exc:
        assert "Torch-Pruning" in str(exc)
        return
    a, b = pruned.keep.layers["a"]["out"], pruned.keep.layers["b"]["out"]
    width = net.a.out_channels
    assert pruned.keep.layers["fc"]["in"] == [4 * c + i for c in a + [width + c for c in b] for i in range(4)]


@pytest.mark.parametrize("make", [ResidualNet, lambda: build_model("lenet5", SHAPE, 10),
                                  lambda: build_model("vgg16", SHAPE, 10, width=0.25)],
                         ids=["residual", "lenet5", "vgg16-narrow"])
def test_torch_pruning_equals_masked_original(make, images):
    torch.manual_seed(0)
    _check_pruned(make(), SHAPE, images, 0.3)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg16", "resnet50", "googlenet"])
def test_torch_pruning_equals_masked_original_on_zoo(arch, images):
    torch.manual_seed(0)
    _check_pruned(build_model(arch, SHAPE, 10), SHAPE, images, 0.3)


def test_fpgm_meets_the_macs_ratio():
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = build_model("lenet5", SHAPE, 10).eval()
    pruned = fpgm_prune(model, SHAPE, 0.7, steps=5)
    assert 0.4 < pruned.macs_ratio <= 0.7
