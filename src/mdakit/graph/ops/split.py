"""``chunk``/``split`` along channels and the pieces read from them: slices of the source's ids.

The split sizes are fixed, so every channel of the source is pinned. ``getitem`` on anything else
without channels (a shape, a tuple of sizes) is bookkeeping.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder, describe, tensor_shape
from mdakit.graph.channel_graph import Edge
from mdakit.graph.registry import register_function, register_method


@register_function(torch.chunk, torch.split, any_result=True)
@register_method("chunk", "split", any_result=True)
def chunk(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """Record the piece sizes; each piece gets its ids when it is read (:func:`piece`)."""
    source = builder.first_tensor(node)
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
    metas = node.meta.get("tensor_meta")
    in_shape = tensor_shape(source)
    if in_shape is None or not isinstance(metas, list | tuple) or dim not in (1, 1 - len(in_shape)):
        raise MdakitError(f"unsupported op {describe(node)}: only chunks and splits along channels are supported")
    builder.pin(builder.ids[source.name])
    builder.pieces[node.name] = (source.name, [int(m.shape[1]) for m in metas])


@register_function(operator.getitem, any_result=True)
def piece(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """Piece ``i`` of a chunk or split: the slice of the source's ids at its offset."""
    container = node.args[0]
    if container.name not in builder.pieces:
        if container.name in builder.ids:
            raise builder.unsupported(node)  # indexing a tensor with channels
        return
    name, sizes = builder.pieces[container.name]
    index = int(node.args[1])
    start = sum(sizes[:index])
    builder.assign(node, builder.ids[name][start:start + sizes[index]],
                   [Edge(name, torch.arange(start, start + sizes[index]))])
