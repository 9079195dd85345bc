"""Transposes and permutes: a channel shuffle's swap of its group dims, or channels moved to another dim.

ConvNeXt-style blocks permute B×C×H×W to B×H×W×C, apply LayerNorm and Linear layers over the channels
(now the last dim) and permute back. The channels keep their ids; the builder records the dim they are
on (``builder.channel_dims``), and only ops that follow channels on any dim may read them there
(:data:`~mdakit.graph.registry.CHANNELS_ANYWHERE`). The batch dim must stay first.
"""

from __future__ import annotations

import torch
import torch.fx

from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder, describe, tensor_shape
from mdakit.graph.ops.shuffle import swap_groups
from mdakit.graph.registry import register_function, register_method


def dims_of(node: torch.fx.Node, rank: int) -> list[int]:
    """The permutation a ``permute`` or ``transpose`` node applies, as ``permute`` takes it.

    >>> graph = torch.fx.symbolic_trace(lambda x: x.transpose(1, -1)).graph
    >>> dims_of(list(graph.nodes)[1], 4)
    [0, 3, 2, 1]
    """
    args = [a for a in (*node.args[1:], *node.kwargs.values()) if not isinstance(a, torch.fx.Node)]
    args = list(args[0]) if len(args) == 1 and isinstance(args[0], list | tuple) else list(args)
    if not all(isinstance(a, int) for a in args):
        raise MdakitError(f"unsupported op {describe(node)}: its dims are not numbers in the code")
    args = [a % rank for a in args]
    if node.target in ("transpose", torch.transpose):
        order = list(range(rank))
        order[args[0]], order[args[1]] = order[args[1]], order[args[0]]
        return order
    return args


@register_function(torch.transpose, torch.permute, channels_anywhere=True)
@register_method("transpose", "permute", channels_anywhere=True)
def permute(builder: GraphBuilder, node: torch.fx.Node) -> None:
    source = builder.first_tensor(node)
    shape = tensor_shape(source)
    if shape is None:
        raise MdakitError(f"unsupported op {describe(node)}: it reads no tensor")
    order = dims_of(node, len(shape))
    if source.name in builder.grouped:
        swap_groups(builder, node, source, order)
        return
    if sorted(order) != list(range(len(shape))) or order[0] != 0:
        raise MdakitError(f"unsupported op {describe(node)}: mdakit follows permutes that keep the batch dim "
                          "first (and the channel-group swap of a channel shuffle)")
    builder.identity(node, source)
    builder.moved(node, order.index(builder.channel_dim(source)))
