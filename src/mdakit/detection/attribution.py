"""Contribution sums of a detector, taken where the class's objects are and counting both signs of a box.

A classifier's contributions are summed over the whole image: the whole image is the class. A canvas is
mostly background, so summed over it, the channels that light up on every background location outweigh
the ones that see the objects, and the thresholds drop the latter. Here each layer's input is masked to
the class's objects (their boxes, :data:`FOCUS_MARGIN` pixels wider, max-pooled to the layer's
resolution) before the positive contributions are summed: the contributions to what is computed at the
locations where the class is.

The four box rows are regressions, not evidence for a class: a side distance is shaped as much by inputs
that lower it as by inputs that raise it. For them the output layer counts ``|h|`` (the positive part of
``h`` plus that of ``-h``); the class rows keep the paper's positive part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from mdakit.attribution.base import ClassSums
from mdakit.attribution.contribution import ContributionSettings, attributed_layers, row_sign
from mdakit.attribution.kernels import positive_contribution_sum
from mdakit.data.canvas import CanvasDetection, collate_detection
from mdakit.detection.model import BOX_CHANNELS
from mdakit.graph import ChannelGraph
from mdakit.progress import progress as progress_bar

FOCUS_MARGIN = 4


def focus_masks(targets: Sequence[dict[str, torch.Tensor]], size: int, margin: int = FOCUS_MARGIN) -> torch.Tensor:
    """``B × 1 × size × size``: 1 inside each image's boxes widened by ``margin`` pixels, else 0.

    >>> focus_masks([{"boxes": torch.tensor([[2.0, 2.0, 3.0, 3.0]])}], 6, margin=1)[0, 0].sum()
    tensor(9.)
    """
    masks = torch.zeros(len(targets), 1, size, size)
    for i, target in enumerate(targets):
        for x1, y1, x2, y2 in target["boxes"].tolist():
            masks[i, 0, max(0, int(y1) - margin):int(y2) + margin, max(0, int(x1) - margin):int(x2) + margin] = 1.0
    return masks


@torch.no_grad()
def detector_sums(graph: ChannelGraph, canvases: Mapping[int, tuple[CanvasDetection, torch.Tensor]],
                  settings: ContributionSettings = ContributionSettings(), device: torch.device | str = "cpu",
                  show_progress: bool = False) -> ClassSums:
    """Per class, each attributed layer's sums over the class's chosen canvases (``canvases[c]``: the
    dataset and the indices chosen in it), masked to the objects, with ``|h|`` for the box rows."""
    model = graph.model.eval().to(device)
    layers = attributed_layers(graph, settings.layers)
    signs = {layer.name: row_sign(graph, layer) for layer in layers}
    output = graph.output_layer.name
    current: dict[str, torch.Tensor] = {}
    focus: list[torch.Tensor] = []

    def hook(name: str):
        def fn(module: torch.nn.Module, args: tuple) -> None:
            x = args[0]
            if x.dim() == 4:
                x = x * F.adaptive_max_pool2d(focus[0], x.shape[-2:]).to(x)
            part = positive_contribution_sum(x, module, signs[name])
            if name == output:
                flipped = -torch.ones(part.shape[0], device=part.device) if signs[name] is None else -signs[name]
                part[:BOX_CHANNELS] += positive_contribution_sum(x, module, flipped)[:BOX_CHANNELS]
            current[name] = current[name] + part if name in current else part
        return fn

    handles = [model.get_submodule(layer.name).register_forward_pre_hook(hook(layer.name)) for layer in layers]
    sums: ClassSums = {}
    try:
        for c, (dataset, chosen) in progress_bar(canvases.items(), "attribution", enabled=show_progress):
            current = {}
            for start in range(0, len(chosen), settings.batch_size):
                batch = chosen[start:start + settings.batch_size]
                images, targets = collate_detection([dataset[int(i)] for i in batch])
                focus[:] = [focus_masks(targets, images.shape[-1]).to(device)]
                model(images.to(device))
            sums[c] = current
    finally:
        for handle in handles:
            handle.remove()
    return sums
