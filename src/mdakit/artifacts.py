"""Model files: a directory holding ``model.safetensors`` and ``card.json``.

The card says how to rebuild the module (architecture, constructor arguments, input shape,
normalisation), what its logits mean (dataset, class names, ``logit_classes``), how it was made
(training settings, structural edits, provenance) and what it scored (metrics). Loading never
unpickles anything: weights are safetensors, the card is JSON, and foreign ``.pt``/``.pth`` files are
read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mdakit.data import DatasetInfo
from mdakit.decoupling.gates import DecoupledNet
from mdakit.errors import MdakitError
from mdakit.files import write_directory
from mdakit.surgery import KeepSets, rebuild, resize
from mdakit.zoo import build_model

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "mdakit-model"
FORMAT_VERSION = 1


@dataclass
class ModelCard:
    """Everything needed to rebuild a model and to know what its logits mean."""

    arch: str | None
    input_shape: list[int]
    num_classes: int
    dataset: str | None = None
    class_names: list[str] = field(default_factory=list)
    logit_classes: list[int] = field(default_factory=list)
    mean: list[float] | None = None
    std: list[float] | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    edits: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.logit_classes:
            self.logit_classes = list(range(self.num_classes))
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]

    @classmethod
    def for_dataset(cls, arch: str, info: DatasetInfo, **kwargs: Any) -> ModelCard:
        """A card for a zoo architecture trained on a dataset.

        >>> from mdakit.data import BUILTIN
        >>> ModelCard.for_dataset("lenet5", BUILTIN["mnist"]).input_shape
        [1, 28, 28]
        """
        return cls(arch=arch, input_shape=list(info.input_shape), num_classes=info.num_classes,
                   dataset=info.name, class_names=list(info.class_names), mean=list(info.mean),
                   std=list(info.std), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelCard:
        if raw.get("format") != FORMAT:
            raise MdakitError(f"not an mdakit model card (format is {raw.get('format')!r})")
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise MdakitError(f"model card format {raw['format_version']} is newer than this mdakit reads "
                              f"({FORMAT_VERSION}); upgrade mdakit")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:
            raise MdakitError(f"model card is incomplete: {exc}") from exc

    def build(self) -> nn.Module:
        """A fresh module of this card's architecture with its structural edits, before weights are loaded."""
        if self.arch is None:
            raise MdakitError("this model was saved from a user-built module: pass that module as `into=`")
        return apply_edits(build_model(self.arch, self.input_shape, self.num_classes, self.mean, self.std,
                                       **self.arch_kwargs), self.edits)


def apply_edits(module: nn.Module, edits: list[dict[str, Any]]) -> nn.Module:
    """Replay structural edits (keep-sets of disassembly, decoupling gates) on a freshly built module."""
    for edit in edits:
        if edit.get("kind") not in ("keep_sets", "padded", "decoupled"):
            raise MdakitError(f"this mdakit cannot rebuild models with structural edit {edit.get('kind')!r}")
        try:
            if edit["kind"] == "decoupled":
                module = DecoupledNet.from_edit(module, edit)
            elif edit["kind"] == "padded":
                module = resize(module, edit)
            else:
                module = rebuild(module, KeepSets.from_dict(edit), copy_model=False)
        except (KeyError, AttributeError, IndexError, TypeError) as exc:
            raise MdakitError(f"the card's structural edits do not fit the architecture: {exc}") from exc
    return module


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(model: nn.Module, path: str | Path, card: ModelCard, force: bool = False) -> Path:
    """Write ``model`` and ``card`` to the directory ``path`` atomically (all or nothing).

    >>> from mdakit.data import BUILTIN
    >>> import tempfile; d = tempfile.mkdtemp()
    >>> m = build_model("lenet5", (1, 28, 28), 10)
    >>> save(m, f"{d}/m", ModelCard.for_dataset("lenet5", BUILTIN["mnist"])).name
    'm'
    """
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    card_dict = card.to_dict()

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        card_dict["weights"] = {"file": WEIGHTS_FILE, "sha256": _sha256(tmp / WEIGHTS_FILE),
                                "num_tensors": len(tensors)}
        (tmp / CARD_FILE).write_text(json.dumps(card_dict, indent=2) + "\n")

    write_directory(path, force, write)
    return Path(path)


def read_card(path: str | Path) -> tuple[ModelCard, dict[str, Any]]:
    """The card of a model directory, and its raw JSON (which also holds the weights' checksum)."""
    path = Path(path)
    card_path = path / CARD_FILE
    if not path.is_dir():
        raise MdakitError(f"{path} is not a model directory (expected {CARD_FILE} and {WEIGHTS_FILE} inside)")
    if not card_path.is_file():
        raise MdakitError(f"{path} has no {CARD_FILE}: not an mdakit model")
    try:
        raw = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MdakitError(f"{card_path} is not valid JSON (truncated or corrupt): {exc}") from exc
    if not isinstance(raw, dict):
        raise MdakitError(f"{card_path} does not hold a model card")
    return ModelCard.from_dict(raw), raw


def _check_and_load(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
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
    module.load_state_dict(dict(tensors), strict=True)


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
    if expected_sha and _sha256(weights) != expected_sha:
        raise MdakitError(f"{weights} does not match the checksum in its card (truncated or corrupt)")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MdakitError(f"{weights} is not a readable safetensors file: {exc}") from exc
    module = apply_edits(into, card.edits) if into is not None else card.build()
    _check_and_load(module, tensors, str(weights))
    return module.to(device).eval(), card


def load(path: str | Path, into: nn.Module | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the module stored at ``path`` (see :func:`load_with_card`).

    >>> model = load("runs/demo/lenet5-mnist")  # doctest: +SKIP
    """
    return load_with_card(path, into=into, device=device)[0]


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap_state_dict(obj[key])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}
    raise MdakitError("the checkpoint holds no state dict of tensors (expected a dict of name -> tensor, "
                      "or one under 'state_dict' / 'model')")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a foreign checkpoint: safetensors, or ``.pt``/``.pth`` read with ``weights_only=True``.

    A checkpoint that would need full unpickling (arbitrary objects, hence arbitrary code) is refused
    without running any of it.
    """
    path = Path(path)
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
        raise MdakitError(f"refusing {path}: it needs full unpickling, which could run arbitrary code "
                          "(none of it was run). Re-save it as a plain state_dict of tensors.") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise MdakitError(f"{path} is not a readable PyTorch checkpoint (truncated or foreign): "
                          f"{str(exc).splitlines()[0]}") from exc
    return _unwrap_state_dict(obj)


def import_checkpoint(path: str | Path, card: ModelCard) -> nn.Module:
    """Load a foreign checkpoint into the zoo architecture named by ``card``.

    Keys may be those of the bare network or of the full ``normalize``+``net`` model; the input
    normalisation comes from the card when the checkpoint has none.
    """
    tensors = read_checkpoint(path)
    model = card.build()
    own = model.state_dict()
    if not any(k.startswith("net.") for k in tensors):
        tensors = {f"net.{k}": v for k, v in tensors.items()}
    for key in ("normalize.mean", "normalize.std"):
        tensors.setdefault(key, own[key])
    _check_and_load(model, tensors, str(path))
    return model.eval()
