"""PNG figures of the analyses (matplotlib's Agg canvas; pyplot and its global state are not used)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mdakit.figures import new_figure


def plot_accuracy(report: dict, path: str | Path, title: str = "") -> Path:
    """Fig. 2: classes per accuracy bin, original and sub-architectures side by side.

    >>> import tempfile
    >>> report = {"bins": [str(i) for i in range(10)], "original_histogram": [0] * 9 + [2],
    ...           "sub_architecture_histogram": [0] * 8 + [1, 1], "original_mean": 0.95, "sub_architecture_mean": 0.9}
    >>> plot_accuracy(report, tempfile.mkdtemp() + "/a.png").stat().st_size > 0
    True
    """
    fig = new_figure()
    ax = fig.add_subplot()
    x = list(range(len(report["bins"])))
    ax.bar([i - 0.2 for i in x], report["original_histogram"], 0.4,
           label=f"original (mean {100 * report['original_mean']:.2f}%)")
    ax.bar([i + 0.2 for i in x], report["sub_architecture_histogram"], 0.4, hatch="//",
           label=f"sub-architectures (mean {100 * report['sub_architecture_mean']:.2f}%)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xticks(list(x), report["bins"], rotation=45, ha="right")
    ax.set_xlabel("Top-1 accuracy on the class's test images (%)")
    ax.set_ylabel("classes")
    ax.set_title(title or "Per-class accuracy")
    ax.legend()
    fig.savefig(path, dpi=120)
    return Path(path)


def plot_layers(values: dict[str, float], path: str | Path, ylabel: str, title: str = "",
                reference: float | None = None) -> Path:
    """Fig. 4: one value per layer (similarity or hit rate), layers numbered in forward order;
    ``reference`` draws a dashed horizontal line (e.g. the chance hit rate).

    >>> import tempfile
    >>> plot_layers({"a": 0.9, "b": 0.5}, tempfile.mkdtemp() + "/s.png", "similarity").stat().st_size > 0
    True
    """
    fig = new_figure()
    ax = fig.add_subplot()
    x = list(range(1, len(values) + 1))
    ax.plot(x, list(values.values()), "-o")
    if reference is not None:
        ax.axhline(reference, linestyle="--", color="grey", label=f"chance ({reference:g})")
        ax.legend()
    ax.set_xticks(x)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    fig.savefig(path, dpi=120)
    return Path(path)


def plot_similarity_matrix(matrix: Sequence[Sequence[float]], labels: Sequence[str], path: str | Path,
                           title: str = "") -> Path:
    """Fig. 5 as a heat map: the classes × classes similarity of sub-architectures.

    >>> import tempfile
    >>> plot_similarity_matrix([[1.0, 0.4], [0.4, 1.0]], ["a", "b"], tempfile.mkdtemp() + "/m.png").stat().st_size > 0
    True
    """
    n = len(labels)
    fig = new_figure(1.6 + 0.55 * n, 1.2 + 0.5 * n)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if matrix[i][j] > 0.6 else "white")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    fig.colorbar(image, ax=ax, label="similarity (mean Jaccard over layers)")
    ax.set_title(title or "Similarity of sub-architectures")
    fig.savefig(path, dpi=120)
    return Path(path)
