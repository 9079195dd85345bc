"""Tracing a model into a :class:`~mdakit.graph.channel_graph.ChannelGraph`.

:func:`trace` runs torch.fx and shape propagation, then :class:`GraphBuilder` visits the nodes in
order and hands each ``call_module``, ``call_function`` and ``call_method`` to the handler its op is
registered with (:mod:`mdakit.graph.registry`). The builder owns the union-find over channel ids and
the small vocabulary handlers speak: fresh ids, identity, permutation, mixing, coupling, pinning.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from mdakit.errors import MdakitError
from mdakit.graph.channel_graph import (
    AttentionSite,
    ChannelGraph,
    Edge,
    NormSite,
    Piece,
    PrunableLayer,
    Shuffle,
    find_root,
)
from mdakit.graph.registry import CHANNELS_ANYWHERE, handled_class, is_registered_class, module_handler, op_entry


def tensor_shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    """The shape shape propagation recorded for ``node``'s result, or None if it is not one tensor."""
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(meta.shape)


def describe(node: torch.fx.Node) -> str:
    """How error messages name a node: its kind, its op and its name.

    >>> graph = fx_trace(nn.Sequential(nn.ReLU()))
    >>> describe(list(graph.nodes)[1])
    "call_module '0' at node '_0'"
    """
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    return f"{node.op} {name!r} at node {node.name!r}"


class Tracer(torch.fx.Tracer):
    """torch.fx's tracer with more modules kept whole (as leaves, like torch.nn's own).

    Every BatchNorm, subclasses included: timm's ``BatchNormAct2d`` is a BatchNorm followed by
    channel-wise activation and dropout; traced through, it would become a functional ``batch_norm``
    on parameters the surgery could not slice. And every module whose own class has a channel handler
    (:func:`~mdakit.graph.registry.register_module`), so that handler sees it; its subclasses are
    traced through as before (a ``Conv2d`` subclass may pad in its forward).
    """

    def __init__(self) -> None:
        super().__init__()
        self.inside: list[str] = []  # the modules being traced, outermost first; left as they were on a failure

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, nn.modules.batchnorm._BatchNorm) or is_registered_class(m)
                or super().is_leaf_module(m, module_qualified_name))

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        self.inside.append(self.path_of_module(m))
        result = super().call_module(m, forward, args, kwargs)
        self.inside.pop()
        return result


def fx_trace(model: nn.Module) -> torch.fx.Graph:
    """The fx graph of ``model`` as :func:`trace` sees it (node names included).

    Code fx cannot trace raises :class:`MdakitError` naming the module and the source line where it stopped.

    >>> from mdakit.zoo import build_model
    >>> [n.op for n in fx_trace(build_model("lenet5", (1, 28, 28), 10)).nodes][:2]
    ['placeholder', 'get_attr']
    >>> class Branchy(nn.Module):
    ...     def forward(self, x): return x if x.sum() > 0 else -x
    >>> fx_trace(nn.Sequential(nn.Conv2d(1, 1, 1), Branchy()))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: cannot trace Sequential with torch.fx: in module '1' (Branchy), at <doctest ...>:2: \
symbolically traced variables cannot be used as inputs to control flow
    """
    tracer = Tracer()
    try:
        return tracer.trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        where = f"in module {tracer.inside[-1]!r} ({type(model.get_submodule(tracer.inside[-1])).__name__}), " \
            if tracer.inside else ""
        line = _user_line(exc)
        raise MdakitError(f"cannot trace {type(model).__name__} with torch.fx: {where}{line}"
                          f"{str(exc).splitlines()[0]}") from exc


def _user_line(exc: BaseException) -> str:
    """``at FILE:LINE: `` of the innermost frame of ``exc`` outside torch and mdakit (the model's code), or nothing."""
    libraries = (Path(torch.__file__).parent, Path(__file__).parents[1])
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not any(root in Path(f.filename).parents for root in libraries)]
    return f"at {Path(frames[-1].filename).name}:{frames[-1].lineno}: " if frames else ""


def trace(model: nn.Module, input_shape: Sequence[int]) -> ChannelGraph:
    """Trace ``model`` on an input of shape ``input_shape`` (C, H, W) into a :class:`ChannelGraph`.

    >>> from mdakit.zoo import build_model
    >>> g = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> [layer.name for layer in g.layers]
    ['net.features.0', 'net.features.3', 'net.classifier.1', 'net.classifier.3', 'net.classifier.5']
    >>> g.layer("net.classifier.1").in_size  # 16 channels x 5 x 5 flattened
    400
    """
    graph = fx_trace(model)  # torch.nn modules and every BatchNorm stay leaves
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
    return GraphBuilder(model, gm, tuple(input_shape)).build()


class GraphBuilder:
    """The channel ids, edges and layers of a shape-propagated fx graph, filled in node by node.

    Handlers read and write its state: ``ids`` (node name -> channel ids of its result), ``edges``,
    ``layers``, ``channel_modules`` (per-channel modules whose parameters follow the channels kept),
    and two records of multi-node patterns: ``grouped`` (5-D node -> its
    :class:`~mdakit.graph.channel_graph.Shuffle` grouping, the channels of a view into groups, as a
    channel shuffle starts) and ``splits`` (chunk/split node -> (source node, piece sizes, number of
    chunks or None for a split)). What the padded layout reads is recorded for the graph too:
    ``unmergeable`` says why a node cannot run on several models' channels stacked (a slice at fixed
    positions), ``shuffles`` and ``pieces`` name the channel shuffles and chunk/split pieces,
    ``group_norms`` and ``layer_norms`` the GroupNorm and LayerNorm modules, and ``channel_params`` the
    per-channel parameters (a layer scale) with the dim of theirs that runs along the channels;
    ``channel_dims`` holds the nodes whose channels are not on dim 1 (channels-last after a permute).
    """

    def __init__(self, model: nn.Module, gm: torch.fx.GraphModule, input_shape: tuple[int, ...]):
        self.model = model
        self.gm = gm
        self.input_shape = input_shape
        self.modules = dict(model.named_modules())
        self.parent: list[int] = []
        self.pinned: set[int] = set()
        self.ids: dict[str, torch.Tensor] = {}
        self.edges: dict[str, list[Edge]] = {}
        self.layers: list[PrunableLayer] = []
        self.channel_modules: dict[str, str] = {}
        self.grouped: dict[str, Shuffle] = {}
        self.splits: dict[str, tuple[str, list[int], int | None]] = {}
        self.unmergeable: dict[str, str] = {}
        self.shuffles: dict[str, Shuffle] = {}
        self.pieces: dict[str, Piece] = {}
        self.group_norms: dict[str, str] = {}
        self.layer_norms: dict[str, NormSite] = {}
        self.channel_params: dict[str, tuple[str, int]] = {}
        self.channel_dims: dict[str, int] = {}
        self.constants: set[str] = set()
        self.order: list[str] = []
        self.attention: dict[str, AttentionSite] = {}
        self.tuples: dict[str, dict[int, str]] = {}  # a module returning a tuple -> element index -> its node

    # ---------------------------------------------------------------- union-find
    def fresh(self, n: int, pinned: bool = False) -> torch.Tensor:
        """``n`` new channel ids, each its own group."""
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        if pinned:
            self.pinned.update(range(start, start + n))
        return torch.arange(start, start + n)

    def find(self, i: int) -> int:
        return find_root(self.parent, i)

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Couple ``a[j]`` with ``b[j]`` for every ``j``: they are kept or removed together."""
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def pin(self, ids: torch.Tensor) -> None:
        """Mark ``ids`` as channels that must never be removed."""
        self.pinned.update(int(i) for i in ids)

    # ---------------------------------------------------------------- reading nodes
    def channels(self, node: torch.fx.Node) -> int | None:
        """Dim 1 of ``node``'s result if it is a B×C or B×C×H×W tensor."""
        shape = tensor_shape(node)
        if shape is None or len(shape) not in (2, 4):
            return None
        return shape[1]

    def channel_dim(self, node: torch.fx.Node | str) -> int:
        """The dim of ``node``'s result its channels are on: 1, unless a permute moved them."""
        return self.channel_dims.get(node if isinstance(node, str) else node.name, 1)

    def tensor_args(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        """The arguments of ``node`` that carry traced channels."""
        flat: list[torch.fx.Node] = []
        torch.fx.node.map_arg((node.args, node.kwargs), flat.append)
        return [n for n in flat if n.name in self.ids]

    def first_tensor(self, node: torch.fx.Node) -> torch.fx.Node:
        args = self.tensor_args(node)
        if not args:
            raise MdakitError(f"cannot follow channels through {describe(node)}: it reads no traced tensor")
        return args[0]

    def layer_at(self, node_name: str) -> PrunableLayer | None:
        """The prunable layer whose output is node ``node_name``, if any."""
        return next((layer for layer in self.layers if layer.node == node_name), None)

    # ---------------------------------------------------------------- recording a node
    def assign(self, node: torch.fx.Node, ids: torch.Tensor, edges: list[Edge]) -> None:
        """``node``'s result has channels ``ids``, read from its inputs along ``edges``."""
        self.ids[node.name] = ids
        self.edges[node.name] = edges

    def identity(self, node: torch.fx.Node, source: torch.fx.Node) -> None:
        """Channel ``j`` of ``node`` is channel ``j`` of ``source`` (on the same dim)."""
        ids = self.ids[source.name]
        self.assign(node, ids, [Edge(source.name, torch.arange(len(ids)))])
        self.moved(node, self.channel_dim(source))

    def permuted(self, node: torch.fx.Node, source: torch.fx.Node, src: torch.Tensor) -> None:
        """Channel ``j`` of ``node`` is channel ``src[j]`` of ``source``."""
        self.assign(node, self.ids[source.name][src], [Edge(source.name, src)])
        self.moved(node, self.channel_dim(source))

    def moved(self, node: torch.fx.Node, dim: int) -> None:
        """``node``'s channels are on ``dim`` of its result."""
        if dim == 1:
            self.channel_dims.pop(node.name, None)
        else:
            self.channel_dims[node.name] = dim

    def mixing(self, node: torch.fx.Node, sources: list[torch.fx.Node], size: int) -> None:
        """Every one of ``node``'s ``size`` channels reads every channel of ``sources``: all pinned."""
        for s in sources:
            self.pin(self.ids[s.name])
        self.assign(node, self.fresh(size, pinned=True), [Edge(s.name, None) for s in sources])

    def unsupported(self, node: torch.fx.Node) -> MdakitError:
        """The error for a function or method node no handler can follow."""
        if tensor_shape(node) is None:
            return MdakitError(f"unsupported op {describe(node)}: its result is not a tensor mdakit can follow")
        return MdakitError(f"unsupported op {describe(node)}: mdakit cannot tell how it maps channels")

    # ---------------------------------------------------------------- visiting the graph
    def build(self) -> ChannelGraph:
        order = self.order
        output_node = None
        for node in self.gm.graph.nodes:
            order.append(node.name)
            if node.op == "placeholder" and self.ids and node.args:
                self.constants.add(node.name)  # an optional argument left at its default (``attn_mask=None``)
            elif node.op == "placeholder":
                size = self.channels(node)
                if size is None:
                    raise MdakitError(f"the model input at node {node.name!r} is not an image or feature tensor")
                self.ids[node.name] = self.fresh(size, pinned=True)
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
        return ChannelGraph(model=self.model, input_shape=self.input_shape, layers=self.layers,
                            output_layer=output, node_ids=self.ids, edges=self.edges, order=order,
                            channel_modules=self.channel_modules, parent=self.parent, pinned_ids=self.pinned,
                            output_node=output_node.name, unmergeable=self.unmergeable, shuffles=self.shuffles,
                            pieces=self.pieces, group_norms=self.group_norms, channel_dims=self.channel_dims,
                            layer_norms=self.layer_norms, channel_params=self.channel_params,
                            attention=self.attention)

    def output_layer(self, output_node: torch.fx.Node) -> PrunableLayer:
        """The layer whose output the logits are, through pass-through ops only."""
        by_node = {layer.node: layer for layer in self.layers}
        name = output_node.name
        while name not in by_node:
            edges = self.edges.get(name, [])
            if len(edges) != 1 or not edges[0].is_identity(len(self.ids[edges[0].input])):
                raise MdakitError(f"the logits (node {output_node.name!r}) do not come straight from one Linear or "
                                  "Conv2d layer (through pass-through ops only); such heads are not supported")
            name = edges[0].input
        return by_node[name]

    def call_module(self, node: torch.fx.Node) -> None:
        name = str(node.target)
        module = self.modules[name]
        if not self.tensor_args(node) and self.is_constant(node):
            return  # a module on constants alone (a positional encoding of the sizes) computes a constant
        self.first_tensor(node)  # a module reading no traced tensor is refused before its kind is looked at
        handler = module_handler(module)
        if handler is None:
            raise MdakitError(f"unsupported module {type(module).__name__} ({name!r}) at node {node.name!r}: "
                              "mdakit cannot tell how it maps channels")
        self.check_channel_dims(node, handled_class(module))
        handler(self, node, module)

    def call_op(self, node: torch.fx.Node) -> None:
        if (tensor_shape(node) is None and not self.tensor_args(node)) or self.is_constant(node):
            # bookkeeping on sizes and flags (``x.ndim == 4``, ``torch._assert``), or arithmetic on parameters
            # alone (``self.gamma.reshape(1, -1, 1, 1)``): no channels flow; a consumer sees a constant
            self.constants.add(node.name)
            return
        entry = op_entry(node)
        if entry is None or (tensor_shape(node) is None and not entry.any_result):
            raise self.unsupported(node)
        self.check_channel_dims(node, node.target)
        entry.handler(self, node)

    def is_constant(self, node: torch.fx.Node) -> bool:
        """Whether ``node`` computes from parameters, buffers and literals alone (never from the input)."""
        flat: list[torch.fx.Node] = []
        torch.fx.node.map_arg((node.args, node.kwargs), flat.append)
        if all(arg.op == "get_attr" or arg.name in self.constants for arg in flat):
            self.constants.add(node.name)
            return True
        return False

    def check_channel_dims(self, node: torch.fx.Node, op: object) -> None:
        """Refuse ``node`` if it reads a tensor whose channels a permute moved and ``op``'s handler follows
        channels on dim 1 only (a pooling or BatchNorm there would work across channels)."""
        moved = [a for a in self.tensor_args(node) if self.channel_dim(a) != 1]
        if moved and op not in CHANNELS_ANYWHERE:
            raise MdakitError(f"unsupported op {describe(node)} on a tensor whose channels are on dim "
                              f"{self.channel_dim(moved[0])} (node {moved[0].name!r}, after a permute): there "
                              "mdakit follows elementwise ops, Linear, LayerNorm and the permute back only")
