"""Contribution patterns (Discoveries 1 and 2; Fig. 2, 3 and 7–10 of the contribution paper).

Per attributed layer: the relative contribution pattern ``r[k, ·]`` of one unit (filter ``k``) over
its inputs, and the total contribution ``u_n = Σ_k r[k, n]`` (Eq. 5) of every input channel, both
for several single samples of each class (each sample's own contributions, min–max per filter) and
for each class as a whole (the class's summed contributions, the ones its masks threshold). The
cosine similarity of ``u`` between samples of the same class and of different classes puts a number
on the discoveries.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch.utils.data import Subset

from mdakit.attribution.contribution import relative_contributions
from mdakit.data import make_loader
from mdakit.errors import MdakitError
from mdakit.figures import COLORS, new_figure, save_figure
from mdakit.files import write_directory
from mdakit.report.contrib import ClassAttribution, sample_sums


def _relative(layer_sums: torch.Tensor, groups: int) -> torch.Tensor:
    return relative_contributions(layer_sums.float().cpu(), groups)


def mean_cosine(vectors: Sequence[torch.Tensor], other: Sequence[torch.Tensor] | None = None) -> float | None:
    """Mean cosine similarity over pairs within ``vectors`` (or between ``vectors`` and ``other``).

    >>> mean_cosine([torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])])
    1.0
    >>> mean_cosine([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 1.0])])
    0.0
    """
    pairs = list(itertools.combinations(vectors, 2) if other is None else itertools.product(vectors, other))
    if not pairs:
        return None
    return float(sum(torch.nn.functional.cosine_similarity(a, b, dim=0) for a, b in pairs) / len(pairs))


def contribution_patterns(att: ClassAttribution, layers: Sequence[str] | None = None, per_class: int = 5,
                          unit: int | None = None) -> dict[str, Any]:
    """Patterns of every (or the named) attributed layer, for ``per_class`` samples of each class.

    ``unit`` is the filter whose pattern is shown (default, per layer: the filter receiving the most
    positive contribution over all the classes' selected samples).
    """
    if per_class < 1:
        raise MdakitError(f"the number of samples per class must be positive, got {per_class}")
    attributed = list(att.sums[att.classes[0]])
    chosen = attributed if layers is None else list(layers)
    unknown = [name for name in chosen if name not in attributed]
    if unknown:
        raise MdakitError(f"no attributed layer {unknown[0]!r} (layers: {', '.join(attributed)})")
    picked = {c: att.samples[c][:per_class].tolist() for c in att.classes}
    own = {}
    for c, idx in picked.items():
        images = torch.cat([b for b, _ in make_loader(Subset(att.source.train, idx), len(idx))])
        own[c] = sample_sums(att.graph, images, att.settings)
    result: dict[str, Any] = {"model": att.source.label, "classes": att.classes,
                              "class_names": {str(c): att.class_name(c) for c in att.classes},
                              "samples": {str(c): v for c, v in picked.items()}, "layers": []}
    for name in chosen:
        layer = att.graph.layer(name)
        groups = layer.module.groups if layer.kind == "conv" else 1
        k = unit if unit is not None else int(sum(att.sums[c][name].float().cpu() for c in att.classes).sum(1).argmax())
        if not 0 <= k < layer.out_size:
            raise MdakitError(f"unit {k} is out of range for layer {name!r} ({layer.out_size} filters)")
        per_sample = {c: [_relative(s[name], groups) for s in own[c]] for c in att.classes}
        per_class_r = {c: _relative(att.sums[c][name], groups) for c in att.classes}
        totals = {c: [r.sum(0) for r in rs] for c, rs in per_sample.items()}
        within = [mean_cosine(totals[c]) for c in att.classes]
        between = [mean_cosine(totals[a], totals[b]) for a, b in itertools.combinations(att.classes, 2)]
        within, between = [v for v in within if v is not None], [v for v in between if v is not None]
        result["layers"].append({
            "layer": name, "kind": layer.kind, "unit": k, "inputs": layer.in_size,
            "samples": {str(c): {"unit_pattern": [r[k].tolist() for r in rs], "total": [t.tolist() for t in totals[c]]}
                        for c, rs in per_sample.items()},
            "classes": {str(c): {"unit_pattern": r[k].tolist(), "total": r.sum(0).tolist()}
                        for c, r in per_class_r.items()},
            "total_cosine_within_class": sum(within) / len(within) if within else None,
            "total_cosine_between_classes": sum(between) / len(between) if between else None})
    return result


def _panel(ax: Any, series: Sequence[tuple[str, list[float], str]], title: str, ylabel: str) -> None:
    for label, values, color in series:
        ax.plot(range(len(values)), values, marker="o" if len(values) <= 64 else None, ms=3, lw=1, color=color,
                alpha=0.8, label=label)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("input channel n", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, frameon=False)


def pattern_figure(patterns: dict[str, Any], entry: dict[str, Any]) -> Figure:
    """Four panels for one layer: the unit's pattern and the total contribution, for samples of the first
    class (a, c) and for the classes as wholes (b, d)."""
    names = patterns["class_names"]
    first = str(patterns["classes"][0])
    fig = new_figure(10, 6)
    axes = fig.subplots(2, 2)
    k = entry["unit"]
    same = entry["samples"][first]
    label = f"class {first} ({names[first]})"
    _panel(axes[0][0], [(f"sample {i}", v, COLORS[0]) for i, v in enumerate(same["unit_pattern"])],
           f"(a) unit {k}: samples of {label}", "relative contribution r[k, n]")
    classes = [(f"class {c} ({names[c]})", v["unit_pattern"], COLORS[i % len(COLORS)])
               for i, (c, v) in enumerate(entry["classes"].items())]
    _panel(axes[0][1], classes, f"(b) unit {k}: different classes", "relative contribution r[k, n]")
    _panel(axes[1][0], [(f"sample {i}", v, COLORS[0]) for i, v in enumerate(same["total"])],
           f"(c) total contribution: samples of {label}", "u[n] = Σ_k r[k, n]")
    totals = [(f"class {c} ({names[c]})", v["total"], COLORS[i % len(COLORS)])
              for i, (c, v) in enumerate(entry["classes"].items())]
    _panel(axes[1][1], totals, "(d) total contribution: different classes", "u[n] = Σ_k r[k, n]")
    fig.suptitle(f"{entry['layer']} ({entry['kind']}, {entry['inputs']} inputs) of {patterns['model']}", fontsize=10)
    return fig


def layer_stem(i: int, name: str) -> str:
    """File stem of layer ``i``'s pattern figure.

    >>> layer_stem(3, "net.features.0")
    'layer03-net.features.0'
    """
    return f"layer{i:02d}-{name}"


def write_patterns(patterns: dict[str, Any], out: str | Path, force: bool = False) -> list[Path]:
    """Write ``patterns.json`` and one ``layerNN-<name>.png`` per layer into ``out`` (atomically)."""
    stems = [layer_stem(i, entry["layer"]) for i, entry in enumerate(patterns["layers"])]

    def write(tmp: Path) -> None:
        (tmp / "patterns.json").write_text(json.dumps(patterns, indent=1) + "\n")
        for stem, entry in zip(stems, patterns["layers"]):
            save_figure(pattern_figure(patterns, entry), tmp / stem, ("png",))

    write_directory(out, force, write)
    return [Path(out) / "patterns.json", *(Path(out) / f"{stem}.png" for stem in stems)]
