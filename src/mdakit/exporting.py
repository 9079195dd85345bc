"""Export for deployment: a model, part, compressed model or assembly as ONNX or TorchScript.

Every exported file maps raw [0, 1] images (B×C×H×W, float32) to logits, like the mdakit model it
came from: the input normalisation travels inside. ONNX files have a dynamic batch axis (input
``images``, output ``logits``) and carry the logits' meaning as metadata (``mdakit`` key, JSON);
TorchScript files carry the same JSON as the extra file ``mdakit.json``. Exported files are checked
against the PyTorch model (:func:`check_export`) before they are put in place, and written atomically.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdakit.artifacts import ModelCard, load_with_card
from mdakit.assembly import AssemblyCard, is_assembled, load_assembled
from mdakit.errors import MdakitError, OptionError, OutputExistsError

FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "images", "logits"
METADATA_KEY = "mdakit"
TOLERANCE = 1e-4


@dataclass
class Exportable:
    """A module ready to export: its input shape (C, H, W) and what its logits mean."""

    module: nn.Module
    input_shape: list[int]
    metadata: dict[str, Any] = field(default_factory=dict)


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
    return Exportable(module.eval(), list(card.input_shape), {"kind": "model", "arch": card.arch, "logits": logits})


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
            return Exportable(module.eval(), card.input_shape, meta)
    if isinstance(item, nn.Module):
        if input_shape is None:
            raise MdakitError("a plain module needs its input shape (C, H, W) to be exported")
        return Exportable(item.eval(), list(input_shape), {"kind": "model"})
    raise MdakitError(f"cannot export a {type(item).__name__}: pass a model directory, a Part, a (module, card) "
                      "pair or a module with its input shape")


def _example(input_shape: Sequence[int], batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, *input_shape, generator=torch.Generator().manual_seed(0))


def _write_onnx(module: nn.Module, example: torch.Tensor, out: Path, metadata: dict[str, Any]) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
                                        external_data=False)
        except Exception as exc:  # torch.export raises many types for unsupported code
            raise MdakitError(f"ONNX export failed: {str(exc).strip().splitlines()[0]}") from exc
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save_model(proto, str(out))


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


def check_export(path: str | Path, module: nn.Module, images: torch.Tensor, fmt: str | None = None) -> float:
    """Largest absolute difference between an exported file's logits and ``module``'s on ``images``."""
    with torch.no_grad():
        want = module.eval().cpu()(images.float().cpu())
    got = run_exported(path, images, fmt)
    if got.shape != want.shape:
        raise MdakitError(f"the exported file returns shape {list(got.shape)}, the model {list(want.shape)}")
    return float((got - want).abs().max()) if want.numel() else 0.0


def export_model(item: Exportable, out: str | Path, fmt: str = "onnx", force: bool = False,
                 tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Write ``item`` to the file ``out`` as ``fmt`` (``onnx`` or ``torchscript``), atomically, after checking
    the written file against the PyTorch model on random [0, 1] images at two batch sizes.

    >>> import tempfile
    >>> from mdakit.zoo import build_model
    >>> item = Exportable(build_model("lenet5", (1, 28, 28), 10), [1, 28, 28])
    >>> report = export_model(item, f"{tempfile.mkdtemp()}/lenet5.pt", "torchscript")
    >>> report["max_abs_diff"] <= 1e-4
    True
    """
    if fmt not in FORMATS:
        raise MdakitError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(out)
    if out.is_dir():
        raise OptionError(f"{out} is a directory; {{0}} names the file to write", "out")
    module = item.module.eval().cpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = _write_onnx if fmt == "onnx" else _write_torchscript
        writer(module, _example(item.input_shape), tmp, {**item.metadata, "input_shape": item.input_shape})
        diff = max(check_export(tmp, module, _example(item.input_shape, batch), fmt) for batch in (1, 5))
        if diff > tolerance:
            raise MdakitError(f"the exported {fmt} file differs from the PyTorch model by {diff:.3g} "
                              f"(> {tolerance:g}); not written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"out": str(out), "format": fmt, "input_shape": item.input_shape, "max_abs_diff": diff,
            "bytes": out.stat().st_size, **item.metadata}


def export(path: str | Path, out: str | Path, fmt: str = "onnx", force: bool = False) -> dict[str, Any]:
    """Export the model or assembly stored at ``path`` (see :func:`load_exportable`) to the file ``out``.

    >>> export("runs/zoo/vgg16-mnist", "vgg16-mnist.onnx")["max_abs_diff"] < 1e-4  # doctest: +SKIP
    True
    """
    if fmt not in FORMATS:
        raise MdakitError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    return export_model(load_exportable(path), out, fmt, force)
