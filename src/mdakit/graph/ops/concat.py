"""Concatenation along channels: the ids of the inputs, end to end, so offsets into the result hold."""

from __future__ import annotations

import torch
import torch.fx

from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder, describe, tensor_shape
from mdakit.graph.channel_graph import Edge
from mdakit.graph.registry import register_function, register_method


@register_function(torch.cat, torch.concat)
@register_method("cat")
def concat(builder: GraphBuilder, node: torch.fx.Node) -> None:
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out_shape = tensor_shape(node)
    if not isinstance(tensors, list | tuple) or any(t.name not in builder.ids for t in tensors):
        raise MdakitError(f"unsupported concat {describe(node)}")
    if dim < 0:
        dim += len(out_shape)
    if dim != 1:
        raise MdakitError(f"concat along dim {dim} at node {node.name!r} is not supported (only channels)")
    ids, edges, offset = [], [], 0
    for t in tensors:
        n = len(builder.ids[t.name])
        src = torch.full((out_shape[1],), -1, dtype=torch.long)
        src[offset:offset + n] = torch.arange(n)
        edges.append(Edge(t.name, src))
        ids.append(builder.ids[t.name])
        offset += n
    builder.assign(node, torch.cat(ids), edges)
