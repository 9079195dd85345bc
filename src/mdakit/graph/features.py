"""A model that also returns its penultimate features: the input of the layer its logits come from."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
from torch import nn

from mdakit.errors import MdakitError
from mdakit.graph.builder import fx_trace, trace


def with_features(model: nn.Module, input_shape: Sequence[int]) -> tuple[torch.fx.GraphModule, list[str]]:
    """``model`` as an fx GraphModule returning ``(logits, features)``, with the names of the layers read.

    ``features`` is a list: the output of every prunable layer (Conv2d, Linear) before the one the
    logits come from, in the order they run, then the input of that logit layer (the penultimate
    features). The GraphModule shares ``model``'s layers and weights; it computes the same logits.

    >>> from mdakit.zoo import build_model
    >>> net = build_model("lenet5", (1, 28, 28), 10).eval()
    >>> both, layers = with_features(net, (1, 28, 28))
    >>> logits, features = both(torch.zeros(2, 1, 28, 28))
    >>> layers[-1], [tuple(f.shape) for f in features][-2:], torch.equal(logits, net(torch.zeros(2, 1, 28, 28)))
    ('net.classifier.5', [(2, 84), (2, 84)], True)
    """
    channel_graph = trace(model, input_shape)
    logit_layer = channel_graph.output_layer.name
    graph = fx_trace(model)
    calls: dict[str, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    if len(calls.get(logit_layer, [])) != 1:
        raise MdakitError(f"the logit layer {logit_layer!r} is called {len(calls.get(logit_layer, []))} times in "
                          "the model's forward; its penultimate features are not one tensor")
    layers = [layer.name for layer in channel_graph.layers
              if layer.name != logit_layer and len(calls.get(layer.name, [])) == 1]
    read = [calls[name][0] for name in layers] + [calls[logit_layer][0].args[0]]
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = ((output.args[0], read),)
    graph.lint()
    return torch.fx.GraphModule(model, graph), [*layers, logit_layer]
