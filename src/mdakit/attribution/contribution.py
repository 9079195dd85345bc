"""Relative contribution attribution (the primary method; paper Eq. 4, 7–10, 13).

For every prunable layer and class, the positive parts of the per-sample hidden contributions
``h[b, k, n]`` are summed over the class's selected samples (one forward pass, hooks, running sums),
min–max normalised per filter over its inputs (``r``), thresholded (``q = r ≥ α``, only for
filters needed downstream), counted per input (``ü``), divided by the maximum count (``s``) and
thresholded again (``t = s ≥ β``). The walk goes backwards from the chosen class's logit along the
real graph (:meth:`mdakit.graph.ChannelGraph.walk_back`). Registered as ``"contribution"``
(:class:`ContributionMethod`), it exposes its sums, so its thresholds can be calibrated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from mdakit.attribution.base import SumsAttribution, register_method
from mdakit.attribution.kernels import positive_contribution_sum
from mdakit.component_masks import ComponentMasks, LayerMask
from mdakit.data import make_loader
from mdakit.defaults import THRESHOLDS
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph, PrunableLayer
from mdakit.progress import progress as progress_bar


@dataclass
class ContributionSettings:
    """Thresholds (paper §6 defaults) and how many layers, counted from the output, are attributed."""

    alpha_conv: float = THRESHOLDS.alpha_conv
    beta_conv: float = THRESHOLDS.beta_conv
    alpha_linear: float = THRESHOLDS.alpha_linear
    beta_linear: float = THRESHOLDS.beta_linear
    layers: int | None = None
    batch_size: int = 64

    def scaled(self, factor: float) -> ContributionSettings:
        """The same settings with all four thresholds multiplied by ``factor`` (kept in (0, 1])."""
        clip = lambda v: min(1.0, max(1e-6, v * factor))  # noqa: E731
        return ContributionSettings(clip(self.alpha_conv), clip(self.beta_conv), clip(self.alpha_linear),
                                    clip(self.beta_linear), self.layers, self.batch_size)

    def validate(self) -> None:
        for name in ("alpha_conv", "beta_conv", "alpha_linear", "beta_linear"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise MdakitError(f"{name.replace('_', '-')} must be in (0, 1], got {value}")
        if self.layers is not None and self.layers < 1:
            raise MdakitError(f"the number of attributed layers must be at least 1, got {self.layers}")
        if self.batch_size < 1:
            raise MdakitError("batch size must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


def attributed_layers(graph: ChannelGraph, layers: int | None) -> list[PrunableLayer]:
    """The last ``layers`` prunable layers in execution order (all when ``None``)."""
    return graph.layers if layers is None else graph.layers[-layers:]


def row_sign(graph: ChannelGraph, layer: PrunableLayer) -> torch.Tensor | None:
    """±1 per output row of ``layer``: -1 where the BatchNorm after it flips the row's sign (negative gamma)."""
    if layer.bn_after is None:
        return None
    bn = graph.model.get_submodule(layer.bn_after)
    if bn.weight is None:
        return None
    return torch.where(bn.weight.detach() < 0, -1.0, 1.0).to(bn.weight.device)


def class_batches(dataset: Dataset, samples: Mapping[int, torch.Tensor], batch_size: int = 64
                  ) -> Iterator[tuple[int, torch.Tensor]]:
    """``(class, images)`` batches of each class's selected samples, one class per batch."""
    for cls, idx in samples.items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size].tolist()
            images, _ = next(iter(make_loader(Subset(dataset, chunk), len(chunk))))
            yield cls, images


@torch.no_grad()
def iter_class_sums(graph: ChannelGraph, batches: Iterable[tuple[int, torch.Tensor]],
                    layers: Sequence[PrunableLayer], device: torch.device | str = "cpu",
                    show_progress: bool = False, total: int | None = None
                    ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(class, {layer: Σ_samples max(h[b, k, n], 0)})`` as soon as each class's batches are done.

    ``batches`` yields ``(class, images)`` grouped by class; hooks on the layers add each batch's
    positive contributions to running sums, so memory holds one class's sums at a time.
    """
    model = graph.model.eval().to(device)
    current: dict[str, torch.Tensor] = {}
    signs = {layer.name: row_sign(graph, layer) for layer in layers}

    def hook(name: str):
        def fn(module: nn.Module, args: tuple) -> None:
            part = positive_contribution_sum(args[0], module, signs[name])
            if name in current:
                current[name] += part
            else:
                current[name] = part
        return fn

    handles = [graph.model.get_submodule(layer.name).register_forward_pre_hook(hook(layer.name)) for layer in layers]
    try:
        done: set[int] = set()
        active = None
        for cls, images in progress_bar(batches, "attribution", enabled=show_progress, total=total):
            if cls != active:
                if active is not None:
                    yield active, current
                    done.add(active)
                if cls in done:
                    raise ValueError(f"batches of class {cls} are not consecutive")
                active, current = cls, {}
            model(images.to(device))
        if active is not None:
            yield active, current
    finally:
        for h in handles:
            h.remove()


def contribution_sums(graph: ChannelGraph, batches: Iterable[tuple[int, torch.Tensor]],
                      layers: Sequence[PrunableLayer], device: torch.device | str = "cpu",
                      show_progress: bool = False, total: int | None = None) -> dict[int, dict[str, torch.Tensor]]:
    """All classes' sums of :func:`iter_class_sums` in one dict (kept, e.g. to try several thresholds)."""
    return dict(iter_class_sums(graph, batches, layers, device, show_progress, total))


def relative_contributions(total: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Min–max normalise each filter's contributions over the inputs in its group (Eq. 4).

    A filter whose contributions are all equal (e.g. a depthwise filter with one input) gets 1
    where they are positive, else 0. Inputs outside a filter's group get 0.

    >>> relative_contributions(torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 0.0]]))
    tensor([[0.0000, 1.0000, 0.5000],
            [0.0000, 0.0000, 0.0000]])
    """
    k, n = total.shape
    if groups == 1:
        return _minmax_rows(total)
    blocks = total.view(groups, k // groups, groups, n // groups)
    idx = torch.arange(groups)
    blocks = blocks[idx, :, idx, :]  # groups × (k/g) × (n/g)
    out = total.new_zeros(groups, k // groups, groups, n // groups)
    out[idx, :, idx, :] = _minmax_rows(blocks)
    return out.view(k, n)


def _minmax_rows(x: torch.Tensor) -> torch.Tensor:
    """Min–max over the last dimension; constant rows give 1 where positive, else 0."""
    lo = x.amin(-1, keepdim=True)
    span = x.amax(-1, keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), (x > 0).to(x.dtype))


def head_counts(counts: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Each input of an attention's output layer given its head's count: the mean over the head's dims, so a
    head is kept or dropped as one unit (its dims are coupled anyway) and by all of them, not its strongest.

    >>> head_counts(torch.tensor([4.0, 0.0, 1.0, 1.0]), 2).tolist()
    [2.0, 2.0, 1.0, 1.0]
    """
    return counts.view(-1, head_dim).mean(1).repeat_interleave(head_dim)


def class_masks(graph: ChannelGraph, sums: Mapping[str, torch.Tensor], row: int | Sequence[int],
                settings: ContributionSettings) -> dict[str, LayerMask]:
    """Walk back from logit ``row`` and threshold the class's contributions (Eq. 7–10). ``row`` may be several
    output rows needed together (a detector's class row and its box rows)."""
    attributed = set(sums)
    record: dict[str, LayerMask] = {}
    heads = {site.proj: site for site in graph.attention.values()}

    def rule(layer: PrunableLayer, needed_out: torch.Tensor) -> torch.Tensor:
        if layer.name not in attributed:
            kernels = needed_out[:, None].expand(layer.out_size, layer.in_size).clone()
            inputs = torch.full((layer.in_size,), bool(needed_out.any()))
        else:
            groups = layer.module.groups if layer.kind == "conv" else 1
            r = relative_contributions(sums[layer.name].float().cpu(), groups)
            alpha, beta = ((settings.alpha_conv, settings.beta_conv) if layer.kind in ("conv", "pointwise")
                           else (settings.alpha_linear, settings.beta_linear))  # pointwise: a 1×1 conv
            kernels = (r >= alpha) & needed_out[:, None]
            counts = kernels.sum(0).float()
            if layer.name in heads:
                counts = head_counts(counts, heads[layer.name].head_dim)
            top = float(counts.max())
            inputs = (counts / top >= beta) if top > 0 else torch.zeros(layer.in_size, dtype=torch.bool)
        record[layer.name] = LayerMask(kernels, inputs, needed_out.clone())
        return inputs

    start = torch.zeros(graph.output_layer.out_size, dtype=torch.bool)
    start[torch.as_tensor(row, dtype=torch.long)] = True
    graph.walk_back(start, rule)
    for layer in graph.layers:  # layers no needed path reaches
        record.setdefault(layer.name, LayerMask(torch.zeros(layer.out_size, layer.in_size, dtype=torch.bool),
                                                torch.zeros(layer.in_size, dtype=torch.bool),
                                                torch.zeros(layer.out_size, dtype=torch.bool)))
    return {layer.name: record[layer.name] for layer in graph.layers}


def _batches(dataset: Dataset, samples: Mapping[int, torch.Tensor], settings: ContributionSettings
             ) -> tuple[Iterator[tuple[int, torch.Tensor]], int]:
    total = sum((len(v) + settings.batch_size - 1) // settings.batch_size for v in samples.values())
    return class_batches(dataset, samples, settings.batch_size), total


def class_sums(graph: ChannelGraph, dataset: Dataset, samples: Mapping[int, torch.Tensor],
               settings: ContributionSettings = ContributionSettings(), device: torch.device | str = "cpu",
               show_progress: bool = False) -> dict[int, dict[str, torch.Tensor]]:
    """Per-class positive-contribution sums of the attributed layers over the selected samples."""
    settings.validate()
    batches, total = _batches(dataset, samples, settings)
    return contribution_sums(graph, batches, attributed_layers(graph, settings.layers), device, show_progress, total)


def masks_from_sums(graph: ChannelGraph, sums: Mapping[int, Mapping[str, torch.Tensor]]
                    | Iterable[tuple[int, Mapping[str, torch.Tensor]]], rows: Mapping[int, int | Sequence[int]],
                    settings: ContributionSettings) -> ComponentMasks:
    """Threshold per-class sums (a dict, or ``(class, sums)`` pairs as they stream in) into masks.

    Cheap: rerun it on kept sums to try other thresholds. A streamed class's float sums are dropped
    as soon as its masks exist, before the next class's forward passes, so one class's sums (K × N
    float32 per layer) is all this keeps besides the bit-packed masks.
    """
    settings.validate()
    items = sums.items() if isinstance(sums, Mapping) else sums
    per_class = {}
    for c, class_sum in items:
        per_class[c] = class_masks(graph, class_sum, rows[c], settings)
        del class_sum
    return ComponentMasks(per_class, method="contribution", settings=settings.to_dict())


def contribution_masks(graph: ChannelGraph, dataset: Dataset, samples: Mapping[int, torch.Tensor],
                       rows: Mapping[int, int], settings: ContributionSettings = ContributionSettings(),
                       device: torch.device | str = "cpu", show_progress: bool = False) -> ComponentMasks:
    """Per-class component masks by relative contribution attribution, streamed class by class: each
    class's sums are thresholded into (bit-packed) masks as soon as its samples are done, then freed.

    ``samples[c]`` are indices into ``dataset`` of class ``c``'s selected images; ``rows[c]`` is
    the logit of class ``c``.
    """
    settings.validate()
    batches, total = _batches(dataset, samples, settings)
    stream = iter_class_sums(graph, batches, attributed_layers(graph, settings.layers), device, show_progress, total)
    return masks_from_sums(graph, stream, rows, settings)


@register_method
class ContributionMethod(SumsAttribution):
    """Relative contribution attribution with :class:`ContributionSettings`, streamed class by class
    (:func:`contribution_masks`); its sums (:func:`class_sums`) can be kept and thresholded again.

    >>> from mdakit.attribution.base import get_method
    >>> get_method("contribution").relaxed(ContributionSettings(), 0.5).alpha_conv
    0.15
    """

    name = "contribution"
    settings_type = ContributionSettings

    def masks(self, graph: ChannelGraph, dataset: Dataset, samples: Mapping[int, torch.Tensor],
              rows: Mapping[int, int], settings: ContributionSettings, device: torch.device | str = "cpu",
              show_progress: bool = False) -> ComponentMasks:
        return contribution_masks(graph, dataset, samples, rows, settings, device, show_progress)

    def class_sums(self, graph: ChannelGraph, dataset: Dataset, samples: Mapping[int, torch.Tensor],
                   settings: ContributionSettings, device: torch.device | str = "cpu", show_progress: bool = False
                   ) -> dict[int, dict[str, torch.Tensor]]:
        return class_sums(graph, dataset, samples, settings, device, show_progress)

    def masks_from_sums(self, graph: ChannelGraph, sums: Mapping[int, Mapping[str, torch.Tensor]],
                        rows: Mapping[int, int], settings: ContributionSettings) -> ComponentMasks:
        return masks_from_sums(graph, sums, rows, settings)

    def relaxed(self, settings: ContributionSettings, factor: float) -> ContributionSettings:
        return settings.scaled(factor)
