"""Assembly: join parts cut from several models into one classifier over the union of their classes.

A **layout** says how the parts are joined (:mod:`mdakit.assembly.layouts`): ``parallel`` runs every
part on the shared raw input and concatenates their logits in the order of the parts (each part
carries its own input normalisation, so parts of models trained on datasets with different statistics
share one raw [0, 1] input; the MACs are the sum of theirs); ``padded`` is one network of the parts'
architecture whose layers hold every part's filters side by side with zero kernels across parts
(:mod:`mdakit.padding`). Both output the parts' logits concatenated.

A **rescaling** (:mod:`mdakit.assembly.rescaling`: ``none``, ``paper``, ``calibrated``,
``calibrated-part``) makes the parts' logits comparable, fitted on training images only; ``ood``
(:mod:`mdakit.assembly.ood`) instead lets each part say how much an input looks like its own images
and weighs the parts by it.

An assembled model is saved as a directory (:mod:`mdakit.assembly.files`); load either layout with
:func:`load_assembled`, and score it with :func:`evaluate_assembled`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mdakit.assembly.card import FORMAT, FORMAT_VERSION, AssemblyCard
from mdakit.assembly.evaluation import evaluate_assembled, finetune_assembled, time_assembly
from mdakit.assembly.files import ASSEMBLY_FILE, is_assembled, load_assembled, merged_card, save_assembled
from mdakit.assembly.layouts import LAYOUTS, Layout, check_compatible, register_layout
from mdakit.assembly.models import AssembledModel, PaddedAssembly, fold_rescaling
from mdakit.assembly.parts import DataSpec, PartSpec, check_width, part_datasets, resolve_part
from mdakit.assembly.rescaling import GATED, RESCALES, calibrate, fit_rescaling, paper_scales, register_rescaling
from mdakit.errors import MdakitError
from mdakit.latency import LatencySettings

__all__ = ["ASSEMBLY_FILE", "FORMAT", "FORMAT_VERSION", "GATED", "LAYOUTS", "RESCALES", "AssembledModel",
           "AssemblyCard", "DataSpec", "Layout", "PaddedAssembly", "PartSpec", "assemble", "calibrate",
           "check_compatible",
           "evaluate_assembled", "finetune_assembled", "fold_rescaling", "is_assembled", "load_assembled",
           "merged_card", "paper_scales", "register_layout", "register_rescaling", "save_assembled", "time_assembly"]


def _check_options(layout: str, rescale: str, samples: int) -> None:
    if layout not in LAYOUTS:
        raise MdakitError(f"unknown layout {layout!r}; available: {', '.join(LAYOUTS)}")
    if rescale not in RESCALES:
        raise MdakitError(f"unknown rescaling {rescale!r}; available: {', '.join(RESCALES)}")
    if samples < 1:
        raise MdakitError(f"the number of samples per class must be positive, got {samples}")
    if rescale in GATED and layout != "parallel":
        raise MdakitError(f"the {rescale!r} rescaling reads each part's own features, which the {layout} layout "
                          "merges away; use the parallel layout")


def assemble(parts: Sequence[PartSpec], layout: str = "parallel", rescale: str = "none", data: DataSpec = None,
             samples: int = 50, seed: int = 0, data_dir: str | Path | None = None,
             device: torch.device | str = "cpu", latency: bool | LatencySettings | None = None
             ) -> tuple[AssembledModel | PaddedAssembly, AssemblyCard]:
    """Join parts (model directories, :class:`~mdakit.disassembly.Part` objects or ``(module, ModelCard)``
    pairs) into one classifier whose logits are the parts' logits in the order of the parts.

    Parts need the same input shape; a whole model counts as a part with all its classes.
    ``layout="parallel"`` joins any modules, parts of user-built ones included; ``layout="padded"``
    merges parts of one zoo architecture (and constructor arguments) into one network of it (rescaling
    folded into its last layer). ``rescale`` other than ``none`` fits on the training images of each
    part's classes: ``samples`` per class, chosen by the part itself, from ``data`` (part index ->
    dataset or dataset name) or, by default, the train split of the part's dataset. ``latency`` (on by
    default, ``False`` skips it) times the assembly against the parts' originals side by side into
    ``card.metrics["latency"]`` (:func:`time_assembly`).

    >>> from torch import nn
    >>> from mdakit.artifacts import ModelCard
    >>> a = (nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), ModelCard(None, [1, 2, 2], 2))
    >>> b = (nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), ModelCard(None, [1, 2, 2], 3))
    >>> model, card = assemble([a, b])
    >>> model(torch.rand(5, 1, 2, 2)).shape, card.offsets
    (torch.Size([5, 5]), [0, 2])
    """
    _check_options(layout, rescale, samples)
    if len(parts) < 2:
        raise MdakitError(f"assembly needs at least two parts, got {len(parts)}")
    modules, cards, sources = zip(*(resolve_part(part, i) for i, part in enumerate(parts)), strict=True)
    check_compatible(cards, layout)
    for i, (module, card) in enumerate(zip(modules, cards, strict=True)):
        check_width(module, card, i)
    model = AssembledModel(modules, [len(card.logit_classes) for card in cards]).to(device).eval()
    card = AssemblyCard(list(cards), list(sources), layout, rescale)
    if RESCALES[rescale] is not None:
        card.fit = fit_rescaling(model, card, part_datasets(data, cards, "train", data_dir), samples, seed, device)
    built = LAYOUTS[layout].build(model, card.input_shape)
    card.metrics.update(time_assembly(built, card, device, latency))
    return built, card
