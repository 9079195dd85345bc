"""Alignment padding: merge parts of one architecture into a single network of that architecture.

Every prunable layer of the merged network holds all parts' filters side by side; a filter of part p
has zero kernels on every other part's channels, so the parts never mix and the merged logits are the
parts' logits concatenated. The input is repeated once per part and each copy normalised with that
part's own statistics (:class:`mdakit.zoo.MultiNormalize`), so parts trained on datasets with
different statistics still see their own normalised input.

Channel order follows the real graph: a layer's outputs are laid out part by part, but a concat puts
all of its first input's channels (of every part) before its second input's, so inside and after an
inception block the channels are interleaved per branch. Each merged layer places part p's kernels at
the positions its input channels really have (tracked per node as a *layout*: which part and channel
each merged channel holds), which keeps the merge exact after concats, residual adds and flattens
(App. C.1 of the contribution paper). When a node needs its input in another order than it arrives
in, the dense layer producing that input (through channel-preserving ops, depthwise convs included)
is laid out in that order instead; if there is none, or it is already ordered for another node, the
merge is refused with one line naming the node and why.

Patterns whose code works on groups of channels are merged as the same pattern on more channels:

- A grouped convolution keeps all its channels in every part (they are pinned), so each part has
  all G groups. The merged conv has one group per (part, group), P·G groups with the parts' filters
  one after another, provided every run of C/G merged input channels is one group of one part (part
  by part, or the branches of a concat that are its groups). Depthwise convs are the case C/G = 1.
- A channel shuffle is a permutation its code computes from the tensor's width; on the merged width
  it is the same shuffle: the fixed size (the number of groups of ``nn.ChannelShuffle``,
  ``channel_shuffle`` or ``view(b, g, c // g, h, w)``; the group size of ``view(b, c // k, k, h, w)``)
  stays and the other grows. A view fixing both sizes is refused.
- ``chunk(n)`` cuts the merged channels into n equal pieces, which is exact only when merged piece k
  holds exactly every part's piece k; a chunk of a dense layer's output gets that layer laid out
  piece by piece. A ``split`` with sizes written in the code would cut the merged channels at the same
  numbers and is refused. torchvision's ShuffleNetV2 is refused: its stride-1 blocks chunk the output
  of the previous block's shuffle, which no layer can reorder, and no order could do, since the
  channels a block passes on unchanged move from merged position i to 2i block after block, so after
  enough blocks the merged and the parts' surviving counts differ (⌈P·m/2^k⌉ ≠ P·⌈m/2^k⌉).
- GroupNorm(G, C) of each part side by side is GroupNorm(P·G, P·C), its affine parameters in layout
  order, under the same condition as a grouped conv's input (each run of C/G channels one part's group).
- A LayerNorm over channels (ConvNeXt's, channels-last or a ``LayerNorm2d`` that permutes inside its
  forward) becomes a :class:`PartwiseLayerNorm` in its module's place: each part's C channels, one run
  of the merged ones, normalised on their own, affine parameters in layout order.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import skip_init

from mdakit.edits import register_edit
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph, Edge, GraphBuilder, register_module, trace
from mdakit.graph.channel_graph import NormSite
from mdakit.graph.ops.layers import pin_normalised
from mdakit.graph.ops.shuffle import shuffled
from mdakit.surgery import resized_batchnorm, set_module
from mdakit.zoo import MultiNormalize, Normalize

Layout = list[tuple[int, int]]  # merged channel position -> (part, channel index in that part)


class PartwiseLayerNorm(nn.Module):
    """LayerNorm over ``parts`` runs of ``channels`` channels each, on dim ``dim`` of its input: each part's
    channels normalised on their own, as each part's own LayerNorm would.

    >>> norm = PartwiseLayerNorm(2, 3, dim=1)
    >>> x = torch.randn(4, 6, 5, 5)
    >>> own = nn.functional.layer_norm(x[:, 3:].movedim(1, -1), (3,)).movedim(-1, 1)
    >>> torch.allclose(norm(x)[:, 3:], own, atol=1e-6)
    True
    """

    def __init__(self, parts: int, channels: int, dim: int = -1, eps: float = 1e-5, weight: bool = True,
                 bias: bool = True):
        super().__init__()
        self.parts, self.channels, self.dim, self.eps = parts, channels, dim, eps
        self.weight = nn.Parameter(torch.ones(parts * channels)) if weight else None
        self.bias = nn.Parameter(torch.zeros(parts * channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.movedim(self.dim, -1)
        shape = y.shape
        y = F.layer_norm(y.reshape(*shape[:-1], self.parts, self.channels), (self.channels,), eps=self.eps)
        y = y.reshape(shape)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y.movedim(-1, self.dim)

    def extra_repr(self) -> str:
        return f"parts={self.parts}, channels={self.channels}, dim={self.dim}, eps={self.eps}"


@register_module(PartwiseLayerNorm, channels_anywhere=True)
def partwise_layer_norm(builder: GraphBuilder, node: torch.fx.Node, module: PartwiseLayerNorm) -> None:
    """A merged network's part-wise LayerNorm: its channels pinned, recorded as a LayerNorm site."""
    pin_normalised(builder, node)
    builder.layer_norms[str(node.target)] = NormSite(node.name, module.dim)


def split_normalize(model: nn.Module) -> tuple[Normalize | None, nn.Module]:
    """``(normalize, body)`` of a zoo-style ``Sequential(normalize, net)``, else ``(None, model)``."""
    if isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[0], Normalize):
        return model[0], model[1]
    return None, model


def _edge_kind(edges: list[Edge], out_size: int, in_sizes: list[int]) -> str:
    if any(e.src is None for e in edges):
        return "mixing"
    if all(e.is_identity(n) for e, n in zip(edges, in_sizes)):  # not piece 0 of a chunk: it has fewer channels
        return "identity"
    if len(edges) > 1 and all((e.src >= 0).sum() == n for e, n in zip(edges, in_sizes)):
        return "concat"
    if len(edges) == 1 and out_size % in_sizes[0] == 0 and torch.equal(
            edges[0].src, torch.arange(out_size) // (out_size // in_sizes[0])):
        return "flatten"
    return "unknown"


class _Mismatch(Exception):
    """Node ``node`` needs its operand ``operand`` laid out as ``layout``; ``why`` is the refusal when no
    layer can be made to produce that order."""

    def __init__(self, node: str, operand: str, layout: Layout, why: str):
        super().__init__(node)
        self.node, self.operand, self.layout, self.why = node, operand, layout, why


def merged_layouts(graphs: Sequence[ChannelGraph]) -> dict[str, Layout]:
    """For every node, which part and channel each merged channel holds.

    A layer's filters are laid out part by part unless a node needs them in another order (a residual
    add the order of its other operand, a grouped convolution or GroupNorm each group's channels side
    by side, a chunk each piece's channels in its merged piece); then that layer takes that order.
    """
    overrides: dict[str, Layout] = {}
    for _ in range(len(graphs[0].layers) + 1):
        try:
            return _layouts(graphs, overrides)
        except _Mismatch as mismatch:
            producer = _producing_layer(graphs, mismatch.operand)
            if producer is None:
                cannot = (f"no Conv2d or Linear layer produces {mismatch.operand!r} through channel-preserving "
                          "ops, so none can be reordered")
            elif producer in overrides:
                cannot = f"the layer producing {mismatch.operand!r} is already ordered for another node"
            else:
                overrides[producer] = mismatch.layout
                continue
            raise MdakitError(f"the padded layout cannot merge node {mismatch.node!r}: {mismatch.why}; "
                              f"{cannot}") from None
    raise MdakitError("the padded layout could not order the merged channels")


def _group_widths(graphs: Sequence[ChannelGraph], i: int) -> tuple[int, int] | None:
    """(input, output) channels per group of layer ``i`` if it is a grouped convolution in some part
    (depthwise included), else None."""
    convs = [g.layers[i].module for g in graphs]
    if not any(isinstance(c, nn.Conv2d) and c.groups > 1 for c in convs):
        return None
    widths = {(c.in_channels // c.groups, c.out_channels // c.groups) for c in convs}
    if len(widths) != 1:
        raise MdakitError(f"the padded layout cannot merge the grouped convolution {graphs[0].layers[i].name!r}: "
                          f"the parts' groups have different widths ({sorted(widths)})")
    return widths.pop()


def _producing_layer(graphs: Sequence[ChannelGraph], name: str) -> str | None:
    """The layer whose output reaches ``name`` through channel-preserving ops only (depthwise
    convolutions included: they keep their input's order), if any; never a grouped convolution, whose
    order its groups fix."""
    graph = graphs[0]
    layers = {layer.node: i for i, layer in enumerate(graph.layers)}
    while True:
        if name in layers:
            widths = _group_widths(graphs, layers[name])
            if widths is None:
                return name
            if widths != (1, 1):
                return None
            name = graph.layers[layers[name]].input_node
            continue
        edges = graph.edges.get(name)
        if not edges or len(edges) != 1 or not edges[0].is_identity(len(graph.node_ids[edges[0].input])):
            return None
        name = edges[0].input


def _part_major(sizes: Sequence[int]) -> Layout:
    return [(p, c) for p, size in enumerate(sizes) for c in range(size)]


def _blocks(layout: Layout, size: int) -> list[tuple[int, int]] | None:
    """``(part, group)`` of each run of ``size`` merged channels if every run holds one group of one part's
    channels (groups of ``size`` consecutive channels, in any order inside the run), else None.

    >>> _blocks([(0, 1), (0, 0), (1, 0), (1, 1)], 2), _blocks([(0, 0), (1, 0), (0, 1), (1, 1)], 2)
    ([(0, 0), (1, 0)], None)
    """
    blocks = []
    for q in range(0, len(layout), size):
        run = {(p, c // size) for p, c in layout[q:q + size]}
        if len(run) != 1:
            return None
        blocks.append(run.pop())
    return blocks


def _layouts(graphs: Sequence[ChannelGraph], overrides: dict[str, Layout]) -> dict[str, Layout]:
    base = graphs[0]
    layers = {layer.node: i for i, layer in enumerate(base.layers)}
    norms = {node: module for module, node in base.group_norms.items()}
    layer_norms = {site.node: module for module, site in base.layer_norms.items()}
    layouts: dict[str, Layout] = {}
    for name in base.order:
        if name not in base.node_ids:
            continue
        sizes = [len(g.node_ids[name]) for g in graphs]
        if name in layers:
            i = layers[name]
            widths = _group_widths(graphs, i)
            if widths is None:
                layouts[name] = overrides.get(name) or _part_major(sizes)
            else:
                layouts[name] = _grouped_layout(graphs, i, widths, layouts)
            continue
        edges = base.edges.get(name)
        if edges is None:  # the input
            layouts[name] = _part_major(sizes)
            continue
        if name in base.unmergeable:
            raise MdakitError(f"the padded layout cannot merge node {name!r}: {base.unmergeable[name]}; "
                              "use the parallel layout")
        if name in base.pieces:
            layouts[name] = _piece_layout(graphs, name, layouts)
            continue
        if name in base.shuffles:
            layouts[name] = _shuffle_layout(graphs, name, layouts)
            continue
        if name in norms:
            _group_norm_blocks(graphs, norms[name], name, edges[0].input, layouts)
        if name in layer_norms:
            _layer_norm_runs(graphs, layer_norms[name], name, edges[0].input, layouts)
        kind = _edge_kind(edges, sizes[0], [len(graphs[0].node_ids[e.input]) for e in edges])
        inputs = [layouts[e.input] for e in edges]
        if kind == "identity":
            for edge, layout in zip(edges[1:], inputs[1:]):
                if layout != inputs[0]:  # reorder whichever operand's producing layer is still free
                    why = "its operands' channels are laid out differently"
                    producer = _producing_layer(graphs, edge.input)
                    if producer is not None and producer not in overrides:
                        raise _Mismatch(name, edge.input, inputs[0], why)
                    raise _Mismatch(name, edges[0].input, layout, why)
            layouts[name] = list(inputs[0])
        elif kind == "concat":  # part p's channel n of input i sits after p's channels of inputs before i
            offsets = [[0] * len(graphs) for _ in edges]
            for i in range(1, len(edges)):
                offsets[i] = [offsets[i - 1][p] + len(graphs[p].node_ids[edges[i - 1].input])
                              for p in range(len(graphs))]
            layouts[name] = [(p, offsets[i][p] + n) for i, layout in enumerate(inputs) for p, n in layout]
        elif kind == "flatten":
            per_channel = [sizes[p] // len(graphs[p].node_ids[edges[0].input]) for p in range(len(graphs))]
            layouts[name] = [(p, n * per_channel[p] + s) for p, n in inputs[0] for s in range(per_channel[p])]
        else:
            raise MdakitError(f"the padded layout cannot merge node {name!r} ({kind} channel mapping)")
    return layouts


def _grouped_layout(graphs: Sequence[ChannelGraph], i: int, widths: tuple[int, int],
                    layouts: dict[str, Layout]) -> Layout:
    """A grouped convolution merged group by group: one merged group per (part, group) run of its input,
    its outputs that group's filters of that part."""
    layer = graphs[0].layers[i]
    in_width, out_width = widths
    blocks = _blocks(layouts[layer.input_node], in_width)
    if blocks is None:
        kind = "depthwise" if widths == (1, 1) else "grouped"
        raise _Mismatch(layer.node, layer.input_node,
                        _part_major([len(g.node_ids[layer.input_node]) for g in graphs]),
                        f"the {kind} convolution {layer.name!r} needs each group of each part's input channels side "
                        "by side, and its input is laid out otherwise")
    return [(p, g * out_width + o) for p, g in blocks for o in range(out_width)]


def _group_norm_blocks(graphs: Sequence[ChannelGraph], module: str, name: str, source: str,
                       layouts: dict[str, Layout]) -> list[tuple[int, int]]:
    """The (part, group) runs a GroupNorm's input is laid out in: each part's group normalised on its own
    is one group of the merged GroupNorm."""
    norms = [g.model.get_submodule(module) for g in graphs]
    shapes = {(n.num_channels // n.num_groups, n.eps, n.affine) for n in norms}
    if len(shapes) != 1:
        raise MdakitError(f"the padded layout cannot merge node {name!r}: the parts' GroupNorms {module!r} differ "
                          "in group width, eps or affine")
    blocks = _blocks(layouts[source], norms[0].num_channels // norms[0].num_groups)
    if blocks is None:
        raise _Mismatch(name, source, _part_major([len(g.node_ids[source]) for g in graphs]),
                        f"GroupNorm {module!r} needs each group of each part's channels side by side, and its input "
                        "is laid out otherwise")
    return blocks


def _layer_norm_runs(graphs: Sequence[ChannelGraph], module: str, name: str, source: str,
                     layouts: dict[str, Layout]) -> None:
    """Check that a LayerNorm's input holds each part's channels as one run (any order inside it)."""
    widths = {len(g.node_ids[source]) for g in graphs}
    blocks = _blocks(layouts[source], widths.pop()) if len(widths) == 1 else None
    if blocks is None or sorted(blocks) != [(p, 0) for p in range(len(graphs))]:
        raise _Mismatch(name, source, _part_major([len(g.node_ids[source]) for g in graphs]),
                        f"LayerNorm {module!r} needs each part's channels side by side, and its input is laid "
                        "out otherwise")


def _piece_layout(graphs: Sequence[ChannelGraph], name: str, layouts: dict[str, Layout]) -> Layout:
    """A piece of a ``chunk(n)``: on the stacked channels the chunk cuts the merged width into n, which is
    exact when merged piece k holds exactly every part's piece k; its layout then counts each part's
    channels from the start of that part's piece."""
    piece = graphs[0].pieces[name]
    if piece.chunks is None:
        raise MdakitError(f"the padded layout cannot merge node {name!r}: it is a piece of a split whose sizes are "
                          "numbers in the model's code, which would cut the parts' stacked channels at the same "
                          "numbers; use the parallel layout")
    source = layouts[piece.source]
    spans = [g.edges[name][0].src for g in graphs]  # part p's piece: these channels of p's source
    merged = torch.arange(len(source)).chunk(piece.chunks)
    held = [source[i] for i in merged[piece.index].tolist()] if piece.index < len(merged) else []
    if sorted(held) == sorted((p, c) for p, span in enumerate(spans) for c in span.tolist()):
        return [(p, c - int(spans[p][0])) for p, c in held]
    chunked = [torch.arange(len(g.node_ids[piece.source])).chunk(piece.chunks) for g in graphs]
    stacked = [sum(len(pieces[k]) for pieces in chunked if k < len(pieces))
               for k in range(max(len(pieces) for pieces in chunked))]
    if stacked != [len(m) for m in merged]:
        raise MdakitError(f"the padded layout cannot merge node {name!r}: chunk({piece.chunks}) of the parts' "
                          f"{len(source)} stacked channels gives pieces of {[len(m) for m in merged]}, not the parts' "
                          f"pieces side by side ({stacked}); use the parallel layout")
    wanted = [(p, int(c)) for k in range(len(stacked)) for p, pieces in enumerate(chunked) if k < len(pieces)
              for c in pieces[k]]
    raise _Mismatch(name, piece.source, wanted,
                    f"merged piece {piece.index} of the chunk of {piece.source!r} would not hold exactly each part's "
                    f"piece {piece.index}")


def _shuffle_layout(graphs: Sequence[ChannelGraph], name: str, layouts: dict[str, Layout]) -> Layout:
    """A channel shuffle is a permutation the code computes from the tensor's width: on the stacked channels
    it is the same shuffle at the merged width."""
    shuffle = graphs[0].shuffles[name]
    source = layouts[graphs[0].edges[name][0].input]
    width = len(source)
    fixed = {"groups": shuffle.groups, "per_group": shuffle.per_group}.get(shuffle.fixed)
    if fixed is None:
        what = "both its number of groups and their size" if shuffle.fixed == "both" else \
            "neither its number of groups nor their size, so mdakit cannot tell how it groups more channels"
        raise MdakitError(f"the padded layout cannot merge the channel shuffle at node {name!r}: its code fixes {what}")
    if width % fixed:
        raise MdakitError(f"the padded layout cannot merge the channel shuffle at node {name!r}: the "
                          f"{width} stacked channels do not divide by its fixed {shuffle.fixed.replace('_', ' ')} "
                          f"size {fixed}")
    groups = fixed if shuffle.fixed == "groups" else width // fixed
    inverse = [torch.argsort(g.edges[name][0].src).tolist() for g in graphs]  # part's source channel -> its own
    return [(p, inverse[p][c]) for p, c in (source[s] for s in shuffled(groups, width // groups).tolist())]


def _positions(layout: Layout) -> dict[tuple[int, int], int]:
    return {entry: i for i, entry in enumerate(layout)}


def _merge_layer(modules: Sequence[nn.Module], in_layout: Layout, out_layout: Layout) -> nn.Module:
    first = modules[0]
    ref = first.weight
    if any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in modules):
        return _merge_grouped(modules, in_layout, out_layout)
    pos_in, pos_out = _positions(in_layout), _positions(out_layout)
    if isinstance(first, nn.Conv2d):  # skip_init: every weight is written below, a random init is wasted time
        merged = skip_init(nn.Conv2d, len(in_layout), len(out_layout), first.kernel_size, first.stride,
                           first.padding, first.dilation, 1, first.bias is not None, first.padding_mode,
                           device=ref.device, dtype=ref.dtype)
    else:
        merged = skip_init(nn.Linear, len(in_layout), len(out_layout), first.bias is not None, device=ref.device,
                           dtype=ref.dtype)
    with torch.no_grad():
        merged.weight.zero_()
        if merged.bias is not None:
            merged.bias.zero_()
        for p, module in enumerate(modules):
            rows = torch.tensor([pos_out[(p, k)] for k in range(module.weight.shape[0])])
            cols = torch.tensor([pos_in[(p, n)] for n in range(module.weight.shape[1])])
            merged.weight[rows[:, None], cols[None, :]] = module.weight
            if module.bias is not None:
                merged.bias[rows] = module.bias
    return merged


def _merge_grouped(convs: Sequence[nn.Conv2d], in_layout: Layout, out_layout: Layout) -> nn.Conv2d:
    """One grouped convolution with a group per (part, group) run of the input (:func:`_grouped_layout`):
    merged group q holds that group's filters, their input columns in the run's order."""
    first = convs[0]
    in_width, out_width = first.in_channels // first.groups, first.out_channels // first.groups
    blocks = _blocks(in_layout, in_width)
    assert blocks is not None and out_layout == [(p, g * out_width + o) for p, g in blocks for o in range(out_width)]
    ref = first.weight
    merged = skip_init(nn.Conv2d, len(in_layout), len(out_layout), first.kernel_size, first.stride, first.padding,
                       first.dilation, len(blocks), first.bias is not None, first.padding_mode, device=ref.device,
                       dtype=ref.dtype)  # every group's weights and bias are written below
    weight = merged.weight.detach().view(len(blocks), out_width, *merged.weight.shape[1:])
    bias = merged.bias.detach().view(len(blocks), out_width) if merged.bias is not None else None
    columns = torch.tensor([c % in_width for _, c in in_layout]).view(len(blocks), in_width)
    for p, conv in enumerate(convs):
        runs = torch.tensor([q for q, (part, _) in enumerate(blocks) if part == p], dtype=torch.long)
        groups = torch.tensor([g for part, g in blocks if part == p], dtype=torch.long)
        filters = conv.weight.detach().view(-1, out_width, *conv.weight.shape[1:])[groups]
        index = columns[runs][:, None, :, None, None].expand(-1, out_width, -1, *filters.shape[3:])
        weight[runs] = torch.gather(filters, 2, index)
        if bias is not None:
            bias[runs] = conv.bias.detach().view(-1, out_width)[groups]
    return merged


def _merge_batchnorm(modules: Sequence[nn.Module], layout: Layout) -> nn.Module:
    first = modules[0]
    merged = resized_batchnorm(first, len(layout))
    names = [n for n in ("weight", "bias", "running_mean", "running_var") if getattr(first, n) is not None]
    with torch.no_grad():
        for n in names:
            getattr(merged, n).copy_(_gathered([getattr(m, n) for m in modules], layout))
    return merged.to(first.running_mean.device if first.running_mean is not None else "cpu")


def _gathered(values: Sequence[torch.Tensor], layout: Layout) -> torch.Tensor:
    """Per-channel ``values`` of each part, in layout order."""
    offsets = [0]
    for v in values[:-1]:
        offsets.append(offsets[-1] + len(v))
    index = torch.tensor([offsets[p] + c for p, c in layout], dtype=torch.long, device=values[0].device)
    return torch.cat([v.detach() for v in values])[index]


def resized_group_norm(norm: nn.GroupNorm, channels: int, groups: int) -> nn.GroupNorm:
    """A copy of ``norm`` over ``channels`` channels in ``groups`` groups, affine parameters fresh (1 and 0).

    >>> norm = resized_group_norm(nn.GroupNorm(2, 4, eps=1e-3), 8, 4)
    >>> norm.num_groups, norm.num_channels, norm.eps, norm.weight.shape
    (4, 8, 0.001, torch.Size([8]))
    """
    new = copy.deepcopy(norm)
    new.num_channels, new.num_groups = channels, groups
    for name, fill in (("weight", torch.ones), ("bias", torch.zeros)):
        old = getattr(norm, name)
        if old is not None:
            setattr(new, name, nn.Parameter(fill(channels, dtype=old.dtype, device=old.device),
                                            requires_grad=old.requires_grad))
    return new


def _merge_group_norm(modules: Sequence[nn.GroupNorm], layout: Layout) -> nn.GroupNorm:
    """GroupNorm(G, C) of each part side by side is GroupNorm(P·G, P·C) when every part's group is a run of
    the layout (:func:`_group_norm_blocks`), its affine parameters in layout order."""
    first = modules[0]
    merged = resized_group_norm(first, len(layout), len(layout) // (first.num_channels // first.num_groups))
    with torch.no_grad():
        for name in ("weight", "bias"):
            if getattr(first, name) is not None:
                getattr(merged, name).copy_(_gathered([getattr(m, name) for m in modules], layout))
    return merged


def _tensor_at(module: nn.Module, path: str) -> torch.Tensor:
    """The parameter or buffer at ``path``."""
    owner, _, attr = path.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)


def _set_tensor(module: nn.Module, path: str, value: torch.Tensor) -> None:
    """Put ``value`` at ``path`` in place of the parameter or buffer there."""
    owner_path, _, attr = path.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(value, requires_grad=owner._parameters[attr].requires_grad)
    else:
        owner._buffers[attr] = value


def _stacked(values: Sequence[torch.Tensor], dim: int, layout: Layout) -> torch.Tensor:
    """Each part's per-channel tensor (``values``, channels along ``dim``) stacked along it in layout order."""
    first = values[0]
    gathered = _gathered([v.detach().reshape(-1) for v in values], layout)
    shape = list(first.shape)
    shape[dim] = len(layout)
    return gathered.reshape(shape).to(first.dtype).clone()


def _called_modules(gm: torch.fx.GraphModule) -> set[str]:
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}


def _merge_layer_norm(modules: Sequence[nn.Module], site: NormSite, layout: Layout) -> PartwiseLayerNorm:
    """Each part's LayerNorm over its C channels as one :class:`PartwiseLayerNorm` (checked by
    :func:`_layer_norm_runs`): every run of C merged channels one part's, normalised on its own."""
    first = modules[0]
    if isinstance(first, PartwiseLayerNorm):
        raise MdakitError("a padded assembly is merged from parts, not from other padded assemblies")
    channels = int(first.normalized_shape[0])
    merged = PartwiseLayerNorm(len(modules), channels, site.dim, first.eps, first.weight is not None,
                               first.bias is not None).to(first.weight.device if first.weight is not None else "cpu")
    with torch.no_grad():
        for name in ("weight", "bias"):
            if getattr(first, name) is not None:
                getattr(merged, name).copy_(_gathered([getattr(m, name) for m in modules], layout))
    return merged


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
    for name, node in base.group_norms.items():
        set_module(body, name, _merge_group_norm([bod.get_submodule(name) for bod in bodies], layouts[node]))
    for name, (node, dim) in base.channel_params.items():
        _set_tensor(body, name, _stacked([_tensor_at(bod, name) for bod in bodies], dim, layouts[node]))
    for name, site in base.layer_norms.items():
        if isinstance(body, torch.fx.GraphModule) and name not in _called_modules(body):
            raise MdakitError(f"the padded layout cannot merge node {site.node!r}: the LayerNorm {name!r} of a "
                              "rebuilt user-built module is a function call, not a module; use the parallel layout")
        source = base.edges[site.node][0].input
        set_module(body, name, _merge_layer_norm([bod.get_submodule(name) for bod in bodies], site,
                                                 layouts[source]))
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
    group_norms = {f"net.{name}": {"channels": body.get_submodule(name).num_channels,
                                   "groups": body.get_submodule(name).num_groups} for name in graph.group_norms}
    layer_norms = {f"net.{name}": _norm_record(body.get_submodule(name)) for name in graph.layer_norms}
    params = {f"net.{name}": list(_tensor_at(body, name).shape) for name in graph.channel_params}
    return {"kind": "padded", "copies": norm.copies, "channels": input_shape[0], "layers": layers,
            "channel_modules": {f"net.{name}": len(graph.node_ids[node])
                                for name, node in graph.channel_modules.items()},
            **({"group_norms": group_norms} if group_norms else {}),
            **({"layer_norms": layer_norms} if layer_norms else {}),
            **({"channel_params": params} if params else {})}


def _norm_record(norm: nn.Module) -> dict:
    if not isinstance(norm, PartwiseLayerNorm):
        raise MdakitError(f"a padded assembly holds a {type(norm).__name__} where a part-wise LayerNorm belongs")
    return {"parts": norm.parts, "channels": norm.channels, "dim": norm.dim, "eps": norm.eps,
            "weight": norm.weight is not None, "bias": norm.bias is not None}


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
    for name, widths in edit.get("group_norms", {}).items():
        old = model.get_submodule(name)
        if not isinstance(old, nn.GroupNorm):
            raise MdakitError(f"edit names {name!r}, which is not a GroupNorm")
        set_module(model, name, resized_group_norm(old, widths["channels"], widths["groups"]))
    for name, shape in edit.get("channel_params", {}).items():
        _set_tensor(model, name, torch.zeros([int(n) for n in shape]))
    for name, norm in edit.get("layer_norms", {}).items():
        if not isinstance(model.get_submodule(name), nn.LayerNorm) or (
                isinstance(model, torch.fx.GraphModule) and name not in _called_modules(model)):
            raise MdakitError(f"edit names {name!r}, which is not a LayerNorm module the network calls")
        set_module(model, name, PartwiseLayerNorm(int(norm["parts"]), int(norm["channels"]), int(norm["dim"]),
                                                  float(norm["eps"]), bool(norm["weight"]), bool(norm["bias"])))
    return model


register_edit("padded", replay_padded)
