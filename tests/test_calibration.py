"""Threshold calibration: held-out images, the relaxation search, and which runs may calibrate."""

import pytest
import torch

from mdakit.attribution.base import available_methods, get_method
from mdakit.attribution.contribution import ContributionSettings
from mdakit.calibration import check_calibration, holdout_images
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
