"""``chunk``/``split`` along channels and the pieces read from them, and slices of tensors with channels.

The split sizes and slice bounds are fixed, so every channel of the source is pinned (a slice that keeps
every channel excepted). Each piece is recorded (``pieces``) with whether its sizes follow the width at
run time (``chunk(n)``) or are fixed in the code (``split``), which the padded layout needs to know.
``getitem`` on anything else without channels (a shape, a tuple of sizes) is bookkeeping.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder, describe, tensor_shape
from mdakit.graph.channel_graph import Edge, Piece
from mdakit.graph.registry import register_function, register_method

FIXED_POSITIONS = "its code picks channels at fixed positions, which stacking the parts' channels would move"


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
    chunks = node.kwargs.get("chunks", node.args[1] if len(node.args) > 1 else None)
    follows_width = node.target in ("chunk", torch.chunk) and isinstance(chunks, int)
    builder.splits[node.name] = (source.name, [int(m.shape[1]) for m in metas], chunks if follows_width else None)


@register_function(operator.getitem, any_result=True, channels_anywhere=True)
def piece(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """Piece ``i`` of a chunk or split: the slice of the source's ids at its offset; or a slice of a tensor
    with channels (:func:`channel_slice`)."""
    container = node.args[0]
    if container.name in builder.tuples:  # ``out, _ = attention(x, x, x)``
        element = builder.tuples[container.name].get(int(node.args[1]))
        if element is None:
            raise builder.unsupported(node)
        builder.assign(node, builder.ids[element], [Edge(element, torch.arange(len(builder.ids[element])))])
        builder.moved(node, builder.channel_dims.get(element, 1))
        return
    if container.name not in builder.splits:
        if container.name in builder.ids:
            channel_slice(builder, node)
        return
    name, sizes, chunks = builder.splits[container.name]
    index = int(node.args[1])
    start = sum(sizes[:index])
    builder.assign(node, builder.ids[name][start:start + sizes[index]],
                   [Edge(name, torch.arange(start, start + sizes[index]))])
    builder.pieces[node.name] = Piece(name, index, chunks)


def channel_slice(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """``x[:, a:b]`` (and any slices of the spatial dims) on a tensor with channels, or ``x[:, 0]`` (a class
    token) and ``x[:, 1:]`` on tokens whose channels are last.

    The slice bounds are numbers in the model's code, so once a channel of ``x`` is removed they would
    pick other channels: every channel of ``x`` is pinned when the slice leaves any out. A slice that
    keeps every channel is a pass-through (it stops at the tensor's end, however many channels are left).
    Bounded slices are recorded as ``unmergeable`` for the layouts that stack channels. Integer indices are
    followed on the dims before channels that are not on dim 1 (the token dim); tensor, ``None`` or ``...``
    indices are refused.
    """
    source = node.args[0]
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    dim = builder.channel_dim(source)
    ints = [d for d, i in enumerate(index) if isinstance(i, int)]
    if not (len(index) >= 1 and index[0] == slice(None)
            and all(isinstance(i, slice) or d in ints for d, i in enumerate(index))
            and all(isinstance(b, int | None) for i in index if isinstance(i, slice) for b in (i.start, i.stop, i.step))
            and (not ints or (dim != 1 and dim not in ints))):
        raise MdakitError(f"unsupported op {describe(node)}: only slices along channels or the spatial "
                          "dimensions (x[:, a:b, ...]), and picking tokens before channels-last, are followed")
    ids = builder.ids[source.name]
    channel = index[dim] if len(index) > dim else slice(None)
    positions = list(range(len(ids)))[channel]
    new_dim = dim - sum(1 for d in ints if d < dim)
    if positions == list(range(len(ids))):
        builder.identity(node, source)  # still right once channels go: the slice stops at the tensor's end
        builder.moved(node, new_dim)
        if channel.stop is not None:  # but not on several models' channels stacked
            builder.unmergeable[node.name] = FIXED_POSITIONS
        return
    builder.pin(ids)
    builder.unmergeable[node.name] = FIXED_POSITIONS
    builder.assign(node, ids[positions], [Edge(source.name, torch.tensor(positions, dtype=torch.long))])
    builder.moved(node, new_dim)
