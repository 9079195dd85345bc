"""Bad input through the command line: one line on stderr, exit code 2, nothing written, inputs untouched.

Each case is one the bad-input sweep found (benchmarks/bad_inputs.py runs the whole sweep).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import mdakit
from mdakit.artifacts import load_with_card
from mdakit.checkpoints import read_checkpoint
from mdakit.cli import run
from mdakit.edits import apply_edits
from mdakit.errors import MdakitError
from mdakit.files import remove_stale_partials, write_directory
from mdakit.zoo import build_model


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_lenet_dir) -> dict[str, Path]:
    """Two parts of the tiny LeNet-5 and their parallel assembly, as the CLI writes them."""
    root = tmp_path_factory.mktemp("hardening")
    for name, classes in (("part-01", "0,1"), ("part-23", "2,3")):
        assert run(["disassemble", str(tiny_lenet_dir), "--classes", classes, "--samples", "10",
                    "--out", str(root / name)]) == 0
    assert run(["assemble", str(root / "part-01"), str(root / "part-23"), "--out", str(root / "joined")]) == 0
    return {"root": root, "a": root / "part-01", "b": root / "part-23", "joined": root / "joined"}


def _fails_cleanly(argv: list[str], capsys, watch: Path, message: str) -> str:
    """Run ``argv``: exit 2, one ``mdakit: error:`` line naming ``message``, ``watch`` unchanged."""
    before = sorted(str(p.relative_to(watch)) for p in watch.rglob("*"))
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mdakit: error:") and message in err[0], err
    assert sorted(str(p.relative_to(watch)) for p in watch.rglob("*")) == before
    return err[0]


def _file_in_the_way(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker


UNWRITABLE = [
    ["train", "--arch", "lenet5", "--dataset", "mnist", "--epochs", "1", "--train-subset", "100"],
    ["disassemble", "{model}", "--classes", "0,1"],
    ["assemble", "{a}", "{b}"],
    ["compress", "{model}"],
    ["report", "{a}"],
    ["export", "{a}"],
    ["masks", "{model}", "--classes", "0"],
]


@pytest.mark.parametrize("where", ["/proc/mdakit-out", "{blocker}/out"])
@pytest.mark.parametrize("argv", UNWRITABLE, ids=lambda argv: argv[0])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(argv, where, parts, tiny_lenet_dir, tmp_path,
                                                                      capsys):
    out = where.format(blocker=_file_in_the_way(tmp_path))
    argv = [a.format(model=tiny_lenet_dir, **parts) for a in argv] + ["--out", out]
    _fails_cleanly(argv, capsys, tmp_path, "cannot write")


def test_a_data_folder_that_cannot_be_written_is_refused(tmp_path, capsys):
    blocker = _file_in_the_way(tmp_path)
    _fails_cleanly(["data", "fetch", "mnist", "--data-dir", str(blocker / "data")], capsys, tmp_path, "cannot write")


@pytest.mark.parametrize("argv", [
    ["disassemble", "{a}", "--classes", "0", "--out", "{a}"],
    ["compress", "{a}", "--out", "{a}"],
    ["export", "{a}", "--out", "{a}"],
    ["report", "{a}", "--out", "{root}"],
    ["assemble", "{a}", "{b}", "--out", "{b}"],
], ids=lambda argv: argv[0])
def test_an_output_equal_to_an_input_is_refused_even_with_force(argv, parts, capsys):
    argv = [a.format(**parts) for a in argv] + ["--force"]
    line = _fails_cleanly(argv, capsys, parts["root"], "is also an input of this command")
    assert "--out" in line


@pytest.mark.parametrize("field, value, message", [
    ("weights", "abc", "'weights' must be an object"),
    ("format_version", "1", "'format_version' must be an integer"),
    ("input_shape", "1x28x28", "'input_shape' must be a list of positive integers"),
    ("num_classes", -3, "'num_classes' must be a positive integer"),
    ("class_names", [1, 2], "'class_names' must be a list of strings"),
])
@pytest.mark.parametrize("verb", ["info", "eval", "disassemble"])
def test_a_card_field_of_the_wrong_type_is_refused(field, value, message, verb, tiny_lenet_dir, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    card = json.loads((tiny_lenet_dir / "card.json").read_text())
    (model / "card.json").write_text(json.dumps({**card, field: value}))
    (model / "model.safetensors").write_bytes((tiny_lenet_dir / "model.safetensors").read_bytes())
    extra = {"info": [], "eval": [], "disassemble": ["--classes", "0", "--out", str(tmp_path / "p")]}[verb]
    _fails_cleanly([verb, str(model), *extra], capsys, tmp_path, message)


@pytest.mark.parametrize("argv, message", [
    (["eval", "{model}", "--classes", "0-99999999999"], "out of range"),
    (["disassemble", "{model}", "--classes", "0-99999999999", "--out", "{tmp}/p"], "out of range"),
    (["eval", "{model}", "--classes", ""], "empty"),
    (["analyze", "{model}", "--per-class", "0", "--out", "{tmp}/a"], "--per-class must be at least 1"),
    (["train", "--arch", "lenet5", "--dataset", "mnist", "--lr", "nan", "--out", "{tmp}/m"], "--lr must be a finite"),
    (["train", "--arch", "lenet5", "--dataset", "mnist", "--momentum", "inf", "--out", "{tmp}/m"], "--momentum"),
    (["disassemble", "{model}", "--classes", "0", "--calibrate", "nan", "--out", "{tmp}/p"], "--calibrate"),
    (["disassemble", "{model}", "--classes", "0", "--alpha-conv", "-inf", "--out", "{tmp}/p"], "--alpha-conv"),
    (["disassemble", "{model}", "--classes", "0", "--method", "nad", "--beta", "nan", "--out", "{tmp}/p"], "beta"),
    (["import", "{tmp}", "--arch", "lenet5", "--dataset", "mnist", "--out", "{tmp}/i"], "is a directory"),
    (["import", "{tmp}/notes.pth", "--arch", "lenet5", "--dataset", "mnist", "--out", "{tmp}/i"], "notes.pth"),
])
def test_bad_values_fail_with_one_line(argv, message, tiny_lenet_dir, tmp_path, capsys):
    (tmp_path / "notes.pth").write_text("this is not a checkpoint\n")
    argv = [a.format(model=tiny_lenet_dir, tmp=tmp_path) for a in argv]
    _fails_cleanly(argv, capsys, tmp_path, message)


def test_a_single_model_command_on_a_parallel_assembly_names_its_parts(parts, tmp_path, capsys):
    line = _fails_cleanly(["disassemble", str(parts["joined"]), "--classes", "0", "--out", str(tmp_path / "p")],
                          capsys, tmp_path, "is an assembly of 2 parts")
    assert "part-0" in line


def test_export_of_a_model_with_nan_weights_fails_its_check(parts, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    tensors = load_file(parts["a"] / "model.safetensors")
    name = next(k for k in tensors if k.endswith("weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, broken / "model.safetensors", metadata={"format": "mdakit-model"})
    card = json.loads((parts["a"] / "card.json").read_text())
    card["weights"].pop("sha256")
    (broken / "card.json").write_text(json.dumps(card))
    _fails_cleanly(["export", str(broken), "--out", str(tmp_path / "x.onnx")], capsys, tmp_path, "NaN")


def test_export_is_checked_on_the_test_images_of_the_models_dataset(parts, tmp_path, capsys):
    assert run(["export", str(parts["joined"]), "--out", str(tmp_path / "j.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checked_on"].startswith("8 test images (mnist)") and report["max_abs_diff"] < 1e-4


def test_mdakit_load_and_info_open_a_parallel_assembly(parts, capsys):
    assembled = mdakit.load(parts["joined"])
    part_a = load_with_card(parts["a"])[0]
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(assembled(images)[:, :2], part_a(images), atol=1e-5)
    assert run(["info", str(parts["joined"]), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["assembly"]["logits"]) == 4


def test_evaluate_needs_no_logit_classes(tiny_lenet_dir, mnist_test):
    model, card = load_with_card(tiny_lenet_dir)
    test, _ = mnist_test
    assert mdakit.evaluate(model, test, classes=[0, 1]).accuracy == mdakit.evaluate(
        model, test, card.logit_classes, [0, 1]).accuracy


def test_assembly_orig_is_the_originals_pooled_over_the_same_images(parts, capsys):
    assert run(["eval", str(parts["joined"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    pooled = sum(p["original_correct"] for p in report["parts"]) / report["num_images"]
    assert report["original_accuracy"] == pytest.approx(pooled)
    assert report["num_images"] == sum(p["num_images"] for p in report["parts"])


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = write_directory(tmp_path / "d", False, lambda tmp: (tmp / "f.txt").write_text("x"))
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755 and (out / "f.txt").stat().st_mode & 0o777 == 0o644


def test_a_later_write_removes_what_a_killed_write_left(tmp_path):
    dead = tmp_path / ".out.999999999-abc.tmp"
    dead.mkdir()
    live = tmp_path / f".out.{os.getpid()}-abc.tmp"
    live.mkdir()
    write_directory(tmp_path / "out", False, lambda tmp: None)
    assert not dead.exists() and live.exists()


def test_a_write_killed_while_replacing_gets_the_previous_output_back(tmp_path):
    stale = tmp_path / ".out.999999999-abc.old"
    (stale / "previous").mkdir(parents=True)
    (stale / "previous" / "card.json").write_text("{}")
    assert remove_stale_partials(tmp_path / "out") == [stale]
    assert (tmp_path / "out" / "card.json").read_text() == "{}"


class _MadeInForward(nn.Module):
    """A user-built module whose forward makes a tensor: its card cannot record it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 4)

    def forward(self, x):
        return self.fc(x.flatten(1)) * torch.tensor(2.0)


def test_a_part_of_a_module_its_card_cannot_record_is_explained_on_the_command_line(tmp_path, capsys):
    _, data = mdakit.examples.toy_problem()
    mdakit.disassemble(_MadeInForward(), data, [0, 1]).save(tmp_path / "part")
    assert run(["info", str(tmp_path / "part")]) == 0  # the card and the layers its save recorded
    assert "opens in Python with into= only" in capsys.readouterr().out
    line = _fails_cleanly(["eval", str(tmp_path / "part"), "--dataset", "mnist"],
                          capsys, tmp_path, "user-built nn.Module, which the command line cannot rebuild")
    assert "could not record its structure: it reads '_tensor_constant0'" in line
    assert "mdakit.load(path, into=" in line


def test_info_shows_what_a_masks_directory_keeps(tiny_lenet_dir, tmp_path, capsys):
    assert run(["masks", str(tiny_lenet_dir), "--classes", "0,1", "--samples", "5", "--out", str(tmp_path / "mk"),
                "--json"]) == 0
    computed = json.loads(capsys.readouterr().out)["kept_filters"]
    assert run(["info", str(tmp_path / "mk"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kept_filters"] == computed and shown["classes"] == [0, 1] and shown["method"] == "contribution"


def test_bytes_that_are_no_checkpoint_are_called_unreadable_not_unsafe(tmp_path):
    path = tmp_path / "zeros.bin"
    path.write_bytes(bytes(64))
    with pytest.raises(MdakitError, match=r"not a readable PyTorch checkpoint .*: Unsupported operand"):
        read_checkpoint(path)


def test_small_wordings_are_exact():
    with pytest.raises(MdakitError, match=r"mean and std need 1 value each \(one per input channel\), got 2 and 1"):
        build_model("lenet5", (1, 28, 28), 10, mean=[0.1, 0.2], std=[0.3])
    with pytest.raises(MdakitError, match="a structural edit without a 'kind'"):
        apply_edits(build_model("lenet5", (1, 28, 28), 10), [{"layers": {}}])
