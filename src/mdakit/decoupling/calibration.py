"""Passes over data that set a decoupled model's statistics or start its heads, without gradients.

:func:`recalibrate_batchnorm` re-estimates BatchNorm statistics under the binary gates of inference;
:func:`warm_start_heads` starts the W_cla heads as class readouts of the filters' pooled outputs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from mdakit.decoupling.gates import DecoupledNet


@torch.no_grad()
def recalibrate_batchnorm(net: DecoupledNet, loader: Iterable, batches: int, device: torch.device | str = "cpu"
                          ) -> int:
    """Re-estimate every BatchNorm's running statistics with the gates deciding as at inference.

    Training mixes soft and noisy gates (improved SemHash), so the statistics gathered while
    fine-tuning describe activations the deployed, hard-gated network never sees. This pass resets
    them and averages over ``batches`` batches with binary gates; weights are untouched. Returns the
    number of batches used; the model is left in the mode it came in.

    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("vgg16", (1, 28, 28), 2, width=0.125), (1, 28, 28))
    >>> recalibrate_batchnorm(net, [(torch.rand(8, 1, 28, 28), None)], batches=4)
    1
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = net.training
    net.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    used = 0
    try:
        for images, _ in loader:
            if used == batches:
                break
            net(images.to(device))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        net.train(was_training)
    return used


HEAD_START_BATCHES = 20  # of 256 shuffled fine-tuning images: the class means of :func:`warm_start_heads`


@torch.no_grad()
def warm_start_heads(net: DecoupledNet, loader: Iterable, batches: int, scale: float,
                     device: torch.device | str = "cpu") -> int:
    """Start each W_cla head as a readout of which of its layer's filters respond to which class.

    Row c of head l becomes ``scale · (m_c − mean_c m_c) / (s · √N)``: ``m_c`` the mean over class-c
    images of the layer's pooled output y (before masking, every gate as it decides), the mean taken
    over the classes present, ``s`` y's standard deviation over images, N the layer's filters; over
    the first ``batches`` batches of ``loader``. Rows of classes absent from those batches are 0.
    Why: with every gate open, z is the same for every input, so a randomly started head learns
    nothing from it, and the push L_mi gives the gates through it carries no information about which
    filters a class uses (measured: L_mi stays at N_layers · log K for a whole fine-tune and no filter
    becomes dynamic). A head that already reads the class from the filters sends each image's gates
    towards its class's filters from the first step. Returns the number of batches used.

    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("lenet5", (1, 28, 28), 2), (1, 28, 28))
    >>> warm_start_heads(net, [(torch.rand(8, 1, 28, 28), torch.arange(8) % 2)], batches=4, scale=1.0)
    1
    """
    was_training = net.training
    net.eval()
    classes = net.num_classes
    counts = torch.zeros(classes, dtype=torch.float64, device=device)
    sums: list[torch.Tensor] = []
    moments: list[torch.Tensor] = []
    used = 0
    try:
        for batch, labels in itertools.islice(loader, batches):
            out = net(batch.to(device), return_gates=True)
            onehot = F.one_hot(torch.as_tensor(labels).to(device), classes).double()
            if not sums:
                sums = [onehot.new_zeros(classes, y.shape[1]) for y in out.y]
                moments = [onehot.new_zeros(2, y.shape[1]) for y in out.y]
            for total, moment, y in zip(sums, moments, out.y, strict=True):
                y = y.double()
                total += onehot.T @ y
                moment += torch.stack((y.sum(0), y.square().sum(0)))
            counts += onehot.sum(0)
            used += 1
    finally:
        net.train(was_training)
    seen = counts.sum()
    present = counts > 0
    for head, total, moment in zip(net.heads, sums, moments, strict=False):
        means = total / counts.clamp_min(1)[:, None]
        spread = (moment[1] / seen - (moment[0] / seen).square()).clamp_min(0).sqrt()
        readout = (means - means[present].mean(0)) / (spread + 1e-6) * present[:, None]
        head.weight.copy_((scale * readout / math.sqrt(readout.shape[1])).to(head.weight.dtype))
    return used
