"""Top-activating test images of chosen filters (interpretable decoupling Fig. 6).

A gated filter's response to an image is its global-average-pooled output times its gate (zero when
the gate drops it). By default the chosen filters are the dynamic filters of the last gated layer
whose selecting images are most concentrated in one class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mdakit.data import make_loader
from mdakit.decoupling.gates import DecoupledNet
from mdakit.errors import MdakitError
from mdakit.figures import new_figure


@torch.no_grad()
def filter_responses(net: DecoupledNet, data: Dataset, device: torch.device | str = "cpu",
                     batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Per gated layer, an images × filters tensor of responses (pooled output × gate).

    >>> from mdakit.data import ImageTensorDataset
    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("lenet5", (1, 28, 28), 2), (1, 28, 28))
    >>> ds = ImageTensorDataset(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 0]))
    >>> filter_responses(net, ds)["net.features.3"].shape
    torch.Size([3, 16])
    """
    net.eval().to(device)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in net.layers}
    for images, _ in make_loader(data, batch_size):
        gated = net(images.to(device), return_gates=True)
        for name, z, y in zip(net.layers, gated.z, gated.y):
            out[name].append((y * z).cpu())
    return {name: torch.cat(v) for name, v in out.items()}


def pick_filters(shares: torch.Tensor, count: int = 6) -> list[int]:
    """The ``count`` dynamic filters (some but not all images select them) whose most-selecting class
    leads the runner-up class by the most; ``shares`` is classes × filters.

    >>> pick_filters(torch.tensor([[1.0, 0.9, 1.0], [0.0, 0.8, 1.0]]), 2)
    [0, 1]
    """
    top = shares.topk(min(2, shares.shape[0]), dim=0).values
    lead = top[0] - top[-1] if shares.shape[0] > 1 else top[0]
    dynamic = (shares.max(0).values > 0) & (shares.min(0).values < 1)
    lead = torch.where(dynamic, lead, lead - 2.0)
    return lead.argsort(descending=True)[:count].tolist()


def top_images(responses: Mapping[str, torch.Tensor], layer: str, filters: Sequence[int], labels: torch.Tensor,
               k: int = 8) -> dict[str, Any]:
    """For each filter of ``layer``, the indices (into the data), responses and labels of its top ``k`` images.

    >>> r = top_images({"a": torch.tensor([[0.0, 1.0], [2.0, 0.0]])}, "a", [0], torch.tensor([5, 6]), k=1)
    >>> r["filters"][0]["images"], r["filters"][0]["labels"]
    ([1], [6])
    """
    if layer not in responses:
        raise MdakitError(f"{layer!r} is not a gated layer; gated layers: {', '.join(responses)}")
    table = responses[layer]
    entries = []
    for j in filters:
        if not 0 <= j < table.shape[1]:
            raise MdakitError(f"layer {layer!r} has {table.shape[1]} filters; there is no filter {j}")
        values, index = table[:, j].topk(min(k, len(table)))
        entries.append({"filter": int(j), "images": index.tolist(), "responses": values.tolist(),
                        "labels": labels[index].tolist(), "selected_by": int((table[:, j] > 0).sum())})
    return {"layer": layer, "k": k, "filters": entries}


def plot_top_images(result: dict[str, Any], data: Dataset, path: str | Path, title: str = "") -> Path:
    """One row per filter: its top images with their labels.

    >>> import tempfile
    >>> from mdakit.data import ImageTensorDataset
    >>> ds = ImageTensorDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))
    >>> r = {"layer": "a", "filters": [{"filter": 0, "images": [1, 0], "labels": [1, 0], "selected_by": 1}]}
    >>> plot_top_images(r, ds, tempfile.mkdtemp() + "/t.png").exists()
    True
    """
    rows = result["filters"]
    cols = max(len(entry["images"]) for entry in rows)
    fig = new_figure(1.1 * cols + 1.2, 1.2 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, entry in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(entry["images"]):
                ax.axis("off")
                continue
            image = data[entry["images"][c]][0]
            ax.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if image.shape[0] == 1 else None)
            ax.set_title(str(entry["labels"][c]), fontsize=7)
            if c == 0:
                ax.set_ylabel(f"filter {entry['filter']}\n({entry['selected_by']} sel.)", fontsize=7)
    fig.suptitle(title or f"Top-activating test images, {result['layer']}", fontsize=9)
    fig.savefig(path, dpi=110)
    return Path(path)
