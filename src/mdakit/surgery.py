"""From masks to a physically smaller model.

Every keep-set is computed first, in the original channel numbering and consistent across coupled
channels (a residual group keeps a channel in all of its members or in none); then the model is
rebuilt once. The same keep-sets, stored in a part's card, rebuild the structure when the part is
loaded (:func:`rebuild`).

Equivalence (tested): the extracted model's logits equal those of the original whose layers see only
their kept input channels (:class:`MaskedModel`), restricted to the kept logit rows.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from mdakit.attention import NoHeads
from mdakit.component_masks import LayerMask
from mdakit.edits import register_edit
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph
from mdakit.graph.ops.attention import rule_of as attention_rule


@dataclass
class KeepSets:
    """Indices, in the original numbering, of what each module keeps."""

    layers: dict[str, dict[str, list[int]]]
    channel_modules: dict[str, list[int]] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)
    """Attention modules (path) and how many of their heads are kept."""

    def to_dict(self) -> dict:
        raw = {"kind": "keep_sets", "layers": self.layers, "channel_modules": self.channel_modules}
        return {**raw, "heads": self.heads} if self.heads else raw

    @classmethod
    def from_dict(cls, raw: Mapping) -> KeepSets:
        return cls({k: {"in": list(v["in"]), "out": list(v["out"])} for k, v in raw["layers"].items()},
                   {k: list(v) for k, v in raw.get("channel_modules", {}).items()},
                   {k: int(v) for k, v in raw.get("heads", {}).items()})


def kept_groups(graph: ChannelGraph, masks: Mapping[str, LayerMask]) -> torch.Tensor:
    """Boolean over channel-group representatives: kept where some layer needs that input channel."""
    keep = graph.pinned_mask()
    for layer in graph.layers:
        mask = masks[layer.name]
        if len(mask.inputs) != layer.in_size:
            raise MdakitError(f"masks of layer {layer.name!r} have {len(mask.inputs)} inputs, "
                              f"the model {layer.in_size}")
        needed = layer.in_ids[mask.inputs]
        for gid in graph.groups(needed).unique():
            keep[gid] = True
    return keep


def _filter_strength(layer_module: nn.Module) -> torch.Tensor:
    """L1 norm of each output channel's weights: which of a layer's filters are the strongest."""
    return layer_module.weight.detach().flatten(1).abs().sum(1).cpu()


def check_width_multiple(multiple: object) -> None:
    """Refuse a width multiple that is not a positive integer.

    >>> check_width_multiple(0)
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: the width multiple must be a positive integer, got 0
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise MdakitError(f"the width multiple must be a positive integer, got {multiple!r}")


def round_widths(graph: ChannelGraph, keep: torch.Tensor, multiple: int) -> torch.Tensor:
    """``keep`` with every layer's kept width rounded up to a multiple of ``multiple`` (or to the layer's full
    width), the added channels the layer's strongest unkept filters (largest L1 weight norm).

    Coupled channels move together, so adding to one layer can widen the layers it shares channels
    with; the rounding repeats until no width changes.

    >>> from mdakit.zoo import build_model
    >>> from mdakit.graph import trace
    >>> g = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> keep = torch.zeros(g.num_ids, dtype=torch.bool); keep[g.groups(g.layers[0].out_ids[:3])] = True
    >>> int(round_widths(g, keep, 4)[g.groups(g.layers[0].out_ids)].sum())
    4
    """
    check_width_multiple(multiple)
    keep = keep.clone()
    changed = multiple > 1
    heads_of = graph.head_layers  # whole heads are the unit there
    while changed:
        changed = False
        for layer in graph.layers:
            if layer is graph.output_layer or layer.name in heads_of:
                continue
            groups = graph.groups(layer.out_ids)
            kept = keep[groups]
            target = min(-(-int(kept.sum()) // multiple) * multiple, len(groups))
            missing = target - int(kept.sum())
            if missing > 0:
                strength = _filter_strength(layer.module)
                if strength.numel() != len(groups):  # a layer whose weights are not one row per output channel
                    strength = torch.zeros(len(groups))
                strength = strength.masked_fill(kept, -1.0)
                keep[groups[torch.argsort(strength, descending=True, stable=True)[:missing]]] = True
                changed = True
    return keep


def keep_sets(graph: ChannelGraph, masks: Mapping[str, LayerMask], rows: Sequence[int],
              width_multiple: int = 1) -> KeepSets:
    """Keep-sets for a part with the given logit ``rows`` (in that order).

    A layer left with no output channel keeps its strongest one (most needed by the masks, then
    largest weight norm), with a warning. ``width_multiple`` > 1 then rounds every kept width up to a
    multiple of it (:func:`round_widths`), so the runtime's kernels see friendly sizes.
    """
    rows = [int(r) for r in rows]
    out_size = graph.output_layer.out_size
    if not rows or len(set(rows)) != len(rows) or not all(0 <= r < out_size for r in rows):
        raise MdakitError(f"logit rows must be distinct values in 0..{out_size - 1}, got {rows}")
    keep = kept_groups(graph, masks)
    heads_of = graph.head_layers
    for layer in graph.layers:
        if layer is graph.output_layer or layer.name in heads_of:  # an attention may lose every head
            continue
        groups = graph.groups(layer.out_ids)
        if not keep[groups].any():
            strongest = int(torch.argmax(_filter_strength(layer.module)))
            keep[groups[strongest]] = True
            warnings.warn(f"layer {layer.name!r} would keep no channel; keeping its strongest one ({strongest})",
                          stacklevel=2)
    keep = round_widths(graph, keep, width_multiple)
    layers: dict[str, dict[str, list[int]]] = {}
    for layer in graph.layers:
        ins = torch.nonzero(keep[graph.groups(layer.in_ids)]).flatten().tolist()
        outs = (rows if layer is graph.output_layer
                else torch.nonzero(keep[graph.groups(layer.out_ids)]).flatten().tolist())
        layers[layer.name] = {"in": ins, "out": outs}
    channel_modules = {name: torch.nonzero(keep[graph.groups(graph.node_ids[node])]).flatten().tolist()
                       for name, node in graph.channel_modules.items()}
    heads = {path: len(layers[site.qkv]["out"]) // (3 * site.head_dim) for path, site in graph.attention.items()}
    return KeepSets(layers, channel_modules, heads)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def _slice_conv(conv: nn.Conv2d, ins: list[int], outs: list[int]) -> nn.Conv2d:
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if conv.groups > 1 and not depthwise and (len(ins) != conv.in_channels or len(outs) != conv.out_channels):
        raise MdakitError("grouped convolutions can only be kept whole")
    groups = len(outs) if depthwise else conv.groups
    new = nn.Conv2d(len(ins), len(outs), conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups,
                    conv.bias is not None, conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        weight = conv.weight[outs]
        new.weight.copy_(weight if depthwise or conv.groups > 1 else weight[:, ins])
        if conv.bias is not None:
            new.bias.copy_(conv.bias[outs])
    return new


def _slice_linear(linear: nn.Linear, ins: list[int], outs: list[int]) -> nn.Linear:
    new = nn.Linear(len(ins), len(outs), linear.bias is not None, device=linear.weight.device,
                    dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[outs][:, ins])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[outs])
    return new


def resized_batchnorm(bn: nn.modules.batchnorm._BatchNorm, size: int) -> nn.modules.batchnorm._BatchNorm:
    """A copy of ``bn`` over ``size`` channels, with fresh parameters and buffers (weights 1, the rest 0).

    A copy rather than ``type(bn)(size, ...)``, so subclasses keep what their constructor set up (timm's
    ``BatchNormAct2d`` keeps its activation).

    >>> bn = resized_batchnorm(nn.BatchNorm2d(8, eps=1e-3), 3)
    >>> bn.num_features, bn.eps, bn.weight.tolist(), bn.running_mean.tolist()
    (3, 0.001, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    """
    new = copy.deepcopy(bn)
    new.num_features = size
    for name in ("weight", "bias", "running_mean", "running_var"):
        old = getattr(bn, name)
        if old is None:
            continue
        fresh = (torch.ones if name in ("weight", "running_var") else torch.zeros)(size, dtype=old.dtype,
                                                                                   device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(new, name, nn.Parameter(fresh, requires_grad=old.requires_grad))
        else:
            new.register_buffer(name, fresh)
    return new


def _slice_batchnorm(bn: nn.modules.batchnorm._BatchNorm, keep: list[int]) -> nn.Module:
    new = resized_batchnorm(bn, len(keep))
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(bn, name) is not None:
                getattr(new, name).copy_(getattr(bn, name)[keep])
    return new


def rebuild(model: nn.Module, keep: KeepSets, copy_model: bool = True) -> nn.Module:
    """A model whose layers hold only the kept channels (a deep copy unless ``copy_model=False``).

    >>> from mdakit.zoo import build_model
    >>> from mdakit.graph import trace
    >>> m = build_model("lenet5", (1, 28, 28), 10)
    >>> ks = KeepSets({"net.features.0": {"in": [0], "out": [0, 1, 2, 3, 4, 5]},
    ...                "net.features.3": {"in": list(range(6)), "out": list(range(16))},
    ...                "net.classifier.1": {"in": list(range(400)), "out": list(range(120))},
    ...                "net.classifier.3": {"in": list(range(120)), "out": list(range(84))},
    ...                "net.classifier.5": {"in": list(range(84)), "out": [3, 7]}})
    >>> rebuild(m, ks)(torch.zeros(1, 1, 28, 28)).shape
    torch.Size([1, 2])
    """
    model = copy.deepcopy(model) if copy_model else model
    headless = [path for path, heads in keep.heads.items() if heads == 0]
    for name, sets in keep.layers.items():
        if any(name.startswith(path + ".") for path in headless):
            continue  # replaced whole below
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            set_module(model, name, _slice_conv(module, sets["in"], sets["out"]))
        elif isinstance(module, nn.Linear):
            set_module(model, name, _slice_linear(module, sets["in"], sets["out"]))
        else:
            raise MdakitError(f"keep-set names {name!r}, which is not a Conv2d or Linear layer")
    for name, kept in keep.channel_modules.items():
        set_module(model, name, _slice_batchnorm(model.get_submodule(name), kept))
    for name, heads in keep.heads.items():
        module = model.get_submodule(name)
        rule = attention_rule(module)
        if rule is None:
            raise MdakitError(f"keep-set names {name!r} as attention, but {type(module).__name__} is not one")
        if heads == 0:
            proj = getattr(module, rule.proj)
            outs = keep.layers[f"{name}.{rule.proj}"]["out"]
            set_module(model, name, NoHeads(None if proj.bias is None else proj.bias[outs], len(outs),
                                            rule.returns_tuple))
        else:
            rule.set_heads(module, heads)
    return model


def replay_keep_sets(model: nn.Module, edit: Mapping) -> nn.Module:
    """Replay a part card's ``keep_sets`` edit on a freshly built ``model``, in place (weights to be loaded)."""
    return rebuild(model, KeepSets.from_dict(edit), copy_model=False)


register_edit("keep_sets", replay_keep_sets)


def apply_kernel_masks(part: nn.Module, keep: KeepSets, masks: Mapping[str, LayerMask]) -> int:
    """Zero, in an extracted part, the kernels the masks drop (``q = 0``); returns how many were zeroed."""
    zeroed = 0
    with torch.no_grad():
        for name, sets in keep.layers.items():
            module = part.get_submodule(name)
            kernels = masks[name].kernels[sets["out"]][:, sets["in"]]
            if isinstance(module, nn.Conv2d) and module.groups > 1:
                continue
            drop = ~kernels.to(module.weight.device)
            view = module.weight.view(module.weight.shape[0], module.weight.shape[1], -1)
            view[drop] = 0.0
            zeroed += int(drop.sum())
    return zeroed


class MaskedModel(nn.Module):
    """The original model with every prunable layer seeing only its kept input channels, and the logits
    restricted to ``keep``'s output rows: what an extracted part must reproduce exactly."""

    def __init__(self, graph: ChannelGraph, keep: KeepSets, kernel_masks: Mapping[str, LayerMask] | None = None):
        super().__init__()
        self.model = copy.deepcopy(graph.model)
        self.rows = keep.layers[graph.output_layer.name]["out"]
        self._handles = []
        for layer in graph.layers:
            module = self.model.get_submodule(layer.name)
            mask = torch.zeros(layer.in_size, dtype=torch.bool)
            mask[keep.layers[layer.name]["in"]] = True
            shape = (1, -1, 1, 1) if layer.kind == "conv" else (1, -1)
            self._handles.append(module.register_forward_pre_hook(
                lambda m, args, mask=mask.view(shape): (args[0] * mask.to(args[0]),)))
            if kernel_masks is not None and not (layer.kind == "conv" and module.groups > 1):
                with torch.no_grad():
                    weight = module.weight.view(module.weight.shape[0], module.weight.shape[1], -1)
                    weight[~kernel_masks[layer.name].kernels.to(weight.device)] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.rows]
