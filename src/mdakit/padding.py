"""Alignment padding: merge parts of one architecture into a single network of that architecture.

Every prunable layer of the merged network holds all parts' filters side by side; a filter of part p
has zero kernels on every other part's channels, so the parts never mix and the merged logits are the
parts' logits concatenated. The input is repeated once per part and each copy normalised with that
part's own statistics (:class:`mdakit.zoo.MultiNormalize`), so parts trained on datasets with
different statistics still see their own normalised input.

Channel order follows the real graph: a layer's outputs are laid out part by part, but a concat puts
all of its first input's channels (of every part) before its second input's, so inside and after an
inception block the channels are interleaved per branch. Each merged layer places part p's kernels at
the positions its input channels really have (tracked per node), which keeps the merge exact after
concats, residual adds and flattens (App. C.1 of the contribution paper).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mdakit.edits import register_edit
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph, Edge, trace
from mdakit.surgery import resized_batchnorm, set_module
from mdakit.zoo import MultiNormalize, Normalize

Layout = list[tuple[int, int]]  # merged channel position -> (part, channel index in that part)


def split_normalize(model: nn.Module) -> tuple[Normalize | None, nn.Module]:
    """``(normalize, body)`` of a zoo-style ``Sequential(normalize, net)``, else ``(None, model)``."""
    if isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[0], Normalize):
        return model[0], model[1]
    return None, model


def _edge_kind(edges: list[Edge], out_size: int, in_sizes: list[int]) -> str:
    if any(e.src is None for e in edges):
        return "mixing"
    if all(torch.equal(e.src, torch.arange(out_size)) for e in edges):
        return "identity"
    if len(edges) > 1 and all((e.src >= 0).sum() == n for e, n in zip(edges, in_sizes)):
        return "concat"
    if len(edges) == 1 and out_size % in_sizes[0] == 0 and torch.equal(
            edges[0].src, torch.arange(out_size) // (out_size // in_sizes[0])):
        return "flatten"
    return "unknown"


class _Mismatch(Exception):
    def __init__(self, node: str, operand: str, layout: Layout):
        super().__init__(node)
        self.node, self.operand, self.layout = node, operand, layout


def merged_layouts(graphs: Sequence[ChannelGraph]) -> dict[str, Layout]:
    """For every node, which part and channel each merged channel holds.

    A layer's filters are laid out part by part unless a residual add needs them in the order of the
    other operand (e.g. the output of a concat); then that layer takes the other operand's order.
    """
    overrides: dict[str, Layout] = {}
    for _ in range(len(graphs[0].layers) + 1):
        try:
            return _layouts(graphs, overrides)
        except _Mismatch as mismatch:
            producer = _producing_layer(graphs[0], mismatch.operand)
            if producer is None or producer in overrides:
                raise MdakitError(f"the padded layout cannot merge node {mismatch.node!r}: its operands' channels "
                                  "are laid out differently") from None
            overrides[producer] = mismatch.layout
    raise MdakitError("the padded layout could not order the merged channels")


def _producing_layer(graph: ChannelGraph, name: str) -> str | None:
    """The layer whose output reaches ``name`` through channel-preserving ops only, if any."""
    layers = {layer.node for layer in graph.layers}
    while name not in layers:
        edges = graph.edges.get(name)
        if not edges or len(edges) != 1 or edges[0].src is None or not torch.equal(
                edges[0].src, torch.arange(len(graph.node_ids[name]))):
            return None
        name = edges[0].input
    return name


def _layouts(graphs: Sequence[ChannelGraph], overrides: dict[str, Layout]) -> dict[str, Layout]:
    base = graphs[0]
    parts = range(len(graphs))
    layers = {layer.node: i for i, layer in enumerate(base.layers)}
    layouts: dict[str, Layout] = {}
    for name in base.order:
        if name not in base.node_ids:
            continue
        sizes = [len(g.node_ids[name]) for g in graphs]
        if name in layers:
            i = layers[name]
            layer = base.layers[i]
            if layer.kind == "conv" and layer.module.groups > 1:
                depthwise = all(g.layers[i].module.groups == g.layers[i].module.in_channels
                                == g.layers[i].module.out_channels for g in graphs)
                if not depthwise:
                    raise MdakitError(f"the padded layout cannot merge the grouped convolution {layer.name!r}")
                layouts[name] = list(layouts[layer.input_node])
            else:
                layouts[name] = overrides.get(name) or [(p, k) for p in parts for k in range(sizes[p])]
            continue
        edges = base.edges.get(name)
        if edges is None:  # the input
            layouts[name] = [(p, c) for p in parts for c in range(sizes[p])]
            continue
        if name in base.unmergeable:
            raise MdakitError(f"the padded layout cannot merge node {name!r}: {base.unmergeable[name]}; "
                              "use the parallel layout")
        kind = _edge_kind(edges, sizes[0], [len(graphs[0].node_ids[e.input]) for e in edges])
        inputs = [layouts[e.input] for e in edges]
        if kind == "identity":
            for edge, layout in zip(edges[1:], inputs[1:]):
                if layout != inputs[0]:  # reorder whichever operand's producing layer is still free
                    producer = _producing_layer(base, edge.input)
                    if producer is not None and producer not in overrides:
                        raise _Mismatch(name, edge.input, inputs[0])
                    raise _Mismatch(name, edges[0].input, layout)
            layouts[name] = list(inputs[0])
        elif kind == "concat":  # part p's channel n of input i sits after p's channels of inputs before i
            offsets = [[0] * len(graphs) for _ in edges]
            for i in range(1, len(edges)):
                offsets[i] = [offsets[i - 1][p] + len(graphs[p].node_ids[edges[i - 1].input]) for p in parts]
            layouts[name] = [(p, offsets[i][p] + n) for i, layout in enumerate(inputs) for p, n in layout]
        elif kind == "flatten":
            per_channel = [sizes[p] // len(graphs[p].node_ids[edges[0].input]) for p in parts]
            layouts[name] = [(p, n * per_channel[p] + s) for p, n in inputs[0] for s in range(per_channel[p])]
        else:
            raise MdakitError(f"the padded layout cannot merge node {name!r} ({kind} channel mapping)")
    return layouts


def _positions(layout: Layout) -> dict[tuple[int, int], int]:
    return {entry: i for i, entry in enumerate(layout)}


def _merge_layer(modules: Sequence[nn.Module], in_layout: Layout, out_layout: Layout) -> nn.Module:
    first = modules[0]
    pos_in, pos_out = _positions(in_layout), _positions(out_layout)
    ref = first.weight
    if isinstance(first, nn.Conv2d):
        depthwise = first.groups > 1
        merged = nn.Conv2d(len(in_layout), len(out_layout), first.kernel_size, first.stride, first.padding,
                           first.dilation, len(out_layout) if depthwise else 1, first.bias is not None,
                           first.padding_mode, device=ref.device, dtype=ref.dtype)
    else:
        depthwise = False
        merged = nn.Linear(len(in_layout), len(out_layout), first.bias is not None, device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        merged.weight.zero_()
        for p, module in enumerate(modules):
            rows = torch.tensor([pos_out[(p, k)] for k in range(module.weight.shape[0])])
            if depthwise:
                merged.weight[rows] = module.weight
            else:
                cols = torch.tensor([pos_in[(p, n)] for n in range(module.weight.shape[1])])
                merged.weight[rows[:, None], cols[None, :]] = module.weight
            if module.bias is not None:
                merged.bias[rows] = module.bias
    return merged


def _merge_batchnorm(modules: Sequence[nn.Module], layout: Layout) -> nn.Module:
    first = modules[0]
    merged = resized_batchnorm(first, len(layout))
    names = [n for n in ("weight", "bias", "running_mean", "running_var") if getattr(first, n) is not None]
    with torch.no_grad():
        for i, (p, c) in enumerate(layout):
            for n in names:
                getattr(merged, n)[i] = getattr(modules[p], n)[c]
    return merged.to(first.running_mean.device if first.running_mean is not None else "cpu")


def merge_padded(parts: Sequence[nn.Module], input_shape: Sequence[int]) -> nn.Module:
    """One network of the parts' architecture whose logits equal the parts' logits concatenated.

    Parts must be the same architecture (possibly with different kept channels), zoo-style
    ``Sequential(normalize, net)`` or all without input normalisation.

    >>> from mdakit.zoo import build_model
    >>> a, b = build_model("lenet5", (1, 28, 28), 3), build_model("lenet5", (1, 28, 28), 2)
    >>> merged = merge_padded([a.eval(), b.eval()], (1, 28, 28)).eval()
    >>> x = torch.rand(2, 1, 28, 28)
    >>> torch.allclose(merged(x), torch.cat([a(x), b(x)], 1), atol=1e-5)
    True
    """
    norms, bodies = zip(*(split_normalize(part) for part in parts))
    if any(n is None for n in norms) != all(n is None for n in norms):
        raise MdakitError("some parts carry their own input normalisation and some do not")
    graphs = [trace(body, input_shape) for body in bodies]
    base = graphs[0]
    for p, g in enumerate(graphs[1:], start=1):
        if g.order != base.order or [lay.name for lay in g.layers] != [lay.name for lay in base.layers]:
            raise MdakitError(f"part {p} does not have the same graph as part 0; the padded layout needs one "
                              "architecture")
    layouts = merged_layouts(graphs)
    body = copy.deepcopy(bodies[0])
    for i, layer in enumerate(base.layers):
        merged = _merge_layer([g.layers[i].module for g in graphs], layouts[layer.input_node], layouts[layer.node])
        set_module(body, layer.name, merged)
    for name, node in base.channel_modules.items():
        set_module(body, name, _merge_batchnorm([bod.get_submodule(name) for bod in bodies], layouts[node]))
    channels = input_shape[0]
    if norms[0] is None:
        means, stds = [[0.0] * channels] * len(parts), [[1.0] * channels] * len(parts)
    else:
        means = [n.mean.flatten().tolist() for n in norms]
        stds = [n.std.flatten().tolist() for n in norms]
    return nn.Sequential(OrderedDict(normalize=MultiNormalize(means, stds), net=body)).eval()


def padded_widths(model: nn.Module, input_shape: Sequence[int]) -> dict:
    """The structural edit (``kind: padded``) that rebuilds a merged network's shapes from its base
    architecture; :func:`replay_padded` replays it."""
    if not (isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[0], MultiNormalize)):
        raise MdakitError("not a padded assembly (expected Sequential(MultiNormalize, net))")
    norm, body = model[0], model[1]
    graph = trace(body, (input_shape[0] * norm.copies, *input_shape[1:]))
    layers = {f"net.{layer.name}": {"in": layer.module.weight.shape[1] * getattr(layer.module, "groups", 1),
                                    "out": layer.out_size, "groups": getattr(layer.module, "groups", 1)}
              for layer in graph.layers}
    return {"kind": "padded", "copies": norm.copies, "channels": input_shape[0], "layers": layers,
            "channel_modules": {f"net.{name}": len(graph.node_ids[node])
                                for name, node in graph.channel_modules.items()}}


def replay_padded(model: nn.Module, edit: Mapping) -> nn.Module:
    """Replay a ``padded`` edit in place: the input repeated ``copies`` times (normalisation buffers
    to be loaded) and every listed layer and BatchNorm rebuilt at its merged width, weights to be loaded.

    A module without its own normalisation (a user-built one) is wrapped as ``Sequential(normalize, net)``."""
    channels = edit.get("channels") or model.normalize.mean.shape[1]
    zeros = [[0.0] * channels] * edit["copies"]
    normalize = MultiNormalize(zeros, [[1.0] * channels] * edit["copies"])
    if split_normalize(model)[0] is None:
        model = nn.Sequential(OrderedDict(normalize=normalize, net=model))
    model.normalize = normalize
    for name, widths in edit["layers"].items():
        old = model.get_submodule(name)
        if isinstance(old, nn.Conv2d):
            new = nn.Conv2d(widths["in"], widths["out"], old.kernel_size, old.stride, old.padding, old.dilation,
                            widths["groups"], old.bias is not None, old.padding_mode)
        elif isinstance(old, nn.Linear):
            new = nn.Linear(widths["in"], widths["out"], old.bias is not None)
        else:
            raise MdakitError(f"edit names {name!r}, which is not a Conv2d or Linear layer")
        set_module(model, name, new)
    for name, size in edit["channel_modules"].items():
        set_module(model, name, resized_batchnorm(model.get_submodule(name), size))
    return model


register_edit("padded", replay_padded)
