"""Decision routes and contribution patterns: hand-checked on tiny nets, consistent with the masks on a real one."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from mdakit.attribution.contribution import ContributionSettings, class_masks, relative_contributions
from mdakit.cli import run
from mdakit.component_masks import LayerMask
from mdakit.data import make_loader
from mdakit.disassembly import compute_masks
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.report.contrib import attribute, sample_sums
from mdakit.report.decision import probe_image, route_map, write_route_map
from mdakit.report.patterns import contribution_patterns, write_patterns
from mdakit.report.routes import INPUT, Route, columns, compare, route_from_masks, shown_channels
from mdakit.workspace import Workspace


def _mask(kernels, inputs, outputs) -> LayerMask:
    return LayerMask(torch.tensor(kernels, dtype=torch.bool), torch.tensor(inputs, dtype=torch.bool),
                     torch.tensor(outputs, dtype=torch.bool))


def _links(route, name):
    return sorted(map(tuple, route.links[name].tolist()))


def test_route_of_hand_made_masks():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    graph = trace(model, (2, 4, 4))
    assert columns(graph) == [(INPUT, 2), ("0", 3), ("4", 2)]
    masks = {"0": _mask([[1, 0], [0, 0], [1, 1]], [1, 1], [1, 0, 1]),
             "4": _mask([[1, 0, 1], [0, 0, 0]], [1, 0, 1], [1, 0])}
    route = route_from_masks(graph, masks, "class 0")
    assert route.channels == {INPUT: [0, 1], "0": [0, 2], "4": [0]}
    assert _links(route, "0") == [(0, 0, 0), (0, 0, 2), (0, 1, 2)]  # (source column, source channel, filter)
    assert _links(route, "4") == [(1, 0, 0), (1, 2, 0)]
    assert route.to_dict([n for n, _ in columns(graph)])["links"]["4"] == [["0", 0, 0], ["0", 2, 0]]


def test_flattened_features_map_to_their_channel():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(8, 1))  # 2 channels x 2 x 2
    graph = trace(model, (1, 2, 2))
    masks = {"0": _mask([[1], [1]], [1], [0, 1]), "2": _mask([[0, 0, 0, 0, 1, 0, 1, 1]], [0, 0, 0, 0, 1, 0, 1, 1], [1])}
    route = route_from_masks(graph, masks, "c")
    assert _links(route, "2") == [(1, 1, 0)]  # three features of channel 1: one link
    assert route.channels["0"] == [1]


def test_compare_and_shown_channels():
    own = Route("input", {INPUT: [0], "a": [0, 3], "b": [1]}, {})
    cls = Route("class", {INPUT: [0], "a": [0], "b": [0]}, {})
    result = compare(own, cls, [INPUT, "a", "b"])
    assert result["leaves_at"] == "a"
    assert result["columns"]["a"]["off_route"] == [3] and result["columns"]["b"]["shared"] == 0
    shown = shown_channels([own, cls], [(INPUT, 1), ("a", 6), ("b", 2)], {"a": torch.arange(6.0)}, 2)
    assert shown == {INPUT: [0], "a": [0, 3], "b": [0, 1]}  # kept channels first, then by score


@pytest.fixture(scope="module")
def lenet_att(tiny_lenet_dir, data_dir):
    torch.set_num_threads(2)
    source = Workspace.open(tiny_lenet_dir, data_dir=data_dir)
    return attribute(source, [0, 1], samples=10)


def test_routes_match_the_masks_of_disassembly(lenet_att):
    att = lenet_att
    reference, _, _ = compute_masks(att.source, [0, 1], samples=10, graph=att.graph)
    for c in (0, 1):
        route = route_from_masks(att.graph, att.masks.per_class[c], str(c))
        for layer in att.graph.layers:
            expected = reference.per_class[c][layer.name]
            assert att.masks.per_class[c][layer.name] == expected
            assert route.channels[layer.name] == torch.nonzero(expected.outputs).flatten().tolist()
            k, n = torch.nonzero(expected.kernels, as_tuple=True)
            per_channel = 25 if layer.name == "net.classifier.1" else 1  # 16 x 5 x 5 flattened
            assert set(map(tuple, route.links[layer.name][:, 1:].tolist())) == set(zip((n // per_channel).tolist(),
                                                                                       k.tolist()))
        assert route.channels["net.classifier.5"] == [c]


def test_sample_sums_add_up_to_the_class_sums(lenet_att):
    att = lenet_att
    idx = att.samples[0].tolist()
    images = torch.cat([b for b, _ in make_loader(Subset(att.source.train, idx), len(idx))])
    total = {}
    for sums in sample_sums(att.graph, images):
        for name, value in sums.items():
            total[name] = total.get(name, 0) + value
    for name, value in att.sums[0].items():
        torch.testing.assert_close(total[name], value, rtol=1e-4, atol=1e-4)


def test_input_route_against_its_class(lenet_att, tmp_path):
    att = lenet_att
    index = next(i for i in range(200) if int(att.source.test[i][1]) in (0, 1))
    result = route_map(att, None, top=4, probe=probe_image(att.source.test, index))
    image, label = att.source.test[index]
    own = class_masks(att.graph, sample_sums(att.graph, image[None])[0], result.probe_info["predicted_class"],
                      ContributionSettings())
    for layer in att.graph.layers:
        assert result.probe.channels[layer.name] == torch.nonzero(own[layer.name].outputs).flatten().tolist()
    reference = result.routes[[0, 1].index(int(label))]
    for name, info in result.comparison["columns"].items():
        assert info["off_route"] == sorted(set(result.probe.channels[name]) - set(reference.channels[name]))
    assert all(len(v) <= 4 for v in result.shown.values())
    files = write_route_map(result, tmp_path / "routes")
    assert [f.name for f in files] == ["routes.png", "routes.svg", "routes.json"]
    assert files[1].read_text().lstrip().startswith("<?xml")
    saved = json.loads(files[2].read_text())
    assert saved["routes"][0]["channels"] == result.routes[0].channels
    assert saved["input"]["comparison"]["leaves_at"] == result.comparison["leaves_at"]


def test_patterns(lenet_att, tmp_path):
    patterns = contribution_patterns(lenet_att, ["net.features.3", "net.classifier.5"], per_class=3)
    conv = patterns["layers"][0]
    assert len(conv["samples"]["0"]["unit_pattern"]) == 3 and len(conv["samples"]["0"]["total"][0]) == 6
    assert max(conv["classes"]["1"]["unit_pattern"]) == pytest.approx(1.0)  # min-max per filter
    r = relative_contributions(lenet_att.sums[0]["net.features.3"])
    assert conv["classes"]["0"]["total"] == pytest.approx(r.sum(0).tolist())  # u_n = sum_k r[k, n] (Eq. 5)
    files = write_patterns(patterns, tmp_path / "p")
    assert [f.name for f in files] == ["patterns.json", "layer00-net.features.3.png", "layer01-net.classifier.5.png"]
    with pytest.raises(MdakitError, match="no attributed layer"):
        contribution_patterns(lenet_att, ["nope"])


def test_routes_and_patterns_cli(tiny_lenet_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "routes"
    assert run(["routes", str(tiny_lenet_dir), "--classes", "0,1", "--samples", "10", "--image-index", "3",
                "--out", str(out), "--data-dir", str(data_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["input"]["label"] == "test image 3" and (out / "routes.svg").is_file()
    bad = tmp_path / "bad"
    assert run(["routes", str(tiny_lenet_dir), "--classes", "0,1", "--samples", "10", "--image-index", "10000",
                "--out", str(bad), "--data-dir", str(data_dir)]) == 2
    assert "out of range" in capsys.readouterr().err and not bad.exists()
    assert run(["patterns", str(tiny_lenet_dir), "--classes", "0,1", "--samples", "5", "--per-class", "2", "--layer",
                "net.features.3", "--out", str(tmp_path / "pat"), "--data-dir", str(data_dir)]) == 0
    assert (tmp_path / "pat" / "layer00-net.features.3.png").is_file()
    assert run(["patterns", str(tiny_lenet_dir), "--classes", "0,1", "--unit", "99", "--layer", "net.features.3",
                "--out", str(tmp_path / "pat2"), "--data-dir", str(data_dir)]) == 2
    assert not (tmp_path / "pat2").exists()
