"""Measured wall-clock time per image of a model against a reference (a part against its original).

MACs promise a speed-up; the runtime decides whether it comes. Both models are timed in the same
process, interleaved pass by pass (the order alternating between rounds), so a slower stretch of a
noisy machine costs both alike and their ratio holds. Each setting (runtime × threads × batch) warms
both models up, then times rounds until both have run for a short while; the median pass is kept.
PyTorch eager runs on the model's device; ONNX Runtime on the CPU, from the file a user's export would
write (:mod:`mdakit.onnx_file`), with its intra-op threads set to the setting's.

>>> from mdakit.zoo import build_model
>>> big, small = build_model("lenet5", (1, 28, 28), 10), build_model("lenet5", (1, 28, 28), 2)
>>> report = compare_latency(small, big, (1, 28, 28), LatencySettings(runtimes=("eager",), batches=(1,)))
>>> [(r["runtime"], r["batch"]) for r in report["rows"]][:1], report["rows"][0]["speedup"] > 0
([('eager', 1)], True)
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdakit import defaults
from mdakit.errors import MdakitError
from mdakit.onnx_file import INPUT_NAME, write_onnx

RUNTIMES = ("eager", "onnxruntime")
Runner = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class LatencySettings:
    """What is timed and for how long.

    ``threads``: intra-op thread counts, ``None`` for every thread torch uses here. ``seconds``: how long
    each model runs per setting, at least ``min_rounds`` and at most ``max_rounds`` timed passes, after
    ``warmup`` untimed ones.
    """

    runtimes: tuple[str, ...] = RUNTIMES
    batches: tuple[int, ...] = (1, 64)
    threads: tuple[int | None, ...] = (1, None)
    seconds: float = 0.3
    min_rounds: int = 5
    max_rounds: int = 100
    warmup: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.runtimes) - set(RUNTIMES))
        if unknown:
            raise MdakitError(f"unknown runtime {unknown[0]!r} for timing; available: {', '.join(RUNTIMES)}")
        if not self.batches or min(self.batches) < 1 or self.min_rounds < 1:
            raise MdakitError("latency needs at least one batch size and one timed round, each at least 1")


def latency_settings(latency: bool | LatencySettings | None) -> LatencySettings | None:
    """What a ``latency`` argument asks for: settings to time with, or ``None`` for no timing. ``None`` means
    the default (:data:`~mdakit.defaults.MEASURE_LATENCY`), ``True`` the default settings.

    >>> latency_settings(False) is None, latency_settings(True).batches
    (True, (1, 64))
    """
    if latency is None:
        latency = defaults.MEASURE_LATENCY  # read at call time, so a test or a caller can switch it
    if isinstance(latency, LatencySettings):
        return latency
    return LatencySettings() if latency else None


def machine() -> dict[str, Any]:
    """The machine and runtimes a time was measured on.

    >>> sorted(machine())[:3]
    ['cpu', 'cpus', 'onnxruntime']
    """
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import onnxruntime
        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "onnxruntime": ort, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads, restoring the count after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _eager(model: nn.Module, device: torch.device) -> Runner:
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(x: torch.Tensor) -> None:
        with torch.inference_mode():
            model(x.to(device))
        synchronize()

    return run


def _onnx_session(path: Path, threads: int) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x.numpy()})


def time_interleaved(runners: Mapping[str, Runner], x: torch.Tensor, settings: LatencySettings) -> dict[str, float]:
    """Median seconds per pass of each runner on ``x``, the runners timed in turn, round after round.

    >>> fast = time_interleaved({"a": lambda x: x + 1}, torch.zeros(4), LatencySettings(min_rounds=3))
    >>> 0 < fast["a"] < 1
    True
    """
    names = list(runners)
    for name in names:
        for _ in range(settings.warmup):
            runners[name](x)
    passes: dict[str, list[float]] = {name: [] for name in names}
    for r in range(settings.max_rounds):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            runners[name](x)
            passes[name].append(time.perf_counter() - start)
        if r + 1 >= settings.min_rounds and min(sum(p) for p in passes.values()) >= settings.seconds:
            break
    return {name: statistics.median(p) for name, p in passes.items()}


def _onnx_files(models: Mapping[str, nn.Module], input_shape: Sequence[int], folder: Path) -> dict[str, Path]:
    def on_cpu(model: nn.Module) -> nn.Module:  # the caller's model stays on its device
        on_it = all(t.device.type == "cpu" for t in model.state_dict().values())
        return model if on_it else copy.deepcopy(model).cpu()

    example = torch.zeros(2, *input_shape)
    return {name: write_onnx(on_cpu(model), example, folder / f"{name}.onnx", {}) for name, model in models.items()}


def compare_latency(model: nn.Module, reference: nn.Module, input_shape: Sequence[int],
                    settings: LatencySettings | None = None, device: torch.device | str = "cpu",
                    labels: tuple[str, str] = ("part", "original")) -> dict[str, Any]:
    """Time ``model`` against ``reference`` per image in every setting (runtime × threads × batch).

    Each row holds milliseconds per image of both (under ``labels``) and ``speedup``, the reference's time
    over the model's. A runtime that cannot run the models (an ONNX export that fails) gets a ``skipped``
    entry saying why instead of rows.
    """
    settings = settings or LatencySettings()
    device = torch.device(device)
    models = {labels[0]: model.eval(), labels[1]: reference.eval()}
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    every = torch.get_num_threads()
    generator = torch.Generator().manual_seed(settings.seed)
    inputs = {b: torch.rand(b, *input_shape, generator=generator) for b in settings.batches}
    with tempfile.TemporaryDirectory(prefix="mdakit-latency-") as tmp:
        for runtime in settings.runtimes:
            try:
                files = _onnx_files(models, input_shape, Path(tmp)) if runtime == "onnxruntime" else {}
            except MdakitError as exc:
                skipped[runtime] = str(exc)
                continue
            for threads in dict.fromkeys(t or every for t in settings.threads):
                with torch_threads(threads):
                    runners = ({n: _onnx_session(f, threads) for n, f in files.items()} if files
                               else {n: _eager(m.to(device), device) for n, m in models.items()})
                    for batch, x in inputs.items():
                        seconds = time_interleaved(runners, x, settings)
                        ms = {n: 1000 * s / batch for n, s in seconds.items()}
                        rows.append({"runtime": runtime, "device": "cpu" if files else device.type,
                                     "threads": threads, "batch": batch, "ms_per_image": ms,
                                     "speedup": ms[labels[1]] / ms[labels[0]]})
    return {"labels": list(labels), "rows": rows, **({"skipped": skipped} if skipped else {}),
            "settings": asdict(settings), "environment": machine()}
