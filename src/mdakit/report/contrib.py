"""Contributions for the pictures: a model's per-class sums and masks, and single inputs' own sums.

:func:`attribute` repeats the contribution steps of :func:`mdakit.disassembly.compute_masks` (same
sample selection, same sums, same thresholds), keeping the sums so routes can rank channels by
contribution and patterns can be drawn. :func:`sample_sums` gives one image's own positive
contributions (the per-sample terms that the class sums add up).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from mdakit.attribution.contribution import (
    ContributionSettings,
    attributed_layers,
    class_sums,
    iter_class_sums,
    masks_from_sums,
)
from mdakit.attribution.samples import select_samples
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


def settings_from_record(record: Mapping[str, Any]) -> ContributionSettings:
    """Contribution settings from a part card's ``provenance["settings"]`` (other keys are ignored).

    >>> settings_from_record({"alpha_conv": 0.2, "samples": 50}).alpha_conv
    0.2
    """
    known = {f.name for f in fields(ContributionSettings)}
    settings = ContributionSettings(**{k: v for k, v in record.items() if k in known})
    settings.validate()
    return settings


def attribute(source: Workspace, classes: Sequence[int | str], settings: ContributionSettings | None = None,
              samples: int = 50, seed: int = 0, device: torch.device | str = "cpu") -> ClassAttribution:
    """Select each class's samples, sum their positive contributions and threshold them into masks.

    Classes are selected in the order given, as :func:`~mdakit.disassembly.compute_masks` does, so a
    part's recorded classes, samples, seed and settings reproduce the masks it was cut from.

    >>> att = attribute(Workspace.open("runs/demo/lenet5-mnist"), [0, 1])  # doctest: +SKIP
    >>> att.masks.classes  # doctest: +SKIP
    [0, 1]
    """
    settings = settings or ContributionSettings()
    settings.validate()
    class_list = parse_classes(list(classes), source.card.class_names)
    missing = [c for c in class_list if c not in source.card.logit_classes]
    if missing:
        raise MdakitError(f"the model has no logit for class {missing[0]} (its classes: {source.card.logit_classes})")
    rows = {c: source.card.logit_classes.index(c) for c in class_list}
    graph = trace(source.model, source.card.input_shape)
    chosen = select_samples(source.model, source.train, class_list, [rows[c] for c in class_list], n=samples,
                            seed=seed, device=device)
    sums = class_sums(graph, source.train, chosen, settings, device)
    masks = masks_from_sums(graph, sums, rows, settings)
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
