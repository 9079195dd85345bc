"""The NAD objective's values and the per-block normalised update."""

from __future__ import annotations

import torch

from mdakit.attribution.nad import gate_layout
from mdakit.attribution.nad_objective import nad_loss, normalized_step
from mdakit.attribution.nad_points import mask_points
from mdakit.graph import trace
from nets import ResidualNet, randomize_batchnorm


def test_loss_values_and_correct_only():
    r, mu = [torch.full((2, 2, 1, 1), 2.0)], [torch.tensor([1.0, 0.0])]
    logits = torch.zeros(2, 3)
    ce = torch.log(torch.tensor(3.0))
    paper = nad_loss(logits, 0, r, mu, beta=0.5, loss="paper")  # β·mean((rμ)²)=0.5·2, ‖r−μr‖²/B = 4
    assert torch.isclose(paper, ce + 1.0 + 4.0)
    code = nad_loss(logits, 0, r, mu, beta=0.5, loss="code")  # MSE = 2, β·mean(μ²) = 0.25
    assert torch.isclose(code, ce + 2.0 + 0.25)
    none = nad_loss(logits, 0, r, mu, 0.5, "code", correct=torch.tensor([False, False]))
    assert float(none) == 0.0


def test_update_is_gradient_normalised_per_block():
    graph = trace(randomize_batchnorm(ResidualNet().eval()), (1, 8, 8))
    layout = gate_layout(graph, mask_points(graph))
    theta = torch.zeros(layout.size, requires_grad=True)
    gates = [torch.cat([torch.sigmoid(theta), torch.ones(1)])[i] for i in layout.index]
    acts = [torch.rand(3, len(i), 4, 4) for i in layout.index]
    loss = nad_loss(torch.randn(3, 4), 1, acts, gates, beta=0.3, loss="paper")
    grad = torch.autograd.grad(loss, theta)[0]
    before = theta.detach().clone()
    normalized_step(theta.data, grad, layout.blocks, 0.1)
    for block in layout.blocks:
        step = before[block] - theta.detach()[block]
        assert torch.isclose(step.norm(), torch.tensor(0.1 * len(block) ** 0.5))
        assert torch.allclose(step / step.norm(), grad[block] / grad[block].norm(), atol=1e-6)
