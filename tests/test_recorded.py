"""A user-built module recorded in its card rebuilds exactly, and so do the parts and files made from it."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import mdakit
from mdakit.cli import run
from mdakit.errors import MdakitError
from mdakit.graph.recorded import NotRecordableError, record_graph, replay_graph
from nets import (
    ConcatPoolNet,
    ConvNeXtBlockNet,
    DepthwiseNet,
    GroupNormNet,
    RandomNet,
    ResidualNet,
    ShuffleNet,
    SliceNet,
)

SHAPE = (1, 28, 28)
NETS = {"concat-pool": ConcatPoolNet, "residual": ResidualNet, "depthwise": DepthwiseNet, "shuffle": ShuffleNet,
        "slice": SliceNet, "group-norm": GroupNormNet, "convnext-block": ConvNeXtBlockNet}


def _rebuilt(net: nn.Module, shape=SHAPE) -> nn.Module:
    """The module its record rebuilds, the record passed through JSON as a card file would hold it."""
    edit = json.loads(json.dumps(record_graph(net, shape)))
    rebuilt = replay_graph(None, edit)
    rebuilt.load_state_dict(net.state_dict())
    return rebuilt.eval()


def _same_outputs(a: nn.Module, b: nn.Module, shape=SHAPE) -> None:
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", NETS)
def test_op_patterns_rebuild_exactly_with_the_same_weights(name):
    torch.manual_seed(0)
    net = NETS[name]().eval()
    rebuilt = _rebuilt(net)
    assert list(rebuilt.state_dict()) == list(net.state_dict())
    _same_outputs(net, rebuilt)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "regnet_x_400mf"])
def test_torchvision_models_rebuild_exactly(name):
    torch.manual_seed(0)
    net = torchvision.models.get_model(name, num_classes=5).eval()
    _same_outputs(net, _rebuilt(net, (3, 48, 48)), (3, 48, 48))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.sampled_from(["conv", "residual", "concat", "depthwise", "grouped", "pool"]),
                       min_size=1, max_size=5),
       width=st.lists(st.integers(1, 5), min_size=1, max_size=3), head=st.sampled_from([1, 2]),
       seed=st.integers(0, 1000))
def test_random_architectures_rebuild_exactly(blocks, width, head, seed):
    torch.manual_seed(seed)
    net = RandomNet(blocks, width, head, classes=3).eval()
    _same_outputs(net, _rebuilt(net))


def test_a_part_of_a_user_built_module_opens_without_the_module(tmp_path):
    model, data = mdakit.examples.toy_problem()
    part = mdakit.disassemble(model, data, [1, 3])
    part.save(tmp_path / "part")
    loaded = mdakit.load(tmp_path / "part")
    assert type(loaded).__name__ == "TinyNet"
    _same_outputs(part.model, loaded, (1, 8, 8))
    again = mdakit.disassemble(tmp_path / "part", data, [3])  # a part of the rebuilt part
    _same_outputs(again.model, mdakit.load(again.save(tmp_path / "again")), (1, 8, 8))


def test_the_command_line_opens_parts_of_user_built_modules(tmp_path):
    model, data = mdakit.examples.toy_problem()
    mdakit.disassemble(model, data, [0, 2]).save(tmp_path / "part")
    assert run(["info", str(tmp_path / "part")]) == 0
    assert run(["export", str(tmp_path / "part"), "--out", str(tmp_path / "part.onnx")]) == 0


class _BatchNormElsewhere(nn.BatchNorm2d):
    """A BatchNorm subclass from outside torch.nn: a leaf of the trace that the record cannot rebuild."""


class _TensorConstant(nn.Module):
    def forward(self, x):
        return x.flatten(1) * torch.tensor(2.0)


@pytest.mark.parametrize("net, why", [
    (nn.Sequential(nn.Conv2d(1, 2, 3), _BatchNormElsewhere(2)), "layer '1' is a _BatchNormElsewhere .* not a torch.nn"),
    (_TensorConstant(), "_tensor_constant0.*neither a parameter nor a buffer"),
])
def test_modules_that_cannot_be_recorded_exactly_say_why(net, why):
    with pytest.raises(NotRecordableError, match=why):
        record_graph(net, SHAPE)


@pytest.mark.parametrize("field, value, why", [
    ("class", "os.system", "not a torch.nn module"),
    ("class", "torch.nn.modules.module.Module", "not a torch.nn module"),
    ("args", {"in_features": "784"}, "layer .1. does not build"),
])
def test_a_hand_edited_record_cannot_name_other_classes(field, value, why):
    edit = record_graph(nn.Sequential(nn.Flatten(), nn.Linear(784, 2)), SHAPE)
    edit["layers"]["1"][field] = value
    with pytest.raises(MdakitError, match=why):
        replay_graph(None, edit)


@pytest.mark.parametrize("op, target", [("call_function", "builtins.eval"), ("call_function", "torch.save"),
                                        ("call_method", "__reduce__"), ("call_module_x", "1")])
def test_a_hand_edited_record_cannot_call_other_functions(op, target):
    edit = record_graph(nn.Sequential(nn.Flatten(), nn.Linear(784, 2)), SHAPE)
    node = next(n for n in edit["nodes"] if n["op"] == "call_module")
    node["op"], node["target"] = op, target
    with pytest.raises(MdakitError, match="recorded graph"):
        replay_graph(None, edit)
