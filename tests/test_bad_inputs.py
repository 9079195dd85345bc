"""The bad-input sweep (tests/bad_input_sweep.py): its cases cover every verb, its runs are classified
right, and (slow) the whole sweep shows no traceback, wrong success, partial output or changed input."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from bad_input_sweep import FAILURES, Case, all_cases, changes, classify, counts, run_sweep

from mdakit.analysis.run import analyze
from mdakit.card import ModelCard
from mdakit.checkpoints import read_checkpoint
from mdakit.cli import COMMANDS, run
from mdakit.data import fetch
from mdakit.data.registry import DATASETS
from mdakit.decoupling.analysis.study import PathsSettings
from mdakit.distributed import joined
from mdakit.errors import MdakitError, OptionError
from mdakit.train import TrainConfig

ERROR = Case(("info", "x"), "error", "a case expecting an error")
OK = Case(("info", "x"), "ok", "a case expecting success")


def test_the_sweep_has_over_200_cases_across_every_verb():
    cases = all_cases()
    assert len(cases) >= 200
    assert {c.verb for c in cases} >= {*COMMANDS, "data fetch"}
    assert sum(c.subprocess for c in cases) >= 5
    assert {c.expect for c in cases} == {"error", "ok"}


def test_every_placeholder_of_a_case_is_a_fixture():
    known = {"model", "fashion", "a", "b", "fpart", "joined", "dec", "masks", "cifar", "user", "upart", "sd", "file",
             "fixtures", "tmp"}
    used = {name for c in all_cases() for arg in c.argv for _, name, _, _ in string.Formatter().parse(arg) if name}
    assert used <= known


@pytest.mark.parametrize("case, code, stderr, traceback, changed, created, outcome", [
    (ERROR, 2, "mdakit: error: x is not a model directory\n", False, [], [], "clean error"),
    (ERROR, 2, "\rattribution: 0%\r   \rmdakit: error: bad\n", False, [], [], "clean error"),
    (ERROR, 2, "Usage: mdakit info [OPTIONS]\nTry 'mdakit info --help'\n", False, [], [], "usage error"),
    (ERROR, 2, "mdakit: error: bad\nmore\n", False, [], [], "unclear error"),
    (ERROR, 0, "", False, [], ["out/card.json"], "wrong success"),
    (ERROR, 2, "mdakit: error: bad\n", False, [], [".out.123-x.tmp"], "partial output"),
    (ERROR, 2, "mdakit: error: bad\n", False, ["m/card.json"], [], "input changed"),
    (ERROR, None, "Traceback (most recent call last):\nValueError: x\n", True, [], [], "traceback"),
    (OK, 0, "", False, [], [], "ok"),
    (OK, 2, "mdakit: error: bad\n", False, [], [], "unexpected failure"),
])
def test_a_run_is_classified_by_its_worst_problem(case, code, stderr, traceback, changed, created, outcome):
    assert classify(case, code, stderr, traceback, False, changed, created)[0] == outcome


def test_changes_outside_the_outputs_are_inputs_changed_or_created():
    before = {"m": "dir", "m/card.json": "aa", "out": "dir"}
    after = {"m": "dir", "m/card.json": "bb", "out": "dir", "out/x": "cc", ".out.1-x.tmp": "dir", "new": "dd"}
    assert changes(before, after, ["out"]) == (["m/card.json"], ["new"])
    assert changes(before, after, []) == (["m/card.json"], ["out/x", ".out.1-x.tmp", "new"])


@pytest.mark.slow
def test_the_whole_sweep_has_no_traceback_wrong_success_partial_output_or_changed_input(tmp_path: Path):
    results, _ = run_sweep(tmp_path)
    tally = counts(results)
    bad = [f"{r.outcome}: {' '.join(r.argv)} -> {r.stderr_line}" for r in results if r.outcome in FAILURES]
    assert not bad, "\n".join(bad)
    assert all(tally[o] == 0 for o in FAILURES), tally


# What the sweep found, each pinned by a fast test (the slow sweep runs them all again through the CLI).

def test_an_integer_option_beyond_64_bits_is_refused_in_one_line(tmp_path, capsys):
    assert run(["disassemble", "/nonexistent", "--classes", "0", "--seed", str(2 ** 70),
                "--out", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err.strip() == f"mdakit: error: --seed must fit in 64 bits, got {2 ** 70}"


def test_a_timeout_that_is_not_positive_is_refused_even_without_torchrun():
    with pytest.raises(OptionError, match="timeout must be a positive number of seconds"), joined(timeout=0):
        pass


def test_analyze_refuses_zero_mosaics_before_any_work(tmp_path):
    with pytest.raises(OptionError, match="mosaics must be at least 1"):
        analyze(tmp_path / "nowhere", tmp_path / "out", mosaics=0)


@pytest.mark.parametrize("name", ["patch", "stride"])
def test_paths_refuses_a_zero_occlusion_patch_or_stride(name):
    with pytest.raises(OptionError, match=f"{name} must be at least 1 pixel"):
        PathsSettings(**{name: 0}).validate()


def test_a_source_a_dataset_does_not_have_is_named_before_anything_is_made(tmp_path):
    with pytest.raises(MdakitError, match="cifar10 has no packages source; use torchvision"):
        fetch("cifar10", tmp_path / "new", source="packages")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_fetch_leaves_no_data_folder_behind(tmp_path, monkeypatch):
    def unreachable(name, root):
        raise MdakitError("no network")

    monkeypatch.setitem(DATASETS["cifar10"].sources, "torchvision", unreachable)
    with pytest.raises(MdakitError, match="could not fetch cifar10 .*: no network"):
        fetch("cifar10", tmp_path / "new" / "data", source="torchvision")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_checkpoint_is_refused(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(MdakitError, match="not a readable PyTorch checkpoint .*EOFError"):
        read_checkpoint(tmp_path / "empty.pt")


@pytest.mark.parametrize("fields, message", [
    ({"class_names": ["a", "b", "c"]}, "names class 3, but 'class_names' has classes 0-2"),
    ({"logit_classes": [0, 99]}, "names class 99"),
    ({"logit_classes": [1, 1]}, "lists a class more than once"),
])
def test_a_card_whose_logits_are_not_its_classes_is_refused(fields, message):
    raw = {"format": "mdakit-model", "arch": "lenet5", "input_shape": [1, 28, 28], "num_classes": 10, **fields}
    with pytest.raises(MdakitError, match=message):
        ModelCard.from_dict(raw)


def test_a_padded_assemblys_card_with_fewer_logits_than_arch_outputs_still_reads():
    raw = {"format": "mdakit-model", "arch": "lenet5", "input_shape": [1, 28, 28], "num_classes": 10,
           "class_names": ["mnist:0", "fashion-mnist:Trouser"], "logit_classes": [0, 1]}
    assert ModelCard.from_dict(raw).logit_classes == [0, 1]


def test_a_card_without_a_required_field_names_the_field():
    with pytest.raises(MdakitError, match="model card is incomplete: it has no 'arch' field"):
        ModelCard.from_dict({"format": "mdakit-model", "input_shape": [1, 28, 28], "num_classes": 10})


def test_a_validation_fraction_of_zero_is_refused_by_the_config():
    with pytest.raises(OptionError, match=r"val_fraction must be in \(0, 1\)"):
        TrainConfig(val_fraction=0.0).validate()
