"""How channels flow through a model: prunable layers, their producers and consumers, coupling.

:func:`trace` runs torch.fx on a model and shape-propagates an example input of the model's own
shape. Every tensor in the graph gets, for each of its channels (dim 1; features for 2-D tensors), a
*channel id*. Ids are created by prunable layers (``Conv2d``, ``Linear``: one per output channel) and
by the model input, and carried through operations:

- BatchNorm, activations, dropout (also stochastic depth), pooling, spatial means: channel ``j``
  stays channel ``j``;
- ``add``/``mul``/... of two tensors with the same channels: the two ids of channel ``j`` are
  *coupled* (unioned): a residual group must keep or drop a channel in every member at once;
- ``cat`` along channels: ids are concatenated, so offsets into the result are respected;
- flatten (``torch.flatten``, ``nn.Flatten``, ``view``/``reshape`` to B×(C·H·W)): feature
  ``f`` carries the id of channel ``f // (H·W)``;
- depthwise convolution: input channel ``j`` is coupled with output channel ``j``;
- channel shuffles (``nn.ChannelShuffle``, or view into groups → transpose → view) permute the ids,
  and ``chunk``/``split`` along channels slice them.

Channels that cannot be removed without changing what the model computes are *pinned*: the model
input, grouped (not depthwise) convolutions, operations that mix channels, channels multiplied by a
constant per-channel tensor, reshapes with hard-coded sizes, and the channels of a shuffle, chunk or
split (their group sizes are fixed). An operation the tracer does not know
is an error naming the op and the node, never a silent guess.

The same edges drive the backward "needed" walk of attribution (:meth:`ChannelGraph.walk_back`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torchvision.ops import StochasticDepth, stochastic_depth

from mdakit.errors import MdakitError

PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.LPPool2d, nn.ZeroPad2d, nn.ConstantPad2d, StochasticDepth,
)
CHANNEL_MODULES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)

_F = torch.nn.functional
PASS_FUNCTIONS = {
    _F.relu, _F.relu6, _F.leaky_relu, _F.elu, _F.selu, _F.gelu, _F.silu, _F.mish, _F.hardswish,
    _F.hardsigmoid, _F.hardtanh, _F.sigmoid, _F.tanh, _F.softplus, _F.dropout, _F.dropout2d,
    _F.max_pool2d, _F.avg_pool2d, _F.adaptive_avg_pool2d, _F.adaptive_max_pool2d, _F.pad,
    torch.relu, torch.sigmoid, torch.tanh, torch.clone, torch.nn.functional.relu_,
    stochastic_depth,  # drops whole samples' branches while training, the identity in eval mode
}
PASS_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "clamp",
                "clamp_", "clamp_min", "clamp_min_", "detach", "float", "to", "type_as"}
BINARY_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                    operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div}
BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
NON_TENSOR_METHODS = {"size", "dim"}
NON_TENSOR_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"}


@dataclass
class PrunableLayer:
    """A ``Conv2d`` or ``Linear`` layer and the channel ids of its inputs and outputs."""

    name: str
    module: nn.Module
    kind: str
    node: str
    input_node: str
    in_ids: torch.Tensor
    out_ids: torch.Tensor
    bn_after: str | None = None

    @property
    def in_size(self) -> int:
        return len(self.in_ids)

    @property
    def out_size(self) -> int:
        return len(self.out_ids)


@dataclass
class _Edge:
    """Output channel ``j`` of a node reads channel ``src[j]`` of ``input`` (``-1``: not from it)."""

    input: str
    src: torch.Tensor | None  # None: every output channel depends on every input channel (mixing)


@dataclass
class ChannelGraph:
    """The traced channel flow of a model. Build it with :func:`trace`."""

    model: nn.Module
    input_shape: tuple[int, ...]
    layers: list[PrunableLayer]
    output_layer: PrunableLayer
    node_ids: dict[str, torch.Tensor]
    edges: dict[str, list[_Edge]]
    order: list[str]
    channel_modules: dict[str, str] = field(default_factory=dict)  # module name -> node feeding it
    parent: list[int] = field(default_factory=list)
    pinned_ids: set[int] = field(default_factory=set)
    output_node: str = ""

    def find(self, i: int) -> int:
        """The representative of channel id ``i``'s coupled group."""
        return _find(self.parent, i)

    def groups(self, ids: torch.Tensor) -> torch.Tensor:
        """Coupled-group representatives of ``ids``."""
        return torch.tensor([self.find(int(i)) for i in ids], dtype=torch.long)

    @property
    def num_ids(self) -> int:
        return len(self.parent)

    def pinned_mask(self) -> torch.Tensor:
        """Boolean over group representatives: True where a channel must never be removed."""
        mask = torch.zeros(self.num_ids, dtype=torch.bool)
        for i in self.pinned_ids:
            mask[self.find(i)] = True
        return mask

    def layer(self, name: str) -> PrunableLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def walk_back(self, output_needed: torch.Tensor,
                  layer_rule: Callable[[PrunableLayer, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Propagate "needed" channel masks from the output back to the input along the real graph.

        ``layer_rule(layer, needed_outputs) -> needed_inputs`` decides, for each prunable layer (last
        to first), which of its inputs are needed. Everything else follows the edges: pass-through
        ops copy the mask, an add passes it to both operands, a concat splits it by offsets, a
        flatten maps features to channels, and a tensor read by several consumers is needed where any
        of them needs it. Returns the needed mask of every node's output (layer nodes included).
        """
        needed: dict[str, torch.Tensor] = {}
        needed[self.output_node] = output_needed.clone().bool()
        layer_of = {layer.node: layer for layer in self.layers}
        for name in reversed(self.order):
            if name not in self.node_ids:
                continue
            mask = needed.setdefault(name, torch.zeros(len(self.node_ids[name]), dtype=torch.bool))
            layer = layer_of.get(name)
            if layer is not None:
                inputs = layer_rule(layer, mask).bool()
                self._or_into(needed, layer.input_node, inputs)
                continue
            for edge in self.edges.get(name, []):
                size = len(self.node_ids[edge.input])
                if edge.src is None:
                    self._or_into(needed, edge.input, torch.full((size,), bool(mask.any())))
                    continue
                valid = edge.src >= 0
                inputs = torch.zeros(size, dtype=torch.bool)
                inputs.index_put_((edge.src[valid],), mask[valid], accumulate=True)
                self._or_into(needed, edge.input, inputs)
        return needed

    def _or_into(self, needed: dict[str, torch.Tensor], name: str, mask: torch.Tensor) -> None:
        if name not in needed:
            needed[name] = mask.clone()
        else:
            needed[name] |= mask


def _find(parent: list[int], i: int) -> int:
    """Union-find root of ``i`` (with path halving)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _shuffled(groups: int, per_group: int) -> torch.Tensor:
    """Workspace channel of each output channel of a shuffle: ``groups × per_group`` read column by column.

    >>> _shuffled(2, 3).tolist()
    [0, 3, 1, 4, 2, 5]
    """
    return torch.arange(groups * per_group).view(groups, per_group).t().flatten()


def _shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(meta.shape)


def _describe(node: torch.fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    return f"{node.op} {name!r} at node {node.name!r}"


class Tracer(torch.fx.Tracer):
    """torch.fx's tracer with every BatchNorm kept as a leaf, subclasses included (timm's
    ``BatchNormAct2d`` is a BatchNorm followed by channel-wise activation and dropout; traced through,
    it would become a functional ``batch_norm`` on parameters the surgery could not slice)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, nn.modules.batchnorm._BatchNorm) or super().is_leaf_module(m, module_qualified_name)


def fx_trace(model: nn.Module) -> torch.fx.Graph:
    """The fx graph of ``model`` as :func:`trace` sees it (node names included).

    >>> from mdakit.zoo import build_model
    >>> [n.op for n in fx_trace(build_model("lenet5", (1, 28, 28), 10)).nodes][:2]
    ['placeholder', 'get_attr']
    """
    return Tracer().trace(model)


def trace(model: nn.Module, input_shape: Sequence[int]) -> ChannelGraph:
    """Trace ``model`` on an input of shape ``input_shape`` (C, H, W) into a :class:`ChannelGraph`.

    >>> from mdakit.zoo import build_model
    >>> g = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> [layer.name for layer in g.layers]
    ['net.features.0', 'net.features.3', 'net.classifier.1', 'net.classifier.3', 'net.classifier.5']
    >>> g.layer("net.classifier.1").in_size  # 16 channels x 5 x 5 flattened
    400
    """
    try:
        graph = fx_trace(model)  # torch.nn modules and every BatchNorm stay leaves
    except Exception as exc:  # fx raises many types for untraceable code
        raise MdakitError(f"cannot trace {type(model).__name__} with torch.fx: {str(exc).splitlines()[0]}") from exc
    gm = torch.fx.GraphModule(model, graph)
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(2, *input_shape, device=device))
    except Exception as exc:
        raise MdakitError(f"the model does not run on inputs of shape {list(input_shape)}: "
                          f"{str(exc).splitlines()[0]}") from exc
    finally:
        model.train(was_training)
    return _Builder(model, gm, tuple(input_shape)).build()


class _Builder:
    def __init__(self, model: nn.Module, gm: torch.fx.GraphModule, input_shape: tuple[int, ...]):
        self.model = model
        self.gm = gm
        self.input_shape = input_shape
        self.modules = dict(model.named_modules())
        self.parent: list[int] = []
        self.pinned: set[int] = set()
        self.ids: dict[str, torch.Tensor] = {}
        self.edges: dict[str, list[_Edge]] = {}
        self.layers: list[PrunableLayer] = []
        self.channel_modules: dict[str, str] = {}
        self.seen_modules: set[str] = set()
        self.grouped: dict[str, tuple[int, int]] = {}  # 5-D node -> (dim 1, dim 2): channels split in groups
        self.pieces: dict[str, tuple[str, list[int]]] = {}  # chunk/split node -> (source, piece sizes)

    # ---------------------------------------------------------------- union-find
    def fresh(self, n: int, pinned: bool = False) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        if pinned:
            self.pinned.update(range(start, start + n))
        return torch.arange(start, start + n)

    def find(self, i: int) -> int:
        return _find(self.parent, i)

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def pin(self, ids: torch.Tensor) -> None:
        self.pinned.update(int(i) for i in ids)

    # ---------------------------------------------------------------- helpers
    def channels(self, node: torch.fx.Node) -> int | None:
        shape = _shape(node)
        if shape is None or len(shape) not in (2, 4):
            return None
        return shape[1]

    def tensor_args(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        flat: list[torch.fx.Node] = []
        torch.fx.node.map_arg((node.args, node.kwargs), flat.append)
        return [n for n in flat if n.name in self.ids]

    def identity(self, node: torch.fx.Node, source: torch.fx.Node) -> None:
        ids = self.ids[source.name]
        self.ids[node.name] = ids
        self.edges[node.name] = [_Edge(source.name, torch.arange(len(ids)))]

    def permuted(self, node: torch.fx.Node, source: torch.fx.Node, src: torch.Tensor) -> None:
        """Channel ``j`` of ``node`` is channel ``src[j]`` of ``source``."""
        self.ids[node.name] = self.ids[source.name][src]
        self.edges[node.name] = [_Edge(source.name, src)]

    def mixing(self, node: torch.fx.Node, sources: list[torch.fx.Node], size: int) -> None:
        for s in sources:
            self.pin(self.ids[s.name])
        self.ids[node.name] = self.fresh(size, pinned=True)
        self.edges[node.name] = [_Edge(s.name, None) for s in sources]

    def first_tensor(self, node: torch.fx.Node) -> torch.fx.Node:
        args = self.tensor_args(node)
        if not args:
            raise MdakitError(f"cannot follow channels through {_describe(node)}: it reads no traced tensor")
        return args[0]

    # ---------------------------------------------------------------- node rules
    def build(self) -> ChannelGraph:
        order = []
        output_node = None
        for node in self.gm.graph.nodes:
            order.append(node.name)
            if node.op == "placeholder":
                size = self.channels(node)
                if size is None:
                    raise MdakitError(f"the model input at node {node.name!r} is not an image or feature tensor")
                self.ids[node.name] = self.fresh(size, pinned=True)
            elif node.op == "get_attr":
                continue
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.call_op(node)
            elif node.op == "output":
                output_node = node.args[0]
        if not isinstance(output_node, torch.fx.Node) or output_node.name not in self.ids:
            raise MdakitError("the model must return one logits tensor")
        output = self.output_layer(output_node)
        self.pin(output.out_ids)
        for layer in self.layers:
            users = [u for u in self.gm.graph.nodes if layer.node in {a.name for a in u.all_input_nodes}]
            if len(users) == 1 and users[0].op == "call_module" and isinstance(
                    self.modules[users[0].target], nn.BatchNorm2d | nn.BatchNorm1d):
                layer.bn_after = str(users[0].target)
        return ChannelGraph(model=self.model, input_shape=self.input_shape, layers=self.layers,
                            output_layer=output, node_ids=self.ids, edges=self.edges, order=order,
                            channel_modules=self.channel_modules, parent=self.parent, pinned_ids=self.pinned,
                            output_node=output_node.name)

    def output_layer(self, output_node: torch.fx.Node) -> PrunableLayer:
        by_node = {layer.node: layer for layer in self.layers}
        name = output_node.name
        while name not in by_node:
            edges = self.edges.get(name, [])
            if len(edges) != 1 or edges[0].src is None or not torch.equal(
                    edges[0].src, torch.arange(len(self.ids[name]))):
                raise MdakitError(f"the logits (node {output_node.name!r}) do not come straight from one Linear or "
                                  "Conv2d layer (through pass-through ops only); such heads are not supported")
            name = edges[0].input
        return by_node[name]

    def call_module(self, node: torch.fx.Node) -> None:
        name = str(node.target)
        module = self.modules[name]
        source = self.first_tensor(node)
        if isinstance(module, nn.Conv2d | nn.Linear):
            if name in self.seen_modules:
                raise MdakitError(f"module {name!r} is called more than once (shared weights are not supported)")
            self.seen_modules.add(name)
            self.prunable(node, name, module, source)
        elif isinstance(module, CHANNEL_MODULES):
            self.identity(node, source)
            self.channel_modules[name] = source.name
        elif isinstance(module, nn.Flatten):
            self.flatten(node, source)
        elif isinstance(module, nn.ChannelShuffle):
            self.shuffle(node, source, module.groups)
        elif isinstance(module, PASS_MODULES):
            if isinstance(module, nn.PReLU) and module.num_parameters > 1:
                raise MdakitError(f"per-channel PReLU at node {node.name!r} is not supported")
            self.identity(node, source)
        else:
            kind = type(module).__name__
            raise MdakitError(f"unsupported module {kind} ({name!r}) at node {node.name!r}: mdakit cannot tell "
                              "how it maps channels")

    def prunable(self, node: torch.fx.Node, name: str, module: nn.Module, source: torch.fx.Node) -> None:
        in_ids = self.ids[source.name]
        shape = _shape(source)
        if isinstance(module, nn.Linear):
            if shape is None or len(shape) != 2:
                raise MdakitError(f"Linear {name!r} at node {node.name!r} reads a {len(shape or ())}-D tensor; "
                                  "only B×features inputs are supported")
            kind = "linear"
        else:
            if module.padding_mode != "zeros":
                raise MdakitError(f"Conv2d {name!r} uses padding_mode={module.padding_mode!r}; only zeros is supported")
            kind = "conv"
        out_ids = self.fresh(module.out_channels if kind == "conv" else module.out_features)
        if kind == "conv" and module.groups > 1:
            if module.groups == module.in_channels == module.out_channels:
                self.union(in_ids, out_ids)
            else:
                self.pin(in_ids)
                self.pin(out_ids)
        self.ids[node.name] = out_ids
        self.layers.append(PrunableLayer(name=name, module=module, kind=kind, node=node.name,
                                         input_node=source.name, in_ids=in_ids, out_ids=out_ids))

    def flatten(self, node: torch.fx.Node, source: torch.fx.Node) -> None:
        in_shape, out_shape = _shape(source), _shape(node)
        if in_shape is None or out_shape is None:
            raise MdakitError(f"cannot follow channels through {_describe(node)}")
        if in_shape == out_shape:
            self.identity(node, source)
            return
        if len(in_shape) == 4 and len(out_shape) == 2 and out_shape[1] == in_shape[1] * in_shape[2] * in_shape[3]:
            per_channel = in_shape[2] * in_shape[3]
            src = torch.arange(out_shape[1]) // per_channel
            self.ids[node.name] = self.ids[source.name][src]
            self.edges[node.name] = [_Edge(source.name, src)]
            return
        if len(in_shape) == 4 and len(out_shape) == 5 and out_shape[1] * out_shape[2] == in_shape[1] \
                and out_shape[3:] == in_shape[2:]:
            # channels split into groups, as a channel shuffle starts: the order changes only by a later
            # transpose, and the group sizes are fixed, so every channel is kept
            self.pin(self.ids[source.name])
            self.identity(node, source)
            self.grouped[node.name] = (out_shape[1], out_shape[2])
            return
        if source.name in self.grouped and len(out_shape) == 4 and out_shape[1] == in_shape[1] * in_shape[2] \
                and out_shape[2:] == in_shape[3:]:
            self.identity(node, source)
            return
        raise MdakitError(f"unsupported reshape {_describe(node)} from {list(in_shape)} to {list(out_shape)}")

    def swap_groups(self, node: torch.fx.Node) -> None:
        """A transpose of a channel-group split (dims 1 and 2 of a 5-D tensor): a channel shuffle."""
        source = self.first_tensor(node)
        dims = [a for a in (*node.args[1:], *node.kwargs.values()) if not isinstance(a, torch.fx.Node)]
        dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], list | tuple) else dims
        swaps = dims in ([1, 2], [2, 1], [0, 2, 1, 3, 4])
        if source.name not in self.grouped or not swaps:
            raise MdakitError(f"unsupported op {_describe(node)}: mdakit follows transposes and permutes only as "
                              "the channel-group swap of a channel shuffle")
        groups, per_group = self.grouped[source.name]
        self.permuted(node, source, _shuffled(groups, per_group))
        self.grouped[node.name] = (per_group, groups)

    def shuffle(self, node: torch.fx.Node, source: torch.fx.Node, groups: int) -> None:
        """A channel shuffle in ``groups``: a fixed permutation of a fixed number of channels (all kept)."""
        size = len(self.ids[source.name])
        self.pin(self.ids[source.name])
        self.permuted(node, source, _shuffled(groups, size // groups))

    def chunk(self, node: torch.fx.Node) -> None:
        """``chunk``/``split`` along channels: the pieces are slices; the split sizes are fixed, so every
        channel of the source is kept."""
        source = self.first_tensor(node)
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        metas = node.meta.get("tensor_meta")
        in_shape = _shape(source)
        if in_shape is None or not isinstance(metas, list | tuple) or dim not in (1, 1 - len(in_shape)):
            raise MdakitError(f"unsupported op {_describe(node)}: only chunks and splits along channels are supported")
        self.pin(self.ids[source.name])
        self.pieces[node.name] = (source.name, [int(m.shape[1]) for m in metas])

    def piece(self, node: torch.fx.Node) -> None:
        name, sizes = self.pieces[node.args[0].name]
        index = int(node.args[1])
        start = sum(sizes[:index])
        self.ids[node.name] = self.ids[name][start:start + sizes[index]]
        self.edges[node.name] = [_Edge(name, torch.arange(start, start + sizes[index]))]

    def call_op(self, node: torch.fx.Node) -> None:
        target = node.target
        out_shape = _shape(node)
        if node.op == "call_method" and target in NON_TENSOR_METHODS or (
                target is getattr and node.args[1] in NON_TENSOR_ATTRIBUTES):
            return
        if out_shape is None and not self.tensor_args(node):
            return  # bookkeeping on sizes and flags (``x.ndim == 4``, ``torch._assert``): no channels flow
        if target is operator.getitem and node.args[0].name in self.pieces:
            self.piece(node)
            return
        if target is operator.getitem and node.args[0].name not in self.ids:
            return
        if target in (torch.chunk, torch.split) or (node.op == "call_method" and target in ("chunk", "split")):
            self.chunk(node)
            return
        if out_shape is None:
            raise MdakitError(f"unsupported op {_describe(node)}: its result is not a tensor mdakit can follow")
        if (node.op == "call_function" and target in PASS_FUNCTIONS) or (
                node.op == "call_method" and target in PASS_METHODS):
            source = self.first_tensor(node)
            self.identity(node, source)
            if source.name in self.grouped:  # e.g. ``.contiguous()`` inside a channel shuffle
                self.grouped[node.name] = self.grouped[source.name]
        elif (node.op == "call_function" and target in BINARY_FUNCTIONS) or (
                node.op == "call_method" and target in BINARY_METHODS):
            self.binary(node)
        elif target in (torch.cat, torch.concat) or (node.op == "call_method" and target == "cat"):
            self.concat(node)
        elif target is torch.flatten or (node.op == "call_method" and target in ("flatten", "view", "reshape")):
            self.reshape(node)
        elif target is torch.mean or (node.op == "call_method" and target in ("mean", "sum", "amax")):
            self.reduce(node)
        elif target in (torch.channel_shuffle, _F.channel_shuffle):
            groups = node.args[1] if len(node.args) > 1 else node.kwargs["groups"]
            self.shuffle(node, self.first_tensor(node), int(groups))
        elif target in (torch.transpose, torch.permute) or (
                node.op == "call_method" and target in ("transpose", "permute")):
            self.swap_groups(node)
        else:
            raise MdakitError(f"unsupported op {_describe(node)}: mdakit cannot tell how it maps channels")

    def binary(self, node: torch.fx.Node) -> None:
        size = self.channels(node)
        out_shape = _shape(node)
        operands = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
        traced = [a for a in operands if a.name in self.ids]
        if size is None or not traced:
            raise MdakitError(f"unsupported op {_describe(node)} on tensors of shape {out_shape}")
        full = [a for a in traced if self.channels(a) == size and len(_shape(a)) == len(out_shape)]
        if not full:
            raise MdakitError(f"unsupported broadcast in {_describe(node)}")
        base = self.ids[full[0].name]
        for other in full[1:]:
            self.union(base, self.ids[other.name])
        constants = [a for a in operands if a.name not in self.ids and (_shape(a) or (1,) * 2)[1:2] == (size,)]
        if constants:  # a per-channel constant: removing a channel would need slicing it, so keep them all
            self.pin(base)
        self.ids[node.name] = base
        self.edges[node.name] = [_Edge(a.name, torch.arange(size)) for a in full]

    def concat(self, node: torch.fx.Node) -> None:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out_shape = _shape(node)
        if not isinstance(tensors, list | tuple) or any(t.name not in self.ids for t in tensors):
            raise MdakitError(f"unsupported concat {_describe(node)}")
        if dim < 0:
            dim += len(out_shape)
        if dim != 1:
            raise MdakitError(f"concat along dim {dim} at node {node.name!r} is not supported (only channels)")
        ids, edges, offset = [], [], 0
        for t in tensors:
            n = len(self.ids[t.name])
            src = torch.full((out_shape[1],), -1, dtype=torch.long)
            src[offset:offset + n] = torch.arange(n)
            edges.append(_Edge(t.name, src))
            ids.append(self.ids[t.name])
            offset += n
        self.ids[node.name] = torch.cat(ids)
        self.edges[node.name] = edges

    def reshape(self, node: torch.fx.Node) -> None:
        source = self.first_tensor(node)
        if node.op == "call_method" and node.target in ("view", "reshape"):
            sizes = [a for a in node.args[1:]]
            flat_sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], list | tuple) else sizes
            in_shape = _shape(source)
            literal = [s for s in flat_sizes if isinstance(s, int) and s not in (-1, 1)]
            if in_shape and len(in_shape) == 4 and literal:
                self.pin(self.ids[source.name])  # hard-coded sizes break if channels are removed
        self.flatten(node, source)

    def reduce(self, node: torch.fx.Node) -> None:
        source = self.first_tensor(node)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        in_shape, out_shape = _shape(source), _shape(node)
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        dims = [d + len(in_shape) if d < 0 else d for d in dims]
        if dims and 0 not in dims and 1 not in dims and out_shape[1] == in_shape[1]:
            self.identity(node, source)
        else:
            self.mixing(node, [source], out_shape[1] if len(out_shape) > 1 else 1)
