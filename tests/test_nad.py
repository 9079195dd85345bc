"""NAD mask search: mask points from the graph, loss and update, determinism, extraction, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from mdakit.artifacts import load_with_card
from mdakit.attribution.nad import (
    NADSettings,
    architecture_family,
    class_masks,
    elbow,
    gate_layout,
    gated_model,
    mask_points,
    nad_loss,
    nad_masks,
    normalized_step,
)
from mdakit.cli import run
from mdakit.disassembly import compute_masks, disassemble
from mdakit.errors import MdakitError
from mdakit.graph import fx_trace, trace
from mdakit.surgery import keep_sets, kept_groups, rebuild
from mdakit.workspace import Workspace
from mdakit.zoo import build_model
from nets import ResidualNet, randomize_batchnorm

FAST = NADSettings(iterations=4, batch_size=8)


def _targets(model: nn.Module, shape: tuple[int, ...]) -> list[str]:
    """What each mask point is: the module it calls, or the function."""
    gm = torch.fx.GraphModule(model, fx_trace(model))
    nodes = {n.name: n for n in gm.graph.nodes}
    graph = trace(model, shape)
    out = []
    for name in mask_points(graph):
        node = nodes[name]
        out.append(type(gm.get_submodule(node.target)).__name__ if node.op == "call_module"
                   else getattr(node.target, "__name__", str(node.target)))
    return out


@pytest.mark.parametrize("arch, count, kinds", [
    ("lenet5", 2, {"ReLU"}),
    ("vgg16", 13, {"ReLU"}),
    ("resnet50", 17, {"ReLU"}),  # the stem and 16 bottleneck outputs (after the add)
    ("googlenet", 12, {"relu", "cat"}),  # 3 stem convs and 9 inception concats
])
def test_mask_points_on_zoo(arch, count, kinds):
    model = build_model(arch, (1, 28, 28), 10)
    targets = _targets(model, (1, 28, 28))
    assert len(targets) == count and set(targets) == kinds
    if arch == "googlenet":
        assert targets.count("cat") == 9


def test_linear_mask_points_are_hidden_fully_connected_blocks():
    graph = trace(build_model("vgg16", (1, 28, 28), 10), (1, 28, 28))
    convs, with_linear = mask_points(graph), mask_points(graph, linear=True)
    assert with_linear[:13] == convs and len(with_linear) == 15  # two hidden Linear+ReLU+Dropout blocks
    resnet = trace(build_model("resnet50", (1, 28, 28), 10), (1, 28, 28))
    assert mask_points(resnet, linear=True) == mask_points(resnet)  # its only Linear gives the logits


def test_linear_masks_cut_hidden_units_and_part_equals_gated_model(lenet, mnist_test):
    test, _ = mnist_test
    graph = trace(lenet.model, (1, 28, 28))
    chosen = {5: torch.nonzero(torch.as_tensor(lenet.train.targets) == 5).flatten()[:32]}
    masks = nad_masks(graph, lenet.train, chosen, {5: 5}, NADSettings(beta=1.0, linear=True))
    hidden = [m for layer, m in masks.per_class[5].items() if layer != graph.output_layer.name][-2:]
    assert masks.settings["linear"] and all(not bool(m.outputs.all()) for m in hidden)
    part = rebuild(lenet.model, keep_sets(graph, masks.per_class[5], list(range(10)))).eval()
    masked = gated_model(graph, kept_groups(graph, masks.per_class[5]), linear=True)
    images = torch.stack([test[i][0] for i in range(32)])
    with torch.no_grad():
        assert torch.allclose(part(images), masked(images), atol=1e-5)


def test_mask_points_on_torchvision_resnet18():
    model = torchvision.models.resnet18(num_classes=10)
    points = mask_points(trace(model, (3, 32, 32)))
    assert points == ["relu"] + [f"layer{s}_{b}_relu_1" for s in range(1, 5) for b in range(2)]


def test_residual_channels_share_one_mask_entry():
    graph = trace(randomize_batchnorm(ResidualNet().eval()), (1, 8, 8))
    assert architecture_family(graph) == "residual"
    points = mask_points(graph)
    assert len(points) == 3  # stem ReLU, identity block, projection block
    layout = gate_layout(graph, points)
    assert torch.equal(layout.index[0], layout.index[1])  # the identity block carries the stem's channels
    assert layout.size == 6 + 8 and len(layout.blocks) == 2


def test_residual_part_equals_gated_model():
    model = randomize_batchnorm(ResidualNet().eval())
    graph = trace(model, (1, 8, 8))
    layout = gate_layout(graph, mask_points(graph))
    theta = torch.tensor([1.0, -1.0] * (layout.size // 2))
    masks = class_masks(graph, layout, theta, 0)
    part = rebuild(model, keep_sets(graph, masks, [0, 1, 2, 3])).eval()
    assert sum(p.numel() for p in part.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(part(x), gated_model(graph, kept_groups(graph, masks))(x), atol=1e-5)


def test_loss_values_and_correct_only():
    r, mu = [torch.full((2, 2, 1, 1), 2.0)], [torch.tensor([1.0, 0.0])]
    logits = torch.zeros(2, 3)
    ce = torch.log(torch.tensor(3.0))
    paper = nad_loss(logits, 0, r, mu, beta=0.5, loss="paper")  # β·mean((rμ)²)=0.5·2, ‖r−μr‖²/B = 4
    assert torch.isclose(paper, ce + 1.0 + 4.0)
    code = nad_loss(logits, 0, r, mu, beta=0.5, loss="code")  # MSE = 2, β·mean(μ²) = 0.25
    assert torch.isclose(code, ce + 2.0 + 0.25)
    none = nad_loss(logits, 0, r, mu, 0.5, "code", correct=torch.tensor([False, False]))
    assert float(none) == 0.0


def test_update_is_gradient_normalised_per_block():
    graph = trace(randomize_batchnorm(ResidualNet().eval()), (1, 8, 8))
    layout = gate_layout(graph, mask_points(graph))
    theta = torch.zeros(layout.size, requires_grad=True)
    gates = [torch.cat([torch.sigmoid(theta), torch.ones(1)])[i] for i in layout.index]
    acts = [torch.rand(3, len(i), 4, 4) for i in layout.index]
    loss = nad_loss(torch.randn(3, 4), 1, acts, gates, beta=0.3, loss="paper")
    grad = torch.autograd.grad(loss, theta)[0]
    before = theta.detach().clone()
    normalized_step(theta.data, grad, layout.blocks, 0.1)
    for block in layout.blocks:
        step = before[block] - theta.detach()[block]
        assert torch.isclose(step.norm(), torch.tensor(0.1 * len(block) ** 0.5))
        assert torch.allclose(step / step.norm(), grad[block] / grad[block].norm(), atol=1e-6)


@pytest.fixture(scope="module")
def lenet(tiny_lenet_dir, mnist_train):
    train, _ = mnist_train
    source = Workspace.open(tiny_lenet_dir, train)
    return source


def test_same_seed_same_masks(lenet):
    first, _, _ = compute_masks(lenet, [1, 7], "nad", samples=16, settings=FAST, seed=3)
    second, _, _ = compute_masks(lenet, [1, 7], "nad", samples=16, settings=FAST, seed=3)
    assert first.method == "nad" and first.settings["seed"] == 3
    for c in (1, 7):
        assert all(first.per_class[c][n] == second.per_class[c][n] for n in first.layer_names)


def test_part_is_smaller_and_equals_masked_original(tiny_lenet_dir, mnist_train, mnist_test):
    train, _ = mnist_train
    test, _ = mnist_test
    settings = NADSettings(iterations=10, batch_size=8, beta=0.3)
    part = disassemble(tiny_lenet_dir, train, [4, 2], "nad", samples=16, settings=settings, test_data=test)
    assert part.report["part_size"]["params"] < part.report["original_size"]["params"]
    model, card = load_with_card(tiny_lenet_dir)
    graph = trace(model, card.input_shape)
    masked = gated_model(graph, kept_groups(graph, part.masks.union([4, 2])))
    images = torch.stack([test[i][0] for i in range(32)])
    with torch.no_grad():
        assert torch.allclose(part.model(images), masked(images)[:, [4, 2]], atol=1e-5)
    dropped = [int((~m.outputs).sum()) for m in part.masks.union([4, 2]).values()][:2]
    assert sum(dropped) > 0


def test_larger_beta_keeps_fewer_channels(lenet):
    graph = trace(lenet.model, (1, 28, 28))
    chosen = {3: torch.nonzero(torch.as_tensor(lenet.train.targets) == 3).flatten()[:32]}
    kept = []
    for beta in (0.03, 3.0):
        masks = nad_masks(graph, lenet.train, chosen, {3: 3}, NADSettings(beta=beta))
        kept.append(sum(int(m.outputs.sum()) for name, m in masks.per_class[3].items()
                        if name != graph.output_layer.name))
    assert kept[1] < kept[0], kept


def test_entries_no_gradient_reaches_are_kept(lenet, monkeypatch):
    import mdakit.attribution.nad as nad

    monkeypatch.setattr(nad, "nad_loss", lambda logits, *args, **kwargs: logits.sum() * 0.0)
    graph = trace(lenet.model, (1, 28, 28))
    masks = nad_masks(graph, lenet.train, {3: torch.arange(16)}, {3: 3}, FAST)
    assert all(bool(m.outputs.all()) for name, m in masks.per_class[3].items() if name != graph.output_layer.name)


def test_beta_auto_and_family_default(lenet):
    graph = trace(lenet.model, (1, 28, 28))
    idx = {0: torch.arange(16)}
    masks = nad_masks(graph, lenet.train, idx, {0: 0}, NADSettings(beta="auto", iterations=3, batch_size=8))
    sweep = masks.settings["beta_sweep"]
    assert masks.settings["beta"] in [s["beta"] for s in sweep]
    default = nad_masks(graph, lenet.train, idx, {0: 0}, FAST)
    assert default.settings["beta"] == 0.3 and default.settings["beta_given"] is None


def test_elbow():
    assert elbow([0, 1, 2, 3], [1.0, 1.0, 1.0, 1.0]) == 0
    assert elbow([0, 1, 2, 3], [1.0, 0.95, 0.9, 0.0]) == 2


@pytest.mark.parametrize("settings", [NADSettings(beta=0.0), NADSettings(beta=-1.0), NADSettings(beta="big"),
                                      NADSettings(loss="kl"), NADSettings(iterations=0), NADSettings(lr=0.0)])
def test_bad_settings(settings):
    with pytest.raises(MdakitError):
        settings.validate()


def test_nad_settings_for_another_method(lenet):
    with pytest.raises(MdakitError, match="NAD settings"):
        compute_masks(lenet, [0], "gradient", settings=NADSettings())


def test_cli_masks_nad(tiny_lenet_dir, tmp_path, capsys, data_dir):
    out = tmp_path / "m"
    code = run(["masks", str(tiny_lenet_dir), "--classes", "0-1", "--samples", "8", "--out", str(out),
                "--method", "nad", "--beta", "0.5", "--nad-loss", "paper", "--nad-linear", "--json",
                "--data-dir", str(data_dir)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == [0, 1]
    meta = json.loads((out / "masks.json").read_text())
    assert meta["method"] == "nad" and meta["settings"]["beta"] == 0.5 and meta["settings"]["loss"] == "paper"
    assert meta["settings"]["linear"]
    bad = run(["masks", str(tiny_lenet_dir), "--classes", "0", "--out", str(tmp_path / "b"), "--method", "nad",
               "--beta", "-2", "--data-dir", str(data_dir)])
    assert bad == 2
