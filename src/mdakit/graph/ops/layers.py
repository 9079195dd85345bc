"""Layers with parameters: the prunable ``Conv2d`` and ``Linear`` (also a ``Linear`` subclass that calls
``F.linear`` on its own parameters; over channels-last tensors a ``pointwise`` layer, a 1×1 convolution in
all but layout), BatchNorm, which follows them, and LayerNorm (over the channels) and GroupNorm, which pin
theirs.

A prunable layer creates one channel id per output channel. A depthwise convolution couples input
channel ``j`` with output channel ``j``; a grouped one (not depthwise) pins its inputs and outputs,
whose group sizes are fixed. BatchNorm keeps channel ``j`` as ``j``; its parameters are sliced with
the channels kept, and it is recorded as the BN after a layer it alone reads.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder, describe, tensor_shape
from mdakit.graph.channel_graph import NormSite, PrunableLayer
from mdakit.graph.registry import register_function, register_module


@register_module(nn.Linear, channels_anywhere=True)
@register_module(nn.Conv2d)
def prunable(builder: GraphBuilder, node: torch.fx.Node, module: nn.Conv2d | nn.Linear) -> None:
    """A layer whose output channels can be removed (and whose input channels follow its producers)."""
    add_layer(builder, node, module, str(node.target))


@register_function(F.linear, channels_anywhere=True)
def functional_linear(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """``F.linear(x, self.weight, self.bias)`` inside the forward of an ``nn.Linear`` subclass (timm's
    ``Linear``, traced through): the layer is that module, as if it had been called as a leaf.

    Weights of another module, computed ones, or a forward that does more than the one call are refused: the
    module's parameters are what the surgery slices and what its hooks see, and the part gets a plain
    ``nn.Linear`` in its place.
    """
    weight = node.kwargs.get("weight", node.args[1] if len(node.args) > 1 else None)
    bias = node.kwargs.get("bias", node.args[2] if len(node.args) > 2 else None)
    stack = list(node.meta.get("nn_module_stack", {}))
    owner = stack[-1] if stack else ""
    module = builder.modules.get(owner)
    expected_bias = f"{owner}.bias" if isinstance(module, nn.Linear) and module.bias is not None else None
    if not (isinstance(module, nn.Linear) and isinstance(weight, torch.fx.Node) and weight.op == "get_attr"
            and weight.target == f"{owner}.weight"
            and (bias.target if isinstance(bias, torch.fx.Node) and bias.op == "get_attr" else bias)
            == expected_bias):
        raise MdakitError(f"unsupported op {describe(node)}: a functional linear is followed only inside an "
                          "nn.Linear subclass's forward on its own weight and bias")
    more = [n.name for n in node.graph.nodes if n is not node and n.op.startswith("call_")
            and list(n.meta.get("nn_module_stack", {}))[-1:] == [owner]]
    if more:  # the part is rebuilt with a plain Linear in its place, which would drop them
        raise MdakitError(f"unsupported op {describe(node)}: the forward of {owner!r} computes more than "
                          f"F.linear (node {more[0]!r})")
    add_layer(builder, node, module, owner)


def add_layer(builder: GraphBuilder, node: torch.fx.Node, module: nn.Conv2d | nn.Linear, name: str) -> None:
    """Record ``module`` (at path ``name``) as the prunable layer computed by ``node``."""
    if any(layer.name == name for layer in builder.layers):
        raise MdakitError(f"module {name!r} is called more than once (shared weights are not supported)")
    source = builder.first_tensor(node)
    in_ids = builder.ids[source.name]
    shape = tensor_shape(source)
    if isinstance(module, nn.Linear):
        dim = builder.channel_dim(source)
        if shape is None or dim != len(shape) - 1 or (dim == 1 and len(shape) != 2):
            raise MdakitError(f"Linear {name!r} at node {node.name!r} reads a {len(shape or ())}-D tensor whose "
                              f"channels are on dim {dim}; only B×features inputs, or channels last (after a "
                              "permute), are supported")
        kind = "linear" if len(shape) == 2 else "pointwise"
    else:
        if module.padding_mode != "zeros":
            raise MdakitError(f"Conv2d {name!r} uses padding_mode={module.padding_mode!r}; only zeros is supported")
        kind = "conv"
    out_ids = builder.fresh(module.out_channels if kind == "conv" else module.out_features)
    if kind == "conv" and module.groups > 1:
        if module.groups == module.in_channels == module.out_channels:
            builder.union(in_ids, out_ids)
        else:
            builder.pin(in_ids)
            builder.pin(out_ids)
    builder.ids[node.name] = out_ids
    builder.moved(node, builder.channel_dim(source))
    builder.layers.append(PrunableLayer(name=name, module=module, kind=kind, node=node.name,
                                        input_node=source.name, in_ids=in_ids, out_ids=out_ids))


@register_module(nn.Conv1d, channels_anywhere=True)
def conv1d_across_channels(builder: GraphBuilder, node: torch.fx.Node, module: nn.Conv1d) -> None:
    """A one-in, one-out Conv1d sliding along the channels of a B×1×C tensor (efficient channel attention):
    each result channel mixes its neighbours, so all are pinned. Conv1d layers over channels-first
    sequences are refused."""
    source = builder.first_tensor(node)
    shape, out_shape = tensor_shape(source), tensor_shape(node)
    if builder.channel_dim(source) != 2 or not module.in_channels == module.out_channels == 1 or shape != out_shape:
        raise MdakitError(f"unsupported module Conv1d ({str(node.target)!r}) at node {node.name!r}: mdakit follows "
                          "a Conv1d only with one channel sliding along the channels of a B×1×C tensor")
    builder.mixing(node, [source], shape[-1])
    builder.moved(node, 2)


NORM_SPANS = "a {}'s statistics span its channels, and would span the parts'"


def pin_normalised(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """``node`` normalises its input's channels together: channel ``j`` stays ``j``, but removing one
    would change the statistics of the others, so all are pinned (kept), never approximated."""
    source = builder.first_tensor(node)
    builder.identity(node, source)
    builder.pin(builder.ids[source.name])


@register_module(nn.LayerNorm, channels_anywhere=True)
def layer_norm(builder: GraphBuilder, node: torch.fx.Node, module: nn.LayerNorm) -> None:
    """LayerNorm over the channels alone (the last dim, as in ConvNeXt's channels-last blocks or on B×C
    features): its channels are pinned, and it is recorded in ``layer_norms`` (the padded layout normalises
    each part's channels on their own)."""
    check_layer_norm(builder, node, tuple(module.normalized_shape))
    pin_normalised(builder, node)
    builder.layer_norms[str(node.target)] = NormSite(node.name, -1)


@register_function(F.layer_norm, channels_anywhere=True)
def functional_layer_norm(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """``F.layer_norm`` (inside a LayerNorm subclass such as a channels-first ``LayerNorm2d``), as LayerNorm.

    It is recorded as its module's (:func:`norm_owner`) when that module does nothing but permutes and this
    call on its own weight and bias, so the padded layout can put a part-wise norm in the module's place;
    else the padded layout refuses it."""
    shape = node.kwargs.get("normalized_shape", node.args[1] if len(node.args) > 1 else None)
    check_layer_norm(builder, node, tuple(shape) if isinstance(shape, list | tuple) else (shape,))
    pin_normalised(builder, node)
    owner = norm_owner(builder, node)
    if owner is None:
        builder.unmergeable[node.name] = NORM_SPANS.format("LayerNorm")
    else:
        builder.layer_norms[owner[0]] = NormSite(node.name, owner[1])


def norm_owner(builder: GraphBuilder, node: torch.fx.Node) -> tuple[str, int] | None:
    """``(path, channel dim of its input)`` of the LayerNorm module whose forward is ``node`` between permutes."""
    stack = list(node.meta.get("nn_module_stack", {}))
    owner = stack[-1] if stack else ""
    module = builder.modules.get(owner)
    if not owner or not isinstance(module, nn.LayerNorm):
        return None
    params = [node.kwargs.get(key, node.args[i] if len(node.args) > i else None)
              for i, key in ((2, "weight"), (3, "bias"))]
    expected = [f"{owner}.weight" if module.weight is not None else None,
                f"{owner}.bias" if module.bias is not None else None]
    if [p.target if isinstance(p, torch.fx.Node) and p.op == "get_attr" else p for p in params] != expected:
        return None
    inside = [n for n in node.graph.nodes if n.op.startswith("call_")
              and list(n.meta.get("nn_module_stack", {}))[-1:] == [owner]]
    if any(n is not node and n.target not in ("permute", "contiguous", torch.permute) for n in inside):
        return None
    outside = [a for a in builder.tensor_args(inside[0])
               if list(a.meta.get("nn_module_stack", {}))[-1:] != [owner]]
    last = inside[-1]
    if len(outside) != 1 or builder.channel_dim(outside[0]) != builder.channel_dim(last) or (
            any(u.op != "output" and list(u.meta.get("nn_module_stack", {}))[-1:] == [owner] for u in last.users)):
        return None
    dim = builder.channel_dim(outside[0])
    return owner, -1 if dim == len(tensor_shape(outside[0])) - 1 else dim


def check_layer_norm(builder: GraphBuilder, node: torch.fx.Node, normalized: tuple) -> None:
    """Refuse a LayerNorm over more than the channels, or over a dim that is not theirs."""
    source = builder.first_tensor(node)
    shape = tensor_shape(source)
    if shape is None or builder.channel_dim(source) != len(shape) - 1 or normalized != (shape[-1],):
        raise MdakitError(f"unsupported op {describe(node)}: mdakit follows a LayerNorm over the channels only "
                          f"(the last dim); this one normalises {list(normalized)} of a tensor of shape "
                          f"{list(shape or ())} whose channels are on dim {builder.channel_dim(source)}")


@register_function(F.group_norm)
def functional_group_norm(builder: GraphBuilder, node: torch.fx.Node) -> None:
    """``F.group_norm`` (inside a GroupNorm subclass, as timm's ``GroupNorm1``): its channels pinned as a
    GroupNorm's; the padded layout, which merges GroupNorm modules, refuses the function."""
    pin_normalised(builder, node)
    builder.unmergeable[node.name] = NORM_SPANS.format("functional group norm")


@register_module(nn.GroupNorm)
def group_norm(builder: GraphBuilder, node: torch.fx.Node, module: nn.GroupNorm) -> None:
    """GroupNorm keeps channel ``j`` as ``j``, but its statistics span every channel of a group: removing one
    would change the others, so all its channels are pinned (kept), never approximated. It is recorded in
    ``group_norms``: the padded layout merges it group by group."""
    pin_normalised(builder, node)
    builder.group_norms[str(node.target)] = node.name


@register_module(nn.BatchNorm1d, nn.BatchNorm2d)
def batch_norm(builder: GraphBuilder, node: torch.fx.Node, module: nn.Module) -> None:
    """A per-channel module with per-channel parameters (sliced with the channels kept)."""
    name = str(node.target)
    source = builder.first_tensor(node)
    builder.identity(node, source)
    builder.channel_modules[name] = source.name
    layer = builder.layer_at(source.name)
    if layer is not None and len(source.users) == 1:
        layer.bn_after = name
