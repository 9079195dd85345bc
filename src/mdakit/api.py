"""The top-level verbs: ``mdakit.disassemble``, ``masks``, ``assemble``, ``compress``, ``decouple``, ``export``.

Each takes a plain ``nn.Module`` or a model directory, and a map-style dataset or DataLoader of
``(image, label)`` pairs or a dataset name, and forwards its keyword options to the function that
does the work (named in each docstring, where every option is described). The features are imported
when a verb is first called, so ``import mdakit`` stays light.

The examples run on :func:`mdakit.examples.toy_problem`: a small user-built module and its
``TensorDataset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from mdakit.errors import MdakitError
from mdakit.workspace import DataSpec, Workspace

if TYPE_CHECKING:
    from mdakit.assembly import AssembledModel, AssemblyCard, PaddedAssembly, PartSpec
    from mdakit.component_masks import ComponentMasks
    from mdakit.decoupling.finetune import Decoupled
    from mdakit.disassembly import Part

ModelSpec = nn.Module | str | Path
Classes = str | Sequence[int | str]


def disassemble(model: ModelSpec, data: DataSpec | None = None, classes: Classes = (), **options: Any) -> Part:
    """Cut the part of ``model`` that ``classes`` rely on into a smaller classifier over those classes.

    Options (``method``, ``samples``, ``settings``, ``calibrate``, ``test_data``, ``seed``, ``device``, ...)
    are those of :func:`mdakit.disassembly.disassemble`.

    >>> import torch, mdakit
    >>> model, data = mdakit.examples.toy_problem()
    >>> part = mdakit.disassemble(model, data, [0, 3])
    >>> part.model(torch.rand(5, 1, 8, 8)).shape  # one logit per chosen class, in the order given
    torch.Size([5, 2])
    >>> part.report["part_size"]["params"] < part.report["original_size"]["params"]
    True
    """
    from mdakit.disassembly import disassemble as run

    return run(model, data, classes, **options)


def masks(model: ModelSpec, data: DataSpec | None = None, classes: Classes | None = None,
          method: str = "contribution", **options: Any) -> ComponentMasks:
    """Per-class masks only (which kernels, input channels and filters each class uses); no extraction.

    ``classes`` defaults to every class the model has a logit for. Options (``samples``, ``settings``,
    ``seed``, ``device``, ``calibrate``, ``class_chunk``, ``out``, ...) are those of
    :func:`mdakit.disassembly.compute_masks`; ``test_data``, ``input_shape`` and ``data_dir`` locate the
    model's data as in :meth:`mdakit.workspace.Workspace.open`.

    >>> import mdakit
    >>> model, data = mdakit.examples.toy_problem()
    >>> per_class = mdakit.masks(model, data)
    >>> per_class.classes, per_class.method
    ([0, 1, 2, 3], 'contribution')
    >>> 0.0 <= per_class.jaccard(0, 1)["head"] <= 1.0
    True
    """
    from mdakit.disassembly import compute_masks

    where = {key: options.pop(key) for key in ("test_data", "input_shape", "data_dir") if key in options}
    workspace = Workspace.open(model, data, **where)
    chosen = workspace.card.logit_classes if classes is None else workspace.classes(classes)
    return compute_masks(workspace, chosen, method, **options)[0]


def assemble(parts: Sequence[PartSpec], layout: str = "parallel", rescale: str = "none",
             **options: Any) -> tuple[AssembledModel | PaddedAssembly, AssemblyCard]:
    """Join parts (``Part`` objects, model directories or ``(module, ModelCard)`` pairs) into one classifier
    whose logits are the parts' logits in the order of the parts.

    Options (``data``, ``samples``, ``seed``, ``device``, ...) are those of :func:`mdakit.assembly.assemble`.

    >>> import torch, mdakit
    >>> model, data = mdakit.examples.toy_problem()
    >>> left, right = mdakit.disassemble(model, data, [0, 2]), mdakit.disassemble(model, data, [1, 3])
    >>> joined, card = mdakit.assemble([left, right])
    >>> [logit["label"] for logit in card.logits]
    [0, 2, 1, 3]
    >>> x = torch.rand(4, 1, 8, 8)
    >>> torch.allclose(joined(x), torch.cat([left.model(x), right.model(x)], dim=1), atol=1e-5)
    True
    """
    from mdakit.assembly import assemble as run

    return run(parts, layout, rescale, **options)


def compress(model: ModelSpec, data: DataSpec | None = None, **options: Any) -> Part:
    """Keep what any class uses: a smaller model with every logit, in order.

    Options (``method``, ``samples``, ``settings``, ``calibrate``, ``test_data``, ...) are those of
    :func:`mdakit.compression.compress`.

    >>> import torch, mdakit
    >>> model, data = mdakit.examples.toy_problem()
    >>> small = mdakit.compress(model, data)
    >>> small.model(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 4])
    >>> small.report["macs_ratio"] <= 1.0
    True
    """
    from mdakit.compression import compress as run

    return run(model, data, **options)


def decouple(model: ModelSpec, data: DataSpec | None = None, **options: Any) -> Decoupled:
    """Gate every inner conv of ``model`` and fine-tune it so each input runs its own calculation path.

    Options (``config``, ``layers``, ``test_data``, ``device``, ...) are those of
    :func:`mdakit.decoupling.finetune.decouple`.

    >>> import mdakit
    >>> from mdakit.decoupling.finetune import DecoupleConfig
    >>> model, data = mdakit.examples.toy_problem()
    >>> result = mdakit.decouple(model, data, config=DecoupleConfig(epochs=1), show_progress=False)
    >>> result.model.layers
    ['block.0']
    """
    from mdakit.decoupling.finetune import decouple as run

    return run(model, data, **options)


def export(model: ModelSpec | Part | tuple[nn.Module, Any], out: str | Path, format: str = "onnx",
           input_shape: Sequence[int] | None = None, force: bool = False) -> dict[str, Any]:
    """Write ``model`` as an ONNX or TorchScript file, checked against PyTorch before it is put in place.

    ``model``: a model or assembly directory, a ``Part``, a ``(module, card)`` pair (a model card or an
    assembly card), or a plain module with its ``input_shape`` (C, H, W). See :mod:`mdakit.exporting`.

    >>> import tempfile, mdakit
    >>> model, data = mdakit.examples.toy_problem()
    >>> part = mdakit.disassemble(model, data, [1, 2])
    >>> report = mdakit.export(part, f"{tempfile.mkdtemp()}/part.onnx")
    >>> report["format"], report["input_shape"], report["max_abs_diff"] < 1e-4
    ('onnx', [1, 8, 8], True)
    """
    from mdakit.exporting import as_exportable, export_model

    return export_model(as_exportable(model, input_shape), out, format, force)



def load(path: str | Path, into: nn.Module | None = None, device: str = "cpu") -> nn.Module:
    """The module stored at ``path``, in eval mode: any directory mdakit writes (a model, part, compressed or
    decoupled model, or an assembly in either layout).

    ``into`` is the module to fill for models saved from a user-built ``nn.Module`` (see
    :func:`mdakit.artifacts.load_with_card`); an assembly's card is read with
    :func:`mdakit.assembly.load_assembled`.

    >>> mdakit.load("runs/demo/assembled")(torch.rand(2, 1, 28, 28)).shape  # doctest: +SKIP
    torch.Size([2, 6])
    """
    from mdakit.assembly import is_assembled, load_assembled

    if is_assembled(path) and not (Path(path) / "card.json").is_file():
        if into is not None:
            raise MdakitError("an assembly's parts are rebuilt from their own cards: leave out into=")
        return load_assembled(path, device=device)[0]
    from mdakit.artifacts import load_with_card

    return load_with_card(path, into=into, device=device)[0]
