"""The filter–category relation read from W_cla (interpretable decoupling Fig. 7).

Each gated layer's mutual-information head W_cla^l (classes × filters) scores how much a selected
filter votes for each class. A filter's *category* is the class of its largest weight; its
*selectivity* is how far that weight stands above the filter's other weights (softmax over classes).
Where per-class paths are given, the category is compared with the class whose images select the
filter most often.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mdakit.decoupling.gates import DecoupledNet
from mdakit.figures import new_figure


def filter_categories(net: DecoupledNet, shares: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Per gated layer: each filter's W_cla category and selectivity, and (with ``shares`` from
    :func:`~mdakit.decoupling.analysis.class_paths.class_shares`, rows = logit order) the share of
    dynamic filters whose category is also the class selecting them most often.

    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("lenet5", (1, 28, 28), 3), (1, 28, 28))
    >>> r = filter_categories(net)
    >>> len(r["layers"]["net.features.3"]["category"])
    16
    """
    layers = {}
    for name, head in zip(net.layers, net.heads):
        weight = head.weight.detach().cpu()
        probs = weight.softmax(0)
        entry: dict[str, Any] = {"weight": weight.tolist(), "category": weight.argmax(0).tolist(),
                                 "selectivity": probs.max(0).values.tolist()}
        if shares is not None:
            s = shares[name]
            dynamic = (s.max(0).values > 0) & (s.min(0).values < 1)
            most = s.argmax(0)
            agree = (most == weight.argmax(0)) & dynamic
            entry["most_selecting_class"] = most.tolist()
            entry["dynamic_filters"] = int(dynamic.sum())
            entry["agreement_on_dynamic"] = float(agree.sum() / dynamic.sum()) if dynamic.any() else float("nan")
        layers[name] = entry
    return {"layers": layers}


def plot_categories(result: dict[str, Any], class_names: Sequence[str], path: str | Path, layer: str | None = None,
                    title: str = "") -> Path:
    """Heat map of one layer's W_cla (default: the last gated layer), filters sorted by category.

    >>> import tempfile
    >>> r = {"layers": {"a": {"weight": [[1.0, -1.0], [0.0, 2.0]], "category": [0, 1]}}}
    >>> plot_categories(r, ["x", "y"], tempfile.mkdtemp() + "/c.png").exists()
    True
    """
    layer = layer or list(result["layers"])[-1]
    entry = result["layers"][layer]
    weight = torch.tensor(entry["weight"])
    category = entry["category"]
    order = sorted(range(weight.shape[1]), key=lambda j: (category[j], -float(weight[category[j], j])))
    fig = new_figure(11, 3.5)
    ax = fig.add_subplot()
    bound = float(weight.abs().max()) or 1.0
    image = ax.imshow(weight[:, order].numpy(), aspect="auto", cmap="coolwarm", vmin=-bound, vmax=bound,
                      interpolation="nearest")
    ax.set_yticks(range(weight.shape[0]), [class_names[c] if c < len(class_names) else str(c)
                                           for c in range(weight.shape[0])], fontsize=7)
    ax.set_xlabel("filter (sorted by the class of its largest W_cla weight)")
    extra = f", agreement with most-selecting class {entry['agreement_on_dynamic']:.2f}" \
        if entry.get("agreement_on_dynamic") is not None else ""
    ax.set_title(title or f"Filter–category relation, W_cla of {layer}{extra}", fontsize=9)
    fig.colorbar(image, ax=ax, label="W_cla weight")
    fig.savefig(path, dpi=110)
    return Path(path)
