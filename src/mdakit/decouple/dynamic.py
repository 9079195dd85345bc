"""Dynamic inference: each gated conv computes only the filters its gate selects (DESIGN §2.4).

:class:`DynamicNet` rewrites a :class:`~mdakit.decouple.gates.DecoupledNet`'s graph. Each gated
segment (conv → BN → activation → mask) becomes one :class:`DynamicGatedConv` that, before running
the conv, pools its input, evaluates the gate, gathers the selected filters' weights, BN parameters
and (when the input came packed from another gated layer) only the input channels that layer kept,
and runs the smaller conv. Its result travels as :class:`Packed` (the kept channels and their
indices) through per-channel ops (activations, pooling, dropout); a non-gated conv reading a packed
tensor gathers its input columns (:class:`InputSparseConv`); anything else (adds, concats, flatten)
gets the dense tensor back with zeros in the dropped channels.

A batch computes the union of its inputs' selections and zeroes each input's unselected channels, so
batch-1 inference computes exactly the input's own path and larger batches stay exact. Filters that
no training input selects (``alive`` from :meth:`~mdakit.decouple.paths.Paths.alive`) are removed
physically: their weights, BN entries, gate rows and the next layer's matching input columns.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from mdakit.decouple.gates import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ACTIVATION_MODULES,
    GATES,
    DecoupledNet,
    GateSite,
    _mask,
    _pool,
)
from mdakit.errors import MdakitError

PER_CHANNEL_MODULES = ACTIVATION_MODULES + (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                                            nn.Dropout, nn.Dropout2d, nn.Identity)
PER_CHANNEL_FUNCTIONS = ACTIVATION_FUNCTIONS | {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                                                F.adaptive_max_pool2d, F.dropout}
PER_CHANNEL_METHODS = ACTIVATION_METHODS | {"contiguous"}


class Packed(NamedTuple):
    """Some channels of a B×C×H×W tensor: ``values`` (B×k×H×W) are the original channels ``index`` (k)."""

    values: torch.Tensor
    index: torch.Tensor


def densify(packed: Packed, channels: int) -> torch.Tensor:
    """The full tensor, zeros in the channels ``packed`` does not hold.

    >>> densify(Packed(torch.ones(1, 1, 1, 1), torch.tensor([2])), 3).flatten().tolist()
    [0.0, 0.0, 1.0]
    """
    values = packed.values
    out = values.new_zeros(values.shape[0], channels, *values.shape[2:])
    return out.index_copy_(1, packed.index, values)


def _positions(alive: torch.Tensor, channels: int) -> torch.Tensor:
    """Lookup from original channel number to its position among ``alive`` (-1: removed)."""
    pos = torch.full((channels,), -1, dtype=torch.long)
    pos[alive] = torch.arange(len(alive))
    return pos


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=False)


class InputSparseConv(nn.Module):
    """A conv that reads a :class:`Packed` input and uses only the weight columns of its channels."""

    def __init__(self, conv: nn.Conv2d, in_alive: torch.Tensor):
        super().__init__()
        self.weight = _frozen(conv.weight[:, in_alive])
        self.bias = _frozen(conv.bias) if conv.bias is not None else None
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.register_buffer("in_pos", _positions(in_alive, conv.in_channels))

    def forward(self, x: Packed) -> torch.Tensor:
        pos = self.in_pos[x.index]
        weight = self.weight if len(pos) == self.weight.shape[1] else self.weight.index_select(1, pos)
        return F.conv2d(x.values, weight, self.bias, self.stride, self.padding, self.dilation)


class DynamicGatedConv(nn.Module):
    """Gate, then conv → BN → activations over the selected filters only; returns :class:`Packed`."""

    def __init__(self, conv: nn.Conv2d, gate: nn.Module, chain: Sequence[nn.Module | Callable], alive: torch.Tensor,
                 in_alive: torch.Tensor | None):
        super().__init__()
        rows = alive
        cols = in_alive if in_alive is not None else torch.arange(conv.in_channels)
        self.weight = _frozen(conv.weight[rows][:, cols])
        self.bias = _frozen(conv.bias[rows]) if conv.bias is not None else None
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.gate_w1, self.gate_b1 = _frozen(gate.fc1.weight[:, cols]), _frozen(gate.fc1.bias)
        self.gate_w2, self.gate_b2 = _frozen(gate.fc2.weight[rows]), _frozen(gate.fc2.bias[rows])
        self.register_buffer("index", rows.clone())
        self.register_buffer("in_pos", _positions(cols, conv.in_channels) if in_alive is not None else None)
        self.functions: list[Callable | None] = []  # None: the BatchNorm, applied as its eval-mode scale and shift
        self.register_buffer("scale", None)
        self.register_buffer("shift", None)
        for op in chain:
            if isinstance(op, nn.BatchNorm2d):
                if op.running_mean is None:
                    raise MdakitError("dynamic inference needs BatchNorm layers with running statistics")
                scale = (op.weight if op.weight is not None else torch.ones_like(op.running_var)) \
                    / torch.sqrt(op.running_var + op.eps)
                shift = (op.bias if op.bias is not None else torch.zeros_like(scale)) - op.running_mean * scale
                self.scale, self.shift = scale[rows].detach().clone(), shift[rows].detach().clone()
            self.functions.append(None if isinstance(op, nn.BatchNorm2d) else op)

    def forward(self, x: Packed | torch.Tensor) -> Packed:
        if isinstance(x, Packed):
            values, pos = x.values, self.in_pos[x.index]
            pooled = values.new_zeros(values.shape[0], self.gate_w1.shape[1]).index_copy_(1, pos, values.mean((2, 3)))
        else:
            values, pos = x, None
            pooled = values.mean((2, 3))
        g = F.linear(F.relu(F.linear(pooled, self.gate_w1, self.gate_b1)), self.gate_w2, self.gate_b2)
        z = g > 0
        keep = torch.nonzero(z.any(0)).flatten()
        silent = len(keep) == 0
        if silent:  # nothing selected in the whole batch: run one filter and zero it
            keep = keep.new_zeros(1)
        full = len(keep) == len(self.index)
        if pos is not None and len(pos) != self.weight.shape[1]:
            weight = self.weight[keep[:, None], pos[None, :]] if not full else self.weight.index_select(1, pos)
        else:
            weight = self.weight if full else self.weight.index_select(0, keep)
        bias = None if self.bias is None else (self.bias if full else self.bias[keep])
        out = F.conv2d(values, weight, bias, self.stride, self.padding, self.dilation)
        for fn in self.functions:
            if fn is not None:
                out = fn(out)
            elif full:
                out = torch.addcmul(self.shift[:, None, None], out, self.scale[:, None, None])
            else:
                out = torch.addcmul(self.shift[keep][:, None, None], out, self.scale[keep][:, None, None])
        if silent or values.shape[0] > 1:
            out = out * z.index_select(1, keep)[:, :, None, None].to(out.dtype)
        return Packed(out, self.index if full else self.index[keep])


def _chain_op(node: torch.fx.Node, body: nn.Module) -> nn.Module | Callable:
    """The op of a chain node as a one-argument callable (a module, or a function with its other args)."""
    if node.op == "call_module":
        return copy.deepcopy(body.get_submodule(str(node.target)))
    rest, kwargs = node.args[1:], dict(node.kwargs)
    if node.op == "call_function":
        target = node.target
        return lambda t: target(t, *rest, **kwargs)
    name = str(node.target)
    return lambda t: getattr(t, name)(*rest, **kwargs)


def _per_channel(node: torch.fx.Node, body: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(body.get_submodule(str(node.target)), PER_CHANNEL_MODULES)
    if node.op == "call_function":
        return node.target in PER_CHANNEL_FUNCTIONS
    return node.op == "call_method" and node.target in PER_CHANNEL_METHODS


class DynamicNet(nn.Module):
    """The fast inference form of a decoupled model (see the module docstring). Inference only.

    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("vgg16", (1, 28, 28), 10, width=0.125), (1, 28, 28)).eval()
    >>> x = torch.rand(3, 1, 28, 28)
    >>> bool(torch.allclose(DynamicNet(net)(x), net(x), atol=1e-5))
    True
    """

    def __init__(self, model: DecoupledNet, alive: Mapping[str, torch.Tensor] | None = None):
        super().__init__()
        self.input_shape = model.input_shape
        self.layers = list(model.layers)
        body = model.body
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ShapeProp(body).propagate(torch.zeros(2, *model.input_shape, device=_device(model)))
        finally:
            model.train(was_training)
        alive = {name: torch.as_tensor(alive[name], dtype=torch.long).sort().values for name in self.layers} \
            if alive is not None else {s.layer: torch.arange(s.channels) for s in model.sites}
        self.kept = {name: len(alive[name]) for name in self.layers}
        graph, modules = _rewrite(body, model.sites, alive)
        self.net = torch.fx.GraphModule(modules, graph)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _rewrite(body: torch.fx.GraphModule, sites: Sequence[GateSite], alive: Mapping[str, torch.Tensor]
             ) -> tuple[torch.fx.Graph, dict[str, Any]]:
    nodes = {node.name: node for node in body.graph.nodes}
    site_of_conv = {site.conv_node: i for i, site in enumerate(sites)}
    skip: set[str] = set()
    mask_of: dict[int, torch.fx.Node] = {}
    for i, site in enumerate(sites):
        gate = next(n for n in body.graph.nodes if n.op == "call_module" and n.target == f"{GATES}.{i}")
        point = nodes[site.point]
        pool = next(n for n in point.users if n.target is _pool)
        mask = next(n for n in point.users if n.target is _mask)
        skip.update({gate.name, *site.chain, pool.name, mask.name})
        mask_of[i] = mask
    graph = torch.fx.Graph()
    modules: dict[str, Any] = {}
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    packed: dict[torch.fx.Node, torch.Tensor] = {}  # old node -> the original channels it physically holds
    dense: dict[torch.fx.Node, torch.fx.Node] = {}

    def dense_of(node: torch.fx.Node) -> torch.fx.Node:
        if node not in packed:
            return env[node]
        if node not in dense:
            dense[node] = graph.call_function(densify, (env[node], int(node.meta["tensor_meta"].shape[1])))
        return dense[node]

    def copy_node(node: torch.fx.Node, transform: Callable[[torch.fx.Node], torch.fx.Node]) -> torch.fx.Node:
        for target in _targets(node):
            modules[target] = copy.deepcopy(_fetch(body, target))
        return graph.node_copy(node, transform)

    for node in body.graph.nodes:
        if node.name in skip:
            continue
        if node.op == "output":
            graph.output(dense_of(node.args[0][0]))
        elif node.name in site_of_conv:
            i = site_of_conv[node.name]
            site, source = sites[i], node.args[0]
            conv = body.get_submodule(site.layer)
            chain = [_chain_op(nodes[name], body) for name in site.chain]
            gate = body.get_submodule(f"{GATES}.{i}")
            modules[f"blocks.{i}"] = DynamicGatedConv(conv, gate, chain, alive[site.layer], packed.get(source))
            env[mask_of[i]] = graph.call_module(f"blocks.{i}", (env[source],))
            packed[mask_of[i]] = alive[site.layer]
        elif not any(arg in packed for arg in node.all_input_nodes):
            env[node] = copy_node(node, lambda n: env[n])
        elif node.all_input_nodes == [node.args[0]] and _per_channel(node, body):
            source = node.args[0]
            values = graph.call_function(operator.getitem, (env[source], 0))
            index = graph.call_function(operator.getitem, (env[source], 1))
            result = copy_node(node, lambda n, s=source, v=values: v if n is s else env[n])
            env[node] = graph.call_function(Packed, (result, index))
            packed[node] = packed[source]
        elif node.op == "call_module" and isinstance(conv := body.get_submodule(str(node.target)), nn.Conv2d) \
                and conv.groups == 1 and node.all_input_nodes == [node.args[0]]:
            name = f"sparse_inputs.{node.name}"
            modules[name] = InputSparseConv(conv, packed[node.args[0]])
            env[node] = graph.call_module(name, (env[node.args[0]],))
        else:
            env[node] = copy_node(node, dense_of)
    graph.lint()
    return graph, modules


def _targets(node: torch.fx.Node) -> list[str]:
    return [str(node.target)] if node.op in ("call_module", "get_attr") else []


def _fetch(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def macs_per_input(model: nn.Module, images: torch.Tensor) -> list[int]:
    """MACs (FlopCounterMode flops / 2) of each image run alone (batch 1): only what runs is counted.

    >>> macs_per_input(nn.Conv2d(1, 2, 3), torch.zeros(2, 1, 3, 3))
    [18, 18]
    """
    out = []
    with torch.no_grad():
        for image in images:
            with FlopCounterMode(display=False) as counter:
                model(image[None])
            out.append(counter.get_total_flops() // 2)
    return out
