"""Accuracy of an assembled model on the union of its parts' test classes, and its fine-tuning.

Accuracy is the argmax over all logits: an image of part p's class k is right when the logit at
part p's offset plus k wins. Each original model is scored on its part's classes (all its logits), and
the cross-part confusion says how often one part's images land in another part's classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mdakit.artifacts import ModelCard, load_with_card
from mdakit.assembly.card import AssemblyCard
from mdakit.assembly.models import AssembledModel, per_logit
from mdakit.assembly.parts import DataSpec, part_datasets
from mdakit.data import ClassSubset, ClassUnion, per_class_subset
from mdakit.errors import MdakitError
from mdakit.evaluate import evaluate, predict_logits
from mdakit.latency import LatencySettings, compare_latency, latency_settings
from mdakit.metrics import model_size
from mdakit.train import TrainConfig, TrainResult
from mdakit.train import train as train_model


def _original(card: ModelCard, part: nn.Module) -> tuple[nn.Module | None, ModelCard | None, str]:
    """The model a part was cut from (the part itself for a whole model), or None and why."""
    source = card.provenance.get("disassembled_from")
    if source is None:
        return part, card, "the part is a whole model: its own original"
    try:
        module, original_card = load_with_card(source)
    except MdakitError as exc:
        return None, None, f"original model {source} is missing or unreadable ({exc})"
    return module, original_card, f"original model {source}"


def _evaluate_part(model: AssembledModel, card: AssemblyCard, p: int, test: Dataset,
                   device: torch.device | str) -> dict[str, Any]:
    part_card = card.part_cards[p]
    subset = ClassSubset(test, part_card.logit_classes, remap=True)
    if len(subset) == 0:
        raise MdakitError(f"part {p}'s test data has no images of its classes {part_card.logit_classes}")
    logits, local = predict_logits(model, subset, device=device)
    predicted = logits.argmax(dim=1)
    owner = per_logit(torch.arange(len(card.sizes)), card.sizes)[predicted]
    original, original_card, note = _original(part_card, model.parts[p])
    original_eval = None if original is None else evaluate(
        original, test, original_card.logit_classes, part_card.logit_classes, device=device)
    correct = predicted == local + card.offsets[p]
    original_hits = None if original_eval is None else round(original_eval.accuracy * original_eval.num_samples)
    return {"part": p, "source": card.sources[p], "dataset": part_card.dataset,
            "classes": list(part_card.logit_classes), "num_images": len(subset), "correct": int(correct.sum()),
            "accuracy": float(correct.float().mean()),
            "original_accuracy": None if original_eval is None else original_eval.accuracy,
            "original_correct": original_hits,
            "original": note,
            "into_parts": [float((owner == j).float().mean()) for j in range(len(card.sizes))],
            "size": model_size(model.parts[p], card.input_shape)}


def evaluate_assembled(model: AssembledModel, card: AssemblyCard, test_data: DataSpec = None,
                       data_dir: str | Path | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Accuracy of an assembled model, with the originals' and the cross-part confusion.

    The test set is the union of each part's classes' test images (``test_data``: part index -> dataset
    or name; by default the test split of the part's own dataset), labelled by the part's offset plus
    the class's position in the part; accuracy is the argmax over all logits. Each part's
    ``original_accuracy`` is its original model's (all its logits) on the same images; the assembly's is
    those originals pooled over the same images, so it compares with the assembly's accuracy directly;
    ``cross_part_confusion[i][j]`` is the share of part i's images classified into part j's classes.

    >>> from torch.utils.data import TensorDataset
    >>> flip = nn.Linear(1, 1); _ = nn.init.constant_(flip.weight, -1.0); _ = nn.init.constant_(flip.bias, 0.5)
    >>> parts = [nn.Flatten(), nn.Sequential(nn.Flatten(), flip)]  # logits x and 0.5 - x of one pixel x
    >>> cards = [ModelCard(None, [1, 1, 1], 1, dataset=name) for name in ("bright", "dark")]
    >>> tests = [TensorDataset(torch.full((4, 1, 1, 1), v), torch.zeros(4, dtype=torch.long)) for v in (1.0, 0.0)]
    >>> report = evaluate_assembled(AssembledModel(parts, [1, 1]), AssemblyCard(cards, [None, None]), tests)
    >>> report["accuracy"], report["cross_part_confusion"]
    (1.0, [[1.0, 0.0], [0.0, 1.0]])
    """
    tests = part_datasets(test_data, card.part_cards, "test", data_dir)
    parts = [_evaluate_part(model, card, p, test, device) for p, test in enumerate(tests)]
    originals = [entry for entry in parts if entry["original_correct"] is not None]
    original_images = sum(e["num_images"] for e in originals)
    return {"accuracy": sum(e["correct"] for e in parts) / sum(e["num_images"] for e in parts),
            "num_images": sum(e["num_images"] for e in parts),
            "original_accuracy": sum(e["original_correct"] for e in originals) / original_images if originals else None,
            "originals_missing": [e["part"] for e in parts if e["original_accuracy"] is None],
            "cross_part_confusion": [e["into_parts"] for e in parts], "parts": parts,
            "size": model_size(model, card.input_shape)}


def originals_side_by_side(model: AssembledModel | nn.Module, card: AssemblyCard) -> tuple[AssembledModel | None, str]:
    """What a user would run without the assembly: every distinct model the parts were cut from, side by
    side on one input (a whole-model part is its own original); or ``None`` and why not."""
    originals: dict[str, tuple[nn.Module, int]] = {}
    for p, part_card in enumerate(card.part_cards):
        original, original_card, note = _original(part_card, model.parts[p])
        if original is None:
            return None, f"part {p}: {note}"
        key = part_card.provenance.get("disassembled_from") or f"part {p}"
        originals.setdefault(key, (original, len(original_card.logit_classes)))
    modules, sizes = zip(*originals.values(), strict=True)
    return AssembledModel(modules, sizes).eval(), f"{len(modules)} original model(s)"


def time_assembly(model: nn.Module, card: AssemblyCard, device: torch.device | str = "cpu",
                  latency: bool | LatencySettings | None = None) -> dict[str, Any]:
    """``{"latency": ...}``: the assembled model timed against its parts' originals run side by side
    (:func:`~mdakit.latency.compare_latency`), or nothing when ``latency`` says not to. When an original
    cannot be read, the timing says so under ``skipped``."""
    settings = latency_settings(latency)
    if settings is None:
        return {}
    labels = ("assembled", "originals")
    reference, note = originals_side_by_side(model, card)
    if reference is None:
        return {"latency": {"labels": list(labels), "rows": [], "skipped": dict.fromkeys(settings.runtimes, note),
                            "settings": None, "environment": None}}
    return {"latency": compare_latency(model, reference, card.input_shape, settings, device, labels)}


def finetune_assembled(model: AssembledModel, card: AssemblyCard, epochs: int = 1, per_class: int | None = None,
                       train_data: DataSpec = None, data_dir: str | Path | None = None, seed: int = 0,
                       device: torch.device | str = "cpu", show_progress: bool = False) -> TrainResult:
    """Fine-tune every part of an assembled model, in place, on the union of the parts' training classes.

    This is the seed's "ep.+1" reference (Table 5), not part of assembly, which needs no training:
    ``epochs`` of SGD (the zoo's settings) over each part's training images of its classes (at most
    ``per_class`` per class, seeded), labels offset as in the assembled output; the rescaling buffers
    stay fixed. A tenth of the images is held out to pick the best epoch (see :func:`mdakit.train.train`).

    >>> result = finetune_assembled(model, card, epochs=1, per_class=100)  # doctest: +SKIP
    """
    trains = part_datasets(train_data, card.part_cards, "train", data_dir)
    union: Dataset = ClassUnion(trains, [c.logit_classes for c in card.part_cards])
    if per_class is not None:
        union = per_class_subset(union, per_class, seed=seed)
    return train_model(model, union, TrainConfig(epochs=epochs, batch_size=64, seed=seed), device=device,
                       show_progress=show_progress)
