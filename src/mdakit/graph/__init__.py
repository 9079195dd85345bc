"""How channels flow through a model: prunable layers, their producers and consumers, coupling.

:func:`trace` runs torch.fx on a model and shape-propagates an example input of the model's own
shape. Every tensor in the graph gets, for each of its channels (dim 1; features for 2-D tensors), a
*channel id*. Ids are created by prunable layers (``Conv2d``, ``Linear``: one per output channel) and
by the model input, and carried through operations:

- BatchNorm, activations, dropout (also stochastic depth), pooling, spatial means: channel ``j``
  stays channel ``j``;
- ``add``/``mul``/... of two tensors with the same channels: the two ids of channel ``j`` are
  *coupled* (unioned): a residual group must keep or drop a channel in every member at once;
- ``cat`` along channels: ids are concatenated, so offsets into the result are respected;
- flatten (``torch.flatten``, ``nn.Flatten``, ``view``/``reshape`` to B×(C·H·W)): feature
  ``f`` carries the id of channel ``f // (H·W)``;
- depthwise convolution: input channel ``j`` is coupled with output channel ``j``;
- channel shuffles (``nn.ChannelShuffle``, or view into groups → transpose → view) permute the ids,
  and ``chunk``/``split`` along channels slice them;
- a ``permute`` that keeps the batch first moves the channels to another dim (ConvNeXt's channels-last
  blocks); there only elementwise ops, ``Linear`` and ``LayerNorm`` over the channels (the last dim) and
  the permute back are followed;
- tokens (a vision transformer's B×tokens×channels): positions flattened into tokens keep the channels, a
  concat along tokens couples them, picking or averaging tokens keeps them; an attention module is kept
  whole and described by its ``qkv`` and ``proj`` layers, each head's rows coupled into one group
  (:mod:`mdakit.graph.ops.attention`).

Channels that cannot be removed without changing what the model computes are *pinned*: the model
input, grouped (not depthwise) convolutions, operations that mix channels, channels multiplied by a
constant per-channel tensor (a layer scale), reshapes with hard-coded sizes, the channels of a shuffle,
chunk or split (their group sizes are fixed), and the channels a LayerNorm or GroupNorm normalises
together. An operation the tracer does not know
is an error naming the op and the node, never a silent guess.

Each op's rule is a handler in :mod:`mdakit.graph.ops`, registered by the op it handles
(:mod:`mdakit.graph.registry`); a per-channel op the tracer does not know yet is one line away:

>>> import torch
>>> from torch import nn
>>> class Erf(nn.Module):
...     def forward(self, x): return torch.erf(x)
>>> net = nn.Sequential(nn.Conv2d(1, 2, 1), Erf(), nn.Flatten(), nn.Linear(2, 2))
>>> trace(net, (1, 1, 1))
Traceback (most recent call last):
mdakit.errors.MdakitError: unsupported op call_function 'erf' at node 'erf': mdakit cannot tell how it maps channels
>>> register_passthrough(Erf)
>>> trace(net, (1, 1, 1)).layer("3").in_ids.tolist()
[1, 2]
>>> unregister(Erf)

The same edges drive the backward "needed" walk of attribution (:meth:`ChannelGraph.walk_back`).
"""

from mdakit.graph import ops
from mdakit.graph.builder import GraphBuilder, Tracer, describe, fx_trace, tensor_shape, trace
from mdakit.graph.channel_graph import ChannelGraph, Edge, Piece, PrunableLayer, Shuffle
from mdakit.graph.fx_edit import insert_after
from mdakit.graph.ops.passthrough import passthrough_ops, register_passthrough
from mdakit.graph.registry import register_function, register_method, register_module, unregister

__all__ = [
    "ChannelGraph", "Edge", "GraphBuilder", "Piece", "PrunableLayer", "Shuffle", "Tracer", "describe", "fx_trace",
    "insert_after", "ops", "passthrough_ops", "register_function", "register_method", "register_module",
    "register_passthrough", "tensor_shape", "trace", "unregister",
]
