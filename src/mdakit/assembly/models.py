"""The assembled networks: parts side by side (parallel) or merged into one network (padded)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mdakit.assembly.ood import OodGate, pooled
from mdakit.graph import trace
from mdakit.graph.features import with_features


def per_logit(values: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """One entry per output logit: ``values[i]`` repeated for each of part i's ``sizes[i]`` logits.

    >>> per_logit(torch.tensor([1.0, 2.0]), [2, 1]).tolist()
    [1.0, 1.0, 2.0]
    """
    return torch.repeat_interleave(values, torch.tensor(list(sizes)))


class AssembledModel(nn.Module):
    """Parts run side by side on one input; their logits concatenated, then ``logits * scale + shift``.

    ``sizes[i]`` is the number of logits of ``parts[i]``. ``scale`` and ``shift`` are buffers with one
    entry per output logit (the identity by default). The parts are held, not copied. With a gate
    (:meth:`attach_gate`, the ``ood`` rescaling) the output is the gate's combination of the logits and
    each part's penultimate features instead.

    >>> m = AssembledModel([nn.Linear(2, 3), nn.Linear(2, 1)], [3, 1])
    >>> m(torch.zeros(5, 2)).shape
    torch.Size([5, 4])
    """

    def __init__(self, parts: Sequence[nn.Module], sizes: Sequence[int]):
        super().__init__()
        if len(parts) != len(sizes):
            raise ValueError(f"{len(parts)} parts but {len(sizes)} sizes")
        self.parts = nn.ModuleList(parts)
        self.sizes = [int(s) for s in sizes]
        self.register_buffer("scale", torch.ones(sum(self.sizes)))
        self.register_buffer("shift", torch.zeros(sum(self.sizes)))
        self.gate: OodGate | None = None
        self.__dict__["_with_features"] = [None] * len(self.parts)

    def attach_gate(self, gate: OodGate, input_shape: Sequence[int]) -> list[list[str]]:
        """Combine the parts' logits with ``gate`` from now on; returns, per part, the layers whose
        features the gate reads (none where it reads the logits only).

        >>> from mdakit.assembly.ood import Energy, OodGate
        >>> m = AssembledModel([nn.Linear(2, 3), nn.Linear(2, 1)], [3, 1])
        >>> m.attach_gate(OodGate([Energy(), Energy()], [3, 1]), [2])
        [[], []]
        >>> m(torch.zeros(5, 2)).exp().sum(1).round(decimals=4).tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0]
        """
        self.gate = gate
        layers: list[list[str]] = []
        for i, (part, score) in enumerate(zip(self.parts, gate.scores, strict=True)):
            extractor, read = with_features(part, input_shape) if score.uses_features else (None, [])
            self._with_features[i] = extractor
            layers.append(read)
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return torch.cat([part(x) for part in self.parts], dim=1) * self.scale + self.shift
        outputs = [part(x) if both is None else both(x) for part, both in zip(self.parts, self._with_features)]
        logits = [out[0] if isinstance(out, tuple) else out for out in outputs]
        features = [pooled(out[1]) if isinstance(out, tuple) else None for out in outputs]
        return self.gate(torch.cat(logits, dim=1) * self.scale + self.shift, features)


class PaddedAssembly(nn.Module):
    """A merged (padded) network, with the parts it was merged from kept for reference (not as
    submodules: parameters and MACs are the merged network's alone).

    >>> from mdakit.zoo import build_model
    >>> from mdakit.padding import merge_padded
    >>> a, b = build_model("lenet5", (1, 28, 28), 2).eval(), build_model("lenet5", (1, 28, 28), 1).eval()
    >>> PaddedAssembly(merge_padded([a, b], (1, 28, 28)), [a, b], [2, 1])(torch.zeros(1, 1, 28, 28)).shape
    torch.Size([1, 3])
    """

    def __init__(self, net: nn.Module, parts: Sequence[nn.Module], sizes: Sequence[int]):
        super().__init__()
        self.net = net
        self.__dict__["parts"] = list(parts)
        self.sizes = [int(s) for s in sizes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fold_rescaling(net: nn.Sequential, input_shape: Sequence[int], scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Fold ``logits * scale + shift`` into the last layer of a merged network, in place (exact: that
    layer is linear in its weights and bias).

    >>> from mdakit.zoo import build_model
    >>> from mdakit.padding import merge_padded
    >>> a, b = build_model("lenet5", (1, 28, 28), 2).eval(), build_model("lenet5", (1, 28, 28), 1).eval()
    >>> net, x = merge_padded([a, b], (1, 28, 28)), torch.rand(1, 1, 28, 28)
    >>> before = net(x).detach()
    >>> fold_rescaling(net, (1, 28, 28), torch.tensor([2.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 5.0]))
    >>> torch.allclose(net(x), before * torch.tensor([2.0, 1.0, 1.0]) + torch.tensor([0.0, 0.0, 5.0]), atol=1e-5)
    True
    """
    body, copies = net[1], net[0].copies
    graph = trace(body, (input_shape[0] * copies, *input_shape[1:]))
    name = graph.output_layer.name
    last = body.get_submodule(name)
    with torch.no_grad():
        scale, shift = scale.to(last.weight), shift.to(last.weight)
        last.weight.mul_(scale.view(-1, *([1] * (last.weight.dim() - 1))))
        if last.bias is None:
            last.bias = nn.Parameter(torch.zeros_like(scale))
        last.bias.mul_(scale).add_(shift)
