"""Dynamic inference: each gated conv computes only the filters its gate selects.

:class:`DynamicNet` rewrites a :class:`~mdakit.decoupling.gates.DecoupledNet`'s graph with the layers of
:mod:`mdakit.decoupling.dynamic_layers`. Each gated segment (conv → BN → activation → mask) becomes one
``DynamicGatedConv`` that, before running the conv, pools its input, evaluates the gate, gathers the
selected filters' weights, BN parameters and (when the input came packed from another gated layer)
only the input channels that layer kept, and runs the smaller conv. Its result travels as ``Packed``
(the kept channels and their indices) through per-channel ops (activations, pooling, dropout); a
non-gated conv reading a packed tensor gathers its input columns (``InputSparseConv``); anything else
(adds, concats, flatten) gets the dense tensor back with zeros in the dropped channels.

A batch computes the union of its inputs' selections and zeroes each input's unselected channels, so
batch-1 inference computes exactly the input's own path and larger batches stay exact. Filters that
no training input selects (``alive`` from :meth:`~mdakit.decoupling.paths.Paths.alive`) are removed
physically: their weights, BN entries, gate rows and the next layer's matching input columns.
Filters that every training input selects (``always_on``, from
:meth:`~mdakit.decoupling.paths.Paths.energetic`) can be computed without asking the gate, and a layer
whose kept filters are all such runs no gate: like the removal, this is exact on the training
inputs and an approximation elsewhere, so measure the result on test data.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from mdakit.decoupling.dynamic_layers import DynamicGatedConv, InputSparseConv, add_packed, densify, with_values
from mdakit.decoupling.gates import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ACTIVATION_MODULES,
    GATES,
    DecoupledNet,
    GateSite,
    _mask,
    _pool,
)

PER_CHANNEL_MODULES = ACTIVATION_MODULES + (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                                            nn.Dropout, nn.Dropout2d, nn.Identity)
PER_CHANNEL_FUNCTIONS = ACTIVATION_FUNCTIONS | {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                                                F.adaptive_max_pool2d, F.dropout}
PER_CHANNEL_METHODS = ACTIVATION_METHODS | {"contiguous"}
# A gated conv whose output has at most this many pixels runs its kept filters without copying the
# selected ones out (see DynamicGatedConv): measured on VGG-16's 3×3 and 1×1 layers, where copying
# the selected weights of a 360→360 3×3 conv took longer than the whole conv.
GATHER_ABOVE = 16


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

    ``alive``: per gated layer, the filters to keep (a layer not named keeps all), those the gate decides
    about in the order given (most often selected first is fastest, see :class:`DynamicGatedConv`);
    ``always_on``: those to run without asking the gate (a layer not named: none); gated convs whose
    output has at most ``gather_above`` pixels run their kept filters without copying out the selected
    ones (:class:`DynamicGatedConv`).

    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("vgg16", (1, 28, 28), 10, width=0.125), (1, 28, 28)).eval()
    >>> x = torch.rand(3, 1, 28, 28)
    >>> bool(torch.allclose(DynamicNet(net)(x), net(x), atol=1e-5))
    True
    """

    def __init__(self, model: DecoupledNet, alive: Mapping[str, torch.Tensor] | None = None,
                 always_on: Mapping[str, torch.Tensor] | None = None, gather_above: int = GATHER_ABOVE):
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
        channels = {s.layer: s.channels for s in model.sites}
        rows, on = {}, {}
        for name in self.layers:
            kept = torch.as_tensor(alive[name], dtype=torch.long) if alive and name in alive \
                else torch.arange(channels[name])
            every = torch.as_tensor(always_on[name], dtype=torch.long) if always_on and name in always_on else kept[:0]
            first = torch.isin(kept, every)
            rows[name] = torch.cat((kept[first].sort().values, kept[~first]))
            on[name] = int(first.sum())
        self.kept = {name: len(rows[name]) for name in self.layers}
        self.always_on = on
        graph, modules = _Rewrite(body, model.sites, rows, on, gather_above).run()
        self.net = torch.fx.GraphModule(modules, graph)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class _Rewrite:
    """The dynamic graph of a decoupled body, built node by node (see :class:`DynamicNet`).

    ``env`` maps each old node to its new one; ``packed`` holds, for old nodes whose new value is
    ``Packed``, the original channels it holds; ``dense`` caches their densified new nodes.
    """

    def __init__(self, body: torch.fx.GraphModule, sites: Sequence[GateSite], alive: Mapping[str, torch.Tensor],
                 always_on: Mapping[str, int], gather_above: int):
        self.body, self.sites, self.alive, self.always_on = body, sites, alive, always_on
        self.gather_above = gather_above
        self.nodes = {node.name: node for node in body.graph.nodes}
        self.site_of_conv = {site.conv_node: i for i, site in enumerate(sites)}
        self.skip, self.mask_of = self._gated_segments()
        self.graph = torch.fx.Graph()
        self.modules: dict[str, Any] = {}
        self.env: dict[torch.fx.Node, torch.fx.Node] = {}
        self.packed: dict[torch.fx.Node, torch.Tensor] = {}
        self.dense: dict[torch.fx.Node, torch.fx.Node] = {}

    def _gated_segments(self) -> tuple[set[str], dict[int, torch.fx.Node]]:
        """The nodes each :class:`DynamicGatedConv` replaces (gate, chain, pool, mask), and each site's mask node."""
        skip: set[str] = set()
        mask_of: dict[int, torch.fx.Node] = {}
        for i, site in enumerate(self.sites):
            gate = next(n for n in self.body.graph.nodes if n.op == "call_module" and n.target == f"{GATES}.{i}")
            point = self.nodes[site.point]
            pool = next(n for n in point.users if n.target is _pool)
            mask = next(n for n in point.users if n.target is _mask)
            skip.update({gate.name, *site.chain, pool.name, mask.name})
            mask_of[i] = mask
        return skip, mask_of

    def run(self) -> tuple[torch.fx.Graph, dict[str, Any]]:
        """The new graph and the modules it calls."""
        for node in self.body.graph.nodes:
            if node.name not in self.skip:
                self._add(node)
        self.graph.lint()
        return self.graph, self.modules

    def _add(self, node: torch.fx.Node) -> None:
        if node.op == "output":
            self.graph.output(self._dense_of(node.args[0][0]))
        elif node.name in self.site_of_conv:
            self._gated_conv(node, self.site_of_conv[node.name])
        elif not any(arg in self.packed for arg in node.all_input_nodes):
            self.env[node] = self._copy(node, lambda n: self.env[n])
        elif node.all_input_nodes == [node.args[0]] and _per_channel(node, self.body):
            self._per_channel_op(node)
        elif _residual_add(node):
            a, b = node.args
            self.env[node] = self.graph.call_function(add_packed, (self.env[a], self.env[b], _channels(node)))
        elif (conv := _plain_conv(node, self.body)) is not None:
            name = f"sparse_inputs.{node.name}"
            self.modules[name] = InputSparseConv(conv, self.packed[node.args[0]], gather=self._gathers(node))
            self.env[node] = self.graph.call_module(name, (self.env[node.args[0]],))
        else:
            self.env[node] = self._copy(node, self._dense_of)

    def _gated_conv(self, node: torch.fx.Node, i: int) -> None:
        """The conv of gate site ``i`` with its gate and chain, as one :class:`DynamicGatedConv`."""
        site, source = self.sites[i], node.args[0]
        conv = self.body.get_submodule(site.layer)
        chain = [_chain_op(self.nodes[name], self.body) for name in site.chain]
        gate = self.body.get_submodule(f"{GATES}.{i}")
        self.modules[f"blocks.{i}"] = DynamicGatedConv(conv, gate, chain, self.alive[site.layer],
                                                       self.packed.get(source), self.always_on[site.layer],
                                                       gather=self._gathers(node))
        self.env[self.mask_of[i]] = self.graph.call_module(f"blocks.{i}", (self.env[source],))
        self.packed[self.mask_of[i]] = self.alive[site.layer]

    def _per_channel_op(self, node: torch.fx.Node) -> None:
        """A per-channel op on a packed tensor, run on its values only."""
        source = node.args[0]
        values = self.graph.call_function(operator.getitem, (self.env[source], 0))
        result = self._copy(node, lambda n: values if n is source else self.env[n])
        self.env[node] = self.graph.call_function(with_values, (self.env[source], result))
        self.packed[node] = self.packed[source]

    def _gathers(self, node: torch.fx.Node) -> bool:
        """Whether a conv with this output copies out the weights it uses (more than ``gather_above`` pixels)."""
        return math.prod(node.meta["tensor_meta"].shape[2:]) > self.gather_above

    def _dense_of(self, node: torch.fx.Node) -> torch.fx.Node:
        if node not in self.packed:
            return self.env[node]
        if node not in self.dense:
            self.dense[node] = self.graph.call_function(densify, (self.env[node], _channels(node)))
        return self.dense[node]

    def _copy(self, node: torch.fx.Node, transform: Callable[[torch.fx.Node], torch.fx.Node]) -> torch.fx.Node:
        for target in _targets(node):
            self.modules[target] = copy.deepcopy(_fetch(self.body, target))
        return self.graph.node_copy(node, transform)


def _channels(node: torch.fx.Node) -> int:
    return int(node.meta["tensor_meta"].shape[1])


def _plain_conv(node: torch.fx.Node, body: nn.Module) -> nn.Conv2d | None:
    """The module of a one-input, ungrouped conv node (a reader :class:`InputSparseConv` can replace)."""
    if node.op != "call_module" or node.all_input_nodes != [node.args[0]]:
        return None
    conv = body.get_submodule(str(node.target))
    return conv if isinstance(conv, nn.Conv2d) and conv.groups == 1 else None


def _residual_add(node: torch.fx.Node) -> bool:
    """A two-operand add of same-shaped tensors (no broadcasting), as residual blocks do."""
    if node.op != "call_function" or node.target not in (operator.add, operator.iadd, torch.add) or node.kwargs \
            or len(node.args) != 2 or not all(isinstance(a, torch.fx.Node) for a in node.args):
        return False
    shapes = [tuple(a.meta["tensor_meta"].shape) for a in node.args if "tensor_meta" in a.meta]
    return len(shapes) == 2 and shapes[0] == shapes[1] == tuple(node.meta["tensor_meta"].shape)


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
