"""Attributing a run's classes chunk by chunk: in memory, or into an output directory.

With an output directory the chunks go through :func:`mdakit.distributed.run_per_class`: finished
classes are written as they come, the classes are split across the processes of a
:class:`~mdakit.distributed.World`, and a rerun with the same :func:`fingerprint` resumes. Without
one the chunks' masks are merged in memory. Either way a class's masks do not depend on its chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mdakit.attribution.base import AttributionMethod, MethodSettings
from mdakit.attribution.run import AttributionRun
from mdakit.component_masks import ComponentMasks
from mdakit.distributed import DEFAULT_CHUNK, World, in_chunks, run_per_class, state_digest
from mdakit.errors import MdakitError


def is_chunked(class_chunk: int | None, out: str | Path | None, world: World) -> bool:
    """Whether a run goes chunk by chunk: class chunks, an output directory or several processes.

    >>> is_chunked(None, None, World()), is_chunked(None, "masks", World())
    (False, True)
    """
    return class_chunk is not None or out is not None or world.size > 1


def check_chunks(method: AttributionMethod, settings: MethodSettings, class_chunk: int | None,
                 out: str | Path | None, world: World) -> None:
    """Refuse a chunked run that cannot work: a chunk below one class, several processes with
    nowhere to gather their classes, or settings that need every class in one pass."""
    if class_chunk is not None and class_chunk < 1:
        raise MdakitError(f"the class chunk must be at least 1, got {class_chunk}")
    if world.size > 1 and out is None:
        raise MdakitError("several processes need an output directory to gather their classes' masks in")
    reason = method.one_pass_reason(settings) if is_chunked(class_chunk, out, world) else None
    if reason is not None:
        raise MdakitError(reason)


def fingerprint(run: AttributionRun, source: str) -> dict[str, Any]:
    """What the finished classes of a resumable run belong to: the model ``source`` and its weights,
    the training data's size, the classes, the method, samples, seed and settings."""
    return {"source": source, "weights": state_digest(run.model), "train_images": len(run.train),
            "classes": run.classes, "method": run.method.name, "samples": run.samples, "seed": run.seed,
            "settings": run.settings.to_dict()}


def merged(parts: list[ComponentMasks]) -> ComponentMasks:
    """The masks of several chunks of one run as one (method and settings of the first chunk)."""
    return ComponentMasks({c: m for part in parts for c, m in part.per_class.items()}, parts[0].method,
                          parts[0].settings,
                          info={"samples_used": {c: n for p in parts for c, n in p.info["samples_used"].items()}})


def attribute_in_chunks(run: AttributionRun, class_chunk: int | None = None, *, out: str | Path | None = None,
                        world: World | None = None, work_dir: str | Path | None = None, source: str = "",
                        finish: Callable[[ComponentMasks], None] | None = None,
                        force: bool = False) -> ComponentMasks:
    """Masks of every class of ``run``, ``class_chunk`` classes at a time (default: all at once in
    memory, :data:`~mdakit.distributed.DEFAULT_CHUNK` with ``out``); ``finish`` fills in what the
    whole run knows (names, info) before the masks are returned or saved.

    With ``out`` the masks are saved there and returned lazily loaded; ``work_dir``, ``world`` and
    ``force`` are those of :func:`~mdakit.distributed.run_per_class`, and the run is resumable under
    its :func:`fingerprint` with ``source`` naming the model.

    >>> import torch
    >>> from torch import nn
    >>> from mdakit.attribution.base import get_method
    >>> from mdakit.data import ImageTensorDataset
    >>> from mdakit.graph import trace
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.eye(2)), model[1].bias.zero_()
    >>> images = torch.tensor([[255, 0], [0, 255]] * 2, dtype=torch.uint8).view(4, 1, 1, 2)
    >>> data = ImageTensorDataset(images, torch.tensor([0, 1, 0, 1]))
    >>> method = get_method("contribution")
    >>> run = AttributionRun(method, method.settings_for(None), model, trace(model, (1, 1, 2)), data, [1, 0],
    ...                      {0: 0, 1: 1}, samples=2)
    >>> masks = attribute_in_chunks(run, class_chunk=1)
    >>> masks.classes, masks.info
    ([1, 0], {'samples_used': {1: 2, 0: 2}})
    """
    if out is not None:
        return run_per_class(run.classes, run.masks, out, chunk=class_chunk or DEFAULT_CHUNK, world=world,
                             work_dir=work_dir, fingerprint=fingerprint(run, source), finish=finish, force=force)
    masks = merged([run.masks(chunk) for chunk in in_chunks(run.classes, class_chunk or len(run.classes))])
    if finish is not None:
        finish(masks)
    return masks
