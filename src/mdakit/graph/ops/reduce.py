"""Reductions: over spatial dims they keep channel ``j`` as ``j``; over channels (or the batch) they mix."""

from __future__ import annotations

import torch
import torch.fx

from mdakit.graph.builder import GraphBuilder, tensor_shape
from mdakit.graph.registry import register_function, register_method


@register_function(torch.mean)
@register_method("mean", "sum", "amax")
def reduce(builder: GraphBuilder, node: torch.fx.Node) -> None:
    source = builder.first_tensor(node)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    in_shape, out_shape = tensor_shape(source), tensor_shape(node)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    dims = [d + len(in_shape) if d < 0 else d for d in dims]
    if dims and 0 not in dims and 1 not in dims and out_shape[1] == in_shape[1]:
        builder.identity(node, source)
    else:
        builder.mixing(node, [source], out_shape[1] if len(out_shape) > 1 else 1)
