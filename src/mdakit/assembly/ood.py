"""Out-of-distribution-aware joining: each part says how much an input looks like its own images.

A part cut from a model trained on one dataset has never seen the other parts' images, and its logits
on them can be as large as on its own (a digit part confident on a shirt). The ``ood`` rescaling gives
every part a **score**: how far an input is from that part's own training images of its own classes,
fitted on those images alone. The assembly turns the parts' scores into a soft choice of part and
combines it with each part's own class probabilities:

    log p(class c of part i | x) = log_softmax(z_i(x))_c + log_softmax_j(-u_j(x))_i

where ``z_i`` are part i's logits and ``u_j`` part j's normalised score (0 at the median of the
part's own held-out images, 1 at their 95th percentile). The output is a log-probability per class,
so argmax, softmax and cross-entropy keep their meaning. A one-class part's own term is 0 and it is
chosen by its score alone.

Scores (:data:`SCORES`; measured against each other in benchmarks/assembly.py):

- ``mahalanobis``: the smallest squared Mahalanobis distance of the part's penultimate features (the
  input of its logit layer) to its classes' means under one shared, shrunk covariance;
- ``energy``: minus the log-sum-exp of the part's logits;
- ``max-logit``: minus the largest logit.

Each part's score is fitted on images of that part's own classes only (its model's validation split
where the card records it, else training images), so it needs no images of any other part's dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mdakit.errors import MdakitError

SHRINKAGE = 0.05
"""Share of the mean feature variance added to the covariance's diagonal, so it stays invertible when
a part keeps more penultimate units than it has images per class, or some units are constant."""

MIN_SCALE = 1e-6


class PartScore(nn.Module):
    """A part's distance from its own images, normalised: ``(raw - loc) / scale``.

    Subclasses compute ``raw(logits, features)`` (higher means further from the part's images) and say
    whether they read the penultimate ``features``.
    """

    uses_features = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def raw(self, logits: torch.Tensor, features: Sequence[torch.Tensor] | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, features: Sequence[torch.Tensor] | None) -> torch.Tensor:
        return (self.raw(logits, features) - self.loc) / self.scale

    def fit_normaliser(self, logits: torch.Tensor, features: Sequence[torch.Tensor] | None) -> None:
        """Put 0 at the median and 1 at the 95th percentile of the raw score on the part's own images."""
        with torch.no_grad():
            raw = self.raw(logits, features).double()
            loc, high = torch.quantile(raw, 0.5), torch.quantile(raw, 0.95)
            self.loc.copy_(loc)
            self.scale.copy_(torch.clamp(high - loc, min=MIN_SCALE))


class Energy(PartScore):
    """Minus the log-sum-exp of the part's logits."""

    def raw(self, logits: torch.Tensor, features: Sequence[torch.Tensor] | None) -> torch.Tensor:
        return -torch.logsumexp(logits, dim=1)


class MaxLogit(PartScore):
    """Minus the part's largest logit."""

    def raw(self, logits: torch.Tensor, features: Sequence[torch.Tensor] | None) -> torch.Tensor:
        return -logits.max(dim=1).values


class Mahalanobis(PartScore):
    """Smallest squared Mahalanobis distance of one feature vector to the part's class means.

    ``means`` is C × k; ``whiten`` a k × k matrix W with W Wᵀ the inverse shared covariance, so the
    squared distance is ‖(f − μ_c) W‖². ``layer`` picks the feature tensor it reads (-1: the
    penultimate features).

    >>> score = Mahalanobis(torch.zeros(1, 2), torch.eye(2))
    >>> score.raw(None, [torch.tensor([[3.0, 4.0]])]).tolist()
    [25.0]
    """

    uses_features = True

    def __init__(self, means: torch.Tensor, whiten: torch.Tensor, layer: int = -1) -> None:
        super().__init__()
        self.register_buffer("means", means.float())
        self.register_buffer("whiten", whiten.float())
        self.layer = layer

    @classmethod
    def fitted(cls, features: torch.Tensor, labels: torch.Tensor, layer: int = -1) -> Mahalanobis:
        """Class means and a shared covariance (shrunk towards its mean variance) of ``features``."""
        x, y = features.double(), labels.long()
        classes = torch.unique(y)
        means = torch.stack([x[y == c].mean(0) for c in classes])
        centred = x - means[torch.searchsorted(classes, y)]
        cov = centred.T @ centred / max(len(x) - len(classes), 1)
        ridge = SHRINKAGE * float(torch.diagonal(cov).mean().clamp(min=MIN_SCALE))
        precision = torch.linalg.inv(cov + ridge * torch.eye(len(cov), dtype=cov.dtype))
        whiten = torch.linalg.cholesky((precision + precision.T) / 2)
        return cls(means, whiten, layer)

    def raw(self, logits: torch.Tensor | None, features: Sequence[torch.Tensor] | None) -> torch.Tensor:
        if features is None:
            raise MdakitError("the mahalanobis score needs the part's features")
        diff = (features[self.layer][:, None, :] - self.means[None]) @ self.whiten
        return diff.square().sum(-1).min(dim=1).values


class LayerwiseMahalanobis(PartScore):
    """The mean over the part's layers of each layer's normalised Mahalanobis score.

    Early layers see what kind of image it is (strokes or textures) before the part's cut has narrowed
    its features to its own classes, where a foreign image can land near a class mean.
    """

    uses_features = True

    def __init__(self, layers: Sequence[Mahalanobis]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @classmethod
    def fitted(cls, features: Sequence[torch.Tensor], labels: torch.Tensor) -> LayerwiseMahalanobis:
        return cls([Mahalanobis.fitted(f, labels, i) for i, f in enumerate(features)])

    def raw(self, logits: torch.Tensor | None, features: Sequence[torch.Tensor] | None) -> torch.Tensor:
        return torch.stack([layer(logits, features) for layer in self.layers], 1).mean(1)

    def fit_normaliser(self, logits: torch.Tensor, features: Sequence[torch.Tensor] | None) -> None:
        for layer in self.layers:
            layer.fit_normaliser(logits, features)
        super().fit_normaliser(logits, features)


Factory = Callable[[Sequence[torch.Tensor], torch.Tensor], PartScore]
SCORES: dict[str, Factory] = {
    "mahalanobis": LayerwiseMahalanobis.fitted,
    "mahalanobis-penultimate": lambda features, labels: Mahalanobis.fitted(features[-1], labels),
    "energy": lambda features, labels: Energy(),
    "max-logit": lambda features, labels: MaxLogit(),
}
DEFAULT_SCORE = "mahalanobis"


def score_names() -> list[str]:
    """The registered score names (see :data:`SCORES`)."""
    return list(SCORES)


class OodGate(nn.Module):
    """Combine the parts' logits and scores into one log-probability per class (module docstring).

    >>> gate = OodGate([Energy(), Energy()], [2, 1])
    >>> out = gate(torch.tensor([[5.0, 0.0, 0.0]]), [None, None])
    >>> round(float(out.exp().sum()), 4), out.argmax(1).tolist()
    (1.0, [0])
    """

    def __init__(self, scores: Sequence[PartScore], sizes: Sequence[int]) -> None:
        super().__init__()
        if len(scores) != len(sizes):
            raise ValueError(f"{len(scores)} scores but {len(sizes)} parts")
        self.scores = nn.ModuleList(scores)
        self.sizes = [int(s) for s in sizes]

    @property
    def uses_features(self) -> bool:
        return any(score.uses_features for score in self.scores)

    def forward(self, logits: torch.Tensor, features: Sequence[Sequence[torch.Tensor] | None]) -> torch.Tensor:
        pieces = logits.split(self.sizes, dim=1)
        distances = torch.stack([score(z, f) for score, z, f in zip(self.scores, pieces, features, strict=True)], 1)
        choice = F.log_softmax(-distances, dim=1)
        return torch.cat([F.log_softmax(z, dim=1) + choice[:, i:i + 1] for i, z in enumerate(pieces)], dim=1)


def pooled(features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Features as one vector per input and tensor: spatial maps averaged over their positions.

    >>> [tuple(f.shape) for f in pooled([torch.ones(2, 3, 4, 4), torch.ones(2, 5)])]
    [(2, 3), (2, 5)]
    """
    return [f.flatten(2).mean(2) if f.dim() > 2 else f.flatten(1) for f in features]


GATE_FILE = "gate.safetensors"


def score_spec(score: PartScore) -> dict:
    """What :func:`gate_from_spec` needs besides the tensors to rebuild ``score`` (JSON-able)."""
    if isinstance(score, LayerwiseMahalanobis):
        return {"kind": "layerwise-mahalanobis", "layers": [score_spec(layer) for layer in score.layers]}
    if isinstance(score, Mahalanobis):
        return {"kind": "mahalanobis", "layer": score.layer}
    return {"kind": {Energy: "energy", MaxLogit: "max-logit"}[type(score)]}


def _score_from_spec(spec: dict, tensors: dict[str, torch.Tensor], prefix: str) -> PartScore:
    kind = spec.get("kind")
    if kind == "layerwise-mahalanobis":
        return LayerwiseMahalanobis([_score_from_spec(s, tensors, f"{prefix}layers.{i}.")
                                     for i, s in enumerate(spec["layers"])])
    if kind == "mahalanobis":
        return Mahalanobis(tensors[f"{prefix}means"], tensors[f"{prefix}whiten"], int(spec["layer"]))
    if kind in ("energy", "max-logit"):
        return Energy() if kind == "energy" else MaxLogit()
    raise MdakitError(f"unknown ood score {kind!r} in the gate's description")


def gate_spec(gate: OodGate) -> dict:
    """The JSON half of a saved gate (the tensors go to :data:`GATE_FILE`).

    >>> gate = OodGate([Energy(), Mahalanobis(torch.zeros(2, 3), torch.eye(3))], [2, 2])
    >>> spec = gate_spec(gate)
    >>> spec["scores"][1], torch.equal(gate_from_spec(spec, gate.state_dict()).scores[1].whiten, torch.eye(3))
    ({'kind': 'mahalanobis', 'layer': -1}, True)
    """
    return {"sizes": gate.sizes, "scores": [score_spec(score) for score in gate.scores]}


def gate_from_spec(spec: dict, tensors: dict[str, torch.Tensor]) -> OodGate:
    """Rebuild a gate from :func:`gate_spec` and its state dict (missing or extra tensors are refused)."""
    try:
        gate = OodGate([_score_from_spec(s, tensors, f"scores.{i}.") for i, s in enumerate(spec["scores"])],
                       spec["sizes"])
        gate.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise MdakitError(f"the saved gate does not match its description: {str(exc).splitlines()[0]}") from exc
    return gate
