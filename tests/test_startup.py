"""Start-up: the command line answers help and user errors without torch, and a LeNet-5 without torchvision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mdakit.artifacts import ModelCard, save
from mdakit.data import BUILTIN
from mdakit.zoo import build_model

HEAVY = ("torch", "torchvision")


def _run_cli(argv: list[str]) -> tuple[int, list[str]]:
    """Run ``mdakit argv`` in a fresh interpreter: its exit code and the heavy modules it imported."""
    code = (f"import json, sys; from mdakit.cli import run; code = run({argv!r}); "
            f"print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    exit_code, loaded = json.loads(done.stdout.splitlines()[-1])
    return exit_code, loaded


@pytest.mark.parametrize("argv, exit_code", [
    (["--help"], 0),
    (["info", "--help"], 0),
    (["disassemble", "--help"], 0),
    (["data", "fetch", "--help"], 0),
    (["info", "/nonexistent"], 2),
    (["info", "--bogus-flag"], 2),
    (["disassemble", "/nonexistent"], 2),
])
def test_help_and_user_errors_import_no_torch(argv, exit_code):
    assert _run_cli(argv) == (exit_code, [])


def test_info_on_a_lenet_imports_no_torchvision(tmp_path: Path):
    model_dir = save(build_model("lenet5", (1, 28, 28), 10), tmp_path / "lenet5",
                     ModelCard.for_dataset("lenet5", BUILTIN["mnist"]))
    assert _run_cli(["info", str(model_dir), "--json"]) == (0, ["torch"])
