"""Gradient attribution ("Grad."), the baseline contribution attribution is compared with.

For each class, on the same selected samples: the gradient of the class's logit with respect to each
conv layer's output (and each pointwise layer's: a Linear over channels-last tokens, as in a transformer's
attention and MLP), ReLU, summed over positions and samples, min–max normalised over channels; a
channel is kept when its score exceeds ``threshold`` (0.2); an attention head is kept with any of its rows.
There is no backward accumulation: each layer is judged on its own. Linear layers on B×features other than
the last keep all their units. The result is the same per-class mask type as contribution attribution, so
extraction and assembly accept it.
Registered as ``"gradient"`` (:class:`GradientMethod`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mdakit.attribution.base import AttributionMethod, register_method, settings_from_fields
from mdakit.attribution.contribution import ContributionSettings, class_batches
from mdakit.component_masks import ComponentMasks, LayerMask
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph
from mdakit.progress import progress as progress_bar


@dataclass
class GradientSettings:
    """The keep threshold on min–max normalised gradient scores, and the batch size."""

    threshold: float = 0.2
    batch_size: int = 64

    def validate(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise MdakitError(f"the gradient threshold must be in [0, 1), got {self.threshold}")
        if self.batch_size < 1:
            raise MdakitError("batch size must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


def gradient_scores(graph: ChannelGraph, batches: Iterable[tuple[int, torch.Tensor]], rows: Mapping[int, int],
                    device: torch.device | str = "cpu", show_progress: bool = False, total: int | None = None
                    ) -> dict[int, dict[str, torch.Tensor]]:
    """Per class and conv (or pointwise) layer, ``Σ_samples Σ_positions ReLU(∂ logit / ∂ output)`` per channel."""
    model = graph.model.eval().to(device)
    convs = [layer for layer in graph.layers if layer.kind in ("conv", "pointwise")]
    kinds = {layer.name: layer.kind for layer in convs}
    outputs: dict[str, torch.Tensor] = {}

    def keep_output(name: str):
        def fn(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            outputs[name] = output
        return fn

    handles = [model.get_submodule(layer.name).register_forward_hook(keep_output(layer.name)) for layer in convs]
    scores: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for cls, images in progress_bar(batches, "gradient attribution", enabled=show_progress, total=total):
            outputs.clear()
            with torch.enable_grad():
                logits = model(images.to(device).requires_grad_(False))
                names = [layer.name for layer in convs]
                grads = torch.autograd.grad(logits[:, rows[cls]].sum(), [outputs[n] for n in names])
            class_scores = scores.setdefault(cls, {})
            for name, grad in zip(names, grads):
                positive = grad.detach().clamp(min=0)
                s = (positive.sum(dim=(0, 2, 3)) if kinds[name] == "conv"
                     else positive.flatten(0, -2).sum(0)).cpu()  # pointwise: channels last
                class_scores[name] = class_scores[name] + s if name in class_scores else s
    finally:
        for h in handles:
            h.remove()
    return scores


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else (x > 0).float()


def class_masks(graph: ChannelGraph, scores: Mapping[str, torch.Tensor], row: int, threshold: float
                ) -> dict[str, LayerMask]:
    """Masks of one class from its gradient scores (no backward accumulation)."""
    keep = graph.pinned_mask()
    for layer in graph.layers:
        if layer is graph.output_layer:
            continue
        kept = _minmax(scores[layer.name]) > threshold if layer.name in scores else torch.ones(layer.out_size,
                                                                                              dtype=torch.bool)
        keep[graph.groups(layer.out_ids[kept])] = True
    masks = {}
    for layer in graph.layers:
        inputs = keep[graph.groups(layer.in_ids)]
        if layer is graph.output_layer:
            outputs = torch.nn.functional.one_hot(torch.tensor(row), layer.out_size).bool()
        else:
            outputs = keep[graph.groups(layer.out_ids)]
        masks[layer.name] = LayerMask(outputs[:, None] & inputs[None, :], inputs, outputs)
    return masks


def gradient_masks(graph: ChannelGraph, dataset: Dataset, samples: Mapping[int, torch.Tensor],
                   rows: Mapping[int, int], settings: GradientSettings = GradientSettings(),
                   device: torch.device | str = "cpu", show_progress: bool = False) -> ComponentMasks:
    """Per-class component masks by gradient attribution on the selected samples."""
    settings.validate()
    total = sum((len(v) + settings.batch_size - 1) // settings.batch_size for v in samples.values())
    scores = gradient_scores(graph, class_batches(dataset, samples, settings.batch_size), rows, device,
                             show_progress, total)
    per_class = {c: class_masks(graph, scores[c], rows[c], settings.threshold) for c in samples}
    return ComponentMasks(per_class, method="gradient", settings=settings.to_dict())


@register_method
class GradientMethod(AttributionMethod):
    """Gradient attribution with :class:`GradientSettings`, or with :class:`ContributionSettings` of
    which it reads the batch size.

    The command line builds contribution settings for every method but NAD (their thresholds are
    checked as for contribution), and a run given no settings uses the contribution defaults: a
    gradient run is keyed (resumable runs) by the same settings whichever way it was started.

    >>> method = GradientMethod()
    >>> method.settings_for(None).batch_size, method.settings_from_options({"alpha_conv": 0.5}).alpha_conv
    (64, 0.5)
    """

    name = "gradient"
    settings_type = GradientSettings
    accepts = (ContributionSettings,)

    def default_settings(self) -> ContributionSettings:
        return ContributionSettings()

    def settings_from_options(self, options: Mapping[str, Any]) -> ContributionSettings:
        return settings_from_fields(ContributionSettings, options)

    def masks(self, graph: ChannelGraph, dataset: Dataset, samples: Mapping[int, torch.Tensor],
              rows: Mapping[int, int], settings: GradientSettings | ContributionSettings,
              device: torch.device | str = "cpu", show_progress: bool = False) -> ComponentMasks:
        if isinstance(settings, ContributionSettings):
            settings = GradientSettings(batch_size=settings.batch_size)
        return gradient_masks(graph, dataset, samples, rows, settings, device, show_progress)
