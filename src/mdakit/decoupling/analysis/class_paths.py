"""Per-class calculation paths (interpretable decoupling Fig. 4 and 9) and their export as masks.

A class's path in a gated layer is, per filter, the share of the class's images whose gate selects
it. As masks (:class:`~mdakit.component_masks.ComponentMasks`, the type every attribution method produces) a
gated filter belongs to class ``c`` when at least ``share`` (default ``DEFAULT_SHARE`` = 0.5, the
filters on the class's typical path) of ``c``'s images select it. The masks refer to the *ungated*
model (:func:`~mdakit.decoupling.ungated.ungated`): ungated layers keep every filter (their consumers
read all of them), the last linear layer keeps the class's logit row, and channels the graph pins
stay. A part extracted from these masks runs the class's path filters for every input, statically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mdakit.component_masks import ComponentMasks, LayerMask
from mdakit.decoupling.paths import Paths
from mdakit.errors import MdakitError
from mdakit.figures import new_figure
from mdakit.graph import ChannelGraph

DEFAULT_SHARE = 0.5


def class_shares(paths: Paths, classes: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Per gated layer, a classes × filters tensor: the share of each class's images selecting each filter.

    >>> p = Paths(["a"], {"a": torch.tensor([[1, 0], [1, 1], [0, 1]]).bool()}, torch.tensor([0, 0, 1]),
    ...           torch.tensor([0, 0, 1]))
    >>> class_shares(p)["a"].tolist()
    [[1.0, 0.5], [0.0, 1.0]]
    """
    chosen = sorted(torch.unique(paths.labels).tolist()) if classes is None else list(classes)
    out = {}
    for name in paths.layers:
        rows = []
        for c in chosen:
            picked = paths.labels == c
            if not picked.any():
                raise MdakitError(f"no images of class {c} among the paths")
            rows.append(paths.z[name][picked].float().mean(0))
        out[name] = torch.stack(rows)
    return out


def path_masks(graph: ChannelGraph, shares: Mapping[str, torch.Tensor], classes: Sequence[int],
               rows: Mapping[int, int], share: float = DEFAULT_SHARE) -> ComponentMasks:
    """Per-class masks of the ungated model traced in ``graph`` from :func:`class_shares`.

    ``classes[i]`` is row ``i`` of every shares tensor; ``rows[c]`` is class ``c``'s logit row.

    >>> from mdakit.graph import trace
    >>> from mdakit.zoo import build_model
    >>> g = trace(build_model("lenet5", (1, 28, 28), 2), (1, 28, 28))
    >>> shares = {"net.features.3": torch.tensor([[1.0] * 8 + [0.0] * 8, [0.2] * 16])}
    >>> m = path_masks(g, shares, [0, 1], {0: 0, 1: 1})
    >>> int(m.per_class[0]["net.features.3"].outputs.sum()), int(m.per_class[1]["net.features.3"].outputs.sum())
    (8, 0)
    """
    if not 0.0 < share <= 1.0:
        raise MdakitError(f"the path share must be in (0, 1], got {share}")
    names = {layer.name for layer in graph.layers}
    unknown = [name for name in shares if name not in names]
    if unknown:
        raise MdakitError(f"gated layer {unknown[0]!r} is not a prunable layer of the ungated model")
    per_class = {}
    for i, c in enumerate(classes):
        keep = graph.pinned_mask()
        for layer in graph.layers:
            if layer is graph.output_layer:
                continue
            kept = shares[layer.name][i] >= share if layer.name in shares else torch.ones(layer.out_size, dtype=bool)
            keep[graph.groups(layer.out_ids[kept])] = True
        masks = {}
        for layer in graph.layers:
            inputs = keep[graph.groups(layer.in_ids)]
            outputs = (torch.nn.functional.one_hot(torch.tensor(rows[c]), layer.out_size).bool()
                       if layer is graph.output_layer else keep[graph.groups(layer.out_ids)])
            masks[layer.name] = LayerMask(outputs[:, None] & inputs[None, :], inputs, outputs)
        per_class[int(c)] = masks
    return ComponentMasks(per_class, method="decoupling-paths", settings={"share": share})


def plot_class_paths(shares: Mapping[str, torch.Tensor], classes: Sequence[int], class_names: Sequence[str],
                     path: str | Path, title: str = "") -> Path:
    """One heat map per gated layer: classes (rows) × filters (columns), colour = share of images selecting.

    >>> import tempfile
    >>> plot_class_paths({"a": torch.rand(2, 5)}, [0, 1], ["x", "y"], tempfile.mkdtemp() + "/p.png").exists()
    True
    """
    names = list(shares)
    fig = new_figure(12, 1.2 + 0.35 * len(classes) * len(names) ** 0.5 + 0.8 * len(names))
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    image = None
    for ax, name in zip(axes, names):
        image = ax.imshow(shares[name].numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                          interpolation="nearest")
        ax.set_yticks(range(len(classes)), [class_names[c] if c < len(class_names) else str(c) for c in classes],
                      fontsize=6)
        ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
        ax.tick_params(axis="x", labelsize=6)
    axes[-1].set_xlabel("filter")
    axes[0].set_title(title or "Per-class calculation paths (share of a class's images selecting each filter)")
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.6, label="share")
    fig.savefig(path, dpi=110)
    return Path(path)


def summarize_masks(masks: ComponentMasks, gated: Sequence[str]) -> dict[str, Any]:
    """Per class, the kept filters per gated layer.

    >>> m = LayerMask(torch.ones(2, 1, dtype=bool), torch.ones(1, dtype=bool), torch.tensor([True, False]))
    >>> summarize_masks(ComponentMasks({0: {"a": m}}, "x"), ["a"])
    {'0': {'a': 1}}
    """
    return {str(c): {name: int(layers[name].outputs.sum()) for name in gated} for c, layers in masks.per_class.items()}
