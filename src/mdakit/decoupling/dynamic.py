"""Dynamic inference: each gated conv computes only the filters its gate selects (docs/methods.md#dynamic-inference).

:class:`DynamicNet` rewrites a :class:`~mdakit.decoupling.gates.DecoupledNet`'s graph. Each gated
segment (conv → BN → activation → mask) becomes one :class:`DynamicGatedConv` that, before running
the conv, pools its input, evaluates the gate, gathers the selected filters' weights, BN parameters
and (when the input came packed from another gated layer) only the input channels that layer kept,
and runs the smaller conv. Its result travels as :class:`Packed` (the kept channels and their
indices) through per-channel ops (activations, pooling, dropout); a non-gated conv reading a packed
tensor gathers its input columns (:class:`InputSparseConv`); anything else (adds, concats, flatten)
gets the dense tensor back with zeros in the dropped channels.

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
from typing import Any, NamedTuple

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

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
from mdakit.errors import MdakitError

PER_CHANNEL_MODULES = ACTIVATION_MODULES + (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                                            nn.Dropout, nn.Dropout2d, nn.Identity)
PER_CHANNEL_FUNCTIONS = ACTIVATION_FUNCTIONS | {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                                                F.adaptive_max_pool2d, F.dropout}
PER_CHANNEL_METHODS = ACTIVATION_METHODS | {"contiguous"}
# A gated conv whose output has at most this many pixels runs its kept filters without copying the
# selected ones out (see DynamicGatedConv): measured on VGG-16's 3×3 and 1×1 layers, where copying
# the selected weights of a 360→360 3×3 conv took longer than the whole conv.
GATHER_ABOVE = 16


class Packed(NamedTuple):
    """Some channels of a B×C×H×W tensor: ``values`` (B×k×H×W) are the original channels ``index`` (k),
    found at ``position`` (k) among the filters the producing layer kept; ``prefix``: the positions are
    known to be 0..k−1 (then a reader slices its weight columns instead of gathering them)."""

    values: torch.Tensor
    index: torch.Tensor
    position: torch.Tensor
    prefix: bool = False


def densify(packed: Packed, channels: int) -> torch.Tensor:
    """The full tensor, zeros in the channels ``packed`` does not hold.

    >>> densify(Packed(torch.ones(1, 1, 1, 1), torch.tensor([2]), torch.tensor([0])), 3).flatten().tolist()
    [0.0, 0.0, 1.0]
    """
    values = packed.values
    out = values.new_zeros(values.shape[0], channels, *values.shape[2:])
    return out.index_copy_(1, packed.index, values)


def add_packed(a: Packed | torch.Tensor, b: Packed | torch.Tensor, channels: int) -> torch.Tensor:
    """``a + b`` for same-shaped operands of which at least one is packed (a residual add), densifying once.

    >>> one = Packed(torch.ones(1, 1, 1, 1), torch.tensor([1]), torch.tensor([0]))
    >>> add_packed(torch.ones(1, 2, 1, 1), one, 2).flatten().tolist()
    [1.0, 2.0]
    """
    if isinstance(a, Packed):
        a, b = b, a
    if isinstance(a, Packed):
        a = densify(a, channels)
    return a.index_add(1, b.index, b.values)


def with_values(packed: Packed, values: torch.Tensor) -> Packed:
    """``packed`` with new values for the same channels (after a per-channel op)."""
    return packed._replace(values=values)


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)


class InputSparseConv(nn.Module):
    """A conv that reads a :class:`Packed` input and uses only the weight columns of its channels.

    ``in_alive`` are the input channels the producing layer kept, in the order of its ``position``.
    With ``gather=False`` (few output pixels, where copying the columns costs more than the conv) the
    dropped input channels are filled with zeros instead and every kept column is used.
    """

    def __init__(self, conv: nn.Conv2d, in_alive: torch.Tensor, gather: bool = True):
        super().__init__()
        self.gather = gather
        self.weight = _frozen(conv.weight[:, in_alive])
        self.bias = _frozen(conv.bias) if conv.bias is not None else None
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x: Packed) -> torch.Tensor:
        values, pos, weight = x.values, x.position, self.weight
        if pos.shape[0] != weight.shape[1] and self.gather:
            weight = weight[:, :pos.shape[0]] if x.prefix else weight.index_select(1, pos)
        elif pos.shape[0] != weight.shape[1]:
            values = _scatter_channels(values, pos, weight.shape[1])
        return F.conv2d(values, weight, self.bias, self.stride, self.padding, self.dilation)


def _scatter_channels(values: torch.Tensor, position: torch.Tensor, channels: int) -> torch.Tensor:
    """``values`` placed at channels ``position`` of a zero B×channels×H×W tensor."""
    return values.new_zeros(values.shape[0], channels, *values.shape[2:]).index_copy_(1, position, values)


def _batchnorm_affine(op: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``x · scale + shift``."""
    if op.running_mean is None:
        raise MdakitError("dynamic inference needs BatchNorm layers with running statistics")
    scale = (op.weight if op.weight is not None else torch.ones_like(op.running_var)) \
        / torch.sqrt(op.running_var + op.eps)
    shift = (op.bias if op.bias is not None else torch.zeros_like(scale)) - op.running_mean * scale
    return scale.detach(), shift.detach()


class DynamicGatedConv(nn.Module):
    """Gate, then conv → BN → activations over the selected filters only; returns :class:`Packed`.

    ``rows`` are the filters kept (original numbers), the first ``always_on`` of them computed for
    every input without asking the gate; the gate decides only about the others, and a layer with
    none left runs no gate at all. A BatchNorm right after the conv is folded into the conv's
    weights and bias; the gate's average pool is a sum whose 1 / (H·W) rides on the first matmul.
    ``in_alive`` is set when the input arrives packed from another gated layer: the input channels
    that layer kept, in the order of its ``position``.

    The asked filters are kept in the order of ``rows`` (most often selected first, from
    :meth:`~mdakit.decoupling.paths.Paths.alive` ``by_frequency``): gates tend to select a prefix of that
    order, and a prefix of the weights is a slice, not a copy. ``gather`` (default): when the
    selection is exactly a prefix the layer runs that slice, otherwise it copies the selected
    filters' weights and runs the smaller conv. Where the output has few pixels, a conv reads each
    weight only a few times, so copying weights costs more than the conv they save: with
    ``gather=False`` the layer runs the kept filters up to the last selected one, over every kept
    input channel (dropped input channels filled with zeros), and zeroes the unselected outputs. Both
    are exact; MACs counters see what each really computes.
    """

    def __init__(self, conv: nn.Conv2d, gate: nn.Module, chain: Sequence[nn.Module | Callable], rows: torch.Tensor,
                 in_alive: torch.Tensor | None, always_on: int = 0, gather: bool = True):
        super().__init__()
        self.gather = gather
        cols = in_alive if in_alive is not None else torch.arange(conv.in_channels)
        weight = conv.weight[rows][:, cols].detach()
        bias = conv.bias[rows].detach() if conv.bias is not None else None
        chain = list(chain)
        if chain and isinstance(chain[0], nn.BatchNorm2d):
            scale, shift = (t[rows] for t in _batchnorm_affine(chain.pop(0)))
            weight = weight * scale[:, None, None, None]
            bias = shift + (bias * scale if bias is not None else 0)
        self.weight = _frozen(weight)
        self.bias = _frozen(bias) if bias is not None else None
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.always_on = int(always_on)
        asked = rows[self.always_on:]
        gated = len(asked) > 0
        self.gate_w1t = _frozen(gate.fc1.weight[:, cols].t()) if gated else None
        self.gate_b1 = _frozen(gate.fc1.bias) if gated else None
        self.gate_w2t = _frozen(gate.fc2.weight[asked].t()) if gated else None
        self.gate_b2 = _frozen(gate.fc2.bias[asked]) if gated else None
        self.register_buffer("index", rows.clone())
        self.register_buffer("positions", torch.arange(len(rows)))
        self.functions: list[Callable | None] = []  # None: a later BatchNorm, applied as its scale and shift
        self.register_buffer("scale", None)
        self.register_buffer("shift", None)
        for op in chain:
            if isinstance(op, nn.BatchNorm2d):
                scale, shift = _batchnorm_affine(op)
                self.scale, self.shift = scale[rows].clone(), shift[rows].clone()
            self.functions.append(None if isinstance(op, nn.BatchNorm2d) else op)

    def _selection(self, values: torch.Tensor, position: torch.Tensor | None, prefix: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The gate's decisions z (B × asked filters), the asked filters any input selects (ascending), and
        whether nothing at all was selected: then the first asked filter is returned, to run and be zeroed.
        ``position``: the input channels present, when fewer than the kept ones (``prefix``: they are 0..k−1)."""
        w1t = self.gate_w1t
        if position is not None:
            w1t = w1t[:position.shape[0]] if prefix else w1t.index_select(0, position)
        pixels = values.shape[2] * values.shape[3]
        hidden = torch.addmm(self.gate_b1, values.sum((2, 3)), w1t, alpha=1.0 / pixels).relu_()
        z = torch.addmm(self.gate_b2, hidden, self.gate_w2t) > 0
        chosen = torch.nonzero(z[0] if z.shape[0] == 1 else z.any(0)).flatten()
        if chosen.shape[0] == 0 and not self.always_on:
            return z, chosen.new_zeros(1), True
        return z, chosen, False

    def _selected_mask(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Per input, 1 for the always-on filters and each asked filter's decision in ``z``, as B×k×1×1."""
        mask = z.to(dtype)
        if self.always_on:
            mask = torch.cat((mask.new_ones(mask.shape[0], self.always_on), mask), 1)
        return mask[:, :, None, None]

    def _apply_chain(self, out: torch.Tensor, upto: int | None = None, keep: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """The activations (and a later BatchNorm) after the conv, for filters ``[:upto]`` or ``keep``."""
        for fn in self.functions:
            if fn is not None:
                out = fn(out)
                continue
            scale, shift = self.scale, self.shift
            if keep is not None:
                scale, shift = scale.index_select(0, keep), shift.index_select(0, keep)
            elif upto is not None:
                scale, shift = scale[:upto], shift[:upto]
            out = torch.addcmul(shift[:, None, None], out, scale[:, None, None])
        return out

    def _without_gather(self, values: torch.Tensor, z: torch.Tensor | None, chosen: torch.Tensor | None,
                        silent: bool) -> Packed:
        """The kept filters up to the last selected one, unselected ones zeroed; ``values`` hold every kept input
        channel (the caller fills the dropped ones with zeros)."""
        if z is None:
            return Packed(self._dense(values), self.index, self.positions, True)
        asked = int(chosen[-1]) + 1 if chosen.shape[0] else 0
        upto = self.always_on + asked
        out = F.conv2d(values, self.weight[:upto], None if self.bias is None else self.bias[:upto], self.stride,
                       self.padding, self.dilation)
        out = self._apply_chain(out, upto=upto)
        if values.shape[0] > 1 or silent or chosen.shape[0] != asked:  # some computed filter is not selected
            out = out * self._selected_mask(z[:, :asked], out.dtype)
        return Packed(out, self.index[:upto], self.positions[:upto], True)

    def _dense(self, values: torch.Tensor) -> torch.Tensor:
        """Every kept filter over every kept input channel (what a layer without a gate computes)."""
        out = F.conv2d(values, self.weight, self.bias, self.stride, self.padding, self.dilation)
        return self._apply_chain(out)

    def forward(self, x: Packed | torch.Tensor) -> Packed:
        packed = isinstance(x, Packed)
        values = x.values if packed else x
        narrowed = packed and x.position.shape[0] != self.weight.shape[1]  # fewer input channels than kept
        position = x.position if narrowed else None
        prefix = x.prefix if packed else True
        if self.gate_w2t is None and not narrowed:
            return Packed(self._dense(values), self.index, self.positions, True)
        z, chosen, silent = (None, None, False) if self.gate_w2t is None else \
            self._selection(values, position, prefix)
        if not self.gather:
            if narrowed:
                values = _scatter_channels(values, position, self.weight.shape[1])
            return self._without_gather(values, z, chosen, silent)
        count = self.index.shape[0] if chosen is None else self.always_on + chosen.shape[0]
        full = count == self.index.shape[0]
        sliced = full or chosen.shape[0] == 0 or int(chosen[-1]) == chosen.shape[0] - 1
        keep = None if sliced else torch.cat((self.positions[:self.always_on], chosen + self.always_on))
        weight = self.weight if full else self.weight[:count] if sliced else self.weight.index_select(0, keep)
        if narrowed:
            weight = weight[:, :position.shape[0]] if prefix else weight.index_select(1, position)
        bias = self.bias
        if bias is not None and not full:
            bias = bias[:count] if sliced else bias.index_select(0, keep)
        out = F.conv2d(values, weight, bias, self.stride, self.padding, self.dilation)
        out = self._apply_chain(out, upto=None if full else count, keep=keep)
        if z is not None and (values.shape[0] > 1 or silent):
            computed = z if chosen.shape[0] == z.shape[1] else z.index_select(1, chosen)
            out = out * self._selected_mask(computed, out.dtype)
        if full:
            return Packed(out, self.index, self.positions, True)
        if sliced:
            return Packed(out, self.index[:count], self.positions[:count], True)
        return Packed(out, self.index.index_select(0, keep), keep, False)


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
        graph, modules = _rewrite(body, model.sites, rows, on, gather_above)
        self.net = torch.fx.GraphModule(modules, graph)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _rewrite(body: torch.fx.GraphModule, sites: Sequence[GateSite], alive: Mapping[str, torch.Tensor],
             always_on: Mapping[str, int], gather_above: int) -> tuple[torch.fx.Graph, dict[str, Any]]:
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
            pixels = math.prod(node.meta["tensor_meta"].shape[2:])
            modules[f"blocks.{i}"] = DynamicGatedConv(conv, gate, chain, alive[site.layer], packed.get(source),
                                                      always_on[site.layer], gather=pixels > gather_above)
            env[mask_of[i]] = graph.call_module(f"blocks.{i}", (env[source],))
            packed[mask_of[i]] = alive[site.layer]
        elif not any(arg in packed for arg in node.all_input_nodes):
            env[node] = copy_node(node, lambda n: env[n])
        elif node.all_input_nodes == [node.args[0]] and _per_channel(node, body):
            source = node.args[0]
            values = graph.call_function(operator.getitem, (env[source], 0))
            result = copy_node(node, lambda n, s=source, v=values: v if n is s else env[n])
            env[node] = graph.call_function(with_values, (env[source], result))
            packed[node] = packed[source]
        elif _residual_add(node):
            a, b = node.args
            env[node] = graph.call_function(add_packed, (env[a], env[b], int(node.meta["tensor_meta"].shape[1])))
        elif node.op == "call_module" and isinstance(conv := body.get_submodule(str(node.target)), nn.Conv2d) \
                and conv.groups == 1 and node.all_input_nodes == [node.args[0]]:
            name = f"sparse_inputs.{node.name}"
            pixels = math.prod(node.meta["tensor_meta"].shape[2:])
            modules[name] = InputSparseConv(conv, packed[node.args[0]], gather=pixels > gather_above)
            env[node] = graph.call_module(name, (env[node.args[0]],))
        else:
            env[node] = copy_node(node, dense_of)
    graph.lint()
    return graph, modules


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
