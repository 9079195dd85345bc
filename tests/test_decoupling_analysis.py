import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from mdakit.artifacts import load_with_card, save
from mdakit.cli import run
from mdakit.component_masks import ComponentMasks
from mdakit.data import per_class_subset
from mdakit.decoupling.analysis.class_paths import class_shares, path_masks
from mdakit.decoupling.analysis.hopkins import decision_tree, hopkins
from mdakit.decoupling.analysis.occlusion import occlusion
from mdakit.decoupling.analysis.states import filter_states
from mdakit.decoupling.gates import DecoupledNet
from mdakit.decoupling.paths import Paths, collect_paths
from mdakit.decoupling.ungated import ungated
from mdakit.disassembly import extract
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.surgery import MaskedModel
from mdakit.workspace import Workspace


def _decoupled(tiny_lenet_dir, seed: int = 0):
    """The tiny LeNet with gates whose biases sit around 0, so inputs take different paths."""
    model, card = load_with_card(tiny_lenet_dir)
    torch.manual_seed(seed)
    net = DecoupledNet(model, card.input_shape)
    for gate in net.gates:
        nn.init.normal_(gate.fc2.weight, 0.0, 0.5)  # input-dependent gates (they start input-blind)
        nn.init.normal_(gate.fc2.bias, 0.0, 0.5)
    card.edits = [*card.edits, net.edit()]
    card.provenance = {**card.provenance, "decoupled_from": str(tiny_lenet_dir)}
    return net.eval(), card


def test_hopkins_hand_checkable_cases():
    twins = np.array([[0.0], [0.0], [10.0], [10.0]])
    assert hopkins(twins, fraction=0.5) == 1.0  # every point has a twin: w = 0, u > 0
    grid = np.arange(1001, dtype=float)[:, None]  # w = 1 everywhere; u is uniform on [0, 0.5], mean 0.25
    assert hopkins(grid, fraction=0.5) == pytest.approx(0.25 / 1.25, abs=0.02)
    assert hopkins(np.ones((20, 3))) == 0.5
    rng = np.random.default_rng(1)
    blobs = np.concatenate([rng.normal(0, 0.02, (200, 4)), rng.normal(1, 0.02, (200, 4))])
    assert hopkins(blobs) > 0.95
    assert abs(hopkins(rng.uniform(size=(3000, 4))) - 0.5) < 0.05


def test_decision_tree_splits_where_classes_part():
    same = torch.zeros(40, 3, dtype=torch.bool)
    late = torch.cat([torch.zeros(20, 4), torch.ones(20, 4)]).bool()
    labels = torch.tensor([0] * 20 + [1] * 20)
    paths = Paths(["a", "b", "c"], {"a": same, "b": same, "c": late}, labels, labels)
    tree = decision_tree(paths, min_size=4)
    assert tree["splits_at"] == 2 and tree["hopkins"]["a"] == 0.5
    assert sorted(tuple(child["classes"]) for child in tree["children"]) == [("0",), ("1",)]


def test_filter_states_and_shares_count_by_hand():
    z = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 0]]).bool()
    paths = Paths(["a"], {"a": z}, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))
    assert filter_states(paths)["layers"]["a"]["counts"] == {"energetic": 1, "dynamic": 1, "silent": 1}
    assert class_shares(paths)["a"].tolist() == [[1.0, 0.5, 0.0], [1.0, 1.0, 0.0]]


def test_path_masks_round_trip_to_a_part_equal_to_the_masked_original(tmp_path, tiny_lenet_dir, mnist_test):
    test, _ = mnist_test
    net, card = _decoupled(tiny_lenet_dir)
    data = per_class_subset(test, 20, seed=0)
    paths = collect_paths(net, data)
    states = filter_states(paths)["total"]
    assert states["dynamic"] > 0, states
    plain, plain_card = ungated(net, card)
    images = torch.stack([data[i][0] for i in range(64)])
    with torch.no_grad():
        unmasked = net.body(images)[0]
        gates_open = [gate.fc2.bias.data.fill_(50.0) for gate in net.gates]
        assert gates_open and torch.allclose(plain(images), net(images), atol=1e-5), "ungated = all gates open"
        assert not torch.allclose(plain(images), unmasked)
    graph = trace(plain, card.input_shape)
    classes = list(range(10))
    masks = path_masks(graph, class_shares(paths, classes), classes, {c: c for c in classes}, share=0.5)
    masks.save(tmp_path / "masks")
    loaded = ComponentMasks.load(tmp_path / "masks")
    assert all(loaded.per_class[c][n] == masks.per_class[c][n] for c in classes for n in masks.layer_names)
    gated = "net.features.3"
    for c in classes:
        expected = class_shares(paths, classes)[gated][c] >= 0.5
        assert torch.equal(loaded.per_class[c][gated].outputs, expected)
        assert loaded.per_class[c]["net.features.0"].outputs.all(), "ungated layers keep every filter"
    source = Workspace(plain, plain_card, test, test, "plain")
    part, keep, _ = extract(source, graph, loaded, [1, 7])
    with torch.no_grad():
        assert torch.allclose(part(images), MaskedModel(graph, keep)(images), atol=1e-5)
    assert sum(p.numel() for p in part.parameters()) < sum(p.numel() for p in plain.parameters())


def test_occlusion_switches_off_filters_only_where_they_were_on(tiny_lenet_dir, mnist_test):
    test, _ = mnist_test
    net, _ = _decoupled(tiny_lenet_dir)
    image = test[0][0]
    result = occlusion(net, image, patch=7, stride=7)
    assert result["grid"] == [4, 4] and len(result["switched_off"]) == 16
    assert max(result["switched_off"]) <= result["active_filters"]
    blank = occlusion(net, torch.zeros_like(image), patch=7, stride=7)
    assert sum(blank["switched_off"]) == 0, "covering black with black changes nothing"


def test_cli_paths_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, tiny_lenet_dir, data_dir):
    net, card = _decoupled(tiny_lenet_dir)
    model_dir = tmp_path / "decoupled"
    save(net, model_dir, card)
    base = ["--dataset", "mnist", "--data-dir", str(data_dir), "--per-class", "8", "--occlusion-images", "2"]
    bad = tmp_path / "bad"
    assert run(["paths", str(tiny_lenet_dir), "--out", str(bad), *base]) == 2
    assert run(["paths", str(model_dir), "--out", str(bad), "--share", "1.5", *base]) == 2
    assert run(["paths", str(model_dir), "--out", str(bad), "--filters", "99", *base]) == 2
    assert run(["paths", str(model_dir), "--out", str(bad), "--dataset", "cifar10"]) == 2
    assert "error" in capsys.readouterr().err
    assert not bad.exists() and [p.name for p in tmp_path.iterdir()] == ["decoupled"]


@pytest.mark.slow
def test_cli_paths_writes_every_analysis(tmp_path, capsys, tiny_lenet_dir, data_dir):
    net, card = _decoupled(tiny_lenet_dir)
    model_dir = tmp_path / "decoupled"
    save(net, model_dir, card)
    base = ["--dataset", "mnist", "--data-dir", str(data_dir), "--per-class", "8", "--occlusion-images", "2"]

    out = tmp_path / "paths"
    assert run(["paths", str(model_dir), "--out", str(out), *base, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 80
    for name in ("filter_states", "class_paths", "tsne", "hopkins_tree", "filter_categories", "top_images",
                 "occlusion"):
        assert (out / f"{name}.json").is_file() and (out / f"{name}.png").stat().st_size > 0, name
    masks = ComponentMasks.load(out / "path-masks")
    assert masks.classes == list(range(10)) and masks.info["source"] == str(out / "ungated-model")
    assert load_with_card(out / "ungated-model")[1].edits == []
    assert run(["paths", str(model_dir), "--out", str(out), *base]) == 2, "existing output needs --force"


def test_class_shares_reject_a_class_without_images(tiny_lenet_dir, mnist_test):
    test, _ = mnist_test
    net, _ = _decoupled(tiny_lenet_dir)
    paths = collect_paths(net, Subset(test, list(range(30))))
    with pytest.raises(MdakitError, match="no images of class"):
        class_shares(paths, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11])
