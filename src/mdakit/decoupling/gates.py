"""Controlling modules, improved SemHash, and the gated ("decoupled") model (docs/methods.md#decoupling).

A controlling module reads a conv layer's *input* (global average pool → FC(C→C/4) → ReLU →
FC(→N) = g) and decides which of the layer's N filters run. Its binary vector z masks the layer's
output channels after BN and the activation. Where each gate sits comes from the traced graph:
the conv node, followed through its sole user while that user is a BatchNorm or an elementwise
activation reading only it (conv → BN → ReLU in VGG, conv → BN before a residual add, conv → ReLU in
LeNet). Residual adds and concats therefore see the conv's own gated output, never a gated sum.

:class:`DecoupledNet` is the original model's fx graph with those gates spliced in, plus one
classifier W_cla per gated layer (the mutual-information head). ``net(x)`` returns logits;
``net(x, return_gates=True)`` also returns every gated layer's z (the calculation path) and y, the
global-average-pooled output before masking (for the KL loss).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph, fx_trace, trace

GATES = "decouple_gates"
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardtanh, nn.Sigmoid, nn.Tanh,
)
ACTIVATION_FUNCTIONS = {F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish,
                        F.hardswish, F.hardtanh, F.sigmoid, F.tanh, torch.relu, torch.sigmoid, torch.tanh}
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}


def saturating_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """σ'(x) = max(0, min(1, 1.2·σ(x) − 0.1)) (Eq. 4).

    >>> saturating_sigmoid(torch.tensor([-10.0, 0.0, 10.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    return (1.2 * torch.sigmoid(x) - 0.1).clamp(0.0, 1.0)


def improved_semhash(g: torch.Tensor, training: bool) -> torch.Tensor:
    """Binary-ish gates from gate logits ``g`` (B×N).

    Training: s = g + N(0, 1) noise, v1 = σ'(s), v2 = [s > 0]; each *sample* (row) takes v2 with
    probability ½ (straight through: forward v2, gradient of v1), otherwise v1. Inference: [g > 0].

    >>> improved_semhash(torch.tensor([[-1.0, 2.0]]), training=False).tolist()
    [[0.0, 1.0]]
    >>> z = improved_semhash(torch.zeros(4, 3), training=True)
    >>> bool(((z >= 0) & (z <= 1)).all())
    True
    """
    if not training:
        return (g > 0).to(g.dtype)
    s = g + torch.randn_like(g)
    v1 = saturating_sigmoid(s)
    v2 = (s > 0).to(g.dtype)
    hard = v1 + (v2 - v1).detach()
    use_hard = torch.rand(g.shape[0], 1, device=g.device) < 0.5
    return torch.where(use_hard, hard, v1)


def gate_hidden(in_channels: int, reduction: int = 4, minimum: int = 4) -> int:
    """Width of a controlling module's hidden layer: C / 4, at least ``minimum`` (tiny layers).

    >>> gate_hidden(64), gate_hidden(6)
    (16, 4)
    """
    return max(minimum, in_channels // reduction)


class ControllingModule(nn.Module):
    """GAP → FC(C→hidden) → ReLU → FC(hidden→N) = g, then :func:`improved_semhash`.

    g starts at ``open_bias`` for every input (the second FC's weights start at zero, its bias at
    ``open_bias``), so every filter starts selected and the fine-tune starts from the pretrained
    function; with random weights there, g would swing by several units with the input's pooled
    activations and close a third of the filters before the first step.

    >>> gate = ControllingModule(8, 5).eval()
    >>> gate(torch.rand(2, 8, 3, 3)).shape
    torch.Size([2, 5])
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int | None = None, open_bias: float = 2.0):
        super().__init__()
        hidden = hidden or gate_hidden(in_channels)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, out_channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, open_bias)

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """g from the pooled input (B×C)."""
        return self.fc2(F.relu(self.fc1(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return improved_semhash(self.logits(x.mean((2, 3))), self.training)


@dataclass
class GateSite:
    """Where one gate sits in the traced graph: the conv node, its input, and the ops up to the gate point."""

    layer: str
    conv_node: str
    input_node: str
    chain: list[str]
    in_channels: int
    channels: int
    hidden: int

    @property
    def point(self) -> str:
        """The node whose output the gate masks (the conv itself when nothing follows it alone)."""
        return self.chain[-1] if self.chain else self.conv_node


def default_gated_layers(graph: ChannelGraph) -> list[str]:
    """Every ungrouped conv layer except the first and the last, in graph order.

    When that leaves none (models with two conv layers, e.g. LeNet-5) every conv but the first is
    gated: the first reads the raw image, whose pooled value says nothing about which filters matter.

    >>> from mdakit.zoo import build_model
    >>> default_gated_layers(trace(build_model("vgg16", (1, 28, 28), 10), (1, 28, 28)))[:2]
    ['net.features.3', 'net.features.7']
    >>> default_gated_layers(trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28)))
    ['net.features.3']
    """
    convs = [layer.name for layer in graph.layers if layer.kind == "conv"]
    if len(convs) < 2:
        raise MdakitError(f"the model has {len(convs)} conv layer(s): decoupling needs at least two "
                          "(the first, reading the image, is never gated)")
    chosen = convs[1:-1] or convs[1:]
    return [name for name in chosen if graph.layer(name).module.groups == 1]


def _is_activation(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


def _chain_after(node: torch.fx.Node, modules: Mapping[str, nn.Module], strict: bool = True) -> list[str]:
    """The BatchNorm and activations that follow ``node`` alone; ``strict``: refuse BatchNorm subclasses,
    which dynamic inference could not fold."""
    chain: list[str] = []
    seen_bn = False
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.all_input_nodes != [node]:
            break
        is_bn = user.op == "call_module" and isinstance(modules[str(user.target)], nn.BatchNorm2d)
        if strict and is_bn and type(modules[str(user.target)]) is not nn.BatchNorm2d:
            raise MdakitError(f"decoupling folds plain BatchNorm2d layers after a gated conv; {user.target!r} is a "
                              f"{type(modules[str(user.target)]).__name__}, whose extra behaviour (e.g. a built-in "
                              "activation) dynamic inference would drop")
        if not (is_bn and not seen_bn) and not _is_activation(user, modules):
            break
        seen_bn |= is_bn
        chain.append(user.name)
        node = user
    return chain


def find_sites(fx_graph: torch.fx.Graph, graph: ChannelGraph, layers: Sequence[str],
               hidden: Mapping[str, int] | None = None) -> list[GateSite]:
    """The gate site of each conv layer in ``layers`` (module names), from the traced graph."""
    modules = dict(graph.model.named_modules())
    nodes = {node.name: node for node in fx_graph.nodes}
    sites = []
    for name in layers:
        try:
            layer = graph.layer(name)
        except KeyError:
            raise MdakitError(f"{name!r} is not a conv layer of this model") from None
        if layer.kind != "conv" or layer.module.groups != 1:
            raise MdakitError(f"{name!r} is not an ungrouped conv layer: only those can be gated")
        node = nodes.get(layer.node)
        if node is None:
            raise MdakitError(f"the traced graph has no node {layer.node!r} for layer {name!r}")
        width = (hidden or {}).get(name) or gate_hidden(layer.module.in_channels)
        sites.append(GateSite(layer=name, conv_node=layer.node, input_node=layer.input_node,
                              chain=_chain_after(node, modules), in_channels=layer.module.in_channels,
                              channels=layer.module.out_channels, hidden=int(width)))
    return sites


def output_points(fx_graph: torch.fx.Graph, graph: ChannelGraph, layers: Sequence[str]) -> list[str]:
    """For each conv layer in ``layers`` (grouped ones included), the node after the BatchNorm and
    activations that follow it alone: where a gate would mask it, and where its channel activity is read.

    >>> from mdakit.zoo import build_model
    >>> model = build_model("vgg16", (1, 28, 28), 10, width=0.125)
    >>> output_points(fx_trace(model), trace(model, (1, 28, 28)), ["net.features.0"])
    ['net_features_2']
    """
    modules = dict(graph.model.named_modules())
    nodes = {node.name: node for node in fx_graph.nodes}
    points = []
    for name in layers:
        try:
            layer = graph.layer(name)
        except KeyError:
            raise MdakitError(f"{name!r} is not a conv layer of this model") from None
        if layer.kind != "conv" or layer.node not in nodes:
            raise MdakitError(f"{name!r} is not a conv layer of this model")
        chain = _chain_after(nodes[layer.node], modules, strict=False)
        points.append(chain[-1] if chain else layer.node)
    return points


def _pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean((2, 3))


def _mask(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return x * z[:, :, None, None]


class Gated(NamedTuple):
    """Logits with every gated layer's z (B×N, the calculation path) and y (B×N, pooled output before masking)."""

    logits: torch.Tensor
    z: list[torch.Tensor]
    y: list[torch.Tensor]


class DecoupledNet(nn.Module):
    """A model with a controlling module on each gated conv layer (see the module docstring).

    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("vgg16", (1, 28, 28), 10, width=0.125), (1, 28, 28)).eval()
    >>> out = net(torch.rand(2, 1, 28, 28), return_gates=True)
    >>> out.logits.shape, len(net.layers), out.z[0].shape
    (torch.Size([2, 10]), 11, torch.Size([2, 8]))
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], layers: Sequence[str] | None = None,
                 hidden: Mapping[str, int] | None = None, open_bias: float = 2.0):
        super().__init__()
        model = copy.deepcopy(model)
        graph = trace(model, input_shape)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = graph.output_layer.out_size
        fx_graph = fx_trace(model)
        self.sites = find_sites(fx_graph, graph, default_gated_layers(graph) if layers is None else layers, hidden)
        if not self.sites:
            raise MdakitError("the model has no conv layer to gate")
        gates = nn.Module()
        for i, site in enumerate(self.sites):
            gates.add_module(str(i), ControllingModule(site.in_channels, site.channels, site.hidden, open_bias))
        model.add_module(GATES, gates)
        self.body = torch.fx.GraphModule(model, _splice_gates(fx_graph, self.sites))
        self.heads = nn.ModuleList(nn.Linear(site.channels, self.num_classes, bias=False) for site in self.sites)

    @property
    def layers(self) -> list[str]:
        """Names of the gated conv layers, in graph order."""
        return [site.layer for site in self.sites]

    @property
    def gates(self) -> list[ControllingModule]:
        """The controlling modules, aligned with :attr:`layers`."""
        return [self.body.get_submodule(f"{GATES}.{i}") for i in range(len(self.sites))]

    def forward(self, x: torch.Tensor, return_gates: bool = False) -> torch.Tensor | Gated:
        logits, zs, ys = self.body(x)
        return Gated(logits, list(zs), list(ys)) if return_gates else logits

    def edit(self) -> dict[str, Any]:
        """The model-card edit that rebuilds this gating on a fresh copy of the original model."""
        return {"kind": "decoupled", "input_shape": list(self.input_shape),
                "layers": [{"name": s.layer, "in_channels": s.in_channels, "hidden": s.hidden, "channels": s.channels}
                           for s in self.sites]}

    @classmethod
    def from_edit(cls, model: nn.Module, edit: Mapping[str, Any]) -> DecoupledNet:
        """Rebuild the gating described by :meth:`edit` on ``model`` (weights are loaded afterwards)."""
        layers = list(edit["layers"])
        net = cls(model, edit["input_shape"], [entry["name"] for entry in layers],
                  {entry["name"]: int(entry["hidden"]) for entry in layers})
        for site, entry in zip(net.sites, layers):
            if (site.in_channels, site.channels) != (int(entry["in_channels"]), int(entry["channels"])):
                raise MdakitError(f"gated layer {site.layer!r} has {site.in_channels}→{site.channels} channels but "
                                  f"the card says {entry['in_channels']}→{entry['channels']}")
        return net


def _splice_gates(fx_graph: torch.fx.Graph, sites: Sequence[GateSite]) -> torch.fx.Graph:
    """Insert gate, pooling and masking nodes; the graph then returns (logits, zs, ys)."""
    nodes = {node.name: node for node in fx_graph.nodes}
    zs, ys = [], []
    for i, site in enumerate(sites):
        conv = nodes[site.conv_node]
        with fx_graph.inserting_before(conv):
            z = fx_graph.call_module(f"{GATES}.{i}", (conv.args[0],))
        point = nodes[site.point]
        with fx_graph.inserting_after(point):
            y = fx_graph.call_function(_pool, (point,))
        with fx_graph.inserting_after(y):
            masked = fx_graph.call_function(_mask, (point, z))
        point.replace_all_uses_with(masked, delete_user_cb=lambda user, y=y, masked=masked: user not in (y, masked))
        zs.append(z)
        ys.append(y)
    output = next(node for node in fx_graph.nodes if node.op == "output")
    logits = output.args[0]
    fx_graph.erase_node(output)
    fx_graph.output((logits, tuple(zs), tuple(ys)))
    fx_graph.lint()
    return fx_graph


def gate_density(z: torch.Tensor) -> float:
    """Share of selected filters in a batch of binary gates.

    >>> gate_density(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    0.75
    """
    return float(z.float().mean()) if z.numel() else math.nan
