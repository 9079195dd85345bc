"""The traced channel flow of a model: prunable layers, per-node channel ids, edges and coupled groups.

:func:`mdakit.graph.trace` builds a :class:`ChannelGraph`; everything downstream (attribution,
masks, surgery) reads it and never the fx graph it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class PrunableLayer:
    """A ``Conv2d`` or ``Linear`` layer and the channel ids of its inputs and outputs."""

    name: str
    module: nn.Module
    kind: str
    node: str
    input_node: str
    in_ids: torch.Tensor
    out_ids: torch.Tensor
    bn_after: str | None = None

    @property
    def in_size(self) -> int:
        return len(self.in_ids)

    @property
    def out_size(self) -> int:
        return len(self.out_ids)


@dataclass
class Edge:
    """Output channel ``j`` of a node reads channel ``src[j]`` of ``input`` (``-1``: not from it).

    >>> Edge("conv", torch.tensor([0, -1])).src.tolist()
    [0, -1]
    """

    input: str
    src: torch.Tensor | None  # None: every output channel depends on every input channel (mixing)

    def is_identity(self, in_size: int) -> bool:
        """Whether the output is the input channel for channel, all ``in_size`` of them (piece 0 of a chunk
        reads ``0..k-1`` of more channels: not the identity).

        >>> Edge("x", torch.arange(2)).is_identity(2), Edge("x", torch.arange(2)).is_identity(4)
        (True, False)
        """
        return self.src is not None and len(self.src) == in_size and torch.equal(self.src, torch.arange(in_size))


@dataclass(frozen=True)
class Shuffle:
    """A channel shuffle: the source's channels viewed as ``groups × per_group`` and read column by column.

    ``fixed`` says which of the two the model's code fixes, the other following the tensor's width at run
    time: ``"groups"`` (``nn.ChannelShuffle``, ``channel_shuffle``, ``x.view(b, g, c // g, h, w)``),
    ``"per_group"`` (``x.view(b, c // k, k, h, w)``), ``"both"`` (two literal sizes) or None (neither
    is a literal: mdakit cannot tell).
    """

    groups: int
    per_group: int
    fixed: str | None

    def swapped(self) -> Shuffle:
        """The grouping after its two group dimensions are transposed."""
        fixed = {"groups": "per_group", "per_group": "groups"}.get(self.fixed, self.fixed)
        return Shuffle(self.per_group, self.groups, fixed)


@dataclass(frozen=True)
class NormSite:
    """A LayerNorm over the channels at module path ``module``: its normalising node, and the dim the channels
    are on in the module's input (``-1``: channels-last; ``1``: a channels-first ``LayerNorm2d`` that permutes
    inside its forward)."""

    node: str
    dim: int


@dataclass(frozen=True)
class AttentionSite:
    """A multi-head attention module whose heads can be removed: its query/key/value layer ``qkv`` (rows
    ordered q, k, v, each head after head), its output layer ``proj``, and how many heads of how many dims."""

    qkv: str
    proj: str
    heads: int
    head_dim: int

    def head_rows(self, head: int) -> list[int]:
        """The q, k and v rows of ``qkv`` that belong to ``head``.

        >>> AttentionSite("qkv", "proj", 2, 1).head_rows(1)
        [1, 3, 5]
        """
        width = self.heads * self.head_dim
        dims = range(head * self.head_dim, (head + 1) * self.head_dim)
        return [part * width + d for part in range(3) for d in dims]


@dataclass(frozen=True)
class Piece:
    """Piece ``index`` of a ``chunk`` or ``split`` of node ``source`` along channels.

    ``chunks``: the number of pieces of a ``chunk(chunks)``, whose sizes follow the width at run time;
    None for a ``split``, whose sizes the model's code fixes.
    """

    source: str
    index: int
    chunks: int | None


def find_root(parent: list[int], i: int) -> int:
    """Union-find root of ``i`` in the forest ``parent`` (with path halving).

    >>> find_root([0, 0, 1], 2)
    0
    """
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@dataclass
class ChannelGraph:
    """The traced channel flow of a model. Build it with :func:`mdakit.graph.trace`."""

    model: nn.Module
    input_shape: tuple[int, ...]
    layers: list[PrunableLayer]
    output_layer: PrunableLayer
    node_ids: dict[str, torch.Tensor]
    edges: dict[str, list[Edge]]
    order: list[str]
    channel_modules: dict[str, str] = field(default_factory=dict)  # module name -> node feeding it
    parent: list[int] = field(default_factory=list)
    pinned_ids: set[int] = field(default_factory=set)
    output_node: str = ""
    unmergeable: dict[str, str] = field(default_factory=dict)
    """Nodes that cannot run on several models' channels stacked (the padded layout), with why: code that
    picks channels at fixed positions (``x[:, :16]``)."""
    shuffles: dict[str, Shuffle] = field(default_factory=dict)
    """The nodes whose edge is a channel shuffle (``nn.ChannelShuffle``, or the transpose of a view into
    groups), with their grouping."""
    pieces: dict[str, Piece] = field(default_factory=dict)
    """The nodes that are a piece of a ``chunk`` or ``split`` along channels."""
    group_norms: dict[str, str] = field(default_factory=dict)  # GroupNorm module name -> its node
    layer_norms: dict[str, NormSite] = field(default_factory=dict)
    """The LayerNorms over channels the padded layout can merge part by part (module path -> site)."""
    channel_params: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Per-channel parameters or buffers (a layer scale): path -> (the node whose channels they scale, their
    dim along those channels). Their channels are pinned; the padded layout stacks them."""
    channel_dims: dict[str, int] = field(default_factory=dict)
    """Nodes whose channels are not on dim 1 (channels-last between a permute and the permute back), with
    their dim."""
    attention: dict[str, AttentionSite] = field(default_factory=dict)
    """Attention modules (path -> site) whose heads are kept or removed whole."""

    @property
    def head_layers(self) -> set[str]:
        """The ``qkv`` layers of the attention modules: their unit is a whole head, not a row."""
        return {site.qkv for site in self.attention.values()}

    def find(self, i: int) -> int:
        """The representative of channel id ``i``'s coupled group."""
        return find_root(self.parent, i)

    def groups(self, ids: torch.Tensor) -> torch.Tensor:
        """Coupled-group representatives of ``ids``."""
        return torch.tensor([self.find(int(i)) for i in ids], dtype=torch.long)

    @property
    def num_ids(self) -> int:
        return len(self.parent)

    def pinned_mask(self) -> torch.Tensor:
        """Boolean over group representatives: True where a channel must never be removed."""
        mask = torch.zeros(self.num_ids, dtype=torch.bool)
        for i in self.pinned_ids:
            mask[self.find(i)] = True
        return mask

    def layer(self, name: str) -> PrunableLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def walk_back(self, output_needed: torch.Tensor,
                  layer_rule: Callable[[PrunableLayer, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Propagate "needed" channel masks from the output back to the input along the real graph.

        ``layer_rule(layer, needed_outputs) -> needed_inputs`` decides, for each prunable layer (last
        to first), which of its inputs are needed. Everything else follows the edges: pass-through
        ops copy the mask, an add passes it to both operands, a concat splits it by offsets, a
        flatten maps features to channels, and a tensor read by several consumers is needed where any
        of them needs it. Returns the needed mask of every node's output (layer nodes included).
        """
        needed: dict[str, torch.Tensor] = {}
        needed[self.output_node] = output_needed.clone().bool()
        layer_of = {layer.node: layer for layer in self.layers}
        for name in reversed(self.order):
            if name not in self.node_ids:
                continue
            mask = needed.setdefault(name, torch.zeros(len(self.node_ids[name]), dtype=torch.bool))
            layer = layer_of.get(name)
            if layer is not None:
                inputs = layer_rule(layer, mask).bool()
                self._or_into(needed, layer.input_node, inputs)
                continue
            for edge in self.edges.get(name, []):
                size = len(self.node_ids[edge.input])
                if edge.src is None:
                    self._or_into(needed, edge.input, torch.full((size,), bool(mask.any())))
                    continue
                valid = edge.src >= 0
                inputs = torch.zeros(size, dtype=torch.bool)
                inputs.index_put_((edge.src[valid],), mask[valid], accumulate=True)
                self._or_into(needed, edge.input, inputs)
        return needed

    def _or_into(self, needed: dict[str, torch.Tensor], name: str, mask: torch.Tensor) -> None:
        if name not in needed:
            needed[name] = mask.clone()
        else:
            needed[name] |= mask
