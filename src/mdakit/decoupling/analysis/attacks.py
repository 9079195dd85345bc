"""FGSM and PGD (L∞) attacks on models that map raw [0, 1] images to logits.

- FGSM (Goodfellow et al.): x' = clip(x + ε·sign(∇ₓ CE(f(x), y)), 0, 1).
- PGD (Madry et al.): from a uniform random start in the ε-ball, ``steps`` signed-gradient steps of
  size ``step`` (default 2.5·ε / steps), each projected back onto the ε-ball and onto [0, 1].

Targets are logit rows. Both run in batches and leave the model's mode and gradients untouched.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mdakit.errors import MdakitError


def _check(epsilon: float) -> None:
    if not 0.0 <= epsilon <= 1.0:
        raise MdakitError(f"the attack's ε must be in [0, 1] (images are in [0, 1]), got {epsilon}")


def _gradient(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), targets)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """One signed-gradient step of size ``epsilon`` that increases the loss of ``targets``.

    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x = torch.full((1, 1, 2, 2), 0.5)
    >>> adv = fgsm(model, x, torch.tensor([0]), epsilon=0.1)
    >>> float((adv - x).abs().max()) <= 0.1 + 1e-6
    True
    """
    _check(epsilon)
    return (images + epsilon * _gradient(model, images, targets).sign()).clamp(0.0, 1.0).detach()


def pgd(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1, steps: int = 10,
        step: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent in the L∞ ``epsilon``-ball around ``images`` (random start).

    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x = torch.full((3, 1, 2, 2), 0.5)
    >>> adv = pgd(model, x, torch.tensor([0, 1, 0]), epsilon=0.05, steps=3, generator=torch.Generator().manual_seed(0))
    >>> float((adv - x).abs().max()) <= 0.05 + 1e-6
    True
    """
    _check(epsilon)
    if steps < 1:
        raise MdakitError(f"PGD needs at least one step, got {steps}")
    step = 2.5 * epsilon / steps if step is None else step
    noise = torch.rand(images.shape, generator=generator).to(images) * 2 - 1
    x = (images + epsilon * noise).clamp(0.0, 1.0)
    for _ in range(steps):
        x = x + step * _gradient(model, x, targets).sign()
        x = torch.min(torch.max(x, images - epsilon), images + epsilon).clamp(0.0, 1.0)
    return x.detach()


def attack(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, method: str = "fgsm", epsilon: float = 0.1,
           steps: int = 10, batch_size: int = 128, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Adversarial versions of ``images`` by ``method`` ("fgsm" or "pgd"), in batches, returned on the CPU.

    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> attack(model, torch.rand(5, 1, 2, 2), torch.zeros(5, dtype=torch.long), "pgd", 0.1, steps=2).shape
    torch.Size([5, 1, 2, 2])
    """
    if method not in ("fgsm", "pgd"):
        raise MdakitError(f"unknown attack {method!r}; use fgsm or pgd")
    generator = torch.Generator().manual_seed(seed)
    model.eval().to(device)
    out = []
    for start in range(0, len(images), batch_size):
        x, y = images[start:start + batch_size].to(device), targets[start:start + batch_size].to(device)
        adv = fgsm(model, x, y, epsilon) if method == "fgsm" else pgd(model, x, y, epsilon, steps,
                                                                      generator=generator)
        out.append(adv.cpu())
    return torch.cat(out)
