"""Helpers shared by the benchmark scripts: environment, atomic JSON, RESULTS.md sections, tensor memory."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
REPORT = ROOT / "benchmarks" / "RESULTS.md"


def environment() -> dict[str, Any]:
    """The machine and library versions a result was measured on."""
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpu": cpu, "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "device": "cpu"}


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def update_report(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of benchmarks/RESULTS.md."""
    section = f"## {title}\n\n{body.rstrip()}\n"
    text = REPORT.read_text() if REPORT.is_file() else "# Benchmark results\n"
    start = text.find(f"## {title}\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = REPORT.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, REPORT)


def peak_tensor_bytes(fn: Callable[[], Any]) -> int:
    """High-water mark of CPU tensor bytes allocated while ``fn`` runs (tensors alive before are not
    counted), from the allocation/free events of ``torch.profiler(profile_memory=True)``."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def median_seconds(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Median wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
