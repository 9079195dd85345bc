"""Channel shuffles: a fixed permutation of a fixed number of channels, so every channel is kept.

Both forms are followed: ``nn.ChannelShuffle`` / ``channel_shuffle``, and a view into groups
(:mod:`mdakit.graph.ops.reshape`) followed by a transpose of the two group dims and a view back.
The shuffle's node is recorded (``shuffles``) with its grouping and which of its sizes the code fixes.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder, describe
from mdakit.graph.channel_graph import Shuffle
from mdakit.graph.registry import register_function, register_method, register_module


def shuffled(groups: int, per_group: int) -> torch.Tensor:
    """Source channel of each output channel of a shuffle: ``groups × per_group`` read column by column.

    >>> shuffled(2, 3).tolist()
    [0, 3, 1, 4, 2, 5]
    """
    return torch.arange(groups * per_group).view(groups, per_group).t().flatten()


def shuffle(builder: GraphBuilder, node: torch.fx.Node, source: torch.fx.Node, groups: int) -> None:
    """A channel shuffle of ``source`` in ``groups``."""
    size = len(builder.ids[source.name])
    builder.pin(builder.ids[source.name])
    builder.permuted(node, source, shuffled(groups, size // groups))
    builder.shuffles[node.name] = Shuffle(groups, size // groups, "groups")


@register_module(nn.ChannelShuffle)
def shuffle_module(builder: GraphBuilder, node: torch.fx.Node, module: nn.ChannelShuffle) -> None:
    shuffle(builder, node, builder.first_tensor(node), module.groups)


@register_function(torch.channel_shuffle, nn.functional.channel_shuffle)
def shuffle_function(builder: GraphBuilder, node: torch.fx.Node) -> None:
    groups = node.args[1] if len(node.args) > 1 else node.kwargs["groups"]
    shuffle(builder, node, builder.first_tensor(node), int(groups))


@register_function(torch.transpose, torch.permute)
@register_method("transpose", "permute")
def swap_groups(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """A transpose of a channel-group split (dims 1 and 2 of a 5-D tensor): a channel shuffle."""
    source = builder.first_tensor(node)
    dims = [a for a in (*node.args[1:], *node.kwargs.values()) if not isinstance(a, torch.fx.Node)]
    dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], list | tuple) else dims
    swaps = dims in ([1, 2], [2, 1], [0, 2, 1, 3, 4])
    if source.name not in builder.grouped or not swaps:
        raise MdakitError(f"unsupported op {describe(node)}: mdakit follows transposes and permutes only as "
                          "the channel-group swap of a channel shuffle")
    grouping = builder.grouped[source.name]
    builder.permuted(node, source, shuffled(grouping.groups, grouping.per_group))
    builder.shuffles[node.name] = grouping
    builder.grouped[node.name] = grouping.swapped()
