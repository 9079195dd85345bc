"""Joining detector parts side by side into one detector over all their classes (the parallel layout).

Every part runs on the shared raw input; the assembled map stacks the parts' maps along channels, each
part's four box channels followed by its class channels, so every class keeps the boxes of the part it
came from. Classes are numbered in the order of the parts (part 0's first), and named
``dataset:class``. Decoding (:func:`assembled_detections`) decodes each part's segment as a detector of
its own and merges the detections; the classes of different parts never suppress each other.

Rescaling (``rescale="calibrated"``, the default): each class channel's logit ``z`` becomes ``a·z + b``, with
``a`` and ``b`` fitted by logistic regression (Platt scaling) to the positive locations of that class on
canvases of held-out training objects of *every* part's dataset, so that one score threshold means the
same for every part and a part's scores on the other datasets' objects are pushed down. The transform
is increasing per class, so it changes each class's ranking only through the score threshold and the caps
on detections per image, and mAP (ranked per class) moves little; ``rescale="none"`` keeps the logits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from mdakit.artifacts import ModelCard, load_with_card, save
from mdakit.data import load_dataset
from mdakit.data.builtin import CANVAS_SOURCES
from mdakit.data.canvas import detection_loader
from mdakit.detection.boxes import BOX_CHANNELS, PostProcess, assign, detect, stride_of
from mdakit.detection.evaluate import mean_average_precision
from mdakit.errors import MdakitError
from mdakit.files import write_directory
from mdakit.model_dir import DETECTOR_ASSEMBLY_FILE
from mdakit.zoo import is_detector

SCALES_FILE = "rescaling.safetensors"
RESCALE_MODES = ("calibrated", "none")
FIT_CANVASES = 300


class DetectorAssembly(nn.Module):
    """Parts side by side: their maps stacked, each class channel rescaled to ``scale · z + shift``.

    >>> from mdakit.zoo import build_model
    >>> parts = [build_model("fcos-lite", (1, 64, 64), k, width=8) for k in (2, 3)]
    >>> DetectorAssembly(parts, [2, 3])(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 13, 16, 16])
    """

    def __init__(self, parts: Sequence[nn.Module], class_counts: Sequence[int]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.class_counts = list(class_counts)
        self.register_buffer("scale", torch.ones(sum(self.class_counts)))
        self.register_buffer("shift", torch.zeros(sum(self.class_counts)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps, start = [], 0
        for part, count in zip(self.parts, self.class_counts):
            out = part(x)
            scale = self.scale[start:start + count].view(1, -1, 1, 1)
            shift = self.shift[start:start + count].view(1, -1, 1, 1)
            maps += [out[:, :BOX_CHANNELS], out[:, BOX_CHANNELS:] * scale + shift]
            start += count
        return torch.cat(maps, 1)


def segments(class_counts: Sequence[int]) -> list[tuple[int, int]]:
    """``(first channel, number of class channels)`` of each part's segment of the assembled map.

    >>> segments([2, 3])
    [(0, 2), (6, 3)]
    """
    out, start = [], 0
    for count in class_counts:
        out.append((start, count))
        start += BOX_CHANNELS + count
    return out


def assembled_detections(output: torch.Tensor, image_size: int, class_counts: Sequence[int],
                         post: PostProcess = PostProcess()) -> list[dict[str, torch.Tensor]]:
    """Per image, every part's detections (assembled class numbers), the best ``post.max_detections``."""
    per_part, offset = [], 0
    for start, count in segments(class_counts):
        labels = list(range(offset, offset + count))
        per_part.append(detect(output[:, start:start + BOX_CHANNELS + count], image_size, labels, post))
        offset += count
    merged = []
    for found in zip(*per_part):
        scores = torch.cat([f["scores"] for f in found])
        best = scores.argsort(descending=True)[:post.max_detections]
        merged.append({key: torch.cat([f[key] for f in found])[best] for key in ("boxes", "scores", "labels")})
    return merged


@dataclass
class AssembledDetector:
    """An assembly of detector parts: the module, its parts' cards, the meaning of every class, the fit."""

    model: DetectorAssembly
    part_cards: list[ModelCard]
    classes: list[dict[str, Any]]
    rescale: str
    fit: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def detections(self, images: torch.Tensor, post: PostProcess = PostProcess()) -> list[dict[str, torch.Tensor]]:
        """Boxes, scores and assembled class numbers of ``images``."""
        with torch.no_grad():
            return assembled_detections(self.model.eval()(images), images.shape[-1], self.model.class_counts, post)

    def save(self, path: str | Path, force: bool = False) -> Path:
        """``detector-assembly.json``, the rescaling and each part as ``part-<i>/``, written all or nothing."""
        raw = {"format": "mdakit-detector-assembly", "layout": "parallel", "rescale": self.rescale,
               "classes": self.classes, "class_counts": self.model.class_counts, "fit": self.fit,
               "metrics": self.metrics}

        def write(tmp: Path) -> None:
            for p, (part, card) in enumerate(zip(self.model.parts, self.part_cards)):
                save(part, tmp / f"part-{p}", card)
            save_file({"scale": self.model.scale.cpu(), "shift": self.model.shift.cpu()}, tmp / SCALES_FILE)
            (tmp / DETECTOR_ASSEMBLY_FILE).write_text(json.dumps(raw, indent=2) + "\n")

        write_directory(path, force, write)
        return Path(path)


def load_detector_assembly(path: str | Path) -> AssembledDetector:
    """The assembly saved at ``path`` (see :meth:`AssembledDetector.save`)."""
    raw = json.loads((Path(path) / DETECTOR_ASSEMBLY_FILE).read_text())
    loaded = [load_with_card(Path(path) / f"part-{p}") for p in range(len(raw["class_counts"]))]
    model = DetectorAssembly([m for m, _ in loaded], raw["class_counts"])
    scales = load_file(Path(path) / SCALES_FILE)
    model.scale.copy_(scales["scale"])
    model.shift.copy_(scales["shift"])
    return AssembledDetector(model.eval(), [c for _, c in loaded], raw["classes"], raw["rescale"], raw["fit"],
                             raw.get("metrics", {}))


def _resolve(part: Any) -> tuple[nn.Module, ModelCard]:
    if isinstance(part, str | Path):
        return load_with_card(part)
    if hasattr(part, "model") and isinstance(getattr(part, "card", None), ModelCard):
        return part.model.eval(), part.card
    raise MdakitError(f"a detector part is a model directory or a Part, not a {type(part).__name__}")


def _check(cards: Sequence[ModelCard]) -> None:
    for p, card in enumerate(cards):
        if not is_detector(card.arch):
            raise MdakitError(f"part {p} is not a detector ({card.arch or 'a user-built module'}); detector parts "
                              "and classifier parts are assembled separately")
        if list(card.input_shape) != list(cards[0].input_shape):
            raise MdakitError(f"parts have different input shapes: {cards[0].input_shape} (part 0) vs "
                              f"{card.input_shape} (part {p})")
    seen = [(card.dataset, c) for card in cards for c in card.logit_classes]
    if len(set(seen)) != len(seen):
        raise MdakitError("a class of one dataset is in two parts")


class Relabelled(Dataset):
    """A detection dataset with its labels mapped to assembled class numbers (objects of unmapped classes
    dropped: no part is asked for them)."""

    def __init__(self, dataset: Dataset, mapping: dict[int, int]):
        self.dataset, self.mapping = dataset, mapping

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target = self.dataset[index]
        keep = torch.tensor([int(label) in self.mapping for label in target["labels"]], dtype=torch.bool)
        labels = torch.tensor([self.mapping[int(label)] for label in target["labels"][keep]], dtype=torch.long)
        return image, {"boxes": target["boxes"][keep], "labels": labels}


def own_canvases(cards: Sequence[ModelCard], data_dir: str | Path | None, holdout: int | None = None) -> Dataset:
    """The union of every part's own test canvases (or, with ``holdout``, that many canvases of each part's
    held-out training objects), labelled in assembled class numbers."""
    sets, offset = [], 0
    for card in cards:
        data = load_dataset(card.dataset, "test" if holdout is None else "train", data_dir)[0]
        if holdout is not None:
            data = data.holdout(holdout, seed=11)
        sets.append(Relabelled(data, {c: offset + i for i, c in enumerate(card.logit_classes)}))
        offset += len(card.logit_classes)
    return ConcatDataset(sets)


def fit_rescaling(model: DetectorAssembly, data: Dataset, steps: int = 50) -> dict[str, Any]:
    """Fit every class channel's ``scale`` and ``shift`` (Platt scaling) on ``data``'s canvases."""
    logits, targets = [], []
    with torch.no_grad():
        for images, batch_targets in detection_loader(data, 64):
            out = model(images)
            stride = stride_of(out, images.shape[-1])
            cls, _, _ = assign(batch_targets, out.shape[-2], out.shape[-1], stride, range(sum(model.class_counts)))
            channels = torch.cat([out[:, s + BOX_CHANNELS:s + BOX_CHANNELS + k] for s, k in
                                  segments(model.class_counts)], 1)
            logits.append(((channels - model.shift.view(1, -1, 1, 1)) / model.scale.view(1, -1, 1, 1)).flatten(2))
            targets.append(cls)
    z = torch.cat(logits).transpose(0, 1).flatten(1)  # classes × (canvases · locations)
    y = torch.cat(targets).transpose(0, 1).flatten(1)
    a, b = torch.ones(len(z), requires_grad=True), torch.zeros(len(z), requires_grad=True)
    optimizer = torch.optim.LBFGS([a, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(a[:, None] * z + b[:, None], y)
        loss.backward()
        return loss

    optimizer.step(closure)
    if not bool((a > 0).all()):
        raise MdakitError("score rescaling fitted a decreasing map for some class; use rescale='none'")
    model.scale.copy_(a.detach())
    model.shift.copy_(b.detach())
    return {"canvases": len(data), "locations": int(z.shape[1])}


def assemble_detectors(parts: Sequence[Any], rescale: str = "calibrated", data_dir: str | Path | None = None,
                       fit_canvases: int = FIT_CANVASES) -> AssembledDetector:
    """Join detector parts (model directories or :class:`~mdakit.disassembly.Part` objects of zoo detectors,
    possibly cut from detectors of different datasets of one input shape) into one detector over all their
    classes. ``rescale``: ``"calibrated"`` (fitted on ``fit_canvases`` held-out training canvases of each
    part's dataset) or ``"none"``.

    >>> joined = assemble_detectors(["runs/det-part-01", "runs/det-fashion-part"])  # doctest: +SKIP
    >>> evaluate_detector_assembly(joined)["assembled"]["map_50"]  # doctest: +SKIP
    """
    if rescale not in RESCALE_MODES:
        raise MdakitError(f"rescale must be one of {', '.join(RESCALE_MODES)} for detectors, got {rescale!r}")
    if len(parts) < 2:
        raise MdakitError("an assembly needs at least two parts")
    resolved = [_resolve(part) for part in parts]
    cards = [card for _, card in resolved]
    _check(cards)
    model = DetectorAssembly([module for module, _ in resolved], [len(card.logit_classes) for card in cards]).eval()
    classes = [{"dataset": card.dataset, "label": int(c), "name": f"{card.dataset}:{card.class_names[c]}"}
               for card in cards for c in card.logit_classes]
    fit = fit_rescaling(model, own_canvases(cards, data_dir, fit_canvases)) if rescale == "calibrated" else {}
    return AssembledDetector(model, cards, classes, rescale, fit)


def _mixed_canvases(cards: Sequence[ModelCard], data_dir: str | Path | None) -> tuple[str, Dataset] | None:
    """Test canvases holding every part's objects together (e.g. ``det-mnist-fashion`` for parts of
    ``det-mnist`` and ``det-fashion-mnist``), labelled in assembled class numbers, if such a dataset exists."""
    wanted = {card.dataset: CANVAS_SOURCES.get(card.dataset, ()) for card in cards}
    if any(len(sources) != 1 for sources in wanted.values()):
        return None
    for name, sources in CANVAS_SOURCES.items():
        offsets = dict(sources)
        if len(sources) > 1 and all(src[0][0] in offsets for src in wanted.values()):
            mapping, number = {}, 0
            for card in cards:
                offset = offsets[wanted[card.dataset][0][0]]
                for c in card.logit_classes:
                    mapping[offset + c] = number
                    number += 1
            return name, Relabelled(load_dataset(name, "test", data_dir)[0], mapping)
    return None


def _restricted_original(part: nn.Module, card: ModelCard, data_dir: str | Path | None) -> dict[str, Any] | None:
    """The mAP of the detector a part was cut from (a whole model is its own), restricted to the part's classes,
    on its own test set; None when that detector's directory is gone."""
    from mdakit.detection.evaluate import evaluate_detector

    source = card.provenance.get("disassembled_from")
    if source is None:
        original, original_card = part, card
    elif Path(source).is_dir():
        original, original_card = load_with_card(source)
    else:
        return None
    test = load_dataset(card.dataset, "test", data_dir)[0]
    return evaluate_detector(original, test, original_card.logit_classes, card.logit_classes)


def evaluate_detector_assembly(assembled: AssembledDetector, data_dir: str | Path | None = None) -> dict[str, Any]:
    """mAP of the assembly over all its classes on the union of the parts' own test canvases (and on canvases
    mixing their objects, where such a dataset exists), beside each part's original restricted to its classes
    on its own test canvases."""
    def score(data: Dataset) -> dict[str, Any]:
        predictions, truths = [], []
        for images, targets in detection_loader(data, 64):
            predictions += assembled.detections(images)
            truths += targets
        return mean_average_precision(predictions, truths)

    report: dict[str, Any] = {"assembled": score(own_canvases(assembled.part_cards, data_dir))}
    mixed = _mixed_canvases(assembled.part_cards, data_dir)
    if mixed is not None:
        report["mixed"] = {"dataset": mixed[0], **score(mixed[1])}
    originals = [_restricted_original(part, card, data_dir)
                 for part, card in zip(assembled.model.parts, assembled.part_cards)]
    if all(o is not None for o in originals):
        report["originals"] = originals
        report["originals_mean_map_50"] = sum(o["map_50"] for o in originals) / len(originals)
    return report
