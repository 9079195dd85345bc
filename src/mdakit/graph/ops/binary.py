"""Elementwise arithmetic on two tensors with the same channels: their channels are coupled.

``a + b`` keeps channel ``j`` only if both ``a`` and ``b`` keep it, so the two ids of channel ``j``
are unioned (a residual group keeps or drops a channel in every member at once). An operand that is
a per-channel constant (a parameter or buffer, or arithmetic on them, with C values along the
channel dim once broadcast: a layer scale ``γ`` of shape C, C×1×1 or 1×C×1×1) would have to be
sliced too: those channels are pinned. A broadcast operand with fewer channels (a scalar, a B×1
tensor) carries none. Channels may be on any dim (channels-last after a permute) as long as every
traced operand has them on the same one.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder, describe, tensor_shape
from mdakit.graph.channel_graph import Edge
from mdakit.graph.registry import register_function, register_method


def per_channel(shape: tuple[int, ...], out_rank: int, dim: int, size: int) -> bool:
    """Whether a constant of ``shape``, broadcast against a result of rank ``out_rank``, holds ``size``
    values along channel dim ``dim`` (aligned from the right, as broadcasting does).

    >>> per_channel((8, 1, 1), 4, 1, 8), per_channel((8,), 2, 1, 8), per_channel((8,), 4, 1, 8)
    (True, True, False)
    """
    axis = dim - (out_rank - len(shape))
    return size > 1 and 0 <= axis < len(shape) and shape[axis] == size


RESHAPES = ("reshape", "view", "unsqueeze", "to", "contiguous")


def record_constant(builder: GraphBuilder, node: torch.fx.Node, constant: torch.fx.Node, size: int) -> None:
    """Record the parameter or buffer behind a per-channel constant (directly, or reshaped) and its dim of
    ``size`` values, for the padded layout to stack; a constant computed otherwise cannot be stacked."""
    root = constant
    while root.op == "call_method" and root.target in RESHAPES and isinstance(root.args[0], torch.fx.Node):
        root = root.args[0]
    shape = tensor_shape(root) or ()
    dims = [d for d, n in enumerate(shape) if n == size]
    if root.op != "get_attr" or len(dims) != 1 or shape.count(1) != len(shape) - 1:
        builder.unmergeable[node.name] = "a per-channel constant computed in the code would need stacking"
        return
    builder.channel_params[str(root.target)] = (node.name, dims[0])


@register_function(operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                   operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
                   channels_anywhere=True)
@register_method("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", channels_anywhere=True)
def binary(builder: GraphBuilder, node: torch.fx.Node) -> None:
    out_shape = tensor_shape(node)
    operands = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
    traced = [a for a in operands if a.name in builder.ids]
    dims = {builder.channel_dim(a) for a in traced}
    if out_shape is None or not traced or len(dims) != 1 or max(dims) >= len(out_shape) \
            or (dims == {1} and len(out_shape) not in (2, 4)):
        raise MdakitError(f"unsupported op {describe(node)} on tensors of shape {out_shape}")
    dim = dims.pop()
    size = out_shape[dim]
    full = [a for a in traced if len(tensor_shape(a)) == len(out_shape) and len(builder.ids[a.name]) == size]
    if not full:
        raise MdakitError(f"unsupported broadcast in {describe(node)}")
    base = builder.ids[full[0].name]
    for other in full[1:]:
        builder.union(base, builder.ids[other.name])
    constants = [a for a in operands if a.name not in builder.ids and tensor_shape(a) is not None
                 and per_channel(tensor_shape(a), len(out_shape), dim, size)]
    if constants:  # a per-channel constant: removing a channel would need slicing it, so keep them all
        builder.pin(base)
        for constant in constants:
            record_constant(builder, node, constant, size)
    builder.assign(node, base, [Edge(a.name, torch.arange(size)) for a in full])
    builder.moved(node, dim)
