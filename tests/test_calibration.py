"""Threshold calibration: held-out images, the relaxation search, and which runs may calibrate."""

import json
import re

import pytest
import torch

import mdakit.calibration
from mdakit.attribution.base import available_methods, get_method
from mdakit.attribution.contribution import ContributionSettings
from mdakit.calibration import calibration_plan, check_calibration, holdout_images
from mdakit.cli import run
from mdakit.data import labels_of
from mdakit.disassembly import disassemble
from mdakit.errors import MdakitError
from mdakit.workspace import Workspace


def test_calibration_relaxes_thresholds_on_held_out_training_images(tiny_lenet_dir, data_dir):
    strict = ContributionSettings(alpha_conv=1.0, beta_conv=1.0, alpha_linear=1.0, beta_linear=1.0)
    part = disassemble(tiny_lenet_dir, "mnist", "3-9", samples=10, settings=strict, calibrate=1.0,
                       data_dir=data_dir)
    calibration = part.masks.settings["calibration"]
    # the tiny model was trained on a subset, so its card records no reusable validation split
    assert calibration["holdout"] == "unselected training images"
    assert calibration["trials"][0]["factor"] == 1.0 and len(calibration["trials"]) > 1
    factor = calibration["chosen_factor"]
    assert part.masks.settings["alpha_conv"] == pytest.approx(factor)
    assert calibration["met"] == (calibration["trials"][-1]["holdout_accuracy"]
                                  >= calibration["reference_accuracy"] - 0.01)
    with pytest.raises(MdakitError, match="non-negative"):
        disassemble(tiny_lenet_dir, "mnist", "1", samples=5, calibrate=-1, data_dir=data_dir)
    assert set(part.report["steps"]) == {"trace", "sample_selection", "attribution", "calibration", "extraction"}


def test_holdout_images_are_unselected_images_of_each_class(tiny_lenet_dir, data_dir):
    source = Workspace.open(tiny_lenet_dir, "mnist", data_dir=data_dir)
    labels = labels_of(source.train)
    chosen = {c: torch.nonzero(labels == c).flatten()[:5] for c in (7, 2)}
    images, targets, kind = holdout_images(source, [7, 2], chosen, per_class=4, seed=0)
    assert kind == "unselected training images" and images.shape == (8, 1, 28, 28)
    assert targets.tolist() == [0] * 4 + [1] * 4  # positions in the class list, not labels
    chosen_images = torch.stack([source.train[int(i)][0] for i in chosen[7]])
    assert not any(torch.equal(image, picked) for image in images[:4] for picked in chosen_images)


@pytest.mark.parametrize("name", available_methods())
def test_only_methods_that_expose_sums_calibrate(name):
    method = get_method(name)
    if method.exposes_sums:
        check_calibration(method, 0.5, chunked=False)
        with pytest.raises(MdakitError, match="cannot be combined with class chunks"):
            check_calibration(method, 0.5, chunked=True)
    else:
        with pytest.raises(MdakitError, match="only available for contribution attribution"):
            check_calibration(method, 0.5, chunked=False)
    with pytest.raises(MdakitError, match="non-negative"):
        check_calibration(method, -1.0, chunked=False)


def test_a_part_is_calibrated_unless_thresholds_are_given(tiny_lenet_dir, data_dir):
    default = disassemble(tiny_lenet_dir, "mnist", "4,9", samples=10, data_dir=data_dir)
    calibration = default.report["calibration"]
    assert default.report["thresholds"] == "calibrated by default" and calibration["tolerance_points"] == 0.5
    assert calibration["met"] == (calibration["holdout_accuracy"] >= calibration["reference_accuracy"] - 0.005)
    paper = disassemble(tiny_lenet_dir, "mnist", "4,9", samples=10, data_dir=data_dir, thresholds="paper")
    given = disassemble(tiny_lenet_dir, "mnist", "4,9", samples=10, data_dir=data_dir,
                        settings=ContributionSettings(alpha_conv=0.3))
    for part, how in ((paper, "the paper's thresholds"), (given, "the thresholds given")):
        assert part.report["thresholds"] == how and part.report["calibration"] is None
        assert "calibration" not in part.report["steps"] and part.masks.settings["alpha_conv"] == 0.3
    # relaxing only ever keeps more: the calibrated part is at least as large as the paper's
    assert default.report["part_size"]["params"] >= paper.report["part_size"]["params"]
    with pytest.raises(MdakitError, match="thresholds must be one of calibrated, paper, got 'tuned'"):
        disassemble(tiny_lenet_dir, "mnist", "4", samples=5, data_dir=data_dir, thresholds="tuned")


@pytest.mark.parametrize("name", available_methods())
def test_the_calibration_plan_says_why(name):
    method = get_method(name)
    tolerance, why = calibration_plan(method, "calibrated", False, None, chunked=False)
    assert (tolerance, why) == ((0.5, "calibrated by default") if method.exposes_sums else
                                (None, f"not calibrated: only contribution attribution is, not {name}"))
    if method.exposes_sums:
        assert calibration_plan(method, "calibrated", False, None, chunked=True)[0] is None
        assert calibration_plan(method, "calibrated", True, 1.5, chunked=False) == (1.5, "calibrated as asked")


def test_a_tolerance_that_cannot_be_met_is_said_in_one_line_and_in_the_report(tiny_lenet_dir, data_dir, tmp_path,
                                                                               monkeypatch, capsys):
    monkeypatch.setattr(mdakit.calibration, "CALIBRATION_FACTORS", (1.0,))  # no relaxing: the strict part stays
    strict = ["--alpha-conv", "1", "--beta-conv", "1", "--alpha-linear", "1", "--beta-linear", "1"]
    with pytest.warns(UserWarning, match=re.escape("the part could not be kept within 0 points of the original")):
        code = run(["disassemble", str(tiny_lenet_dir), "--classes", "3-9", "--samples", "10", *strict,
                    "--calibrate", "0", "--data-dir", str(data_dir), "--out", str(tmp_path / "p"), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["calibration"]["met"] is False and report["thresholds"] == "calibrated as asked"
    saved = json.loads((tmp_path / "p" / "card.json").read_text())
    assert saved["metrics"]["calibration"]["met"] is False


def test_the_command_line_chooses_the_thresholds(tiny_lenet_dir, data_dir, tmp_path, capsys):
    common = [str(tiny_lenet_dir), "--classes", "1,7", "--samples", "10", "--data-dir", str(data_dir), "--json"]
    answers = {}
    for name, extra in (("default", []), ("paper", ["--thresholds", "paper"]), ("given", ["--alpha-conv", "0.3"])):
        assert run(["disassemble", *common, *extra, "--out", str(tmp_path / name)]) == 0
        answers[name] = json.loads(capsys.readouterr().out)["thresholds"]
    assert answers == {"default": "calibrated by default", "paper": "the paper's thresholds",
                       "given": "the thresholds given"}
