import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdakit.artifacts import load_with_card
from mdakit.cli import run
from mdakit.errors import OutputExistsError
from mdakit.files import write_directory


def _json(capsys, argv):
    code = run(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_train_eval_info_round_trip(tmp_path, capsys, data_dir):
    out = tmp_path / "m"
    result = _json(capsys, ["train", "--arch", "lenet5", "--dataset", "mnist", "--epochs", "2", "--train-subset",
                            "1500", "--batch-size", "32", "--lr", "0.05", "--out", str(out), "--data-dir",
                            str(data_dir), "--json"])
    assert result["metrics"]["test_accuracy"] > 0.7
    assert result["training"]["config"]["train_subset"] == 1500
    model, card = load_with_card(out)
    assert card.metrics["params"] == sum(p.numel() for p in model.parameters())

    evaluation = _json(capsys, ["eval", str(out), "--classes", "0-2", "--restrict-logits", "--json",
                                "--data-dir", str(data_dir)])
    assert evaluation["classes"] == [0, 1, 2] and evaluation["restricted"] is True
    assert evaluation["num_samples"] == 980 + 1135 + 1032
    assert len(evaluation["confusion"]) == 3 and len(evaluation["confusion"][0]) == 10

    info = _json(capsys, ["info", str(out), "--json"])
    assert info["card"]["arch"] == "lenet5" and info["macs"] == 416520
    assert [layer["type"] for layer in info["layers"]][:2] == ["Normalize", "Conv2d"]

    assert run(["eval", str(out), "--data-dir", str(data_dir)]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_import_command(tmp_path, capsys, tiny_lenet_dir):
    model, _ = load_with_card(tiny_lenet_dir)
    torch.save(model.net.state_dict(), tmp_path / "ckpt.pth")
    _json(capsys, ["import", str(tmp_path / "ckpt.pth"), "--arch", "lenet5", "--dataset", "mnist",
                   "--out", str(tmp_path / "imported"), "--json"])
    imported, card = load_with_card(tmp_path / "imported")
    assert card.provenance["imported_from"].endswith("ckpt.pth")
    for a, b in zip(model.state_dict().values(), imported.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("argv, message", [
    (["train", "--arch", "nonet", "--dataset", "mnist", "--out", "{tmp}/x", "--epochs", "1"], "unknown architecture"),
    (["train", "--arch", "lenet5", "--dataset", "mnist-ish", "--out", "{tmp}/x"], "unknown dataset"),
    (["train", "--arch", "lenet5", "--dataset", "mnist", "--out", "{tmp}/x", "--epochs", "0"], "epochs"),
    (["eval", "{model}", "--classes", "3,3"], "more than once"),
    (["eval", "{model}", "--classes", "11"], "out of range"),
    (["eval", "{model}", "--classes", ","], "empty"),
    (["eval", "{model}", "--dataset", "fashion-mnist", "--classes", "Sneaker,cat"], "unknown class"),
    (["eval", "{tmp}/missing"], "not a model directory"),
    (["eval", "{model}", "--device", "cuda:0" if not torch.cuda.is_available() else "tpu"], "device"),
    (["import", "{tmp}/none.pt", "--arch", "lenet5", "--dataset", "mnist", "--out", "{tmp}/y"], "does not exist"),
    (["train", "--arch", "lenet5", "--dataset", "mnist", "--out", "{model}", "--epochs", "1"], "already exists"),
])
def test_user_errors_exit_2_with_one_line(argv, message, tmp_path, capsys, tiny_lenet_dir):
    argv = [a.format(tmp=tmp_path, model=tiny_lenet_dir) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mdakit: error:") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_dataset_error_names_the_fetch_command(tmp_path, capsys, tiny_lenet_dir):
    assert run(["eval", str(tiny_lenet_dir), "--data-dir", str(tmp_path / "empty")]) == 2
    assert "mdakit data fetch mnist" in capsys.readouterr().err


def test_entry_point_exit_code_and_debug(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "mdakit", "info", str(tmp_path / "nothing")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith("mdakit: error:") and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mdakit", "--debug", "info", str(tmp_path / "nothing")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mdakit", "info", "--bogus-flag"], capture_output=True, text=True)
    assert proc.returncode == 2


def test_data_fetch_command_json(capsys, data_dir):
    result = _json(capsys, ["data", "fetch", "mnist", "fashion-mnist", "--data-dir", str(data_dir), "--json"])
    assert set(result["fetched"]) == {"mnist", "fashion-mnist"}
    assert Path(result["fetched"]["mnist"]) == data_dir


@pytest.mark.parametrize("command", [
    ["import", "{tmp}/ckpt.pth", "--arch", "lenet5", "--dataset", "mnist"],  # refused by the CLI before any work
    ["export", "{model}", "--format", "torchscript"],  # refused by the library when it writes
])
def test_existing_output_is_worded_for_the_command_line(command, tmp_path, capsys, tiny_lenet_dir):
    existing = tmp_path / "taken"
    existing.mkdir()
    argv = [a.format(tmp=tmp_path, model=tiny_lenet_dir) for a in command] + ["--out", str(existing)]
    assert run(argv) == 2
    assert capsys.readouterr().err.strip() == (f"mdakit: error: {existing} already exists; "
                                               "choose another --out or pass --force")


def test_library_says_an_output_exists_without_naming_flags(tmp_path):
    with pytest.raises(OutputExistsError, match=r"already exists \(force=True replaces it\)$") as caught:
        write_directory(tmp_path, False, lambda tmp: None)
    assert caught.value.path == tmp_path
