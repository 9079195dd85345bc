"""Per-class component masks: which kernels, input channels and filters of each layer a class uses.

For one class and one prunable layer (``Conv2d``/``Linear``, named by module path):

- ``kernels`` (filters × inputs): the kernel indicators ``q`` of the paper (Eq. 7/10);
- ``inputs`` (inputs): the channel indicators ``t`` — input channels (features) this layer needs;
- ``outputs`` (filters): which of the layer's filters are needed downstream.

Every attribution method (contribution, gradient, NAD) produces this type, so extraction, assembly and
the analyses accept masks from any of them. Masks are saved as ``masks.safetensors`` (bit-packed
kernels, bool inputs/outputs) plus ``masks.json``; the file is written one class at a time and can be
opened lazily (:meth:`ComponentMasks.load` with ``lazy=True``), so 1000 classes never need to sit in
memory at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mdakit.errors import MdakitError
from mdakit.files import write_directory
from mdakit.model_dir import MASKS_JSON

MASKS_FILE = "masks.safetensors"
MASKS_FORMAT = "mdakit-masks"
PARTS = ("packed", "inputs", "outputs")
_DTYPES = {"U8": torch.uint8, "BOOL": torch.bool}


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

    per_class: Mapping[int, dict[str, LayerMask]]
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
        """Write ``masks.safetensors`` + ``masks.json`` into the directory ``path`` atomically.

        The tensors are streamed class by class (:func:`write_masks_file`), so lazily loaded masks
        are saved without loading every class at once.
        """
        first = self.per_class[self.classes[0]] if self.classes else {}
        shapes = {name: tuple(mask.kernel_shape) for name, mask in first.items()}
        meta = {"format": MASKS_FORMAT, "method": self.method, "settings": self.settings,
                "classes": self.classes, "class_names": {str(c): n for c, n in self.class_names.items()},
                "layers": self.layer_names, "kernel_shapes": {name: list(s) for name, s in shapes.items()},
                "info": self.info}

        def write(tmp: Path) -> None:
            write_masks_file(tmp / MASKS_FILE, self.classes, shapes, self.per_class)
            (tmp / MASKS_JSON).write_text(json.dumps(meta, indent=2, default=str) + "\n")

        return write_directory(path, force, write)

    @classmethod
    def load(cls, path: str | Path, lazy: bool = False) -> ComponentMasks:
        """Read masks written by :meth:`save`; corrupt or foreign files raise :class:`MdakitError`.

        ``lazy=True`` reads only the file's header now and each class's tensors when that class is
        accessed (:class:`LazyClassMasks`), so memory does not grow with the number of classes.
        """
        path = Path(path)
        try:
            meta = json.loads((path / MASKS_JSON).read_text())
        except FileNotFoundError as exc:
            raise MdakitError(f"{path} holds no {MASKS_JSON}: not an mdakit masks directory") from exc
        except json.JSONDecodeError as exc:
            raise MdakitError(f"{path / MASKS_JSON} is not valid JSON (truncated or corrupt)") from exc
        if meta.get("format") != MASKS_FORMAT:
            raise MdakitError(f"{path} is not an mdakit masks directory")
        shapes = {name: tuple(meta["kernel_shapes"][name]) for name in meta["layers"]}
        classes = [int(c) for c in meta["classes"]]
        per_class: Mapping[int, dict[str, LayerMask]]
        if lazy:
            per_class = LazyClassMasks(path / MASKS_FILE, classes, shapes)
        else:
            per_class = _eager(path / MASKS_FILE, classes, shapes)
        return cls(per_class, meta["method"], meta.get("settings", {}),
                   {int(c): n for c, n in meta.get("class_names", {}).items()}, meta.get("info", {}))


def _eager(file: Path, classes: Sequence[int], shapes: Mapping[str, tuple[int, ...]]
           ) -> dict[int, dict[str, LayerMask]]:
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise MdakitError(f"{file} is not readable: {exc}") from exc
    try:
        return {c: {name: LayerMask.from_packed(tensors[f"{c}/{name}/packed"], shape, tensors[f"{c}/{name}/inputs"],
                                                tensors[f"{c}/{name}/outputs"])
                    for name, shape in shapes.items()}
                for c in classes}
    except KeyError as exc:
        raise MdakitError(f"{file} lacks tensor {exc}; the masks are incomplete") from exc


def _part_sizes(shape: tuple[int, ...]) -> dict[str, tuple[str, int]]:
    """safetensors dtype and length of each stored part of a layer mask with kernel ``shape``."""
    k, n = shape
    return {"packed": ("U8", (k * n + 7) // 8), "inputs": ("BOOL", n), "outputs": ("BOOL", k)}


def write_masks_file(file: str | Path, classes: Sequence[int], shapes: Mapping[str, tuple[int, ...]],
                     per_class: Mapping[int, Mapping[str, LayerMask]]) -> None:
    """Write the masks of ``classes`` as one safetensors file, reading ``per_class`` one class at a time.

    The header (names, dtypes, shapes, offsets) follows from ``shapes`` alone, so the tensors are
    streamed in class order; the file is a standard safetensors file (``safetensors.torch.load_file``
    reads it) with each class's tensors contiguous.

    >>> import tempfile, safetensors.torch
    >>> m = LayerMask(torch.tensor([[True, False]]), torch.tensor([True, False]), torch.tensor([True]))
    >>> f = Path(tempfile.mkdtemp()) / "m.safetensors"
    >>> write_masks_file(f, [3], {"fc": (1, 2)}, {3: {"fc": m}})
    >>> sorted(safetensors.torch.load_file(str(f)))
    ['3/fc/inputs', '3/fc/outputs', '3/fc/packed']
    """
    header: dict[str, dict[str, Any]] = {}
    offset = 0
    for c in classes:
        for name, shape in shapes.items():
            for part, (dtype, size) in _part_sizes(shape).items():
                header[f"{c}/{name}/{part}"] = {"dtype": dtype, "shape": [size],
                                                "data_offsets": [offset, offset + size]}
                offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(file, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for c in classes:
            layers = per_class[c]
            for name, shape in shapes.items():
                mask = layers[name]
                if tuple(mask.kernel_shape) != tuple(shape):
                    raise MdakitError(f"class {c}, layer {name}: kernel mask is {tuple(mask.kernel_shape)}, "
                                      f"expected {tuple(shape)}")
                for part, (_, size) in _part_sizes(shape).items():
                    data = getattr(mask, part).detach().cpu().contiguous()
                    if data.numel() != size:
                        raise MdakitError(f"class {c}, layer {name}: {part} holds {data.numel()} entries, "
                                          f"expected {size}")
                    f.write(data.numpy().tobytes())
        f.flush()
        os.fsync(f.fileno())


class LazyClassMasks(Mapping[int, dict[str, LayerMask]]):
    """Per-class masks read from a masks file when a class is accessed (nothing cached).

    Reads use plain file I/O at the offsets of the safetensors header rather than a memory map, so
    the pages of classes already read do not stay in the process's resident memory.

    >>> import tempfile
    >>> m = LayerMask(torch.tensor([[True, False]]), torch.tensor([True, False]), torch.tensor([True]))
    >>> d = ComponentMasks({0: {"fc": m}, 1: {"fc": m}}, method="example").save(Path(tempfile.mkdtemp()) / "m")
    >>> lazy = ComponentMasks.load(d, lazy=True)
    >>> type(lazy.per_class).__name__, lazy.classes, lazy.per_class[1]["fc"] == m
    ('LazyClassMasks', [0, 1], True)
    """

    def __init__(self, file: str | Path, classes: Sequence[int], shapes: Mapping[str, tuple[int, ...]]):
        self.file = Path(file)
        self._classes = list(classes)
        self._index = {c: i for i, c in enumerate(self._classes)}
        self.shapes = dict(shapes)
        header, self._data_start, size = _read_header(self.file)
        # offsets as one int64 tensor (classes × layers × parts × 2) instead of a large dict
        self._offsets = torch.empty(len(self._classes), len(self.shapes), len(PARTS), 2, dtype=torch.long)
        try:
            for i, c in enumerate(self._classes):
                for j, (name, shape) in enumerate(self.shapes.items()):
                    for p, (part, (dtype, length)) in enumerate(_part_sizes(shape).items()):
                        entry = header[f"{c}/{name}/{part}"]
                        begin, end = entry["data_offsets"]
                        if entry["dtype"] != dtype or end - begin != length or end > size - self._data_start:
                            raise MdakitError(f"{self.file}: tensor {c}/{name}/{part} does not match the masks' "
                                              "layer shapes (corrupt or foreign file)")
                        self._offsets[i, j, p, 0], self._offsets[i, j, p, 1] = begin, end
        except KeyError as exc:
            raise MdakitError(f"{self.file} lacks tensor {exc}; the masks are incomplete") from exc

    def __getitem__(self, cls: int) -> dict[str, LayerMask]:
        i = self._index[cls]
        out = {}
        with open(self.file, "rb") as f:
            for j, (name, shape) in enumerate(self.shapes.items()):
                parts = []
                for p, (dtype, _) in enumerate(_part_sizes(shape).values()):
                    begin, end = self._offsets[i, j, p].tolist()
                    f.seek(self._data_start + begin)
                    parts.append(torch.frombuffer(bytearray(f.read(end - begin)), dtype=_DTYPES[dtype]))
                out[name] = LayerMask.from_packed(parts[0], shape, parts[1], parts[2])
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)


def _read_header(file: Path) -> tuple[dict[str, Any], int, int]:
    """The safetensors header of ``file``, where its data starts, and the file's size."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if length <= 0 or 8 + length > size:
                raise MdakitError(f"{file} is not a safetensors file (truncated or corrupt)")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise MdakitError(f"{file} is not readable: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MdakitError(f"{file} has a corrupt header") from exc
    return header, 8 + length, size
