"""Model files: a directory holding ``model.safetensors`` and ``card.json``.

The card (:class:`~mdakit.card.ModelCard`) says how to rebuild the module and what its logits mean;
its structural edits are replayed by the registry of :mod:`mdakit.edits`. Loading never unpickles
anything: weights are safetensors, the card is JSON, and foreign ``.pt``/``.pth`` files are read with
``torch.load(weights_only=True)`` (:mod:`mdakit.checkpoints`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from mdakit.card import FORMAT, FORMAT_VERSION, ModelCard
from mdakit.checkpoints import import_checkpoint, load_state, module_versions, read_checkpoint
from mdakit.edits import apply_edits
from mdakit.errors import MdakitError, UserBuiltModuleError
from mdakit.files import write_directory
from mdakit.metrics import leaf_layers, model_size
from mdakit.model_dir import ASSEMBLY_FILE, CARD_FILE, WEIGHTS_FILE, card_digest, file_sha256, require_model_dir

__all__ = ["ASSEMBLY_FILE", "CARD_FILE", "FORMAT", "FORMAT_VERSION", "WEIGHTS_FILE", "ModelCard", "apply_edits",
           "import_checkpoint", "load", "load_with_card", "read_card", "read_checkpoint", "save"]

def save(model: nn.Module, path: str | Path, card: ModelCard, force: bool = False) -> Path:
    """Write ``model`` and ``card`` to the directory ``path`` atomically (all or nothing).

    >>> import tempfile
    >>> from mdakit.data import BUILTIN
    >>> from mdakit.zoo import build_model
    >>> d = tempfile.mkdtemp()
    >>> m = build_model("lenet5", (1, 28, 28), 10)
    >>> save(m, f"{d}/m", ModelCard.for_dataset("lenet5", BUILTIN["mnist"])).name
    'm'
    """
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    card_dict = card.to_dict()
    card_dict["summary"] = {"layers": leaf_layers(model), **model_size(model, card.input_shape),
                            "card_sha256": card_digest(card_dict)}
    metadata = {"format": FORMAT, "module_versions": json.dumps(module_versions(model))}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=metadata)
        card_dict["weights"] = {"file": WEIGHTS_FILE, "sha256": file_sha256(tmp / WEIGHTS_FILE),
                                "num_tensors": len(tensors)}
        (tmp / CARD_FILE).write_text(json.dumps(card_dict, indent=2) + "\n")

    write_directory(path, force, write)
    return Path(path)


def read_card(path: str | Path) -> tuple[ModelCard, dict[str, Any]]:
    """The card of a model directory, and its raw JSON (which also holds the weights' checksum)."""
    path = require_model_dir(path)
    card_path = path / CARD_FILE
    if not card_path.is_file() and (path / ASSEMBLY_FILE).is_file():
        parts = sorted(p.name for p in path.glob("part-*") if p.is_dir())
        raise MdakitError(f"{path} is an assembly of {len(parts)} parts in the parallel layout, not a single model: "
                          f"give one of its parts ({path / parts[0]}, ...) or an assembly in the padded layout"
                          if parts else f"{path} is an assembled model without its parts (incomplete)")
    if not card_path.is_file():
        raise MdakitError(f"{path} has no {CARD_FILE}: not an mdakit model")
    try:
        raw = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MdakitError(f"{card_path} is not valid JSON (truncated or corrupt): {exc}") from exc
    if not isinstance(raw, dict):
        raise MdakitError(f"{card_path} does not hold a model card")
    return ModelCard.from_dict(raw), raw


def load_with_card(path: str | Path, into: nn.Module | None = None,
                   device: torch.device | str = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the module stored at ``path`` and return it (eval mode) with its card.

    ``into`` is the module to fill for models saved from a user-built ``nn.Module``.
    Truncated, corrupt or mismatched files raise :class:`MdakitError`.
    """
    card, raw = read_card(path)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise MdakitError(f"{path} has no {WEIGHTS_FILE}")
    expected_sha = raw.get("weights", {}).get("sha256")
    if expected_sha and file_sha256(weights) != expected_sha:
        raise MdakitError(f"{weights} does not match the checksum in its card (truncated or corrupt)")
    try:
        tensors = load_file(str(weights))
        with safe_open(str(weights), "pt") as fh:
            versions = json.loads((fh.metadata() or {}).get("module_versions", "null"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MdakitError(f"{weights} is not a readable safetensors file: {exc}") from exc
    if into is None and not card.rebuildable:
        raise UserBuiltModuleError(path, why=card.provenance.get("not_recorded"))
    module = apply_edits(into, card.edits) if into is not None else card.build()
    load_state(module, tensors, str(weights), versions)
    return module.to(device).eval(), card


def load(path: str | Path, into: nn.Module | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the module stored at ``path`` (see :func:`load_with_card`).

    >>> model = load("runs/demo/lenet5-mnist")  # doctest: +SKIP
    """
    return load_with_card(path, into=into, device=device)[0]
