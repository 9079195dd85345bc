"""Export for deployment: a model, part, compressed model or assembly as ONNX or TorchScript.

Every exported file maps raw [0, 1] images (B×C×H×W, float32) to logits, like the mdakit model it
came from: the input normalisation travels inside. ONNX files have a dynamic batch axis (input
``images``, output ``logits``) and carry the logits' meaning as metadata (``mdakit`` key, JSON);
TorchScript files carry the same JSON as the extra file ``mdakit.json``. Exported files are checked
against the PyTorch model (:func:`check_export`) before they are put in place, and written atomically.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdakit.artifacts import ModelCard, load_with_card
from mdakit.assembly import AssemblyCard, is_assembled, load_assembled
from mdakit.data import load_dataset
from mdakit.errors import MdakitError
from mdakit.files import write_file
from mdakit.onnx_file import INPUT_NAME, METADATA_KEY, write_onnx

FORMATS = ("onnx", "torchscript")
ABS_TOLERANCE, REL_TOLERANCE = 1e-4, 1e-5
"""An exported logit may differ from PyTorch's by ``ABS_TOLERANCE + REL_TOLERANCE * |logit|`` (another
runtime sums in another order, so large logits carry proportionally larger rounding)."""
CHECK_IMAGES = 8
"""Test images of each dataset the logits come from, in the check (beside random images)."""


@dataclass
class Exportable:
    """A module ready to export: its input shape (C, H, W), what its logits mean, and the datasets whose
    test images check the exported file."""

    module: nn.Module
    input_shape: list[int]
    metadata: dict[str, Any] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)


def load_exportable(path: str | Path) -> Exportable:
    """Read a model directory (model, part, compressed model, padded assembly's merged network) or an
    assembled-model directory (either layout, read with :func:`~mdakit.assembly.load_assembled`).

    >>> load_exportable("/nonexistent")
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: /nonexistent is not a model directory (expected card.json and model.safetensors inside)
    """
    if is_assembled(path):
        return as_exportable(load_assembled(path))
    return _from_card(*load_with_card(path))


def _from_card(module: nn.Module, card: ModelCard) -> Exportable:
    logits = [{"dataset": card.dataset, "label": int(c),
               "name": card.class_names[c] if c < len(card.class_names) else str(c)} for c in card.logit_classes]
    return Exportable(module.eval(), list(card.input_shape), {"kind": "model", "arch": card.arch, "logits": logits},
                      [card.dataset] if card.dataset else [])


def as_exportable(item: Any, input_shape: Sequence[int] | None = None) -> Exportable:
    """An :class:`Exportable` from a model or assembly directory, a ``Part``, a ``(module, card)`` pair
    (model or assembly card) or a plain module with its ``input_shape`` (C, H, W).

    >>> as_exportable(nn.Linear(3, 2), [3]).input_shape
    [3]
    """
    if isinstance(item, str | Path):
        return load_exportable(item)
    if isinstance(item, Exportable):
        return item
    if hasattr(item, "model") and isinstance(getattr(item, "card", None), ModelCard):
        return _from_card(item.model, item.card)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], nn.Module):
        module, card = item
        if isinstance(card, ModelCard):
            return _from_card(module, card)
        if isinstance(card, AssemblyCard):
            meta = {"kind": f"assembly ({card.layout})", "logits": card.logits, "rescale": card.rescale}
            datasets = list(dict.fromkeys(c.dataset for c in card.part_cards if c.dataset))
            return Exportable(module.eval(), card.input_shape, meta, datasets)
    if isinstance(item, nn.Module):
        if input_shape is None:
            raise MdakitError("a plain module needs its input shape (C, H, W) to be exported")
        return Exportable(item.eval(), list(input_shape), {"kind": "model"})
    raise MdakitError(f"cannot export a {type(item).__name__}: pass a model directory, a Part, a (module, card) "
                      "pair or a module with its input shape")


def _example(input_shape: Sequence[int], batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, *input_shape, generator=torch.Generator().manual_seed(0))


def _write_torchscript(module: nn.Module, example: torch.Tensor, out: Path, metadata: dict[str, Any]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            scripted = torch.jit.trace(module, example, check_inputs=[(_example(example.shape[1:], 3),)])
        except Exception as exc:
            raise MdakitError(f"TorchScript tracing failed: {str(exc).strip().splitlines()[0]}") from exc
        torch.jit.save(scripted, str(out), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})


def run_exported(path: str | Path, images: torch.Tensor, fmt: str | None = None) -> torch.Tensor:
    """Logits of an exported file on ``images`` (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript).

    ``fmt`` defaults to the file's suffix (``.onnx`` is ONNX, anything else TorchScript).
    """
    fmt = fmt or ("onnx" if str(path).endswith(".onnx") else "torchscript")
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {INPUT_NAME: images.float().cpu().numpy()})[0])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu")(images.float().cpu())


def _test_images(name: str, input_shape: Sequence[int], count: int) -> torch.Tensor | None:
    """The first ``count`` test images of dataset ``name`` if it is on this machine and fits ``input_shape``."""
    try:
        data, info = load_dataset(name, "test")
    except MdakitError:
        return None
    if list(info.input_shape) != list(input_shape):
        return None
    return torch.stack([data[i][0] for i in range(min(count, len(data)))])


def check_batches(item: Exportable) -> tuple[list[torch.Tensor], str]:
    """The image batches an export is checked on, and what they are: test images of the datasets the logits
    come from (where they are on this machine), at batch 1 and together, and random [0, 1] images."""
    batches = [_example(item.input_shape, 1), _example(item.input_shape, 5)]
    real = {name: images for name in item.datasets
            if (images := _test_images(name, item.input_shape, CHECK_IMAGES)) is not None}
    if not real:
        return batches, "random images"
    pooled = torch.cat(list(real.values()))
    return [pooled[:1], pooled, *batches], f"{len(pooled)} test images ({', '.join(real)}) and random images"


def compare_export(path: str | Path, module: nn.Module, images: torch.Tensor,
                   fmt: str | None = None) -> tuple[float, float]:
    """The largest absolute difference between an exported file's logits and ``module``'s on ``images``,
    and the largest ratio of a difference to its tolerance (``ABS_TOLERANCE + REL_TOLERANCE × |logit|``;
    above 1 fails).

    Raises :class:`MdakitError` when the shapes differ or either gives a NaN or infinite logit (a difference
    of NaN would otherwise pass every tolerance).
    """
    with torch.no_grad():
        want = module.eval().cpu()(images.float().cpu())
    got = run_exported(path, images, fmt)
    if got.shape != want.shape:
        raise MdakitError(f"the exported file returns shape {list(got.shape)}, the model {list(want.shape)}")
    if not (torch.isfinite(want).all() and torch.isfinite(got).all()):
        raise MdakitError("the model gives NaN or infinite logits on the check images (non-finite weights?); "
                          "nothing to compare")
    if not want.numel():
        return 0.0, 0.0
    diff = (got - want).abs()
    return float(diff.max()), float((diff / (ABS_TOLERANCE + REL_TOLERANCE * want.abs())).max())


def check_export(path: str | Path, module: nn.Module, images: torch.Tensor, fmt: str | None = None) -> float:
    """Largest absolute difference between an exported file's logits and ``module``'s on ``images``
    (see :func:`compare_export`)."""
    return compare_export(path, module, images, fmt)[0]


def export_model(item: Exportable, out: str | Path, fmt: str = "onnx", force: bool = False) -> dict[str, Any]:
    """Write ``item`` to the file ``out`` as ``fmt`` (``onnx`` or ``torchscript``), atomically, after checking
    the written file against the PyTorch model (:func:`check_batches`; each logit within ``ABS_TOLERANCE +
    REL_TOLERANCE × |logit|``, and never on a NaN).

    >>> import tempfile
    >>> from mdakit.zoo import build_model
    >>> item = Exportable(build_model("lenet5", (1, 28, 28), 10), [1, 28, 28])
    >>> report = export_model(item, f"{tempfile.mkdtemp()}/lenet5.pt", "torchscript")
    >>> report["max_abs_diff"] <= 1e-4, report["checked_on"]
    (True, 'random images')
    """
    if fmt not in FORMATS:
        raise MdakitError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    module = item.module.eval().cpu()
    batches, checked_on = check_batches(item)
    measured: list[tuple[float, float]] = []

    def write(tmp: Path) -> None:
        writer = write_onnx if fmt == "onnx" else _write_torchscript
        writer(module, _example(item.input_shape), tmp, {**item.metadata, "input_shape": item.input_shape})
        measured.extend(compare_export(tmp, module, images, fmt) for images in batches)
        if max(share for _, share in measured) > 1:
            raise MdakitError(f"the exported {fmt} file differs from the PyTorch model by "
                              f"{max(d for d, _ in measured):.3g}, more than the tolerance "
                              f"({ABS_TOLERANCE:g} + {REL_TOLERANCE:g} × |logit|); not written")

    out = write_file(out, force, write)
    return {"out": str(out), "format": fmt, "input_shape": item.input_shape,
            "max_abs_diff": max(d for d, _ in measured), "checked_on": checked_on,
            "bytes": out.stat().st_size, **item.metadata}


def export(path: str | Path, out: str | Path, fmt: str = "onnx", force: bool = False) -> dict[str, Any]:
    """Export the model or assembly stored at ``path`` (see :func:`load_exportable`) to the file ``out``.

    >>> export("runs/zoo/vgg16-mnist", "vgg16-mnist.onnx")["max_abs_diff"] < 1e-4  # doctest: +SKIP
    True
    """
    if fmt not in FORMATS:
        raise MdakitError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    return export_model(load_exportable(path), out, fmt, force)
