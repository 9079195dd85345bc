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
from mdakit.graph.registry import register_function, register_module


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


def swap_groups(builder: GraphBuilder, node: torch.fx.Node, source: torch.fx.Node, order: list[int]) -> None:
    """A transpose of a channel-group split (``order``: dims 1 and 2 of a 5-D tensor swapped): a channel shuffle."""
    if order != [0, 2, 1, 3, 4]:
        raise MdakitError(f"unsupported op {describe(node)}: of a view into channel groups, mdakit follows only "
                          "the swap of the two group dims (a channel shuffle)")
    grouping = builder.grouped[source.name]
    builder.permuted(node, source, shuffled(grouping.groups, grouping.per_group))
    builder.shuffles[node.name] = grouping
    builder.grouped[node.name] = grouping.swapped()
