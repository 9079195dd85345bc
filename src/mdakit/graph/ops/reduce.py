"""Reductions: over spatial dims or tokens they keep channel ``j`` as ``j``; over channels (or the batch)
they mix."""

from __future__ import annotations

import torch
import torch.fx

from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder, describe, tensor_shape
from mdakit.graph.registry import register_function, register_method


@register_function(torch.mean, channels_anywhere=True)
@register_method("mean", "sum", "amax", channels_anywhere=True)
def reduce(builder: GraphBuilder, node: torch.fx.Node) -> None:
    source = builder.first_tensor(node)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
    in_shape, out_shape = tensor_shape(source), tensor_shape(node)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    dims = [d + len(in_shape) if d < 0 else d for d in dims]
    channel = builder.channel_dim(source)
    new_dim = channel if keepdim else channel - sum(1 for d in dims if d < channel)
    if dims and 0 not in dims and channel not in dims and len(out_shape) > new_dim \
            and out_shape[new_dim] == in_shape[channel]:
        builder.identity(node, source)
        builder.moved(node, new_dim)
    elif channel != 1:
        raise MdakitError(f"unsupported op {describe(node)}: a reduction over channels that are on dim {channel} "
                          "(after a permute) is not followed")
    else:
        builder.mixing(node, [source], out_shape[1] if len(out_shape) > 1 else 1)
