"""The op registry of mdakit.graph: every registered pass-through op is traced 1:1 and extracted exactly,
registering a new op is one line, and an op nobody registered is refused by name."""

import re
import warnings

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth, stochastic_depth

from mdakit.component_masks import LayerMask
from mdakit.errors import MdakitError
from mdakit.graph import (
    GraphBuilder,
    fx_trace,
    passthrough_ops,
    register_function,
    register_module,
    register_passthrough,
    trace,
    unregister,
)
from mdakit.surgery import MaskedModel, keep_sets, rebuild

SHAPE = (1, 8, 8)

# how to call the pass-through ops that need more than the tensor (the others: ``Op()``, ``op(x)``, ``x.op()``)
MODULE_ARGS = {nn.MaxPool2d: (2,), nn.AvgPool2d: (2,), nn.AdaptiveAvgPool2d: (2,), nn.AdaptiveMaxPool2d: (2,),
               nn.LPPool2d: (2, 2), nn.ZeroPad2d: (1,), nn.ConstantPad2d: (1, 0.5), nn.Upsample: (None, 2.0),
               nn.UpsamplingNearest2d: (None, 2.0), nn.UpsamplingBilinear2d: (None, 2.0)}
CALLS = {
    F.max_pool2d: lambda x: F.max_pool2d(x, 2), F.avg_pool2d: lambda x: F.avg_pool2d(x, 2),
    F.adaptive_avg_pool2d: lambda x: F.adaptive_avg_pool2d(x, 2),
    F.adaptive_max_pool2d: lambda x: F.adaptive_max_pool2d(x, 2), F.pad: lambda x: F.pad(x, (1, 1, 1, 1)),
    F.interpolate: lambda x: F.interpolate(x, scale_factor=2.0),
    F.dropout: lambda x: F.dropout(x, 0.5, False), F.dropout2d: lambda x: F.dropout2d(x, 0.5, False),
    stochastic_depth: StochasticDepth(0.5, "row"),  # fx records the function only where torchvision calls it
    "clamp": lambda x: x.clamp(0.0), "clamp_": lambda x: x.clamp_(0.0), "clamp_min": lambda x: x.clamp_min(0.0),
    "clamp_min_": lambda x: x.clamp_min_(0.0), "to": lambda x: x.to(torch.float32), "type_as": lambda x: x.type_as(x),
}


def _name(op) -> str:
    return op if isinstance(op, str) else f"{op.__module__}.{op.__name__}"


def _call(op):
    """``op`` applied to a tensor: a module instance, or a callable that fx records as a call of ``op``."""
    if isinstance(op, type):
        return op(*MODULE_ARGS.get(op, ()))
    if op in CALLS:
        return CALLS[op]
    return (lambda x: getattr(x, op)()) if isinstance(op, str) else op


class Probe(nn.Module):
    """conv → op → spatial mean → linear: the linear reads the conv's channels through the op."""

    def __init__(self, op):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.op = op
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.op(self.conv(x)).mean((2, 3)))


def _records(net: nn.Module, op) -> bool:
    """Whether the graph mdakit traces calls ``op`` (a module class, a function or a method name)."""
    def calls(node):
        if isinstance(op, type):
            return node.op == "call_module" and isinstance(net.get_submodule(str(node.target)), op)
        return node.op == ("call_method" if isinstance(op, str) else "call_function") and node.target == op
    return any(calls(node) for node in fx_trace(net).nodes)


def assert_carried_one_to_one(net: nn.Module) -> None:
    """Every node between the conv and the mean carries the conv's channel ids unchanged, none pinned."""
    g = trace(net, SHAPE)
    conv = g.layer("conv")
    between = g.order[g.order.index(conv.node) + 1:g.order.index("mean")]
    assert between and all(torch.equal(g.node_ids[name], conv.out_ids) for name in between)
    assert torch.equal(g.layer("fc").in_ids, conv.out_ids)
    assert not g.pinned_mask()[g.groups(conv.out_ids)].any()


def assert_extraction_equals_masked(net: nn.Module, kept: tuple[int, ...] = (0, 2)) -> None:
    """With the linear needing its inputs 0 and 2 only, the extracted part keeps conv channels ``kept``
    and computes what the original computes with the others masked."""
    g = trace(net.eval(), SHAPE)
    needed = torch.tensor([True, False, True, False])
    masks = {layer.name: LayerMask(torch.ones(layer.out_size, layer.in_size, dtype=torch.bool),
                                   needed if layer.name == "fc" else torch.ones(layer.in_size, dtype=torch.bool),
                                   torch.ones(layer.out_size, dtype=torch.bool)) for layer in g.layers}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keep = keep_sets(g, masks, [0, 1, 2])
    assert keep.layers["conv"]["out"] == list(kept)
    part, reference = rebuild(net, keep).eval(), MaskedModel(g, keep).eval()
    images = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(part(images), reference(images), atol=1e-5)


@pytest.mark.parametrize("op", passthrough_ops(), ids=_name)
def test_registered_passthrough_ops_carry_channels_one_to_one(op):
    torch.manual_seed(0)
    net = Probe(_call(op)).eval()
    assert _records(net, op), f"{_name(op)} never appears in a traced graph: its registration is dead"
    assert_carried_one_to_one(net)
    assert_extraction_equals_masked(net)


# --------------------------------------------------------------------------- registering new ops


class ErfGate(nn.Module):
    """A per-channel activation mdakit does not know: x · erf(x)."""

    def forward(self, x):
        return x * torch.erf(x)


class Reverse(nn.Module):
    """Channels in reverse order: not pass-through, a permutation."""

    def forward(self, x):
        return x.flip(1)


def reverse(builder: GraphBuilder, node: torch.fx.Node, module: nn.Module) -> None:
    source = builder.first_tensor(node)
    builder.permuted(node, source, torch.arange(len(builder.ids[source.name])).flip(0))


@pytest.fixture
def registered():
    """Register ops for one test; the registry is as before afterwards."""
    added = []

    def add(op, handler=None):
        if handler is None:
            register_passthrough(op)
        else:
            register_module(op)(handler)
        added.append(op)
    before = passthrough_ops()
    yield add
    unregister(*added)
    assert passthrough_ops() == before


def test_an_unregistered_op_is_refused_naming_op_and_node():
    message = "unsupported op call_function 'erf' at node 'erf': mdakit cannot tell how it maps channels"
    with pytest.raises(MdakitError, match=re.escape(message)):
        trace(Probe(ErfGate()), SHAPE)


def test_registering_a_per_channel_module_is_one_line(registered):
    registered(ErfGate)
    net = Probe(ErfGate()).eval()
    assert _records(net, ErfGate)  # a registered module is kept whole, not traced through to erf
    assert_carried_one_to_one(net)
    assert_extraction_equals_masked(net)


def test_registering_a_function_is_one_line(registered):
    registered(torch.erf)
    assert_carried_one_to_one(Probe(torch.erf))
    with pytest.raises(MdakitError, match=re.escape("unsupported op call_method 'erf' at node 'erf'")):
        trace(Probe(lambda x: x.erf()), SHAPE)  # the method is another op


def test_a_module_handler_can_permute_channels(registered):
    registered(Reverse, reverse)
    net = Probe(Reverse()).eval()
    g = trace(net, SHAPE)
    assert torch.equal(g.layer("fc").in_ids, g.layer("conv").out_ids.flip(0))
    assert_extraction_equals_masked(net, kept=(1, 3))  # the linear's inputs 0 and 2 are conv channels 3 and 1


def test_module_handlers_apply_to_subclasses():
    class ScaledBatchNorm(nn.BatchNorm2d):  # a leaf like every BatchNorm, handled as one
        def forward(self, x):
            return 2 * super().forward(x)

    net = nn.Sequential(nn.Conv2d(1, 4, 3), ScaledBatchNorm(4), nn.Flatten(), nn.Linear(4 * 36, 2))
    g = trace(net, SHAPE)
    assert g.channel_modules == {"1": "_0"} and g.layer("0").bn_after == "1"


def test_an_op_has_one_handler():
    with pytest.raises(MdakitError, match="'ReLU' already has a channel handler"):
        register_passthrough(nn.ReLU)
    with pytest.raises(MdakitError, match="'add' already has a channel handler"):
        register_function(torch.add)(lambda builder, node: None)
    with pytest.raises(MdakitError, match="'erf' has no channel handler"):
        unregister(torch.erf)
