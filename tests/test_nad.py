"""NAD mask search: gates, determinism, β, extraction, the registered method, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from mdakit.artifacts import load_with_card
from mdakit.attribution.nad import NADSettings, class_masks, elbow, gate_layout, gated_model, nad_masks
from mdakit.attribution.nad_points import architecture_family, mask_points
from mdakit.cli import run
from mdakit.disassembly import compute_masks, disassemble
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.surgery import keep_sets, kept_groups, rebuild
from mdakit.workspace import Workspace
from nets import ResidualNet, randomize_batchnorm

FAST = NADSettings(iterations=4, batch_size=8)


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
