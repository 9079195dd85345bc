"""Decision routes (App. D.1, Fig. 6): which channels and kernels a class's decision flows through.

The picture's columns are the model input and every prunable layer's output channels, in execution
order; a channel is a node. A class's route keeps the nodes its masks keep (``LayerMask.outputs``;
for the input column, the input channels some layer needs) and a link from node ``n`` to filter ``k``
wherever its kernel indicator ``q[k, n]`` is set. Inputs of a layer are mapped to the node that
produced them through the traced channel ids, so a flatten (many features, one channel), a concat
(offsets) or a residual add (the first operand's producer) land on the right column.

An input's own route comes from its own contributions (:func:`~mdakit.report.contrib.sample_sums`)
thresholded the same way, walking back from the logit the model predicted for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mdakit.attribution.contribution import ContributionSettings, class_masks, relative_contributions
from mdakit.component_masks import LayerMask
from mdakit.graph import ChannelGraph

INPUT = "input"


@dataclass
class Route:
    """One class's (or one input's) route: kept channels per column, kept links per layer.

    ``links[layer]`` is an ``L × 3`` long tensor of (source column index, source channel, filter).
    """

    label: str
    channels: dict[str, list[int]]
    links: dict[str, torch.Tensor]

    def to_dict(self, columns: Sequence[str]) -> dict[str, Any]:
        """JSON-ready: links as ``[source column, source channel, filter]`` with column names.

        >>> r = Route("a", {"input": [0], "fc": [1]}, {"fc": torch.tensor([[0, 0, 1]])})
        >>> r.to_dict(["input", "fc"])["links"]
        {'fc': [['input', 0, 1]]}
        """
        return {"label": self.label, "channels": self.channels,
                "links": {name: [[columns[c], s, k] for c, s, k in t.tolist()] for name, t in self.links.items()}}


def input_node(graph: ChannelGraph) -> str:
    """The graph node of the model input (the first traced node)."""
    return next(name for name in graph.order if name in graph.node_ids)


def columns(graph: ChannelGraph) -> list[tuple[str, int]]:
    """``(name, width)`` of every column: the input, then each prunable layer's outputs.

    >>> from mdakit.zoo import build_model
    >>> from mdakit.graph import trace
    >>> columns(trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28)))[:3]
    [('input', 1), ('net.features.0', 6), ('net.features.3', 16)]
    """
    return [(INPUT, len(graph.node_ids[input_node(graph)]))] + [(layer.name, layer.out_size) for layer in graph.layers]


def _producers(graph: ChannelGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel id: the column index and channel that produced it (-1 when no column did)."""
    column = torch.full((graph.num_ids,), -1, dtype=torch.long)
    channel = torch.full((graph.num_ids,), -1, dtype=torch.long)
    ids = graph.node_ids[input_node(graph)]
    column[ids], channel[ids] = 0, torch.arange(len(ids))
    for i, layer in enumerate(graph.layers, start=1):
        column[layer.out_ids], channel[layer.out_ids] = i, torch.arange(layer.out_size)
    return column, channel


def route_from_masks(graph: ChannelGraph, masks: Mapping[str, LayerMask], label: str) -> Route:
    """The route that per-layer masks (one class's, one input's or a union) describe."""
    column, channel = _producers(graph)
    channels: dict[str, list[int]] = {}
    links: dict[str, torch.Tensor] = {}
    input_kept = torch.zeros(columns(graph)[0][1], dtype=torch.bool)
    for layer in graph.layers:
        mask = masks[layer.name]
        channels[layer.name] = torch.nonzero(mask.outputs).flatten().tolist()
        k, n = torch.nonzero(mask.kernels, as_tuple=True)
        src = layer.in_ids[n]
        triples = torch.stack([column[src], channel[src], k], dim=1)
        links[layer.name] = torch.unique(triples[triples[:, 0] >= 0], dim=0).reshape(-1, 3)
        needed = layer.in_ids[mask.inputs]
        input_kept[channel[needed[column[needed] == 0]]] = True
    return Route(label, {INPUT: torch.nonzero(input_kept).flatten().tolist(), **channels}, links)


def input_route(graph: ChannelGraph, sums: Mapping[str, torch.Tensor], row: int, settings: ContributionSettings,
                label: str) -> Route:
    """One input's route: its own contribution sums thresholded as a class's, walking back from ``row``."""
    return route_from_masks(graph, class_masks(graph, sums, row, settings), label)


def channel_scores(graph: ChannelGraph, sums: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per column, each channel's total relative contribution (Eq. 5: ``u_n = Σ_k r[k, n]``) to the
    layers that read it, summed over the given class sums; used to pick which channels to draw."""
    column, channel = _producers(graph)
    names = [name for name, _ in columns(graph)]
    scores = {name: torch.zeros(width) for name, width in columns(graph)}
    for layer in graph.layers:
        groups = layer.module.groups if layer.kind == "conv" else 1
        for class_sums in sums:
            if layer.name not in class_sums:
                continue
            u = relative_contributions(class_sums[layer.name].float().cpu(), groups).sum(0)
            known = column[layer.in_ids] >= 0
            for c in column[layer.in_ids][known].unique().tolist():
                here = known & (column[layer.in_ids] == c)
                scores[names[c]].index_add_(0, channel[layer.in_ids[here]], u[here])
    return scores


def compare(own: Route, reference: Route, order: Sequence[str]) -> dict[str, Any]:
    """Where an input's route departs from a class's: per column the channels of each, shared and
    off-route (used by the input only), and ``leaves_at``, the first column with off-route channels.

    >>> a = Route("in", {"input": [0], "fc": [1, 2]}, {})
    >>> b = Route("cls", {"input": [0], "fc": [1]}, {})
    >>> result = compare(a, b, ["input", "fc"])
    >>> result["leaves_at"], result["columns"]["fc"]["off_route"]
    ('fc', [2])
    """
    per_column, leaves = {}, None
    for name in order:
        mine, theirs = set(own.channels[name]), set(reference.channels[name])
        off = sorted(mine - theirs)
        union = mine | theirs
        per_column[name] = {"own": len(mine), "reference": len(theirs), "shared": len(mine & theirs),
                            "off_route": off, "jaccard": len(mine & theirs) / len(union) if union else 1.0}
        if off and leaves is None:
            leaves = name
    return {"own": own.label, "reference": reference.label, "leaves_at": leaves, "columns": per_column}


def shown_channels(routes: Sequence[Route], cols: Sequence[tuple[str, int]], scores: Mapping[str, torch.Tensor],
                   top: int) -> dict[str, list[int]]:
    """The channels drawn per column: all when at most ``top``, else the ``top`` best by (on some route,
    contribution score, number of routes); the rest are summarised in one node.

    >>> r = Route("a", {"c": [3]}, {})
    >>> shown_channels([r], [("c", 5)], {"c": torch.tensor([5.0, 4, 3, 2, 1])}, 2)
    {'c': [0, 3]}
    """
    shown = {}
    for name, width in cols:
        if width <= top:
            shown[name] = list(range(width))
            continue
        count = torch.zeros(width)
        for route in routes:
            count[route.channels[name]] += 1
        score = scores.get(name, torch.zeros(width))
        ranked = sorted(range(width), key=lambda j: (-(count[j] > 0).item(), -float(score[j]), -float(count[j]), j))
        shown[name] = sorted(ranked[:top])
    return shown
