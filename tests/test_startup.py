"""Start-up: the command line answers help and user errors without torch, and a LeNet-5 without torchvision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mdakit.artifacts import ModelCard, save
from mdakit.cli import run
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


def _lenet(tmp_path: Path) -> Path:
    return save(build_model("lenet5", (1, 28, 28), 10), tmp_path / "lenet5",
                ModelCard.for_dataset("lenet5", BUILTIN["mnist"]))


def test_info_on_a_model_file_imports_no_torch_and_shows_what_loading_shows(tmp_path: Path, capsys):
    model_dir = _lenet(tmp_path)
    assert _run_cli(["info", str(model_dir), "--json"]) == (0, [])
    assert run(["info", str(model_dir), "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)
    raw = json.loads((model_dir / "card.json").read_text())
    del raw["summary"]  # as a file from an older mdakit: info loads the model and counts
    (model_dir / "card.json").write_text(json.dumps(raw))
    assert run(["info", str(model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == saved and saved["macs"] == 416_520


def test_info_on_weights_that_do_not_match_the_card_is_refused(tmp_path: Path, capsys):
    model_dir = _lenet(tmp_path)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    assert run(["info", str(model_dir)]) == 2
    assert "does not match the checksum" in capsys.readouterr().err


def test_info_on_a_card_edited_since_its_save_checks_it_against_the_weights(tmp_path: Path, capsys):
    model_dir = _lenet(tmp_path)
    raw = json.loads((model_dir / "card.json").read_text())
    raw["num_classes"] = 5  # the saved summary no longer vouches for this card: info loads and refuses it
    (model_dir / "card.json").write_text(json.dumps(raw))
    assert run(["info", str(model_dir)]) == 2
    assert "mdakit: error:" in capsys.readouterr().err
