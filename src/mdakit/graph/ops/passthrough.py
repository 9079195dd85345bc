"""Per-channel ops: channel ``j`` of the result is channel ``j`` of the input.

Activations, dropout (stochastic depth too: it drops whole samples' branches while training and is
the identity in eval mode; torchvision's module is traced through to its ``stochastic_depth``
function), pooling, padding, upsampling, copies and casts. One line registers another: a module class, a
function, or the name of a tensor method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F
from torchvision.ops import stochastic_depth

from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder
from mdakit.graph.registry import FUNCTIONS, METHODS, MODULES, register_function, register_method, register_module


def passthrough(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """A function or method that keeps every channel where it is."""
    source = builder.first_tensor(node)
    builder.identity(node, source)
    if source.name in builder.grouped:  # e.g. ``.contiguous()`` inside a channel shuffle
        builder.grouped[node.name] = builder.grouped[source.name]


def passthrough_module(builder: GraphBuilder, node: torch.fx.Node, module: nn.Module) -> None:
    """A module that keeps every channel where it is."""
    builder.identity(node, builder.first_tensor(node))


def register_passthrough(*ops: type[nn.Module] | Callable[..., Any] | str, elementwise: bool = False) -> None:
    """Register ``ops`` as per-channel: module classes, functions, or tensor method names.

    ``elementwise`` ops (activations) are followed wherever the channels are, also channels-last after a
    permute; the others (pooling, padding) only on channels on dim 1.

    >>> from mdakit.graph import trace, unregister
    >>> register_passthrough(torch.erf, elementwise=True)
    >>> class Erf(nn.Module):
    ...     def forward(self, x): return torch.erf(x)
    >>> net = nn.Sequential(nn.Conv2d(1, 3, 1), Erf(), nn.Flatten(), nn.Linear(3, 2))
    >>> trace(net, (1, 1, 1)).layer("3").in_ids.tolist()
    [1, 2, 3]
    >>> unregister(torch.erf)
    """
    for op in ops:
        if isinstance(op, str):
            register_method(op, channels_anywhere=elementwise)(passthrough)
        elif isinstance(op, type) and issubclass(op, nn.Module):
            register_module(op, channels_anywhere=elementwise)(passthrough_module)
        else:
            register_function(op, channels_anywhere=elementwise)(passthrough)


def passthrough_ops() -> list[type[nn.Module] | Callable[..., Any] | str]:
    """Every op registered as pass-through: module classes, then functions, then method names."""
    modules = [op for op, handler in MODULES.items() if handler is passthrough_module]
    ops = [op for table in (FUNCTIONS, METHODS) for op, entry in table.items() if entry.handler is passthrough]
    return modules + ops


@register_module(nn.PReLU)
def prelu(builder: GraphBuilder, node: torch.fx.Node, module: nn.PReLU) -> None:
    """PReLU with one slope; a slope per channel would have to be sliced with the channels."""
    if module.num_parameters > 1:
        raise MdakitError(f"per-channel PReLU at node {node.name!r} is not supported")
    builder.identity(node, builder.first_tensor(node))


register_passthrough(
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Identity, nn.Dropout, nn.AlphaDropout,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.softplus, F.dropout, torch.relu, torch.sigmoid, torch.tanh, torch.clone, F.relu_, stochastic_depth,
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "clamp", "clamp_", "clamp_min",
    "clamp_min_", "detach", "float", "to", "type_as",
    elementwise=True,
)  # not F.sigmoid, F.tanh: fx records the tensor methods they call
register_passthrough(  # over the spatial dims, so on channels at dim 1 only
    nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d, nn.ZeroPad2d,
    nn.ConstantPad2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, F.dropout2d, F.max_pool2d,
    F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.pad, F.interpolate,
)
