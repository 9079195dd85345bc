"""Calculation paths: every input's binary gate vectors, and the filter states they imply.

A filter is *silent* when no input selects it, *energetic* when every input does, and *dynamic*
otherwise (interpretable-decoupling §4.2). Silent filters (on training inputs) are what the dynamic
model removes physically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from mdakit.data import make_loader
from mdakit.decoupling.gates import DecoupledNet
from mdakit.progress import progress as progress_bar


@dataclass
class Paths:
    """Binary gates of many inputs: ``z[layer]`` is a bool tensor (inputs × filters)."""

    layers: list[str]
    z: dict[str, torch.Tensor]
    labels: torch.Tensor
    predictions: torch.Tensor

    def concatenated(self) -> torch.Tensor:
        """Each input's whole calculation path (inputs × Σ filters), layers in graph order."""
        return torch.cat([self.z[name] for name in self.layers], dim=1)

    def density(self) -> dict[str, float]:
        """Mean share of selected filters per layer, and ``"all"`` over every gated filter."""
        out = {name: float(self.z[name].float().mean()) for name in self.layers}
        out["all"] = float(self.concatenated().float().mean())
        return out

    def filter_states(self) -> dict[str, dict[str, int]]:
        """Per layer, the number of silent, energetic and dynamic filters."""
        states = {}
        for name in self.layers:
            hits = self.z[name].sum(0)
            silent, energetic = int((hits == 0).sum()), int((hits == len(self.labels)).sum())
            states[name] = {"silent": silent, "energetic": energetic,
                            "dynamic": self.z[name].shape[1] - silent - energetic}
        return states

    def alive(self, by_frequency: bool = False) -> dict[str, torch.Tensor]:
        """Per layer, the indices of the filters some input selects (the rest are silent), ascending, or
        most often selected first (ties by index) with ``by_frequency``.

        >>> z = torch.tensor([[True, False, True], [False, False, True]])
        >>> Paths(["a"], {"a": z}, torch.zeros(2), torch.zeros(2)).alive(by_frequency=True)["a"].tolist()
        [2, 0]
        """
        out = {}
        for name in self.layers:
            hits = self.z[name].sum(0)
            kept = torch.nonzero(hits).flatten()
            out[name] = kept[torch.sort(hits[kept], descending=True, stable=True).indices] if by_frequency else kept
        return out

    def energetic(self) -> dict[str, torch.Tensor]:
        """Per layer, the indices of the filters every input selects."""
        return {name: torch.nonzero(self.z[name].all(0)).flatten() for name in self.layers}


@torch.no_grad()
def collect_paths(model: DecoupledNet, data: Dataset | DataLoader, device: torch.device | str = "cpu",
                  batch_size: int = 256, show_progress: bool = False) -> Paths:
    """Run ``model`` (eval mode) over ``data`` and keep every input's gates.

    >>> from mdakit.data import ImageTensorDataset
    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> ds = ImageTensorDataset(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 2]))
    >>> paths = collect_paths(net, ds)
    >>> paths.z["net.features.3"].shape, paths.density()["all"]
    (torch.Size([3, 16]), 1.0)
    """
    model.eval().to(device)
    zs: dict[str, list[torch.Tensor]] = {name: [] for name in model.layers}
    labels, predictions = [], []
    for images, targets in progress_bar(make_loader(data, batch_size), "paths", enabled=show_progress):
        out = model(images.to(device), return_gates=True)
        for name, z in zip(model.layers, out.z, strict=True):
            zs[name].append(z.bool().cpu())
        labels.append(torch.as_tensor(targets))
        predictions.append(out.logits.argmax(1).cpu())
    return Paths(layers=list(model.layers), z={k: torch.cat(v) for k, v in zs.items()},
                 labels=torch.cat(labels).long(), predictions=torch.cat(predictions))
