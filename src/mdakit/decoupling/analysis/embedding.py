"""PCA then t-SNE of whole calculation paths, coloured by class (interpretable decoupling Fig. 3 and 5).

Each input's concatenated binary gates are reduced to at most ``pca_dims`` (the paper: 300) principal
components, then embedded in 2-D by t-SNE (scikit-learn). Two numbers say how class-structured the
paths are without looking at the picture: the silhouette of the classes in the 2-D embedding and the
share of each point's 10 nearest neighbours in path space (Hamming distance) that share its class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors

from mdakit.decoupling.paths import Paths
from mdakit.figures import new_figure


def neighbour_agreement(x: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean share of each point's ``k`` nearest neighbours (Hamming) with the same label.

    >>> x = np.array([[0, 0], [0, 0], [1, 1], [1, 1]])
    >>> neighbour_agreement(x, np.array([0, 0, 1, 1]), k=1)
    1.0
    """
    k = min(k, len(x) - 1)
    index = NearestNeighbors(n_neighbors=k + 1, metric="hamming").fit(x).kneighbors(x, return_distance=False)
    return float((labels[index[:, 1:]] == labels[:, None]).mean())


def embed_paths(paths: Paths, per_class: int = 100, pca_dims: int = 300, seed: int = 0) -> dict[str, Any]:
    """2-D t-SNE points of up to ``per_class`` inputs per class, with the two structure scores.

    >>> z = torch.cat([torch.zeros(20, 6), torch.ones(20, 6)]).bool()
    >>> p = Paths(["a"], {"a": z}, torch.tensor([0] * 20 + [1] * 20), torch.zeros(40))
    >>> r = embed_paths(p, per_class=20)
    >>> len(r["points"]), r["neighbour_agreement"]
    (40, 1.0)
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(paths.labels).tolist():
        idx = torch.nonzero(paths.labels == c).flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    index = torch.sort(torch.cat(chosen)).values
    x = paths.concatenated()[index].float().numpy()
    labels = paths.labels[index].numpy()
    dims = min(pca_dims, x.shape[0], x.shape[1])
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    distinct = len(np.unique(x, axis=0))
    if distinct > 2:
        reduced = PCA(n_components=dims, random_state=seed).fit_transform(x)
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    else:  # t-SNE is undefined for (almost) identical points: place each distinct path at its own spot
        points = np.stack([np.unique(x, axis=0, return_inverse=True)[1].reshape(-1).astype(float),
                           np.zeros(len(x))], axis=1)
    classes = np.unique(labels)
    silhouette = float(silhouette_score(points, labels)) \
        if distinct > 1 and 1 < len(classes) < len(labels) else float("nan")
    return {"inputs": int(len(x)), "path_length": int(x.shape[1]), "distinct_paths": int(distinct),
            "pca_dims": int(dims), "perplexity": perplexity,
            "points": points.round(4).tolist(), "labels": labels.tolist(), "silhouette_2d": silhouette,
            "neighbour_agreement": neighbour_agreement(x, labels)}


def plot_embedding(result: dict[str, Any], class_names: list[str], path: str | Path, title: str = "") -> Path:
    """Scatter of the t-SNE points, one colour per class.

    >>> import tempfile
    >>> r = {"points": [[0, 0], [1, 1]], "labels": [0, 1], "silhouette_2d": 0.5, "neighbour_agreement": 1.0}
    >>> plot_embedding(r, ["a", "b"], tempfile.mkdtemp() + "/t.png").exists()
    True
    """
    fig = new_figure(6.5, 5.5)
    ax = fig.add_subplot()
    points, labels = np.asarray(result["points"]), np.asarray(result["labels"])
    for c in np.unique(labels):
        at = labels == c
        name = class_names[c] if c < len(class_names) else str(c)
        ax.scatter(points[at, 0], points[at, 1], s=6, label=name, color=f"C{int(c) % 10}")
    ax.legend(markerscale=2, fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of calculation paths (silhouette {result['silhouette_2d']:.2f}, 10-NN same class "
                          f"{result['neighbour_agreement']:.2f})", fontsize=9)
    fig.savefig(path, dpi=110)
    return Path(path)
