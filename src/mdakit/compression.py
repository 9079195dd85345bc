"""Compression: keep the union of every class's components, so the model keeps all its logits but
loses the filters no class relies on (the seed's App. D.2), physically extracted.

The baseline it is compared with, FPGM (filter pruning via geometric median), runs through
Torch-Pruning (:func:`fpgm_prune`, an optional dependency: ``pip install torch-pruning``). Its
choice of filters is read back as keep-sets in the original numbering, so the pruned model can be
checked against the masked original (:class:`~mdakit.surgery.MaskedModel`) and saved as a standard
model file.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mdakit.attribution.contribution import ContributionSettings
from mdakit.attribution.nad import NADSettings
from mdakit.budget import Budget
from mdakit.component_masks import LayerMask
from mdakit.disassembly import Part, compute_masks, extract, threshold_summary, timed, width_rounding
from mdakit.errors import MdakitError
from mdakit.evaluate import evaluate
from mdakit.graph import ChannelGraph, trace
from mdakit.latency import LatencySettings
from mdakit.metrics import count_macs, model_size
from mdakit.profiling import measure
from mdakit.surgery import KeepSets, check_width_multiple, keep_sets
from mdakit.workspace import Workspace


def ratios(original: dict[str, int], smaller: dict[str, int]) -> dict[str, float]:
    """MACs and parameter ratios of a smaller model to its original (sizes from :func:`model_size`).

    >>> ratios({"macs": 10, "params": 4}, {"macs": 5, "params": 1})
    {'macs_ratio': 0.5, 'params_ratio': 0.25}
    """
    return {"macs_ratio": smaller["macs"] / original["macs"], "params_ratio": smaller["params"] / original["params"]}


def compress(model: nn.Module | str | Path, data: Dataset | DataLoader | str | None = None,
             method: str = "contribution", *, samples: int = 50,
             settings: ContributionSettings | NADSettings | None = None, calibrate: float | None = None,
             thresholds: str = "calibrated", thresholds_given: bool | None = None,
             test_data: Dataset | DataLoader | str | None = None, seed: int = 0, device: torch.device | str = "cpu",
             data_dir: str | Path | None = None, show_progress: bool = False,
             latency: bool | LatencySettings | None = None, width_multiple: int = 1,
             budget: Budget | str | None = None) -> Part:
    """Compress ``model`` to the union of all its classes' components; every logit is kept, in order.

    Arguments are those of :func:`~mdakit.disassembly.disassemble` (``data`` defaults to the model's own
    dataset; by default the thresholds are calibrated so the compressed model stays within 0.5 points of the
    original on held-out training images). The report holds the sizes, ``macs_ratio``, ``params_ratio``,
    how the thresholds were chosen and, with test data, the accuracy of the original and the compressed model
    over all classes; ``latency`` (on by default) times the compressed model against the original;
    ``width_multiple`` rounds kept widths up and ``budget`` searches the thresholds as in
    :func:`~mdakit.disassembly.disassemble`.

    >>> small = compress("runs/zoo/vgg16-mnist", "mnist")  # doctest: +SKIP
    >>> small.report["macs_ratio"], small.report["accuracy"]  # doctest: +SKIP
    """
    check_width_multiple(width_multiple)
    source = Workspace.open(model, data, test_data, None, data_dir)
    classes = list(source.card.logit_classes)
    masks, graph, cost = compute_masks(source, classes, method, samples, settings, seed, device, graph=None,
                                       calibrate=calibrate, show_progress=show_progress, thresholds=thresholds,
                                       thresholds_given=thresholds_given, budget=budget,
                                       width_multiple=width_multiple)
    with measure() as step:
        small, keep, _ = extract(source, graph, masks, classes, width_multiple=width_multiple)
    cost["extraction"] = step.to_dict()
    shape = source.card.input_shape
    original_size, size = model_size(source.model, shape), model_size(small, shape)
    report: dict[str, Any] = {"method": method, "classes": classes, "steps": cost, "original_size": original_size,
                              "compressed_size": size, **ratios(original_size, size),
                              **width_rounding(source, graph, masks, classes, width_multiple),
                              **threshold_summary(masks.settings)}
    if source.test is not None:
        report["original_accuracy"] = evaluate(source.model, source.test, classes, device=device).accuracy
        report["accuracy"] = evaluate(small, source.test, classes, device=device).accuracy
    report.update(timed(small, source, device, latency))
    card = copy.deepcopy(source.card)
    card.edits = [*card.edits, keep.to_dict()]
    card.provenance = {**card.provenance, "compressed_from": source.label, "method": method,
                       "settings": masks.settings, "width_multiple": width_multiple}
    card.metrics = {k: v for k, v in report.items() if k != "classes"}
    return Part(small, card, masks, keep, report)


# --------------------------------------------------------------------------- FPGM baseline


@dataclass
class Pruned:
    """A model pruned by Torch-Pruning, with its choice as keep-sets in the original numbering."""

    model: nn.Module
    keep: KeepSets
    pruning_ratio: float
    macs_ratio: float


def _torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError as exc:
        raise MdakitError("FPGM needs Torch-Pruning: pip install torch-pruning") from exc
    return torch_pruning


def keep_from_pruned_outputs(graph: ChannelGraph, pruned: dict[str, list[int]]) -> KeepSets:
    """Keep-sets that drop the given output channels (layer name -> indices) and, through the traced
    graph, every input channel, BatchNorm channel and flattened feature they feed.

    >>> from mdakit.zoo import build_model
    >>> g = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> keep = keep_from_pruned_outputs(g, {"net.features.3": [0]})
    >>> len(keep.layers["net.features.3"]["out"]), len(keep.layers["net.classifier.1"]["in"])
    (15, 375)
    """
    dropped = {graph.find(int(layer.out_ids[i])) for layer in graph.layers for i in pruned.get(layer.name, [])}
    masks = {}
    for layer in graph.layers:
        inputs = torch.tensor([graph.find(int(i)) not in dropped for i in layer.in_ids], dtype=torch.bool)
        masks[layer.name] = LayerMask(torch.ones(layer.out_size, layer.in_size, dtype=torch.bool), inputs,
                                      torch.ones(layer.out_size, dtype=torch.bool))
    return keep_sets(graph, masks, list(range(graph.output_layer.out_size)))


def _prune_once(model: nn.Module, graph: ChannelGraph, input_shape: Sequence[int], ratio: float) -> Pruned:
    tp = _torch_pruning()
    model = copy.deepcopy(model).eval()
    names = {module: name for name, module in model.named_modules()}
    output = model.get_submodule(graph.output_layer.name)
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.FPGMImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=[output])
    pruned: dict[str, list[int]] = {}
    try:
        for group in pruner.step(interactive=True):
            for dep, idxs in group.items:
                module = dep.target.module
                if isinstance(module, nn.Conv2d | nn.Linear) and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                    pruned.setdefault(names[module], []).extend(int(getattr(i, "idx", i)) for i in idxs)
            group.prune()
    except (IndexError, RuntimeError) as exc:  # its dependency graph mis-coupled channels (seen after concats)
        raise MdakitError(f"Torch-Pruning failed on this model: {type(exc).__name__}: {exc}") from exc
    keep = keep_from_pruned_outputs(graph, pruned)
    for layer in graph.layers:
        kept = sorted(set(range(layer.out_size)) - set(pruned.get(layer.name, [])))
        if layer is not graph.output_layer and keep.layers[layer.name]["out"] != kept:
            raise MdakitError(f"Torch-Pruning's choice for {layer.name!r} does not follow the traced channel graph")
    return Pruned(model, keep, ratio, count_macs(model, input_shape) / count_macs(graph.model, input_shape))


def fpgm_prune(model: nn.Module, input_shape: Sequence[int], macs_ratio: float, steps: int = 8,
               graph: ChannelGraph | None = None) -> Pruned:
    """FPGM through Torch-Pruning (``MagnitudePruner`` with ``FPGMImportance``, one uniform pruning ratio
    per layer, the logits layer untouched), the ratio bisected over ``steps`` tries to the largest MACs
    ratio that does not exceed ``macs_ratio``.

    >>> from mdakit.zoo import build_model
    >>> pruned = fpgm_prune(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28), 0.6)  # doctest: +SKIP
    >>> pruned.macs_ratio <= 0.6  # doctest: +SKIP
    True
    """
    if not 0 < macs_ratio <= 1:
        raise MdakitError(f"the target MACs ratio must be in (0, 1], got {macs_ratio}")
    graph = graph or trace(model, input_shape)
    low, high, best = 0.0, 0.95, None
    for _ in range(steps):
        candidate = _prune_once(model, graph, input_shape, (low + high) / 2)
        if candidate.macs_ratio <= macs_ratio:
            best, high = candidate, candidate.pruning_ratio
        else:
            low = candidate.pruning_ratio
    return best or _prune_once(model, graph, input_shape, high)
