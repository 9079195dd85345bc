"""Filter states per gated layer (interpretable decoupling Fig. 4–5): energetic, silent, dynamic.

A filter is *silent* when no input selects it, *energetic* when every input does, and *dynamic*
otherwise. The activation count of each filter (how many inputs select it) is kept too, for the
histogram of Fig. 5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdakit.decoupling.paths import Paths
from mdakit.figures import new_figure

STATES = ("energetic", "dynamic", "silent")


def filter_states(paths: Paths) -> dict[str, Any]:
    """Per layer: counts and shares of the three states, and each filter's activation count.

    >>> import torch
    >>> p = Paths(["a"], {"a": torch.tensor([[1, 0, 1], [1, 0, 0]]).bool()}, torch.tensor([0, 1]), torch.tensor([0, 1]))
    >>> r = filter_states(p)
    >>> r["layers"]["a"]["counts"], r["layers"]["a"]["activations"], r["total"]["dynamic"]
    ({'energetic': 1, 'dynamic': 1, 'silent': 1}, [2, 0, 1], 1)
    """
    layers = {}
    n = len(paths.labels)
    states = paths.filter_states()
    for name in paths.layers:
        hits = paths.z[name].sum(0)
        counts = {state: states[name][state] for state in STATES}
        layers[name] = {"filters": len(hits), "counts": counts,
                        "shares": {k: v / len(hits) for k, v in counts.items()}, "activations": hits.tolist()}
    total = {k: sum(layer["counts"][k] for layer in layers.values()) for k in STATES}
    filters = sum(total.values())
    return {"inputs": n, "layers": layers, "total": total, "total_shares": {k: v / filters for k, v in total.items()}}


def plot_filter_states(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Stacked shares per layer (Fig. 4) and the last layer's activation-count histogram (Fig. 5).

    >>> import tempfile, torch
    >>> p = Paths(["a"], {"a": torch.tensor([[1, 0], [1, 1]]).bool()}, torch.tensor([0, 1]), torch.tensor([0, 1]))
    >>> plot_filter_states(filter_states(p), tempfile.mkdtemp() + "/s.png").stat().st_size > 0
    True
    """
    fig = new_figure(11, 4)
    ax, hist = fig.subplots(1, 2, width_ratios=[3, 2])
    names = list(result["layers"])
    x = list(range(1, len(names) + 1))
    bottom = [0.0] * len(names)
    for state, colour in zip(STATES, ("tab:red", "tab:blue", "tab:grey")):
        values = [100 * result["layers"][n]["shares"][state] for n in names]
        ax.bar(x, values, bottom=bottom, color=colour, label=state)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(x)
    ax.set_xlabel("gated conv layer")
    ax.set_ylabel("filters (%)")
    ax.set_title(title or "Filter states per layer")
    ax.legend(loc="lower right")
    last = result["layers"][names[-1]]
    hist.hist(last["activations"], bins=20, range=(0, result["inputs"]), color="tab:blue")
    hist.set_xlabel(f"inputs selecting the filter (of {result['inputs']})")
    hist.set_ylabel("filters")
    hist.set_title(f"Activation counts, {names[-1]}")
    fig.savefig(path, dpi=110)
    return Path(path)
