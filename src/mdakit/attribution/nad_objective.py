"""The NAD objective of one batch (paper Eq. 12–14, or the authors' code) and its update step (Eq. 15)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F


def nad_loss(logits: torch.Tensor, row: int, activations: Sequence[torch.Tensor], gates: Sequence[torch.Tensor],
             beta: float, loss: str = "code", correct: torch.Tensor | None = None) -> torch.Tensor:
    """The NAD objective of one batch of class images; ``activations[i]`` is the unmasked ``r_i``
    at mask point ``i`` and ``gates[i]`` its per-channel gate ``μ_i``.

    ``"paper"`` (Eq. 12–14): ``CE + Σ_i β·mean((r_i μ_i)²) + ‖r_i − μ_i r_i‖²`` (squared norm per
    image, averaged over the batch). ``"code"`` (the authors' code): ``CE + mean_i [MSE(μ_i r_i, r_i)
    + β·mean(μ_i²)]`` on the correctly classified images only (``correct``).

    >>> r, mu = [torch.ones(2, 3, 1, 1)], [torch.full((3,), 0.5)]
    >>> float(nad_loss(torch.zeros(2, 2), 0, r, mu, beta=1.0, loss="code"))  # log 2 + 0.25 + 0.25
    1.1931...
    """
    if correct is not None and loss == "code":
        if not bool(correct.any()):
            return logits.sum() * 0.0
        logits = logits[correct]
        activations = [a[correct] for a in activations]
    ce = F.cross_entropy(logits, torch.full((len(logits),), row, device=logits.device))
    terms = []
    for r, mu in zip(activations, gates):
        r = r.detach()
        mu = mu.view(1, -1, *([1] * (r.dim() - 2)))
        if loss == "paper":
            terms.append(beta * (r * mu).square().mean() + (r - mu * r).square().sum() / len(r))
        else:
            terms.append(F.mse_loss(mu * r, r) + beta * mu.square().mean())
    if not terms:
        return ce
    reg = torch.stack(terms)
    return ce + (reg.sum() if loss == "paper" else reg.mean())


def normalized_step(theta: torch.Tensor, grad: torch.Tensor, blocks: Sequence[torch.Tensor], lr: float) -> None:
    """Eq. 15 in place, per block ``b`` of ``n`` entries: ``θ_b ← θ_b − lr · √n · g_b / ‖g_b‖₂``.

    The gradient is L2-normalised per block as in the paper, then scaled by ``√n`` so that ``lr`` is
    the root-mean-square step of one entry whatever the block's width: with a unit-length step, a
    512-channel block would move each entry by about 0.004, and in 20 steps the masks would barely
    leave their start. Zero gradients do not move.

    >>> theta = torch.zeros(3)
    >>> normalized_step(theta, torch.tensor([3.0, 4.0, 2.0]), [torch.tensor([0, 1]), torch.tensor([2])], 0.1)
    >>> theta
    tensor([-0.0849, -0.1131, -0.1000])
    """
    with torch.no_grad():
        for block in blocks:
            g = grad[block]
            norm = g.norm()
            if norm > 0:
                theta[block] -= lr * math.sqrt(len(block)) * g / norm
