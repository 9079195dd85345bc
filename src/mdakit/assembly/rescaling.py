"""Logit rescaling: make the logits of parts cut from different models comparable.

Each rescaling is fitted on training images only, never on the test split, into the ``scale`` and
``shift`` of an :class:`~mdakit.assembly.models.AssembledModel` (logits become ``logits * scale + shift``):

- ``none``: the parts' logits as they are (nothing is fitted, no data is read);
- ``paper`` (Eq. 11 of the contribution paper): logit c is multiplied by e / e_c, where e_c is the mean
  of logit c over class c's selected samples and e the mean of every e_c;
- ``calibrated`` (an extension beyond the paper): per logit k, a scale a_k > 0 and an offset b_k
  (vector scaling), fitted by minimising the cross-entropy of the assembled logits over held-out images
  of every part's classes (the original model's validation split where recorded). One scale and offset
  per class, not per part: a part cut from a model trained on another dataset is confident on images of
  some foreign classes more than on others, and one pair per part cannot undo that (measured in
  benchmarks/RESULTS.md);
- ``calibrated-part``: the same fit with one scale and one offset per part (part 0 fixed), for the
  ablation;
- ``ood`` (:mod:`mdakit.assembly.ood`): each part scores how far an input is from its own images
  (Mahalanobis distances of its layers' features), and the assembly weighs each part's class
  probabilities by a soft choice of part from those scores. Each part's score is fitted on images of
  its own classes alone. ``ood-penultimate`` reads the penultimate features only, ``ood-energy`` and
  ``ood-max-logit`` the part's logits (the ablation).

A rescaling is a fitter registered in :data:`RESCALES` with :func:`register_rescaling`: it gets the
assembled model, its card, each part's training set and the samples each part selected of its classes,
sets ``model.scale`` and ``model.shift`` (or attaches a gate) in place and returns what it fitted (a
JSON-able dict with a ``warnings`` list).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from mdakit.artifacts import ModelCard
from mdakit.assembly.card import AssemblyCard
from mdakit.assembly.models import AssembledModel, per_logit
from mdakit.assembly.ood import SCORES, OodGate, PartScore, pooled
from mdakit.attribution.samples import select_samples
from mdakit.calibration import holdout_images
from mdakit.errors import MdakitError
from mdakit.evaluate import predict_logits
from mdakit.graph.features import with_features
from mdakit.workspace import Workspace

Chosen = Sequence[Mapping[int, torch.Tensor]]
Fitter = Callable[[AssembledModel, AssemblyCard, Sequence[Dataset], Chosen, torch.device | str], dict[str, Any]]

RESCALES: dict[str, Fitter | None] = {"none": None}
GATED: set[str] = set()
"""The rescalings that attach a gate reading each part's own features (parallel layout only)."""


def register_rescaling(name: str, gated: bool = False) -> Callable[[Fitter], Fitter]:
    """Decorator registering a fitter under ``name`` (see the module docstring for what it gets);
    ``gated`` if it attaches a gate (:meth:`AssembledModel.attach_gate`) rather than an affine map."""

    def wrap(fitter: Fitter) -> Fitter:
        RESCALES[name] = fitter
        if gated:
            GATED.add(name)
        return fitter

    return wrap


def paper_scales(class_means: torch.Tensor) -> tuple[torch.Tensor, float, list[str]]:
    """Eq. 11: logit c is multiplied by e / e_c, with e_c = ``class_means[c]`` and e the mean of all e_c.

    A logit whose e_c is not positive keeps scale 1 (dividing by it would flip or blow up the logit);
    so does every logit when e itself is not positive. The notes say which.

    >>> scale, e, notes = paper_scales(torch.tensor([2.0, 8.0, -1.0]))
    >>> scale.tolist(), e, notes
    ([1.5, 0.375, 1.0], 3.0, ['logit 2: mean own-class logit -1 <= 0, scale 1'])
    """
    e = float(class_means.mean())
    if e <= 0:
        return torch.ones_like(class_means), e, [f"the mean own-class logit e = {e:.4g} is not positive: no rescaling"]
    bad = class_means <= 0
    scale = torch.where(bad, torch.ones_like(class_means), e / class_means)
    notes = [f"logit {i}: mean own-class logit {float(class_means[i]):.4g} <= 0, scale 1"
             for i in torch.nonzero(bad).flatten().tolist()]
    return scale, e, notes


def calibrate(logits: torch.Tensor, labels: torch.Tensor, sizes: Sequence[int], per: str = "logit",
              steps: int = 200, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Per-logit scales a > 0 and offsets b minimising the cross-entropy of ``logits * a + b``.

    ``logits`` (N × sum(sizes)) are raw assembled logits of N samples and ``labels`` their assembled
    labels. ``per="logit"`` fits one (a, b) per logit; ``per="part"`` one per part, shared by its logits,
    with part 0 fixed at a = 1, b = 0 (only differences between parts matter). a = exp(log a). A small
    ridge on log a and b / std(logits) keeps the fit finite when the samples are separable. Full-batch
    L-BFGS in float64, so the result is a function of the inputs alone. Returns per-logit a and b.

    >>> logits = torch.tensor([[2.0, 0.0], [2.0, 1.0]]); labels = torch.tensor([0, 1])
    >>> a, b, losses = calibrate(logits, labels, [1, 1], per="part")
    >>> a[0].item(), b[0].item(), (logits * a + b).argmax(1).tolist(), losses["loss"] < losses["loss_before"]
    (1.0, 0.0, [0, 1], True)
    """
    if per not in ("logit", "part"):
        raise MdakitError(f"calibrate per 'logit' or 'part', not {per!r}")
    x, y = logits.double(), labels.long()
    free = sum(sizes) if per == "logit" else len(sizes) - 1
    log_a = torch.zeros(free, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(free, dtype=torch.float64, requires_grad=True)
    spread = float(x.std()) if x.numel() > 1 and float(x.std()) > 0 else 1.0
    zero = torch.zeros(1, dtype=torch.float64)

    def affine() -> tuple[torch.Tensor, torch.Tensor]:
        if per == "logit":
            return log_a.exp(), b
        return per_logit(torch.cat([zero, log_a]).exp(), sizes), per_logit(torch.cat([zero, b]), sizes)

    def objective() -> torch.Tensor:
        a_k, b_k = affine()
        ce = F.cross_entropy(x * a_k + b_k, y)
        return ce + ridge * (log_a.square().sum() + (b / spread).square().sum())

    optimizer = torch.optim.LBFGS([log_a, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        a_k, b_k = affine()
        loss = float(F.cross_entropy(x * a_k + b_k, y))
    return a_k.detach(), b_k.detach(), {"loss_before": float(F.cross_entropy(x, y)), "loss": loss}


def _sample_logits(model: nn.Module, dataset: Dataset, chosen: Mapping[int, torch.Tensor], classes: Sequence[int],
                   device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``model`` on the chosen images, with their labels (the class's position in ``classes``)."""
    indices = torch.cat([chosen[c] for c in classes]).tolist()
    labels = torch.cat([torch.full((len(chosen[c]),), i, dtype=torch.long) for i, c in enumerate(classes)])
    return predict_logits(model, Subset(dataset, indices), device=device)[0].double(), labels


@register_rescaling("paper")
def fit_paper(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset], chosen: Chosen,
              device: torch.device | str) -> dict[str, Any]:
    """Eq. 11 (:func:`paper_scales`) from each part's mean own-class logit over its selected samples."""
    means: list[float] = []
    for part, part_card, train, part_chosen in zip(model.parts, card.part_cards, train_sets, chosen, strict=True):
        logits, labels = _sample_logits(part, train, part_chosen, part_card.logit_classes, device)
        means += [float(logits[labels == i, i].mean()) for i in range(len(part_card.logit_classes))]
    scale, e, notes = paper_scales(torch.tensor(means, dtype=torch.float64))
    with torch.no_grad():
        model.scale.copy_(scale)
    return {"class_mean_logits": means, "e": e, "scale": scale.tolist(), "warnings": notes}


def _fit_affine(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset], chosen: Chosen,
                device: torch.device | str, per: str) -> dict[str, Any]:
    """:func:`calibrate` on held-out images of every part's classes: the original model's validation
    split where its card records it (never trained on), else training images not selected. The selected
    samples, the most confident of each class, are nearly separable and would make a poor basis for the fit."""
    all_logits, all_labels, kinds = [], [], []
    for offset, part, part_card, train, part_chosen in zip(card.offsets, model.parts, card.part_cards, train_sets,
                                                            chosen, strict=True):
        source = Workspace(part, part_card, train, None, "")
        per_class = max(4 * min(len(v) for v in part_chosen.values()), 1)
        images, labels, kind = holdout_images(source, list(part_card.logit_classes), dict(part_chosen), per_class,
                                              seed=0)
        all_logits.append(predict_logits(model, TensorDataset(images, labels), device=device)[0].double())
        all_labels.append(labels + offset)
        kinds.append(kind)
    a, b, losses = calibrate(torch.cat(all_logits), torch.cat(all_labels), card.sizes, per=per)
    with torch.no_grad():
        model.scale.copy_(a)
        model.shift.copy_(b)
    return {"per": per, "scale": a.tolist(), "shift": b.tolist(), "fitted_on": kinds,
            "images": int(sum(len(x) for x in all_logits)), **losses, "warnings": []}


@register_rescaling("calibrated")
def fit_calibrated(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset], chosen: Chosen,
                   device: torch.device | str) -> dict[str, Any]:
    """Vector scaling: one scale and one offset per logit (see :func:`_fit_affine`)."""
    return _fit_affine(model, card, train_sets, chosen, device, per="logit")


@register_rescaling("calibrated-part")
def fit_calibrated_per_part(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset],
                            chosen: Chosen, device: torch.device | str) -> dict[str, Any]:
    """One scale and one offset per part, part 0 fixed (the ablation of ``calibrated``)."""
    return _fit_affine(model, card, train_sets, chosen, device, per="part")


OOD_IMAGES_PER_CLASS = 400
"""Held-out images per class a part's ``ood`` score is fitted on: half for its statistics (class means,
covariance), half for its normaliser."""


@torch.no_grad()
def _outputs(model: nn.Module, images: torch.Tensor, device: torch.device | str, batch: int = 256
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and pooled features (:func:`~mdakit.graph.features.with_features`) of ``images``, batch by
    batch, on the CPU."""
    logits, features = [], []
    for chunk in images.split(batch):
        z, f = model(chunk.to(device))
        logits.append(z.cpu())
        features.append([t.cpu() for t in pooled(f)])
    return torch.cat(logits), [torch.cat(column) for column in zip(*features, strict=True)]


def fit_part_score(part: nn.Module, part_card: ModelCard, train: Dataset, chosen: Mapping[int, torch.Tensor],
                   score: str, device: torch.device | str) -> tuple[PartScore, dict[str, Any]]:
    """A part's ``score`` fitted on held-out images of its own classes only (no other part's data)."""
    source = Workspace(part, part_card, train, None, "")
    images, labels, kind = holdout_images(source, list(part_card.logit_classes), dict(chosen), OOD_IMAGES_PER_CLASS,
                                          seed=0)
    if len(images) < 4:
        raise MdakitError(f"only {len(images)} held-out images of its classes to fit its {score} score on")
    both, layers = with_features(part, part_card.input_shape)
    logits, features = _outputs(both.to(device).eval(), images, device)
    stats, normaliser = torch.arange(len(labels)) % 2 == 0, torch.arange(len(labels)) % 2 == 1
    fitted = SCORES[score]([f[stats] for f in features], labels[stats])
    fitted.fit_normaliser(logits[normaliser], [f[normaliser] for f in features])
    return fitted, {"fitted_on": kind, "images": len(images), "layers": layers if fitted.uses_features else []}


def _fit_ood(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset], chosen: Chosen,
             device: torch.device | str, score: str) -> dict[str, Any]:
    fitted = [fit_part_score(part, part_card, train, part_chosen, score, device)
              for part, part_card, train, part_chosen in zip(model.parts, card.part_cards, train_sets, chosen,
                                                             strict=True)]
    model.attach_gate(OodGate([s for s, _ in fitted], card.sizes).to(device), card.input_shape)
    return {"score": score, "parts": [record for _, record in fitted],
            "loc": [float(s.loc) for s, _ in fitted], "normaliser_scale": [float(s.scale) for s, _ in fitted],
            "warnings": []}


@register_rescaling("ood", gated=True)
def fit_ood(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset], chosen: Chosen,
            device: torch.device | str) -> dict[str, Any]:
    """A gate from each part's Mahalanobis scores on its layers' features (:mod:`mdakit.assembly.ood`)."""
    return _fit_ood(model, card, train_sets, chosen, device, "mahalanobis")


@register_rescaling("ood-penultimate", gated=True)
def fit_ood_penultimate(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset], chosen: Chosen,
                        device: torch.device | str) -> dict[str, Any]:
    """A gate from each part's Mahalanobis score on its penultimate features alone."""
    return _fit_ood(model, card, train_sets, chosen, device, "mahalanobis-penultimate")


@register_rescaling("ood-energy", gated=True)
def fit_ood_energy(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset], chosen: Chosen,
                   device: torch.device | str) -> dict[str, Any]:
    """A gate from each part's energy score (minus the log-sum-exp of its logits)."""
    return _fit_ood(model, card, train_sets, chosen, device, "energy")


@register_rescaling("ood-max-logit", gated=True)
def fit_ood_max_logit(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset], chosen: Chosen,
                      device: torch.device | str) -> dict[str, Any]:
    """A gate from each part's largest logit."""
    return _fit_ood(model, card, train_sets, chosen, device, "max-logit")


def fit_rescaling(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset], samples: int, seed: int,
                  device: torch.device | str) -> dict[str, Any]:
    """Select each part's training samples (on the part itself) and fit ``card.rescale`` into ``model``.

    Returns the fit record (split, samples chosen, and what the fitter fitted); its notes are also
    issued as warnings.
    """
    fitter = RESCALES[card.rescale]
    if fitter is None:
        return {}
    chosen = []
    for i, (part, c, train) in enumerate(zip(model.parts, card.part_cards, train_sets, strict=True)):
        try:
            chosen.append(select_samples(part, train, c.logit_classes, list(range(len(c.logit_classes))), n=samples,
                                         seed=seed, device=device))
        except MdakitError as exc:
            raise MdakitError(f"cannot fit the {card.rescale!r} rescaling: part {i} ({c.dataset}) {exc}; "
                              "rescale 'none' assembles it as it is") from exc
    fit = {"split": "train", "samples_per_class": samples, "seed": seed,
           "samples": [{str(c): v.tolist() for c, v in part_chosen.items()} for part_chosen in chosen],
           **fitter(model, card, train_sets, chosen, device)}
    for note in fit["warnings"]:
        warnings.warn(note, stacklevel=3)
    return fit
