"""Per-class component masks: which kernels, input channels and filters of each layer a class uses.

For one class and one prunable layer (``Conv2d``/``Linear``, named by module path):

- ``kernels`` (filters × inputs): the kernel indicators ``q`` of the paper (Eq. 7/10);
- ``inputs`` (inputs): the channel indicators ``t`` — input channels (features) this layer needs;
- ``outputs`` (filters): which of the layer's filters are needed downstream.

Every attribution method (contribution, gradient, NAD) produces this type, so extraction, assembly and
the analyses accept masks from any of them. Masks are saved as ``masks.safetensors`` (bool tensors)
plus ``masks.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mdakit.errors import MdakitError

MASKS_FILE = "masks.safetensors"
MASKS_JSON = "masks.json"
MASKS_FORMAT = "mdakit-masks"


_BITS = 2 ** torch.arange(8, dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as uint8 bytes, eight entries a byte (little-endian bit order).

    >>> pack_bits(torch.tensor([True, False, True] + [False] * 6)).tolist()
    [5, 0]
    """
    flat = mask.detach().flatten().bool().cpu()
    flat = torch.cat([flat, flat.new_zeros((-len(flat)) % 8)])
    return (flat.view(-1, 8).to(torch.uint8) * _BITS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`.

    >>> unpack_bits(torch.tensor([5], dtype=torch.uint8), (3,)).tolist()
    [True, False, True]
    """
    n = 1
    for d in shape:
        n *= d
    bits = (packed[:, None] & _BITS).ne(0).flatten()[:n]
    return bits.view(shape)


class LayerMask:
    """Masks of one layer for one class (or a union / intersection of classes).

    Kernel indicators are stored bit-packed (one bit per kernel); ``kernels`` unpacks them.

    >>> m = LayerMask(torch.tensor([[True, False]]), torch.tensor([True, False]), torch.tensor([True]))
    >>> (m | LayerMask(torch.tensor([[False, True]]), torch.tensor([False, True]), torch.tensor([False]))).kernels
    tensor([[True, True]])
    """

    def __init__(self, kernels: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor):
        self.kernel_shape = tuple(kernels.shape)
        self.packed = pack_bits(kernels)
        self.inputs = inputs.bool()
        self.outputs = outputs.bool()

    @classmethod
    def from_packed(cls, packed: torch.Tensor, shape: tuple[int, ...], inputs: torch.Tensor,
                    outputs: torch.Tensor) -> LayerMask:
        """A mask from already packed kernel bits (see :func:`pack_bits`)."""
        mask = cls.__new__(cls)
        mask.kernel_shape, mask.packed = tuple(shape), packed
        mask.inputs, mask.outputs = inputs.bool(), outputs.bool()
        return mask

    @property
    def kernels(self) -> torch.Tensor:
        """The kernel indicators ``q`` (filters × inputs) as a boolean tensor."""
        return unpack_bits(self.packed, self.kernel_shape)

    def __or__(self, other: LayerMask) -> LayerMask:
        return LayerMask.from_packed(self.packed | other.packed, self.kernel_shape, self.inputs | other.inputs,
                                     self.outputs | other.outputs)

    def __and__(self, other: LayerMask) -> LayerMask:
        return LayerMask.from_packed(self.packed & other.packed, self.kernel_shape, self.inputs & other.inputs,
                                     self.outputs & other.outputs)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, LayerMask) and self.kernel_shape == other.kernel_shape
                and torch.equal(self.packed, other.packed) and torch.equal(self.inputs, other.inputs)
                and torch.equal(self.outputs, other.outputs))


@dataclass
class ComponentMasks:
    """Masks of several classes of one model, with how they were made.

    >>> m = LayerMask(torch.tensor([[True, False]]), torch.tensor([True, False]), torch.tensor([True]))
    >>> masks = ComponentMasks({0: {"fc": m}, 1: {"fc": m}}, method="example")
    >>> masks.union([0, 1])["fc"].inputs.tolist()
    [True, False]
    >>> masks.jaccard(0, 1)
    {'fc': 1.0}
    """

    per_class: dict[int, dict[str, LayerMask]]
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    class_names: dict[int, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[int]:
        return list(self.per_class)

    @property
    def layer_names(self) -> list[str]:
        first = next(iter(self.per_class.values()), {})
        return list(first)

    def _pick(self, classes: Iterable[int] | None) -> list[int]:
        chosen = self.classes if classes is None else list(classes)
        missing = [c for c in chosen if c not in self.per_class]
        if missing:
            raise MdakitError(f"no masks for class {missing[0]} (masks hold classes {self.classes})")
        if not chosen:
            raise MdakitError("no classes chosen")
        return chosen

    def union(self, classes: Iterable[int] | None = None) -> dict[str, LayerMask]:
        """Per layer, what any of ``classes`` uses (default: all classes)."""
        chosen = self._pick(classes)
        out = dict(self.per_class[chosen[0]])
        for c in chosen[1:]:
            out = {name: out[name] | mask for name, mask in self.per_class[c].items()}
        return out

    def intersection(self, classes: Iterable[int] | None = None) -> dict[str, LayerMask]:
        """Per layer, what every one of ``classes`` uses."""
        chosen = self._pick(classes)
        out = dict(self.per_class[chosen[0]])
        for c in chosen[1:]:
            out = {name: out[name] & mask for name, mask in self.per_class[c].items()}
        return out

    def jaccard(self, a: int, b: int, part: str = "outputs") -> dict[str, float]:
        """Per-layer Jaccard similarity of two classes' kept filters (``part="outputs"``) or inputs."""
        self._pick([a, b])
        out = {}
        for name in self.layer_names:
            x, y = getattr(self.per_class[a][name], part), getattr(self.per_class[b][name], part)
            union = int((x | y).sum())
            out[name] = float((x & y).sum()) / union if union else 1.0
        return out

    def subset(self, classes: Sequence[int]) -> ComponentMasks:
        """The masks of some of the classes only."""
        chosen = self._pick(classes)
        return ComponentMasks({c: self.per_class[c] for c in chosen}, self.method, dict(self.settings),
                              {c: n for c, n in self.class_names.items() if c in chosen}, dict(self.info))

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write ``masks.safetensors`` + ``masks.json`` into the directory ``path`` atomically."""
        path = Path(path)
        if path.exists() and not force:
            raise MdakitError(f"{path} already exists; choose another --out or pass --force")
        tensors = {f"{c}/{name}/{part}": getattr(mask, part).contiguous()
                   for c, layers in self.per_class.items() for name, mask in layers.items()
                   for part in ("packed", "inputs", "outputs")}
        shapes = {name: list(mask.kernel_shape) for name, mask in next(iter(self.per_class.values()), {}).items()}
        meta = {"format": MASKS_FORMAT, "method": self.method, "settings": self.settings,
                "classes": self.classes, "class_names": {str(c): n for c, n in self.class_names.items()},
                "layers": self.layer_names, "kernel_shapes": shapes, "info": self.info}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            save_file(tensors, str(tmp / MASKS_FILE))
            (tmp / MASKS_JSON).write_text(json.dumps(meta, indent=2, default=str) + "\n")
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> ComponentMasks:
        """Read masks written by :meth:`save`; corrupt or foreign files raise :class:`MdakitError`."""
        path = Path(path)
        try:
            meta = json.loads((path / MASKS_JSON).read_text())
        except FileNotFoundError as exc:
            raise MdakitError(f"{path} holds no {MASKS_JSON}: not an mdakit masks directory") from exc
        except json.JSONDecodeError as exc:
            raise MdakitError(f"{path / MASKS_JSON} is not valid JSON (truncated or corrupt)") from exc
        if meta.get("format") != MASKS_FORMAT:
            raise MdakitError(f"{path} is not an mdakit masks directory")
        try:
            tensors = load_file(str(path / MASKS_FILE))
        except (SafetensorError, OSError) as exc:
            raise MdakitError(f"{path / MASKS_FILE} is not readable: {exc}") from exc
        per_class: dict[int, dict[str, LayerMask]] = {}
        try:
            for c in meta["classes"]:
                per_class[int(c)] = {name: LayerMask.from_packed(tensors[f"{c}/{name}/packed"],
                                                                 tuple(meta["kernel_shapes"][name]),
                                                                 tensors[f"{c}/{name}/inputs"],
                                                                 tensors[f"{c}/{name}/outputs"])
                                     for name in meta["layers"]}
        except KeyError as exc:
            raise MdakitError(f"{path / MASKS_FILE} lacks tensor {exc}; the masks are incomplete") from exc
        return cls(per_class, meta["method"], meta.get("settings", {}),
                   {int(c): n for c, n in meta.get("class_names", {}).items()}, meta.get("info", {}))
