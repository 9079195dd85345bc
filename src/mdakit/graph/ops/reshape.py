"""Reshapes: flattening channels into features, and the view into channel groups a shuffle starts with.

Flattening B×C×H×W to B×(C·H·W) gives feature ``f`` the id of channel ``f // (H·W)``; flattening the
positions alone (B×C×(H·W), a patch embedding's tokens) keeps channel ``j`` as ``j``. A view of
B×C×H×W as B×G×(C/G)×H×W splits the channels into groups (recorded in ``builder.grouped``, so a
later transpose can be followed as a shuffle), and the view back to B×C×H×W keeps the order. A view
or reshape with hard-coded sizes would break once channels are removed: its channels are pinned.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder, describe, tensor_shape
from mdakit.graph.channel_graph import Edge, Shuffle
from mdakit.graph.registry import register_function, register_method, register_module


def flatten(builder: GraphBuilder, node: torch.fx.Node, source: torch.fx.Node) -> None:
    """``node`` is ``source`` reshaped: the same tensor, flattened to features, or split into groups."""
    in_shape, out_shape = tensor_shape(source), tensor_shape(node)
    if in_shape is None or out_shape is None:
        raise MdakitError(f"cannot follow channels through {describe(node)}")
    if in_shape == out_shape:
        builder.identity(node, source)
        return
    if builder.channel_dim(source) != 1 or (len(in_shape) == 2 and out_shape == (in_shape[0], 1, in_shape[1])):
        channels_as_length(builder, node, source, in_shape, out_shape)
        return
    if len(in_shape) == 4 and len(out_shape) == 2 and out_shape[1] == in_shape[1] * in_shape[2] * in_shape[3]:
        src = torch.arange(out_shape[1]) // (in_shape[2] * in_shape[3])
        builder.assign(node, builder.ids[source.name][src], [Edge(source.name, src)])
        return
    if len(in_shape) == 4 and len(out_shape) == 3 and out_shape[:2] == in_shape[:2]:
        builder.identity(node, source)  # the positions flattened into tokens (a patch embedding), as B×C×N
        return
    if len(in_shape) == 4 and len(out_shape) == 5 and out_shape[1] * out_shape[2] == in_shape[1] \
            and out_shape[3:] == in_shape[2:]:
        # channels split into groups, as a channel shuffle starts: the order changes only by a later
        # transpose, and the group sizes are fixed, so every channel is kept
        builder.pin(builder.ids[source.name])
        builder.identity(node, source)
        builder.grouped[node.name] = Shuffle(out_shape[1], out_shape[2], fixed_group_sizes(node))
        return
    if source.name in builder.grouped and len(out_shape) == 4 and out_shape[1] == in_shape[1] * in_shape[2] \
            and out_shape[2:] == in_shape[3:]:
        builder.identity(node, source)
        return
    raise MdakitError(f"unsupported reshape {describe(node)} from {list(in_shape)} to {list(out_shape)}")


def fixed_group_sizes(node: torch.fx.Node) -> str | None:
    """Which of dims 1 and 2 of a view into groups the code fixes (``"groups"``, ``"per_group"``,
    ``"both"``), or None: a literal size stays when the width changes, ``-1`` or a computed one follows it."""
    sizes = list(node.args[1:]) if node.op == "call_method" else []
    sizes = list(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], list | tuple) else sizes
    if len(sizes) != 5:
        return None
    literal = [isinstance(s, int) and s != -1 for s in sizes[1:3]]
    return {(True, False): "groups", (False, True): "per_group", (True, True): "both"}.get(tuple(literal))


def channels_as_length(builder: GraphBuilder, node: torch.fx.Node, source: torch.fx.Node,
                       in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
    """B×C viewed as B×1×C (the channels become the length a Conv1d slides along, as efficient channel
    attention does), and B×1×C viewed back as B×C×1×1 or B×C; any other reshape of moved channels is refused."""
    if len(in_shape) == 2 and out_shape == (in_shape[0], 1, in_shape[1]):
        builder.identity(node, source)
        builder.moved(node, 2)
        return
    if builder.channel_dim(source) == 2 and len(in_shape) == 3 and in_shape[1] == 1 \
            and out_shape in ((in_shape[0], in_shape[2], 1, 1), (in_shape[0], in_shape[2])):
        builder.identity(node, source)
        builder.moved(node, 1)
        return
    raise MdakitError(f"unsupported reshape {describe(node)} from {list(in_shape)} to {list(out_shape)} of a tensor "
                      f"whose channels are on dim {builder.channel_dim(source)}")


@register_method("expand_as", "expand", channels_anywhere=True)
def expand(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """``y.expand_as(x)`` over the spatial dims: the channels stay (a change of their count is refused)."""
    source = builder.first_tensor(node)
    in_shape, out_shape = tensor_shape(source), tensor_shape(node)
    dim = builder.channel_dim(source)
    if in_shape is None or out_shape is None or len(in_shape) != len(out_shape) or in_shape[dim] != out_shape[dim]:
        raise MdakitError(f"unsupported op {describe(node)}: mdakit follows expands that keep the channels only")
    builder.identity(node, source)


@register_module(nn.Flatten, channels_anywhere=True)
def flatten_module(builder: GraphBuilder, node: torch.fx.Node, module: nn.Flatten) -> None:
    flatten(builder, node, builder.first_tensor(node))


@register_function(torch.flatten, channels_anywhere=True)
@register_method("flatten", "view", "reshape", channels_anywhere=True)
def reshape(builder: GraphBuilder, node: torch.fx.Node) -> None:
    source = builder.first_tensor(node)
    if node.op == "call_method" and node.target in ("view", "reshape"):
        sizes = list(node.args[1:])
        flat_sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], list | tuple) else sizes
        in_shape = tensor_shape(source)
        literal = [s for s in flat_sizes if isinstance(s, int) and s not in (-1, 1)]
        if in_shape and len(in_shape) == 4 and literal:
            builder.pin(builder.ids[source.name])  # hard-coded sizes break if channels are removed
    flatten(builder, node, source)
