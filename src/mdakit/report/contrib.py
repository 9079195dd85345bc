"""Contributions for the pictures: a model's per-class sums and masks, and single inputs' own sums.

:func:`attribute` runs the attribution steps of :func:`mdakit.disassembly.compute_masks` (the same
:class:`~mdakit.attribution.run.AttributionRun`: sample selection, sums, thresholds) with a method
that exposes its sums, and keeps the sums so routes can rank channels by contribution and patterns
can be drawn. :func:`sample_sums` gives one image's own positive contributions (the per-sample
terms that the class sums add up).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mdakit.attribution.base import get_method
from mdakit.attribution.contribution import ContributionSettings, attributed_layers, iter_class_sums
from mdakit.attribution.run import AttributionRun
from mdakit.component_masks import ComponentMasks
from mdakit.data import parse_classes
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph, trace
from mdakit.workspace import Workspace

Sums = dict[str, torch.Tensor]


@dataclass
class ClassAttribution:
    """A model's graph, the chosen classes' selected samples, contribution sums and masks."""

    source: Workspace
    graph: ChannelGraph
    classes: list[int]
    rows: dict[int, int]
    samples: dict[int, torch.Tensor]
    sums: dict[int, Sums]
    settings: ContributionSettings
    masks: ComponentMasks

    def class_name(self, c: int) -> str:
        """The dataset's name of class ``c`` (its number when unnamed)."""
        names = self.source.card.class_names
        return names[c] if c < len(names) else str(c)


def settings_from_record(record: Mapping[str, Any], method: str = "contribution") -> ContributionSettings:
    """Settings of ``method`` from a part card's ``provenance["settings"]`` (other keys are ignored).

    >>> settings_from_record({"alpha_conv": 0.2, "samples": 50}).alpha_conv
    0.2
    """
    return get_method(method).settings_from_record(record)


def attribute(source: Workspace, classes: Sequence[int | str], settings: ContributionSettings | None = None,
              samples: int = 50, seed: int = 0, device: torch.device | str = "cpu",
              method: str = "contribution") -> ClassAttribution:
    """Select each class's samples, sum them by ``method`` (one that exposes its sums) and threshold them.

    Classes are selected in the order given, as :func:`~mdakit.disassembly.compute_masks` does, so a
    part's recorded classes, samples, seed and settings reproduce the masks it was cut from.

    >>> att = attribute(Workspace.open("runs/demo/lenet5-mnist"), [0, 1])  # doctest: +SKIP
    >>> att.masks.classes  # doctest: +SKIP
    [0, 1]
    """
    summing = get_method(method)
    if not summing.exposes_sums:
        raise MdakitError(f"{method} attribution exposes no per-class sums to draw routes and patterns from")
    settings = summing.settings_for(settings, seed)
    class_list = parse_classes(list(classes), source.card.class_names)
    rows = source.rows(class_list)
    graph = trace(source.model, source.card.input_shape)
    run = AttributionRun(summing, settings, source.model, graph, source.train, class_list, rows, samples=samples,
                         seed=seed, device=device)
    chosen, sums = run.sums()
    masks = summing.masks_from_sums(graph, sums, rows, settings)
    masks.class_names = {c: source.card.class_names[c] for c in class_list if c < len(source.card.class_names)}
    return ClassAttribution(source, graph, class_list, rows, chosen, sums, settings, masks)


def sample_sums(graph: ChannelGraph, images: torch.Tensor, settings: ContributionSettings | None = None,
                device: torch.device | str = "cpu") -> list[Sums]:
    """Each image's own positive contributions ``max(h[k, n], 0)`` per attributed layer (K × N each).

    >>> from mdakit.zoo import build_model
    >>> g = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> [s["net.features.0"].shape for s in sample_sums(g, torch.rand(2, 1, 28, 28))]
    [torch.Size([6, 1]), torch.Size([6, 1])]
    """
    settings = settings or ContributionSettings()
    layers = attributed_layers(graph, settings.layers)
    batches = ((i, images[i:i + 1]) for i in range(len(images)))
    return [sums for _, sums in iter_class_sums(graph, batches, layers, device)]
