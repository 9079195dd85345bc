"""Tensors into modules: strict state-dict loading, and foreign checkpoints (``.pt``/``.pth``/safetensors).

Nothing here unpickles arbitrary objects: ``.pt``/``.pth`` files are read with
``torch.load(weights_only=True)``, and a checkpoint that would need more is refused unread.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mdakit.card import ModelCard
from mdakit.errors import MdakitError


def load_state(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str,
               versions: Mapping[str, int] | None = None) -> None:
    """Load ``tensors`` into ``module`` strictly: missing, unexpected or mis-shaped tensors name ``source``.

    ``versions`` are the submodules' state-dict versions the tensors were saved with
    (:func:`module_versions`); by default those of ``module`` itself.

    >>> net = nn.Linear(2, 1)
    >>> load_state(net, {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}, "memory")
    >>> net.weight.tolist()
    [[1.0, 1.0]]
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if wrong:
            k = wrong[0]
            parts.append(f"shape of {k} is {list(tensors[k].shape)}, expected {list(expected[k].shape)}")
        raise MdakitError(f"{source} does not match the architecture: " + "; ".join(parts))
    state = OrderedDict(tensors)
    # Modules that changed their parameters over time (torchvision's MNASNet) read a per-module version
    # from the state dict's metadata, which a plain tensor file does not carry.
    state._metadata = OrderedDict((prefix, {"version": version}) for prefix, version in
                                  (module_versions(module) if versions is None else versions).items())
    module.load_state_dict(state, strict=True)


def module_versions(module: nn.Module) -> dict[str, int]:
    """The state-dict version of every submodule that declares one (``_version``), keyed by its prefix.

    >>> module_versions(nn.Sequential(nn.BatchNorm2d(2)))["0"]
    2
    """
    metadata = getattr(module.state_dict(), "_metadata", {})
    return {prefix: entry["version"] for prefix, entry in metadata.items() if entry.get("version") is not None}


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap_state_dict(obj[key])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}
    raise MdakitError("the checkpoint holds no state dict of tensors (expected a dict of name -> tensor, "
                      "or one under 'state_dict' / 'model')")


def _unpickler_reason(exc: Exception) -> str:
    """The weights-only unpickler's own reason (``Unsupported operand 0``), without torch's advice around it."""
    text = str(exc)
    reason = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else text
    return next((line.strip() for line in reason.splitlines() if line.strip()), type(exc).__name__)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a foreign checkpoint: safetensors, or ``.pt``/``.pth`` read with ``weights_only=True``.

    A checkpoint that would need full unpickling (arbitrary objects, hence arbitrary code) is refused
    without running any of it.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "w.pt"
    >>> torch.save({"state_dict": {"module.fc.weight": torch.ones(1)}}, path)
    >>> read_checkpoint(path)
    {'fc.weight': tensor([1.])}
    """
    path = Path(path)
    if path.is_dir():
        raise MdakitError(f"checkpoint {path} is a directory; give the .pt, .pth or .safetensors file "
                          "(an mdakit model directory needs no import)")
    if not path.is_file():
        raise MdakitError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise MdakitError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a pickle of objects at all: garbage or another format
            raise MdakitError(f"{path} is not a readable PyTorch checkpoint (empty, truncated or foreign): "
                              f"{_unpickler_reason(exc)}") from exc
        raise MdakitError(f"refusing {path}: it needs full unpickling, which could run arbitrary code "
                          "(none of it was run). Re-save it as a plain state_dict of tensors.") from exc
    except Exception as exc:  # the weights-only unpickler fails on foreign bytes with many types (IndexError, ...)
        first_line = next(iter(str(exc).splitlines()), "") or type(exc).__name__
        raise MdakitError(f"{path} is not a readable PyTorch checkpoint (empty, truncated or foreign): "
                          f"{first_line}") from exc
    return _unwrap_state_dict(obj)


def import_checkpoint(path: str | Path, card: ModelCard) -> nn.Module:
    """Load a foreign checkpoint into the zoo architecture named by ``card``.

    Keys may be those of the bare network or of the full ``normalize``+``net`` model; the input
    normalisation comes from the card when the checkpoint has none.

    >>> from mdakit.data import BUILTIN
    >>> model = import_checkpoint("lenet5.pt", ModelCard.for_dataset("lenet5", BUILTIN["mnist"]))  # doctest: +SKIP
    """
    tensors = read_checkpoint(path)
    model = card.build()
    own = model.state_dict()
    if not any(k.startswith("net.") for k in tensors):
        tensors = {f"net.{k}": v for k, v in tensors.items()}
    for key in ("normalize.mean", "normalize.std"):
        tensors.setdefault(key, own[key])
    load_state(model, tensors, str(path))
    return model.eval()
