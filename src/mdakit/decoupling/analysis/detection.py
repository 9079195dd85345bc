"""``mdakit detect``: adversarial-input detection by a decoupled model's paths vs its original (Table 6).

Adversarial versions (FGSM, PGD; L∞ ε on [0, 1] images) of a pool of training images and of a
test set are made *against each model itself* (white box). Four feature sets are read from the same
clean and adversarial images:

- ``decoupled (paths)``: the decoupled model's calculation path (binary gates, the paper's features);
- ``decoupled (gate scores)``: the controlling modules' scores g that the path thresholds;
- ``original (channel activity)``: the original model's per-channel GAP(post-ReLU) > 0 (the baseline);
- ``original (pooled activity)``: those pooled values, not binarised.

Detectors (:data:`~mdakit.decoupling.analysis.detectors.CLASSIFIERS`) learn clean vs adversarial
from 1, 5 and 10 pool images per class and are scored by ROC AUC on the test set, mean ± std over
``runs`` draws. :func:`detection_report` writes ``detection.json`` and ``detection.png``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from mdakit.artifacts import load_with_card
from mdakit.data import labels_of, per_class_subset
from mdakit.decoupling.analysis.attacks import attack
from mdakit.decoupling.analysis.detectors import (
    CLASSIFIERS,
    ChannelActivity,
    DetectionData,
    activity_features,
    detection_table,
    path_features,
)
from mdakit.decoupling.finetune import load_decoupled
from mdakit.decoupling.gates import DecoupledNet
from mdakit.errors import MdakitError, OptionError, OutputExistsError
from mdakit.figures import new_figure
from mdakit.files import write_directory, write_json
from mdakit.workspace import logit_rows, model_datasets

PATHS, SCORES = "decoupled (paths)", "decoupled (gate scores)"
ACTIVITY, POOLED = "original (channel activity)", "original (pooled activity)"
ATTACKS = ("fgsm", "pgd")


@dataclass
class DetectionSettings:
    """Attacks, their strength and the detectors' data. Images are drawn with ``seed``; PGD starts from
    seeded noise (seed 0 for the pool, 1 for the test set)."""

    attacks: tuple[str, ...] = ATTACKS
    epsilon: float = 0.1
    pgd_steps: int = 10
    pool_per_class: int = 20
    test_per_class: int = 50
    sizes: tuple[int, ...] = (1, 5, 10)
    runs: int = 5
    seed: int = 1

    def validate(self) -> None:
        if not self.attacks or len(set(self.attacks)) != len(self.attacks):
            raise OptionError(f"{{0}} must name fgsm and/or pgd once each, got {','.join(self.attacks)!r}", "attacks")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise MdakitError(f"unknown attack {unknown[0]!r}; use fgsm and/or pgd")
        if not 0.0 < self.epsilon <= 1.0:
            raise OptionError(f"{{0}} must be in (0, 1] (images are in [0, 1]), got {self.epsilon}", "epsilon")
        if self.pgd_steps < 1 or self.runs < 1 or self.test_per_class < 1:
            raise OptionError("{0}, {1} and {2} must be at least 1", "pgd_steps", "runs", "test_per_class")
        if not self.sizes or min(self.sizes) < 1:
            raise MdakitError("the detectors' training sizes must be positive")
        if self.pool_per_class < max(self.sizes):
            raise OptionError(f"{{0}} ({self.pool_per_class}) must be at least the largest training "
                              f"size ({max(self.sizes)})", "pool_per_class")


def _images(dataset: Dataset, per_class: int, seed: int, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    subset = per_class_subset(dataset, per_class, seed=seed)
    items = [dataset[i] for i in subset.indices]
    items = [(x, int(y)) for x, y in items if int(y) in classes]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, rows: torch.Tensor, device: torch.device | str,
              batch_size: int = 256) -> float:
    hits = sum(int((model(images[i:i + batch_size].to(device)).argmax(1).cpu() == rows[i:i + batch_size]).sum())
               for i in range(0, len(images), batch_size))
    return hits / len(images)


def detection_study(net: DecoupledNet, original: nn.Module, logit_classes: list[int], train: Dataset,
                    test: Dataset, settings: DetectionSettings | None = None, device: torch.device | str = "cpu",
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per attack and feature set: accuracies, feature counts, how many test inputs' features change, AUCs.

    >>> study = detection_study(net, original, card.logit_classes, train, test)  # doctest: +SKIP
    >>> study["attacks"]["fgsm"]["decoupled (paths)"]["auc"]["random forest"]["10"]["mean"]  # doctest: +SKIP
    """
    settings = settings or DetectionSettings()
    settings.validate()
    input_shape = net.input_shape
    activity = ChannelActivity(original, input_shape).to(device)
    present = set(labels_of(train).unique().tolist()) & set(labels_of(test).unique().tolist())
    classes = [c for c in logit_classes if c in present]
    if not classes:
        raise MdakitError(f"the dataset has no images of the model's classes {logit_classes}")
    pool_x, pool_y = _images(train, settings.pool_per_class, settings.seed, classes)
    test_x, test_y = _images(test, settings.test_per_class, settings.seed, classes)
    rows = logit_rows(logit_classes, classes)
    pool_t, test_t = (torch.tensor([rows[int(c)] for c in y]) for y in (pool_y, test_y))
    models = {"decoupled": (net, {PATHS: lambda x: path_features(net, x),
                                  SCORES: lambda x: path_features(net, x, scores=True)}),
              "original": (original, {ACTIVITY: lambda x: activity_features(activity, x),
                                      POOLED: lambda x: activity_features(activity, x, binary=False)})}
    study: dict[str, Any] = {"pool_images": len(pool_x), "test_images": len(test_x), "classes": classes,
                             "settings": asdict(settings), "attacks": {}}
    for method in settings.attacks:
        entry: dict[str, Any] = {}
        for model, features in models.values():
            start = time.perf_counter()
            model.eval().to(device)
            pool_adv = attack(model, pool_x, pool_t, method, settings.epsilon, settings.pgd_steps, seed=0,
                              device=device)
            test_adv = attack(model, test_x, test_t, method, settings.epsilon, settings.pgd_steps, seed=1,
                              device=device)
            clean_acc, adv_acc = (_accuracy(model, x, test_t, device) for x in (test_x, test_adv))
            for label, read in features.items():
                data = DetectionData(read(pool_x).numpy(), read(pool_adv).numpy(), pool_y.numpy(),
                                     read(test_x).numpy(), read(test_adv).numpy())
                changed = float(np.mean(np.any(data.test_clean != data.test_adversarial, axis=1)))
                entry[label] = {"features": int(data.test_clean.shape[1]), "clean_accuracy": clean_acc,
                                "adversarial_accuracy": adv_acc, "test_inputs_with_changed_features": changed,
                                "auc": detection_table(data, settings.sizes, settings.runs),
                                "seconds_since_attack_start": time.perf_counter() - start}
                if progress is not None:
                    best = entry[label]["auc"]["random forest"][str(max(settings.sizes))]["mean"]
                    progress(f"{method} {label}: random-forest AUC {best:.3f}")
        study["attacks"][method] = entry
    return study


def plot_detection(study: dict[str, Any], path: str | Path) -> Path:
    """Bars of the AUC (mean ± std) per classifier and feature set at the largest training size, per attack."""
    attacks = list(study["attacks"])
    size = str(max(study["settings"]["sizes"]))
    fig = new_figure(4.5 * len(attacks), 3.6)
    axes = fig.subplots(1, len(attacks), squeeze=False)[0]
    for ax, method in zip(axes, attacks):
        entry = study["attacks"][method]
        labels = [label for label in (PATHS, SCORES, ACTIVITY, POOLED) if label in entry]
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            means = [entry[label]["auc"][clf][size]["mean"] for clf in CLASSIFIERS]
            stds = [entry[label]["auc"][clf][size]["std"] for clf in CLASSIFIERS]
            ax.bar(np.arange(len(CLASSIFIERS)) + (i - (len(labels) - 1) / 2) * width, means, width, yerr=stds,
                   label=label, capsize=2)
        ax.set_xticks(np.arange(len(CLASSIFIERS)), list(CLASSIFIERS))
        ax.set_ylim(0.4, 1.0)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_ylabel(f"ROC AUC ({size} images per class)")
        ax.set_title(f"{method.upper()}, ε = {study['settings']['epsilon']:g}")
    axes[0].legend(fontsize=7, loc="lower left")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def _original_of(card: Any, original_path: str | Path | None) -> Path:
    if original_path is not None:
        return Path(original_path)
    recorded = card.provenance.get("decoupled_from")
    if recorded is None:
        raise OptionError("the model card does not say which model was decoupled: name it with {0}", "original")
    if not (Path(recorded) / "card.json").is_file():
        raise OptionError(f"the original model {recorded} (from the card) is not there: name it with {{0}}", "original")
    return Path(recorded)


def detection_report(model_path: str | Path, out: str | Path, dataset: str | None = None,
                     original_path: str | Path | None = None, settings: DetectionSettings | None = None,
                     data_dir: str | Path | None = None, device: torch.device | str = "cpu", force: bool = False,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run :func:`detection_study` on the decoupled model at ``model_path`` and write it into ``out``.

    >>> detection_report("runs/decouple/lenet5-mnist-dyn", "runs/detect/lenet5")  # doctest: +SKIP
    """
    settings = settings or DetectionSettings()
    settings.validate()
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(out)
    net, card = load_decoupled(model_path, device)
    source = _original_of(card, original_path)
    original, original_card = load_with_card(source, device=device)
    if list(original_card.input_shape) != list(card.input_shape):
        raise MdakitError(f"the original {source} takes {original_card.input_shape} but the decoupled model takes "
                          f"{card.input_shape}")
    if [original_card.class_names[c] for c in original_card.logit_classes] != [card.class_names[c]
                                                                                for c in card.logit_classes]:
        raise OptionError(f"the original {source} ({original_card.dataset}) has other classes than the decoupled "
                          f"model ({card.dataset}): name the model that was decoupled with {{0}}", "original")
    train, test, info = model_datasets(card, dataset, data_dir)
    study = detection_study(net, original, list(card.logit_classes), train, test, settings, device, progress)
    study.update(model=str(model_path), original=str(source), dataset=info.name)

    def write(tmp: Path) -> None:
        write_json(tmp / "detection.json", study)
        plot_detection(study, tmp / "detection.png")

    write_directory(out, force, write)
    return study
