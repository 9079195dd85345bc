"""Where NAD masks, read off the traced graph with no architecture names: the mask points.

A *trunk* node is a 4-D node that every path from the input to the logits passes through (no edge
of the traced DAG jumps over it). Trunk nodes joined by one channel-preserving edge (BatchNorm,
activation, pooling, dropout) form a *run*; a conv, an add or a concat starts a new run. The block
output of a run is its last node before its first pooling op (else its last node), unless all its
channels are pinned (the model input's are). This gives the output of each conv's BN+ReLU in VGG and
LeNet, the add+ReLU of each residual block and the stem's ReLU in ResNet, each inception concat and
the stem's ReLUs in GoogLeNet. With ``linear=True`` (:class:`~mdakit.attribution.nad.NADSettings`),
runs of 2-D trunk nodes that start at a hidden fully connected layer (not the logits) are block
outputs too: the Linear+ReLU(+Dropout) blocks of a classifier head, whose units the
sub-architectures then share out as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from mdakit.graph import ChannelGraph, fx_trace

POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)
POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.lp_pool2d}


def traced_module(graph: ChannelGraph) -> torch.fx.GraphModule:
    """The model as an fx GraphModule with the node names of :func:`mdakit.graph.trace`."""
    gm = torch.fx.GraphModule(graph.model, fx_trace(graph.model))
    param = next(graph.model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = graph.model.training
    graph.model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(2, *graph.input_shape, device=device))
    finally:
        graph.model.train(was_training)
    return gm


def _flow_edges(graph: ChannelGraph) -> list[tuple[str, str]]:
    edges = [(e.input, name) for name, es in graph.edges.items() for e in es]
    return edges + [(layer.input_node, layer.node) for layer in graph.layers]


def _trunk(graph: ChannelGraph) -> list[str]:
    """Nodes on every input→logits path of the channel-flow DAG, in execution order."""
    edges = _flow_edges(graph)
    pos = {name: i for i, name in enumerate(graph.order)}
    down: dict[str, set[str]] = {}
    up: dict[str, set[str]] = {}
    for a, b in edges:
        down.setdefault(a, set()).add(b)
        up.setdefault(b, set()).add(a)
    sources = [n for n in graph.order if n in graph.node_ids and n not in up]
    live = _reach(sources, down) & _reach([graph.output_node], up)
    jumped = [0] * (len(graph.order) + 1)
    for a, b in edges:
        if a in live and b in live and pos[b] - pos[a] > 1:
            jumped[pos[a] + 1] += 1
            jumped[pos[b]] -= 1
    trunk, open_edges = [], 0
    for i, name in enumerate(graph.order):
        open_edges += jumped[i]
        if name in live and open_edges == 0:
            trunk.append(name)
    return trunk


def _reach(starts: Sequence[str], nxt: Mapping[str, set[str]]) -> set[str]:
    seen, todo = set(starts), list(starts)
    while todo:
        for m in nxt.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def _continues(graph: ChannelGraph, node: str, previous: str) -> bool:
    edges = graph.edges.get(node, [])
    return (len(edges) == 1 and edges[0].input == previous and edges[0].src is not None
            and torch.equal(edges[0].src, torch.arange(len(graph.node_ids[node]))))


def _is_pool(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), POOL_MODULES)
    return node.op == "call_function" and node.target in POOL_FUNCTIONS


def mask_points(graph: ChannelGraph, linear: bool = False, gm: torch.fx.GraphModule | None = None) -> list[str]:
    """The fx node names whose output channels NAD masks: one block output per trunk run (module doc).
    ``gm``: the model as :func:`traced_module` gives it (traced here when ``None``).

    >>> from mdakit.graph import trace
    >>> from mdakit.zoo import build_model
    >>> g = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> mask_points(g), mask_points(g, linear=True)[2:]
    (['net_features_1', 'net_features_4'], ['net_classifier_2', 'net_classifier_4'])
    """
    gm = traced_module(graph) if gm is None else gm
    shapes = {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes
              if hasattr(n.meta.get("tensor_meta"), "shape")}
    pools = {n.name for n in gm.graph.nodes if _is_pool(gm, n)}
    hidden = {layer.node for layer in graph.layers if layer is not graph.output_layer} if linear else set()
    pinned = graph.pinned_mask()
    runs: list[list[str]] = []
    previous = None
    for name in _trunk(graph):
        rank = len(shapes.get(name, ())) if name not in graph.channel_dims else 0  # gates go on dim 1
        if previous is not None and rank == len(shapes[previous]) and _continues(graph, name, previous):
            runs[-1].append(name)
        elif rank == 4 or (rank == 2 and name in hidden):
            runs.append([name])
        else:
            previous = None
            continue
        previous = name
    points = []
    for run in runs:
        end = next((run[i - 1] for i, n in enumerate(run) if n in pools and i > 0), run[-1])
        if not bool(pinned[graph.groups(graph.node_ids[end])].all()):
            points.append(end)
    return points


def architecture_family(graph: ChannelGraph) -> str:
    """``"inception"`` (channel concats), ``"residual"`` (adds of traced tensors) or ``"plain"``.

    >>> from mdakit.graph import trace
    >>> from mdakit.zoo import build_model
    >>> architecture_family(trace(build_model("vgg16", (1, 28, 28), 10), (1, 28, 28)))
    'plain'
    """
    edges = [es for es in graph.edges.values()]
    if any(len(es) > 1 and any(e.src is not None and bool((e.src < 0).any()) for e in es) for es in edges):
        return "inception"
    if any(len(es) > 1 for es in edges):
        return "residual"
    return "plain"
