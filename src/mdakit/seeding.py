"""Seeds and devices: one place that makes runs repeatable and device-agnostic."""

from __future__ import annotations

import random

import numpy as np
import torch

from mdakit.errors import MdakitError, OptionError


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for data shuffling.

    >>> g = seed_everything(0)
    >>> isinstance(g, torch.Generator)
    True
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def resolve_device(name: str = "cpu") -> torch.device:
    """Turn ``cpu``/``cuda``/``cuda:N`` into a device, refusing CUDA when none is present.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise MdakitError(f"unknown device {name!r}: use cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("{0} cuda was asked for but no CUDA device is available; use cpu", "device")
    if device.type not in ("cpu", "cuda"):
        raise MdakitError(f"unsupported device {name!r}: use cpu or cuda")
    return device
