"""A model that also returns its penultimate features: the input of the layer its logits come from."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from mdakit.errors import MdakitError
from mdakit.graph.builder import fx_trace, trace


def with_features(model: nn.Module, input_shape: Sequence[int]) -> tuple[torch.fx.GraphModule, list[str]]:
    """``model`` as an fx GraphModule returning ``(logits, features)``, with the names of the layers read.

    ``features`` is a list: the output of every prunable layer (Conv2d, Linear) before the one the
    logits come from, in the order they run, then the input of that logit layer (the penultimate
    features), each as B × channels: a conv's map and a transformer's tokens are averaged over their
    positions. The GraphModule shares ``model``'s layers and weights; it computes the same logits.

    >>> from mdakit.zoo import build_model
    >>> net = build_model("lenet5", (1, 28, 28), 10).eval()
    >>> both, layers = with_features(net, (1, 28, 28))
    >>> logits, features = both(torch.zeros(2, 1, 28, 28))
    >>> layers[-1], [tuple(f.shape) for f in features][-2:], torch.equal(logits, net(torch.zeros(2, 1, 28, 28)))
    ('net.classifier.5', [(2, 84), (2, 84)], True)
    """
    channel_graph = trace(model, input_shape)
    logit_layer = channel_graph.output_layer.name
    gm = torch.fx.GraphModule(model, fx_trace(model))
    _propagate_shapes(gm, model, input_shape)
    graph = gm.graph
    calls: dict[str, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    if len(calls.get(logit_layer, [])) != 1:
        raise MdakitError(f"the logit layer {logit_layer!r} is called {len(calls.get(logit_layer, []))} times in "
                          "the model's forward; its penultimate features are not one tensor")
    kept = [layer for layer in channel_graph.layers
            if layer.name != logit_layer and len(calls.get(layer.name, [])) == 1]
    layers = [layer.name for layer in kept]
    read = [calls[name][0] for name in layers] + [calls[logit_layer][0].args[0]]
    dims = [channel_graph.channel_dims.get(layer.node, 1) for layer in kept] + [
        channel_graph.channel_dims.get(channel_graph.output_layer.input_node, 1)]
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        pooled = [_pool_positions(graph, node, dim) for node, dim in zip(read, dims, strict=True)]
    output.args = ((output.args[0], pooled),)
    graph.lint()
    gm.recompile()
    return gm, [*layers, logit_layer]


def _propagate_shapes(gm: torch.fx.GraphModule, model: nn.Module, input_shape: Sequence[int]) -> None:
    """Record every node's result shape (``tensor_meta``), running ``gm`` once in eval mode on zeros."""
    was_training = model.training
    param = next(model.parameters(), None)
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(2, *input_shape, device=param.device if param is not None else "cpu"))
    finally:
        model.train(was_training)


def _pool_positions(graph: torch.fx.Graph, node: torch.fx.Node, channel_dim: int) -> torch.fx.Node:
    """``node``'s result averaged over every dim but the batch and the channels (a node of ``graph``), as
    B × channels; a B × features tensor as it is."""
    shape = node.meta.get("tensor_meta")
    rank = len(shape.shape) if shape is not None and hasattr(shape, "shape") else None
    if rank is None:
        raise MdakitError(f"the features at node {node.name!r} are not one tensor")
    positions = [d for d in range(1, rank) if d != channel_dim]
    return graph.call_function(torch.mean, (node, positions)) if positions else node
