"""How classes share a model: kept filters per layer and class, and the class-similarity matrix
(mean over layers of the Jaccard similarity of kept filters, logit layer left out)."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from mdakit.component_masks import ComponentMasks
from mdakit.figures import new_figure


def similarity(masks: ComponentMasks, classes: Sequence[int] | None = None) -> list[list[float]]:
    """``S[i][j]``: mean over layers but the last of the Jaccard similarity of the classes' kept filters.

    >>> import torch
    >>> from mdakit.component_masks import LayerMask
    >>> def m(keep): return LayerMask(torch.ones(2, 1, dtype=torch.bool), torch.ones(1, dtype=torch.bool),
    ...                               torch.tensor(keep))
    >>> masks = ComponentMasks({0: {"a": m([True, False]), "z": m([True, False])},
    ...                         1: {"a": m([True, True]), "z": m([False, True])}}, "example")
    >>> similarity(masks)
    [[1.0, 0.5], [0.5, 1.0]]
    """
    chosen = list(masks.classes if classes is None else classes)
    layers = masks.layer_names[:-1] or masks.layer_names
    matrix = []
    for a in chosen:
        row = []
        for b in chosen:
            per_layer = masks.jaccard(a, b)
            row.append(sum(per_layer[name] for name in layers) / len(layers))
        matrix.append(row)
    return matrix


def similarity_figure(matrix: Sequence[Sequence[float]], labels: Sequence[str], title: str) -> Figure:
    """The matrix as a heat map with its values written in."""
    size = max(3.5, 0.5 * len(labels) + 2)
    fig = new_figure(size + 1, size)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.6 else "white")
    fig.colorbar(image, ax=ax, shrink=0.8, label="mean Jaccard of kept filters")
    ax.set_title(title, fontsize=10)
    return fig


def kept_filters(masks: ComponentMasks, classes: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Per layer, each class's number of kept filters."""
    chosen = list(masks.classes if classes is None else classes)
    return {name: [int(masks.per_class[c][name].outputs.sum()) for c in chosen] for name in masks.layer_names}
