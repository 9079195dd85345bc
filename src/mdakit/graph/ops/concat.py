"""Concatenation: along channels, the ids of the inputs end to end, so offsets into the result hold;
along another dim (tokens, positions), channel ``j`` of every input is channel ``j`` of the result.

Joined along tokens (a class token put before a ViT's patch tokens), the inputs' channels are coupled as
an add couples them; a constant input (the class token, a parameter) would have to be sliced too, so its
channels are pinned.
"""

from __future__ import annotations

import torch
import torch.fx

from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder, describe, tensor_shape
from mdakit.graph.channel_graph import Edge
from mdakit.graph.registry import register_function, register_method


@register_function(torch.cat, torch.concat, channels_anywhere=True)
@register_method("cat", channels_anywhere=True)
def concat(builder: GraphBuilder, node: torch.fx.Node) -> None:
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out_shape = tensor_shape(node)
    if not isinstance(tensors, list | tuple) or not all(isinstance(t, torch.fx.Node) for t in tensors):
        raise MdakitError(f"unsupported concat {describe(node)}")
    traced = [t for t in tensors if t.name in builder.ids]
    channel_dims = {builder.channel_dim(t) for t in traced}
    if len(channel_dims) != 1 or any(t.name not in builder.constants and t.op != "get_attr"
                                     for t in tensors if t.name not in builder.ids):
        raise MdakitError(f"unsupported concat {describe(node)}: its inputs' channels are not on one dim")
    channel_dim = channel_dims.pop()
    if dim < 0:
        dim += len(out_shape)
    if dim == 0:
        raise MdakitError(f"concat along the batch dim at node {node.name!r} is not supported")
    if dim != channel_dim:
        along_tokens(builder, node, tensors, traced, channel_dim)
        return
    if len(traced) != len(tensors):
        raise MdakitError(f"concat of a constant along channels at node {node.name!r} is not supported")
    ids, edges, offset = [], [], 0
    for t in tensors:
        n = len(builder.ids[t.name])
        src = torch.full((out_shape[dim],), -1, dtype=torch.long)
        src[offset:offset + n] = torch.arange(n)
        edges.append(Edge(t.name, src))
        ids.append(builder.ids[t.name])
        offset += n
    builder.assign(node, torch.cat(ids), edges)
    builder.moved(node, dim)


def along_tokens(builder: GraphBuilder, node: torch.fx.Node, tensors: list[torch.fx.Node],
                 traced: list[torch.fx.Node], channel_dim: int) -> None:
    """A concat along a dim that is not the channels': the channels of every input are coupled."""
    base = builder.ids[traced[0].name]
    for other in traced[1:]:
        if len(builder.ids[other.name]) != len(base):
            raise MdakitError(f"unsupported concat {describe(node)}: its inputs have different channels")
        builder.union(base, builder.ids[other.name])
    if len(traced) != len(tensors):
        builder.pin(base)
        builder.unmergeable[node.name] = "a constant joined to the channels would need stacking"
    builder.assign(node, base, [Edge(t.name, torch.arange(len(base))) for t in traced])
    builder.moved(node, channel_dim)
