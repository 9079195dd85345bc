"""Reading a tensor's metadata (``x.size()``, ``x.dim()``, ``x.shape``, ``x.device``...): no channels flow,
wherever the channels are."""

from __future__ import annotations

import torch.fx

from mdakit.graph.builder import GraphBuilder
from mdakit.graph.registry import register_function, register_method

ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"}


@register_method("size", "dim", any_result=True, channels_anywhere=True)
def metadata(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """Sizes, not channels: a tensor built from them alone and parameters (a class token expanded to the
    batch) is a constant."""
    builder.constants.add(node.name)


@register_function(getattr, any_result=True, channels_anywhere=True)
def attribute(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """``getattr(x, name)``: metadata, unless ``name`` is an attribute whose channels mdakit cannot follow."""
    if node.args[1] not in ATTRIBUTES:
        raise builder.unsupported(node)
    builder.constants.add(node.name)
