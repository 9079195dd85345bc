"""The coverage panel: one model per architecture family that benchmarks/coverage.py found to pass every
check (build, disassemble, extraction = masked original, both assembly layouts, ONNX export) still does.

The panel (benchmarks/results/coverage_panel.json) is written by the benchmark; its slower models are marked
slow there, so the default run stays under a minute."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
PANEL = BENCHMARKS / "results" / "coverage_panel.json"
RUN = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/coverage.py"


def _benchmark() -> ModuleType:
    """benchmarks/coverage.py under another module name (benchmarks/ is no package, and ``coverage`` is
    coverage.py's name), with benchmarks/ on the path only while it imports its ``common``."""
    spec = importlib.util.spec_from_file_location("coverage_benchmark", BENCHMARKS / "coverage.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def _panel() -> list:
    if not PANEL.is_file():  # one failing case, so that a missing panel is never a silent pass
        return [pytest.param(None, id="panel-missing")]
    return [pytest.param(entry, id=f"{entry['family']}:{entry['name']}",
                         marks=[pytest.mark.slow] if entry["slow"] else [])
            for entry in json.loads(PANEL.read_text())["models"]]


@pytest.mark.parametrize("entry", _panel())
def test_panel_model_passes_every_check(entry):
    if entry is None:
        pytest.fail(f"{PANEL} is missing: run the coverage benchmark first ({RUN})")
    row = _benchmark().check_model(entry["family"], entry["name"], entry["input_shape"])
    failed = {check: record for check, record in row["checks"].items() if record["status"] != "pass"}
    assert not failed, failed
