"""Size and cost of a model: parameters (total, non-zero) and MACs of one input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm statistics are not counted).

    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters())


def count_nonzero_parameters(model: nn.Module) -> int:
    """Number of parameter entries that are not exactly zero (kernel masks show up here).

    >>> lin = nn.Linear(3, 2); _ = nn.init.zeros_(lin.bias)
    >>> count_nonzero_parameters(lin)
    6
    """
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one input of shape (C, H, W), from torch's FlopCounterMode (flops / 2).

    >>> count_macs(nn.Linear(3, 2), (3,))
    6
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def leaf_layers(model: nn.Module) -> list[dict[str, Any]]:
    """Name, type, parameter count and settings of every leaf module.

    >>> leaf_layers(nn.Sequential(nn.Linear(3, 2)))
    [{'name': '0', 'type': 'Linear', 'params': 8, 'detail': 'in_features=3, out_features=2, bias=True'}]
    """
    return [{"name": name, "type": type(module).__name__,
             "params": sum(p.numel() for p in module.parameters(recurse=False)), "detail": module.extra_repr()}
            for name, module in model.named_modules() if next(module.children(), None) is None and name]


def model_size(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Parameters, non-zero parameters and MACs in one dict.

    >>> model_size(nn.Linear(3, 2), (3,))
    {'params': 8, 'nonzero_params': 8, 'macs': 6}
    """
    return {"params": count_parameters(model), "nonzero_params": count_nonzero_parameters(model),
            "macs": count_macs(model, input_shape)}
