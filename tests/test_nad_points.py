"""NAD mask points: one block output per trunk run of the traced graph, on the zoo and torchvision."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from mdakit.attribution.nad_points import mask_points
from mdakit.graph import fx_trace, trace
from mdakit.zoo import build_model


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


def test_mask_points_on_torchvision_resnet18():
    model = torchvision.models.resnet18(num_classes=10)
    points = mask_points(trace(model, (3, 32, 32)))
    assert points == ["relu"] + [f"layer{s}_{b}_relu_1" for s in range(1, 5) for b in range(2)]
