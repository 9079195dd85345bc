"""Per-class work in chunks, split across processes, resumable (issue 10).

:func:`run_per_class` computes masks ``chunk`` classes at a time with any per-class method (a function
from a list of classes to their :class:`~mdakit.component_masks.ComponentMasks`), writes each finished class
atomically to a work directory (one small safetensors file per class), and has rank 0 gather them into
one masks directory. Under ``torchrun`` the classes are split across the ranks of a torch.distributed
job (:func:`joined`: gloo on CPU, nccl on CUDA, with a gloo group for the control messages). A rerun
with the same inputs skips the classes already in the work directory, so no class is computed twice
and a crash leaves only whole files behind. Every rank sees the same class list, settings and seed,
and a class's result does not depend on which rank or chunk computes it, so the gathered masks are
bit-identical to a single-process run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mdakit.component_masks import PARTS, ComponentMasks, LayerMask
from mdakit.defaults import DEFAULT_TIMEOUT
from mdakit.errors import MdakitError, OptionError, OutputExistsError

T = TypeVar("T")
DEFAULT_CHUNK = 16
MANIFEST = "run.json"


@dataclass
class World:
    """This process's place among the processes sharing the classes (alone: rank 0 of 1).

    >>> World().size, World().rank
    (1, 0)
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout: float = DEFAULT_TIMEOUT
    group: Any = None

    def device(self, device: torch.device | str) -> torch.device:
        """The device this rank computes on: its own GPU (``cuda:LOCAL_RANK``) when on CUDA.

        >>> World().device("cpu")
        device(type='cpu')
        """
        device = torch.device(device)
        if device.type == "cuda" and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self, what: str) -> None:
        """Wait until every rank reaches ``what``; a rank that died or hangs fails it within the timeout."""
        if self.size == 1:
            return
        try:
            dist.monitored_barrier(group=self.group, timeout=timedelta(seconds=self.timeout), wait_all_ranks=True)
        except RuntimeError as exc:
            raise MdakitError(f"rank {self.rank}: not every process reached '{what}' within {self.timeout:.0f} s "
                              f"({_first_line(exc)}); a process died or hung. Rerun the same command to resume "
                              "from the classes already finished") from exc

    def on_rank0(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` on rank 0 only and hand its result to every rank; if it fails, every rank raises
        an :class:`MdakitError` with rank 0's message.

        >>> World().on_rank0(lambda: 42, "answering")
        42
        """
        result, error, failure = None, None, None
        if self.rank == 0:
            try:
                result = fn()
            except Exception as exc:  # every rank must hear about it, not only rank 0
                failure, error = exc, str(exc) if isinstance(exc, MdakitError) else f"rank 0 failed: {exc!r}"
        if self.size > 1:
            box = [(result, error)]
            try:
                dist.broadcast_object_list(box, src=0, group=self.group)
            except RuntimeError as exc:
                raise MdakitError(f"rank {self.rank}: no word from rank 0 while {what} ({_first_line(exc)}); "
                                  "it died or hung. Rerun the same command to resume") from exc
            result, error = box[0]
        if failure is not None:
            raise failure
        if error is not None:
            raise MdakitError(error)
        return result  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@contextmanager
def joined(device: torch.device | str = "cpu", timeout: float = DEFAULT_TIMEOUT) -> Iterator[World]:
    """The :class:`World` of this process: the torch.distributed job ``torchrun`` started (read from
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), or a world of one.

    The default group uses nccl when ``device`` is CUDA, else gloo; barriers and broadcasts go
    through a gloo group with ``timeout`` seconds.

    >>> with joined() as world:
    ...     world.size
    1
    """
    if not timeout > 0:
        raise OptionError(f"{{0}} must be a positive number of seconds, got {timeout}", "timeout")
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        yield World(timeout=timeout)
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo",
                                                                      timeout=timedelta(seconds=timeout))
    try:
        yield World(rank, size, local_rank, timeout, group)
    finally:
        if owned:
            dist.destroy_process_group()


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes and bytes): a run's work belongs to these weights.

    >>> state_digest(nn.Linear(2, 2)) == state_digest(nn.Linear(2, 2))
    False
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def split(classes: Sequence[int], world: World) -> list[int]:
    """This rank's share of ``classes``: every ``size``-th one, from position ``rank``.

    >>> split([5, 6, 7, 8, 9], World(rank=1, size=2))
    [6, 8]
    """
    return list(classes[world.rank::world.size])


def in_chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """``items`` in consecutive lists of at most ``size``.

    >>> list(in_chunks([1, 2, 3, 4, 5], 2))
    [[1, 2], [3, 4], [5]]
    """
    if size < 1:
        raise MdakitError(f"the class chunk must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


class WorkDir:
    """The finished classes of one run: ``class-<c>.safetensors`` each, written atomically, plus
    ``run.json`` naming the run (model, classes, method, settings, seed) they belong to."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, cls: int) -> Path:
        return self.path / f"class-{cls}.safetensors"

    def prepare(self, fingerprint: Mapping[str, Any], force: bool = False) -> list[int]:
        """Create the directory, or check that an existing one is from the same run; drop leftovers of
        interrupted writes; return the classes already finished."""
        expected = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        manifest = self.path / MANIFEST
        if self.path.exists() and force:
            shutil.rmtree(self.path)
        if self.path.exists():
            try:
                found = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise OptionError(f"{self.path} exists but is not a work directory of mdakit masks; remove it "
                                  "or choose another {0}", "work_dir") from exc
            if found != expected:
                differ = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
                raise OptionError(f"{self.path} holds classes of another run (different {', '.join(differ)}); "
                                  "remove it, start over with {0}, or choose another {1}", "force", "work_dir")
            for leftover in self.path.glob(".*.tmp*"):
                leftover.unlink()
        else:
            self.path.mkdir(parents=True)
            _atomic_write_text(manifest, json.dumps(expected, indent=2, sort_keys=True) + "\n")
        return self.finished()

    def finished(self) -> list[int]:
        """Classes whose file is complete (files appear only by an atomic rename)."""
        return sorted(int(f.stem.removeprefix("class-")) for f in self.path.glob("class-*.safetensors"))

    def write(self, cls: int, layers: Mapping[str, LayerMask], meta: Mapping[str, Any]) -> None:
        """Save one class's masks and ``meta`` (method, settings, per-class info) atomically."""
        tensors = {f"{name}/{part}": getattr(mask, part).detach().cpu().contiguous()
                   for name, mask in layers.items() for part in PARTS}
        shapes = {name: list(mask.kernel_shape) for name, mask in layers.items()}
        target = self.file(cls)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata={"meta": json.dumps({**meta, "kernel_shapes": shapes}, default=str)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def read(self, cls: int) -> tuple[dict[str, LayerMask], dict[str, Any]]:
        """One class's masks and meta, as :meth:`write` saved them."""
        try:
            with safe_open(str(self.file(cls)), framework="pt") as f:
                meta = json.loads(f.metadata()["meta"])
                layers = {name: LayerMask.from_packed(f.get_tensor(f"{name}/packed"), tuple(shape),
                                                      f.get_tensor(f"{name}/inputs"), f.get_tensor(f"{name}/outputs"))
                          for name, shape in meta["kernel_shapes"].items()}
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
            raise MdakitError(f"{self.file(cls)} is not readable ({exc}); remove it and rerun to compute "
                              f"class {cls} again") from exc
        return layers, meta


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class _WorkClasses(Mapping[int, dict[str, LayerMask]]):
    """The classes of a work directory as a lazily read mapping (one class in memory at a time)."""

    def __init__(self, work: WorkDir, classes: Sequence[int]):
        self.work, self.classes = work, list(classes)

    def __getitem__(self, cls: int) -> dict[str, LayerMask]:
        if cls not in self.classes:
            raise KeyError(cls)
        return self.work.read(cls)[0]

    def __iter__(self) -> Iterator[int]:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.classes)


def default_work_dir(out: str | Path) -> Path:
    """Where the finished classes of a run writing ``out`` wait to be gathered: ``<out>.work``.

    >>> default_work_dir("runs/masks").name
    'masks.work'
    """
    out = Path(out)
    return out.with_name(out.name + ".work")


def _class_meta(masks: ComponentMasks, cls: int) -> dict[str, Any]:
    """What a class file keeps besides the tensors: method, settings, and the class's entries of the
    per-class dicts in ``masks.info`` (e.g. ``samples_used``)."""
    info = {key: value[cls] for key, value in masks.info.items() if isinstance(value, Mapping) and cls in value}
    return {"method": masks.method, "settings": masks.settings, "info": info}


def gather(work: WorkDir, classes: Sequence[int], out: str | Path, force: bool = False,
           finish: Callable[[ComponentMasks], None] | None = None) -> Path:
    """Write the finished ``classes`` of ``work`` into one masks directory ``out`` (streamed class by
    class), after ``finish`` has filled in names and info; then remove the work directory."""
    missing = [c for c in classes if not work.file(c).is_file()]
    if missing:
        raise MdakitError(f"{len(missing)} classes are not finished in {work.path} (first: {missing[0]}); "
                          "rerun the same command to compute them")
    first = work.read(classes[0])[1]
    info: dict[str, Any] = {}
    for c in classes:
        meta = work.read(c)[1]
        if (meta["method"], meta["settings"]) != (first["method"], first["settings"]):
            raise MdakitError(f"class {c} in {work.path} was computed with other settings than class {classes[0]}")
        for key, value in meta["info"].items():
            info.setdefault(key, {})[c] = value
    masks = ComponentMasks(_WorkClasses(work, classes), first["method"], first["settings"], info=info)
    if finish is not None:
        finish(masks)
    path = masks.save(out, force=force)
    shutil.rmtree(work.path)
    return path


def run_per_class(classes: Sequence[int], compute: Callable[[list[int]], ComponentMasks], out: str | Path, *,
                  chunk: int = DEFAULT_CHUNK, world: World | None = None, work_dir: str | Path | None = None,
                  fingerprint: Mapping[str, Any] | None = None, finish: Callable[[ComponentMasks], None] | None = None,
                  force: bool = False, on_chunk: Callable[[list[int]], None] | None = None) -> ComponentMasks:
    """Masks of ``classes`` by ``compute`` (any per-class method), ``chunk`` classes at a time and split
    across ``world``'s ranks, saved to ``out`` and returned lazily loaded from it.

    Finished classes go to ``work_dir`` (default :func:`default_work_dir`) at the end of each chunk;
    classes already there from an interrupted run with the same ``fingerprint`` are not computed
    again. Memory holds one chunk's binary masks, whatever the number of classes.

    >>> import tempfile
    >>> m = LayerMask(torch.tensor([[True]]), torch.tensor([True]), torch.tensor([True]))
    >>> masks = run_per_class([0, 1, 2], lambda cs: ComponentMasks({c: {"fc": m} for c in cs}, "toy"),
    ...                       Path(tempfile.mkdtemp()) / "masks", chunk=2)
    >>> masks.classes, masks.method
    ([0, 1, 2], 'toy')
    """
    world = world or World()
    out = Path(out)
    work = WorkDir(work_dir or default_work_dir(out))

    def prepare() -> list[int]:
        if out.exists() and not force:
            raise OutputExistsError(out)
        return work.prepare(fingerprint or {}, force)

    done = set(world.on_rank0(prepare, "preparing the work directory"))
    todo = split([c for c in classes if c not in done], world)
    for part in in_chunks(todo, chunk):
        masks = compute(part)
        for c in part:
            work.write(c, masks.per_class[c], _class_meta(masks, c))
        del masks
        if on_chunk is not None:
            on_chunk(part)
    world.barrier("every class finished")
    world.on_rank0(lambda: gather(work, classes, out, force, finish), "gathering the masks")
    return ComponentMasks.load(out, lazy=True)
