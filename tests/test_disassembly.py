import json

import pytest
import torch

from mdakit.artifacts import load_with_card
from mdakit.attribution.contribution import ContributionSettings
from mdakit.cli import run
from mdakit.component_masks import ComponentMasks
from mdakit.data import ClassSubset
from mdakit.disassembly import disassemble
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.surgery import MaskedModel


@pytest.fixture(scope="module")
def part(tiny_lenet_dir, data_dir):
    return disassemble(tiny_lenet_dir, "mnist", "2,0", samples=20, data_dir=data_dir)


def test_part_is_smaller_and_equals_masked_original(part, tiny_lenet_dir, mnist_test):
    model, _ = load_with_card(tiny_lenet_dir)
    test, _ = mnist_test
    sub = ClassSubset(test, [2, 0], remap=False)
    images = torch.stack([sub[i][0] for i in range(64)])
    reference = MaskedModel(trace(model, (1, 28, 28)), part.keep).eval()
    with torch.no_grad():
        assert (part.model(images) - reference(images)).abs().max() <= 1e-4
    report = part.report
    assert report["classes"] == [2, 0]
    assert report["part_size"]["params"] < report["original_size"]["params"]
    assert report["part_size"]["macs"] <= report["original_size"]["macs"]
    for key in ("part_accuracy", "original_accuracy", "original_restricted_accuracy"):
        assert 0.0 <= report[key] <= 1.0
    assert report["original_restricted_accuracy"] >= report["original_accuracy"]
    # given no thresholds, contribution attribution is calibrated on held-out training images
    assert set(report["steps"]) == {"trace", "sample_selection", "attribution", "calibration", "extraction"}
    assert report["thresholds"] == "calibrated by default" and report["calibration"]["tolerance_points"] == 0.5
    assert part.card.logit_classes == [2, 0]


def test_part_file_round_trip(part, tmp_path, capsys):
    part.save(tmp_path / "p")
    loaded, card = load_with_card(tmp_path / "p")
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), part.model(x))
    assert card.edits[-1]["kind"] == "keep_sets" and card.provenance["method"] == "contribution"
    assert run(["eval", str(tmp_path / "p"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classes"] == [2, 0] and result["accuracy"] == pytest.approx(part.report["part_accuracy"])


def test_api_accepts_modules_and_datasets(tiny_lenet_dir, mnist_train, mnist_test):
    model, _ = load_with_card(tiny_lenet_dir)
    train, _ = mnist_train
    test, _ = mnist_test
    result = disassemble(model, train, [1], samples=10, test_data=test,
                         settings=ContributionSettings(layers=2))
    assert result.card.arch is None and result.report["part_size"]["params"] < result.report["original_size"]["params"]
    # only the last two layers are attributed: the first conv layers keep every kernel of needed filters
    first = result.masks.per_class[1]["net.features.0"]
    assert bool(first.kernels[first.outputs].all())


def test_masks_command_and_round_trip(tiny_lenet_dir, tmp_path, capsys, data_dir):
    code = run(["masks", str(tiny_lenet_dir), "--classes", "0-1", "--samples", "10", "--out", str(tmp_path / "m"),
                "--json", "--data-dir", str(data_dir)])
    assert code == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    masks = ComponentMasks.load(tmp_path / "m")
    assert masks.classes == [0, 1] and masks.method == "contribution"
    assert out["kept_filters"]["0"]["net.classifier.5"] == 1
    sim = masks.jaccard(0, 1)
    assert set(sim) == set(masks.layer_names) and all(0.0 <= v <= 1.0 for v in sim.values())
    union, inter = masks.union(), masks.intersection()
    for name in masks.layer_names:
        assert bool((inter[name].outputs <= union[name].outputs).all())
    (tmp_path / "m" / "masks.json").write_text("{")
    with pytest.raises(MdakitError, match="not valid JSON"):
        ComponentMasks.load(tmp_path / "m")


def test_disassemble_command(tiny_lenet_dir, tmp_path, capsys, data_dir):
    code = run(["disassemble", str(tiny_lenet_dir), "--classes", "3", "--samples", "10", "--kernel-masks",
                "--out", str(tmp_path / "p"), "--json", "--data-dir", str(data_dir)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classes"] == [3]
    assert result["part_size"]["nonzero_params"] < result["part_size"]["params"]
    assert result["kernels_zeroed"] > 0


@pytest.mark.parametrize("args, message", [
    (["--classes", "10"], "out of range"), (["--classes", "1,1"], "more than once"), (["--classes", ","], "empty"),
    (["--classes", "1", "--alpha-conv", "0"], "alpha-conv must be in (0, 1]"),
    (["--classes", "1", "--beta-linear", "1.5"], "beta-linear must be in (0, 1]"),
    (["--classes", "1", "--method", "magic"], "unknown method"),
    (["--classes", "1", "--method", "gradient", "--calibrate", "0.5"], "only available for contribution"),
    (["--classes", "1", "--dataset", "cifar10"], "cifar10"),
    (["--classes", "1", "--samples", "0"], "must be positive"),
])
def test_disassemble_bad_input(args, message, tiny_lenet_dir, tmp_path, capsys, data_dir):
    argv = ["disassemble", str(tiny_lenet_dir), "--out", str(tmp_path / "p"), "--data-dir", str(data_dir), *args]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "p").exists()


def test_dataset_that_does_not_fit_the_model(tiny_lenet_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        d = tmp_path / "imgs" / split / "a"
        d.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(d / "0.png")
    argv = ["disassemble", str(tiny_lenet_dir), "--classes", "0", "--out", str(tmp_path / "p"),
            "--dataset", f"imagefolder:{tmp_path / 'imgs'}"]
    assert run(argv) == 2
    assert "images are [3, 8, 8] but the model takes [1, 28, 28]" in capsys.readouterr().err
