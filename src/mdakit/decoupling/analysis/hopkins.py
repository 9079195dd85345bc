"""Layer-by-layer Hopkins statistic and 2-means splitting: the decision tree of Fig. 9 / App. C.

Hopkins statistic of points X (n × d): draw m = ⌈``fraction``·n⌉ points uniformly in X's bounding box
and m points of X; u_i is a uniform point's distance to its nearest point of X, w_i a sampled point's
distance to its nearest *other* point of X; H = Σu / (Σu + Σw). H ≈ 0.5 for uniformly spread points,
→ 1 for clustered ones (identical paths count as tight clusters), → 0 for a regular grid.

The tree: all inputs start in one node at the first gated layer. At each layer a node whose paths in
that layer have H ≥ ``threshold`` (and at least ``min_size`` inputs) is split by 2-means on those paths,
and each half continues at the next layer; otherwise the node moves on to the next layer unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

from mdakit.decoupling.paths import Paths
from mdakit.figures import new_figure


def hopkins(x: np.ndarray, fraction: float = 0.1, seed: int = 0) -> float:
    """The Hopkins statistic of the rows of ``x`` (see the module docstring); 0.5 when all rows are equal.

    >>> rng = np.random.default_rng(0)
    >>> blobs = np.concatenate([rng.normal(0, 0.01, (100, 2)), rng.normal(5, 0.01, (100, 2))])
    >>> hopkins(blobs) > 0.95, abs(hopkins(rng.uniform(size=(2000, 2))) - 0.5) < 0.05
    (True, True)
    """
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < 3:
        return float("nan")
    m = max(1, min(n - 1, math.ceil(fraction * n)))
    rng = np.random.default_rng(seed)
    lo, hi = x.min(0), x.max(0)
    uniform = rng.uniform(lo, hi, size=(m, x.shape[1]))
    sample = x[rng.choice(n, size=m, replace=False)]
    index = NearestNeighbors(n_neighbors=2).fit(x)
    u = index.kneighbors(uniform, n_neighbors=1)[0][:, 0]
    w = index.kneighbors(sample, n_neighbors=2)[0][:, 1]
    total = u.sum() + w.sum()
    return float(u.sum() / total) if total > 0 else 0.5


def _composition(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


def decision_tree(paths: Paths, threshold: float = 0.75, min_size: int = 10, max_leaves: int = 16,
                  seed: int = 0) -> dict[str, Any]:
    """The splitting tree over ``paths`` (see the module docstring) as nested dicts.

    Each node: ``inputs``, ``classes`` (label → count), ``splits_at`` (gated layer index or ``None``
    for a leaf), ``hopkins`` (per layer visited, until the split), ``children``.

    >>> import torch
    >>> z = torch.tensor([[0, 0, 0, 0]] * 10 + [[0, 0, 1, 1]] * 10).bool()
    >>> p = Paths(["a", "b"], {"a": z[:, :2], "b": z[:, 2:]}, torch.tensor([0] * 10 + [1] * 10), torch.zeros(20))
    >>> t = decision_tree(p, min_size=4)
    >>> t["splits_at"], sorted(list(c["classes"]) for c in t["children"])
    (1, [['0'], ['1']])
    """
    per_layer = [paths.z[name].float().numpy() for name in paths.layers]
    labels = paths.labels.numpy()
    leaves = [0]

    def grow(index: np.ndarray, start: int) -> dict[str, Any]:
        node: dict[str, Any] = {"inputs": int(len(index)), "classes": _composition(labels[index]), "splits_at": None,
                                "hopkins": {}, "children": []}
        for layer in range(start, len(per_layer)):
            x = per_layer[layer][index]
            h = hopkins(x, seed=seed) if len(index) >= max(3, min_size) else float("nan")
            node["hopkins"][paths.layers[layer]] = h
            if not h >= threshold or leaves[0] >= max_leaves - 1 or len(np.unique(x, axis=0)) < 2:
                continue
            halves = KMeans(n_clusters=2, n_init=4, random_state=seed).fit_predict(x)
            if min(np.bincount(halves, minlength=2)) == 0:
                continue
            leaves[0] += 1
            node["splits_at"] = layer
            node["layer"] = paths.layers[layer]
            node["children"] = [grow(index[halves == k], layer + 1) for k in (0, 1)]
            break
        return node

    tree = grow(np.arange(len(labels)), 0)
    return {"threshold": threshold, "min_size": min_size, "layers": list(paths.layers), **tree}


def _walk(node: dict[str, Any], depth: int, rows: list[tuple[int, dict[str, Any]]]) -> None:
    rows.append((depth, node))
    for child in node["children"]:
        _walk(child, depth + 1, rows)


def plot_tree(tree: dict[str, Any], class_names: list[str], path: str | Path, title: str = "") -> Path:
    """The tree drawn left to right: x = gated layer where a node splits, each node a stacked bar of its classes.

    >>> import tempfile
    >>> t = {"layers": ["a"], "threshold": 0.75, "inputs": 2, "classes": {"0": 1, "1": 1}, "splits_at": None,
    ...      "children": [], "hopkins": {"a": 0.5}}
    >>> plot_tree(t, ["x", "y"], tempfile.mkdtemp() + "/h.png").exists()
    True
    """
    layers = tree["layers"]
    fig = new_figure(11, 6)
    ax = fig.add_subplot()
    slots: dict[int, float] = {}
    leaves = [0]

    def place(node: dict[str, Any], x_parent: float) -> float:
        x = node["splits_at"] + 1 if node["splits_at"] is not None else len(layers) + 1
        if node["children"]:
            ys = [place(child, x) for child in node["children"]]
            y = sum(ys) / len(ys)
        else:
            y = float(leaves[0])
            leaves[0] += 1
        slots[id(node)] = y
        for child in node["children"]:
            cx = child["splits_at"] + 1 if child["splits_at"] is not None else len(layers) + 1
            ax.plot([x, cx], [y, slots[id(child)]], color="lightgrey", zorder=0)
        width = 0.35
        left = x - width / 2
        for c, count in sorted(node["classes"].items(), key=lambda kv: int(kv[0])):
            share = count / node["inputs"]
            ax.barh(y, share * width, left=left, height=0.5, color=f"C{int(c) % 10}")
            left += share * width
        ax.text(x, y + 0.32, str(node["inputs"]), ha="center", fontsize=6)
        return y

    place(tree, 0.0)
    ax.set_xticks(range(1, len(layers) + 2), [str(i) for i in range(1, len(layers) + 1)] + ["leaf"])
    ax.set_xlabel("gated conv layer where the node splits (2-means, Hopkins ≥ "
                  f"{tree['threshold']:g})")
    ax.set_yticks([])
    handles = [ax.barh(-10, 0, color=f"C{int(c) % 10}", label=class_names[int(c)] if int(c) < len(class_names)
                       else c) for c in sorted(tree["classes"], key=int)]
    ax.set_ylim(-0.8, max(leaves[0], 1) - 0.2)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title or "Decision-making tree of the calculation paths")
    fig.savefig(path, dpi=110)
    return Path(path)


def hopkins_per_layer(paths: Paths, seed: int = 0) -> dict[str, float]:
    """The Hopkins statistic of all inputs' paths in each gated layer.

    >>> import torch
    >>> p = Paths(["a"], {"a": torch.tensor([[0, 0]] * 5 + [[1, 1]] * 5).bool()}, torch.zeros(10), torch.zeros(10))
    >>> hopkins_per_layer(p)["a"] > 0.9
    True
    """
    return {name: hopkins(paths.z[name].float().numpy(), seed=seed) for name in paths.layers}
