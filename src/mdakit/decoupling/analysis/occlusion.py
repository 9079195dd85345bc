"""Occlusion analysis (interpretable decoupling Fig. 7–8): the filters a covered patch switches off.

A square patch of the image is set to 0 (black: models take raw [0, 1] images) at every position of
a grid; a filter *switches off* at a position when its gate selects it on the intact image but not on
the occluded one. Per image this gives a map of how many filters each patch switches off, and per
filter the union of the patches that switch it off (the region it depends on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdakit.decoupling.gates import DecoupledNet
from mdakit.errors import MdakitError
from mdakit.figures import new_figure


def occluded(image: torch.Tensor, patch: int, stride: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Copies of ``image`` (C×H×W) with a ``patch``-square zeroed at each grid position, and the positions.

    >>> batch, corners = occluded(torch.ones(1, 4, 4), 2, 2)
    >>> batch.shape, corners, float(batch[1].sum())
    (torch.Size([4, 1, 4, 4]), [(0, 0), (0, 2), (2, 0), (2, 2)], 12.0)
    """
    _, h, w = image.shape
    if not 0 < patch <= min(h, w) or stride < 1:
        raise MdakitError(f"the occlusion patch must be 1..{min(h, w)} pixels with a positive stride")
    corners = [(top, left) for top in range(0, h - patch + 1, stride) for left in range(0, w - patch + 1, stride)]
    batch = image.expand(len(corners), *image.shape).clone()
    for i, (top, left) in enumerate(corners):
        batch[i, :, top:top + patch, left:left + patch] = 0.0
    return batch, corners


@torch.no_grad()
def occlusion(net: DecoupledNet, image: torch.Tensor, patch: int, stride: int, top: int = 3,
              device: torch.device | str = "cpu") -> dict[str, Any]:
    """What covering each patch of ``image`` switches off: counts per position and the top filters.

    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("lenet5", (1, 28, 28), 2), (1, 28, 28)).eval()
    >>> r = occlusion(net, torch.rand(1, 28, 28), patch=14, stride=14)
    >>> r["grid"], len(r["switched_off"])
    ([2, 2], 4)
    """
    net.eval().to(device)
    batch, corners = occluded(image.cpu(), patch, stride)
    intact = net(image[None].to(device), return_gates=True).z
    covered = net(batch.to(device), return_gates=True).z
    off = torch.cat([(z0.bool() & ~z.bool()).cpu() for z0, z in zip(intact, covered)], dim=1)  # positions × filters
    names = [(name, j) for name, z in zip(net.layers, intact) for j in range(z.shape[1])]
    rows = len(range(0, image.shape[1] - patch + 1, stride))
    per_filter = off.sum(0)
    chosen = [int(j) for j in per_filter.argsort(descending=True)[:top] if per_filter[j] > 0]
    filters = []
    for j in chosen:
        region = np.zeros(image.shape[1:], dtype=bool)
        for i in torch.nonzero(off[:, j]).flatten().tolist():
            t, left = corners[i]
            region[t:t + patch, left:left + patch] = True
        filters.append({"layer": names[j][0], "filter": names[j][1], "positions": int(per_filter[j]),
                        "region": region.astype(int).tolist()})
    return {"patch": patch, "stride": stride, "grid": [rows, len(corners) // rows], "corners": corners,
            "active_filters": int(sum(int(z.sum()) for z in intact)), "switched_off": off.sum(1).tolist(),
            "top_filters": filters}


def plot_occlusion(results: list[dict[str, Any]], images: list[torch.Tensor], labels: list[int], path: str | Path,
                   title: str = "") -> Path:
    """Per image: the image, the map of filters switched off per patch, and the top filters' regions.

    >>> import tempfile
    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("lenet5", (1, 28, 28), 2), (1, 28, 28)).eval()
    >>> x = torch.rand(1, 28, 28)
    >>> plot_occlusion([occlusion(net, x, 14, 14)], [x], [0], tempfile.mkdtemp() + "/o.png").exists()
    True
    """
    cols = 2 + max((len(r["top_filters"]) for r in results), default=0)
    fig = new_figure(1.8 * cols, 1.9 * len(results) + 0.4)
    axes = fig.subplots(len(results), cols, squeeze=False)
    for r, (result, image, label) in enumerate(zip(results, images, labels)):
        shown = image.permute(1, 2, 0).squeeze(-1).numpy()
        cmap = "gray" if image.shape[0] == 1 else None
        axes[r, 0].imshow(shown, cmap=cmap)
        axes[r, 0].set_title(f"label {label}", fontsize=7)
        counts = np.zeros(image.shape[1:])
        hits = np.zeros(image.shape[1:])
        for (top, left), n in zip(result["corners"], result["switched_off"]):
            counts[top:top + result["patch"], left:left + result["patch"]] += n
            hits[top:top + result["patch"], left:left + result["patch"]] += 1
        axes[r, 1].imshow(counts / np.maximum(hits, 1), cmap="magma")
        axes[r, 1].set_title(f"filters off (of {result['active_filters']})", fontsize=7)
        for c, entry in enumerate(result["top_filters"], start=2):
            axes[r, c].imshow(shown, cmap=cmap)
            axes[r, c].imshow(np.asarray(entry["region"]), cmap="Reds", alpha=0.45)
            axes[r, c].set_title(f"{entry['layer'].split('.')[-1]}:{entry['filter']}", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[r, 2 + len(result["top_filters"]):]:
            ax.axis("off")
    fig.suptitle(title or "Occlusion: filters switched off by a covered patch (their regions in red)", fontsize=9)
    fig.savefig(path, dpi=110)
    return Path(path)
