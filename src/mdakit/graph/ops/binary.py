"""Elementwise arithmetic on two tensors with the same channels: their channels are coupled.

``a + b`` keeps channel ``j`` only if both ``a`` and ``b`` keep it, so the two ids of channel ``j``
are unioned (a residual group keeps or drops a channel in every member at once). An operand that is
a per-channel constant (a buffer or parameter of C values) would have to be sliced too: those
channels are pinned. A broadcast operand with fewer channels (a scalar, a B×1 tensor) carries none.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder, describe, tensor_shape
from mdakit.graph.channel_graph import Edge
from mdakit.graph.registry import register_function, register_method


@register_function(operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                   operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div)
@register_method("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_")
def binary(builder: GraphBuilder, node: torch.fx.Node) -> None:
    size = builder.channels(node)
    out_shape = tensor_shape(node)
    operands = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
    traced = [a for a in operands if a.name in builder.ids]
    if size is None or not traced:
        raise MdakitError(f"unsupported op {describe(node)} on tensors of shape {out_shape}")
    full = [a for a in traced if builder.channels(a) == size and len(tensor_shape(a)) == len(out_shape)]
    if not full:
        raise MdakitError(f"unsupported broadcast in {describe(node)}")
    base = builder.ids[full[0].name]
    for other in full[1:]:
        builder.union(base, builder.ids[other.name])
    constants = [a for a in operands if a.name not in builder.ids and (tensor_shape(a) or (1,) * 2)[1:2] == (size,)]
    if constants:  # a per-channel constant: removing a channel would need slicing it, so keep them all
        builder.pin(base)
    builder.assign(node, base, [Edge(a.name, torch.arange(size)) for a in full])
