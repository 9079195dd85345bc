"""Attributing some classes of a run: select each class's samples, run the method, add up the cost.

An :class:`AttributionRun` holds what every chunk of a run shares: the method and its settings, the
model, its graph and training data, the run's classes in order and their logit rows. Sample
selection walks the classes in that order with one seeded generator, and a class's samples depend
only on the classes before it, so a class gets the same samples, and masks, whichever chunk or
process attributes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mdakit.attribution.base import AttributionMethod, ClassSums, MethodSettings
from mdakit.attribution.samples import select_samples
from mdakit.component_masks import ComponentMasks
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph
from mdakit.profiling import StepCost, measure


def add_cost(cost: dict[str, Any], name: str, step: StepCost) -> None:
    """Add a step to ``cost[name]``: seconds add up, the peak RSS is the largest.

    >>> cost = {}
    >>> add_cost(cost, "attribution", StepCost(1.5, 10.0))
    >>> add_cost(cost, "attribution", StepCost(0.5, 8.0))
    >>> cost
    {'attribution': {'seconds': 2.0, 'peak_rss_mb': 10.0, 'peak_is_step': False}}
    """
    entry = cost.setdefault(name, {"seconds": 0.0, "peak_rss_mb": None, "peak_is_step": step.peak_is_step})
    entry["seconds"] += step.seconds
    if step.peak_rss_mb is not None:
        entry["peak_rss_mb"] = max(entry["peak_rss_mb"] or 0.0, step.peak_rss_mb)


def samples_used(chosen: dict[int, torch.Tensor]) -> dict[str, dict[int, int]]:
    """The masks' ``info`` entry saying how many samples each class was attributed on.

    >>> samples_used({3: torch.arange(5)})
    {'samples_used': {3: 5}}
    """
    return {"samples_used": {c: len(v) for c, v in chosen.items()}}


@dataclass
class AttributionRun:
    """The attribution of ``classes`` (dataset labels; their order seeds the selection) by ``method``.

    ``samples`` images per class are selected on ``model`` (:func:`~mdakit.attribution.samples.select_samples`
    with ``seed``); ``rows[c]`` is class ``c``'s logit. Each step's seconds and peak memory are added
    to ``cost`` under ``sample_selection`` and ``attribution``.

    >>> from mdakit.attribution.base import get_method
    >>> from mdakit.data import ImageTensorDataset
    >>> from mdakit.graph import trace
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.eye(2)), model[1].bias.zero_()
    >>> images = torch.tensor([[255, 0], [0, 255]] * 2, dtype=torch.uint8).view(4, 1, 1, 2)
    >>> data = ImageTensorDataset(images, torch.tensor([0, 1, 0, 1]))
    >>> method = get_method("contribution")
    >>> run = AttributionRun(method, method.settings_for(None), model, trace(model, (1, 1, 2)), data, [1, 0],
    ...                      {0: 0, 1: 1}, samples=2)
    >>> run.select([0])[0].tolist(), run.masks([1]).info, list(run.cost)
    ([2, 0], {'samples_used': {1: 2}}, ['sample_selection', 'attribution'])
    """

    method: AttributionMethod
    settings: MethodSettings
    model: nn.Module
    graph: ChannelGraph
    train: Dataset
    classes: list[int]
    rows: dict[int, int]
    samples: int = 50
    seed: int = 0
    device: torch.device | str = "cpu"
    show_progress: bool = False
    cost: dict[str, Any] = field(default_factory=dict)

    def select(self, chunk: Sequence[int]) -> dict[int, torch.Tensor]:
        """The selected samples of ``chunk`` (some of the run's classes), as a selection of all gives them."""
        position = {c: i for i, c in enumerate(self.classes)}
        last = max(position[c] for c in chunk) + 1  # later classes cannot change the earlier ones' samples
        only = None if len(chunk) == len(self.classes) else set(chunk)
        walked = self.classes[:last]
        with measure() as step:
            chosen = select_samples(self.model, self.train, walked, [self.rows[c] for c in walked], n=self.samples,
                                    seed=self.seed, device=self.device, only=only)
        add_cost(self.cost, "sample_selection", step)
        return chosen

    def masks(self, chunk: Sequence[int]) -> ComponentMasks:
        """Masks of ``chunk`` by the run's method, with :func:`samples_used` as their ``info``."""
        chosen = self.select(chunk)
        with measure() as step:
            masks = self.method.masks(self.graph, self.train, chosen, self.rows, self.settings, self.device,
                                      self.show_progress)
        add_cost(self.cost, "attribution", step)
        masks.info = samples_used(chosen)
        return masks

    def sums(self) -> tuple[dict[int, torch.Tensor], ClassSums]:
        """Every class's selected samples and per-class sums (a method that :attr:`exposes_sums
        <mdakit.attribution.base.AttributionMethod.exposes_sums>`)."""
        if not self.method.exposes_sums:
            raise MdakitError(f"{self.method.name} attribution exposes no per-class sums")
        chosen = self.select(self.classes)
        with measure() as step:
            sums = self.method.class_sums(self.graph, self.train, chosen, self.settings, self.device,
                                          self.show_progress)
        add_cost(self.cost, "attribution", step)
        return chosen, sums
