"""Detectors: the canvas datasets, box decoding and targets, mAP, and a detector's part equal to its masked
original (boxes and scores before NMS)."""

from __future__ import annotations

import pytest
import torch

from mdakit import data as mdata
from mdakit.attribution.contribution import ContributionMethod, ContributionSettings
from mdakit.cli import run
from mdakit.data.canvas import CanvasDetection
from mdakit.detection.attribution import detector_sums, focus_masks
from mdakit.detection.boxes import BOX_CHANNELS, PostProcess, assign, decode_boxes, detect, detection_loss
from mdakit.detection.disassembly import detector_rows, finds_all, part_rows
from mdakit.detection.evaluate import mean_average_precision, only_classes
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.surgery import MaskedModel, keep_sets, rebuild
from mdakit.workspace import Workspace
from mdakit.zoo import build_model

SHAPE = (1, 64, 64)


@pytest.fixture(scope="module")
def det_train(data_dir) -> CanvasDetection:
    return mdata.load_dataset("det-mnist-fashion", "train", data_dir)[0]


def test_canvases_are_a_function_of_their_index(det_train):
    image, target = det_train[17]
    again_image, again_target = det_train[17]
    assert torch.equal(image, again_image) and torch.equal(target["boxes"], again_target["boxes"])
    assert image.shape == SHAPE and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    boxes = torch.cat([det_train[i][1]["boxes"] for i in range(200)])
    labels = torch.cat([det_train[i][1]["labels"] for i in range(200)])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    assert set(labels.tolist()) == set(range(20))  # digits 0-9 and garments 10-19 all appear


def test_each_box_holds_its_objects_ink(det_train):
    image, target = det_train[3]
    for x1, y1, x2, y2 in target["boxes"].long().tolist():
        assert float(image[0, y1:y2, x1:x2].max()) > 0.2


def test_training_canvases_never_draw_held_out_objects(det_train):
    fit, held = det_train.pool.indices, det_train.holdout_pool.indices
    assert not torch.isin(fit, held).any() and len(held) == pytest.approx(0.1 * (len(fit) + len(held)), abs=1)


def test_one_class_canvases_hold_only_that_class(det_train):
    view = det_train.of_classes([13], length=20, seed=5)
    assert {int(v) for i in range(20) for v in view[i][1]["labels"]} == {13}


@pytest.mark.parametrize("name", ["det-mnist", "det-fashion-mnist", "det-mnist-fashion"])
def test_normalisation_constants_are_the_canvases_own(name, data_dir):
    dataset, info = mdata.load_dataset(name, "train", data_dir)
    pixels = torch.stack([dataset[i][0] for i in range(1000)])
    assert float(pixels.mean()) == pytest.approx(info.mean[0], abs=2e-3)
    assert float(pixels.std()) == pytest.approx(info.std[0], abs=2e-3)
    assert info.extra["task"] == "detection" and info.input_shape == SHAPE


def _encode(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A map that says exactly ``boxes`` at their assigned locations (the inverse of decoding)."""
    cls, box, positive = assign([{"boxes": boxes, "labels": labels}], 16, 16, 4.0, list(range(num_classes)))
    out = torch.full((1, BOX_CHANNELS + num_classes, 256), -20.0)
    xy = torch.stack(torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")[::-1], -1).reshape(-1, 2)
    xy = (xy.float() + 0.5) * 4
    distances = torch.cat([xy - box[0, :, :2], box[0, :, 2:] - xy], 1).clamp_min(1e-3)
    out[0, :BOX_CHANNELS] = (distances / 4).log().T
    out[0, BOX_CHANNELS:] = torch.where(cls[0] > 0, 20.0, -20.0)
    out[0, :, ~positive[0]] = torch.where(torch.arange(BOX_CHANNELS + num_classes) < BOX_CHANNELS, 0.0, -20.0)[:, None]
    return out.view(1, -1, 16, 16)


def test_decoding_the_assigned_targets_gives_the_boxes_back(det_train):
    _, target = det_train[11]
    found = detect(_encode(target["boxes"], target["labels"], 20), 64, list(range(20)))[0]
    assert sorted(found["labels"].tolist()) == sorted(target["labels"].tolist())
    for box, label in zip(target["boxes"], target["labels"]):
        match = found["boxes"][found["labels"] == label]
        assert (match - box).abs().amax(1).min() < 1e-3


def test_restricted_detection_reads_only_the_chosen_rows(det_train):
    _, target = det_train[11]
    out = _encode(target["boxes"], target["labels"], 20)
    chosen = [int(target["labels"][0])]
    found = detect(out, 64, list(range(20)), rows=chosen)[0]
    assert set(found["labels"].tolist()) == set(chosen)


def test_map_of_the_ground_truth_is_one_and_of_nothing_is_zero(det_train):
    truths = [only_classes(det_train[i][1], range(10)) for i in range(30)]
    perfect = [{**t, "scores": torch.ones(len(t["labels"]))} for t in truths]
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
             for _ in truths]
    assert mean_average_precision(perfect, truths)["map_50"] == pytest.approx(1.0)
    assert mean_average_precision(empty, truths)["map_50"] <= 0.0


def test_the_loss_falls_when_a_detector_fits_a_batch(det_train):
    torch.manual_seed(0)
    model = build_model("fcos-lite", SHAPE, 20, width=16)
    images = torch.stack([det_train[i][0] for i in range(8)])
    targets = [det_train[i][1] for i in range(8)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = detection_loss(model(images), targets, 64, list(range(20)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm statistics and affine weights, so a wrong channel shows in the output."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.normal_(1, 0.3, generator=generator)
            module.bias.data.normal_(0, 0.3, generator=generator)
    return model.eval()


@pytest.mark.parametrize("classes", [[3], [12, 0, 7]])
@pytest.mark.parametrize("width", [16, 32])
def test_a_detectors_part_equals_its_masked_original(classes, width, det_train):
    torch.manual_seed(width)
    model = _randomised(build_model("fcos-lite", SHAPE, 20, [0.08], [0.22], width=width))
    source = Workspace.open(model, det_train)
    graph = trace(model, SHAPE)
    canvases = {c: (det_train.of_classes([c], 6, seed=c), torch.arange(6)) for c in classes}
    method = ContributionMethod()
    sums = detector_sums(graph, canvases, ContributionSettings())
    rows = detector_rows(source, classes)
    masks = method.masks_from_sums(graph, sums, rows, ContributionSettings())
    keep = keep_sets(graph, masks.union(classes), part_rows(rows, classes))
    part = rebuild(model, keep).eval()
    masked = MaskedModel(graph, keep).eval()
    images = torch.stack([det_train[i][0] for i in range(6)])
    with torch.no_grad():
        got, want = part(images), masked(images)
    assert got.shape[1] == BOX_CHANNELS + len(classes)
    assert (got - want).abs().max() <= 1e-4
    assert (decode_boxes(got, 4.0) - decode_boxes(want, 4.0)).abs().max() <= 1e-3
    assert (got[:, BOX_CHANNELS:].sigmoid() - want[:, BOX_CHANNELS:].sigmoid()).abs().max() <= 1e-4
    full, kept = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in part.parameters())
    assert kept < full


def test_post_processing_bounds_the_detections(det_train):
    out = torch.zeros(1, BOX_CHANNELS + 20, 16, 16)
    found = detect(out, 64, list(range(20)), PostProcess(score_threshold=0.4, max_detections=7))[0]
    assert len(found["boxes"]) == 7  # sigmoid(0) = 0.5 everywhere: NMS and the cap decide


@pytest.mark.parametrize("argv, message", [
    (["train", "--arch", "lenet5", "--dataset", "det-mnist"], "det-mnist is a detection dataset: it needs a detector"),
    (["train", "--arch", "fcos-lite", "--dataset", "mnist"], "mnist is a classification dataset"),
])
def test_training_refuses_a_model_of_the_other_task(argv, message, tmp_path, capsys, data_dir):
    assert run([*argv, "--out", str(tmp_path / "m")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_attribution_sees_only_the_objects(det_train):
    canvas, target = det_train[5]
    mask = focus_masks([target], 64, margin=0)[0, 0]
    assert float((canvas[0] * (1 - mask)).max()) < 0.3  # every pixel of ink (above a quarter of its peak) is in a box
    assert 0 < float(mask.mean()) < 0.6


def test_box_rows_count_contributions_of_both_signs(det_train):
    model = _randomised(build_model("fcos-lite", SHAPE, 20, width=16))
    with torch.no_grad():
        model.net.predict.weight[:2].abs_()
        model.net.predict.weight[2:4] = -model.net.predict.weight[:2]
        model.net.predict.weight[4:6] = model.net.predict.weight[:2]
        model.net.predict.weight[6:8] = -model.net.predict.weight[:2]
    graph = trace(model, SHAPE)
    sums = detector_sums(graph, {3: (det_train.of_classes([3], 4, seed=0), torch.arange(4))})[3]["net.predict"]
    assert torch.allclose(sums[2:4], sums[:2]) and (sums[:2] > 0).any()  # a box row: |h|
    assert (sums[6:8] == 0).all() and torch.allclose(sums[4:6], sums[:2])  # a class row: the positive part


def test_an_object_counts_as_found_only_by_its_own_class():
    box = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    target = {"boxes": box, "labels": torch.tensor([2])}
    assert not finds_all({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([3])}, target)
    assert not finds_all({"boxes": box, "scores": torch.tensor([0.1]), "labels": torch.tensor([2])}, target)
    assert not finds_all({"boxes": box + 3, "scores": torch.tensor([0.9]), "labels": torch.tensor([2])}, target)


def test_a_detector_builds_for_canvases_only():
    model = build_model("fcos-lite", SHAPE, 10)
    assert model(torch.zeros(2, *SHAPE)).shape == (2, BOX_CHANNELS + 10, 16, 16)
    with pytest.raises(MdakitError, match="not a multiple of 8 pixels"):
        build_model("fcos-lite", (1, 28, 28), 10)


def test_a_detector_exports_to_onnx_equal_to_pytorch(tmp_path):
    from mdakit.artifacts import ModelCard
    from mdakit.exporting import as_exportable, check_export, export_model

    model = _randomised(build_model("fcos-lite", SHAPE, 3, width=16))
    card = ModelCard(arch="fcos-lite", input_shape=list(SHAPE), num_classes=3, arch_kwargs={"width": 16})
    export_model(as_exportable((model, card)), tmp_path / "det.onnx")
    assert check_export(tmp_path / "det.onnx", model, torch.rand(3, *SHAPE)) <= 1e-4


def test_fetching_a_canvas_dataset_fetches_its_sources(tmp_path, data_dir):
    import shutil

    for folder in ("MNIST", "FashionMNIST"):
        shutil.copytree(data_dir / folder, tmp_path / folder)
    assert mdata.fetch("det-mnist-fashion", tmp_path) == tmp_path
    assert len(mdata.load_dataset("det-mnist-fashion", "test", tmp_path)[0]) == 2000


@pytest.fixture(scope="module")
def tiny_detector_dir(tmp_path_factory, data_dir):
    """A width-16 fcos-lite trained for three epochs on 4,000 det-mnist canvases, saved as a model file."""
    from mdakit.artifacts import ModelCard, save
    from mdakit.detection.train import train_detector
    from mdakit.train import TrainConfig

    train_data, info = mdata.load_dataset("det-mnist", "train", data_dir)
    torch.manual_seed(0)
    model = build_model("fcos-lite", info.input_shape, info.num_classes, info.mean, info.std, width=16)
    train_detector(model, train_data, TrainConfig(epochs=3, lr=3e-3, optimizer="adamw", weight_decay=1e-4,
                                                  batch_size=32, train_subset=4000), show_progress=False)
    return save(model, tmp_path_factory.mktemp("det") / "tiny-det",
                ModelCard.for_dataset("fcos-lite", info, arch_kwargs={"width": 16}))


def test_disassembling_a_trained_detector_through_the_api(tiny_detector_dir, tmp_path, data_dir):
    import mdakit

    part = mdakit.disassemble(tiny_detector_dir, "det-mnist", "0,1", samples=20)
    report = part.report
    assert report["task"] == "detection" and report["classes"] == [0, 1]
    assert report["part_size"]["macs"] < report["original_size"]["macs"]
    calibration = report["calibration"]
    assert calibration["tolerance_points"] == 1.0 and calibration["holdout_images"] == 500
    if calibration["met"]:
        assert calibration["holdout_accuracy"] >= calibration["reference_accuracy"] - 0.01
    assert 0.0 < report["part_map_50"] <= 1.0 and report["test_objects"] > 0
    saved = part.save(tmp_path / "part")
    loaded = mdakit.load(saved)
    images = torch.stack([mdata.load_dataset("det-mnist", "test", data_dir)[0][i][0] for i in range(4)])
    with torch.no_grad():
        assert torch.allclose(loaded(images), part.model(images), atol=1e-6)
    masked = MaskedModel(trace(mdakit.load(tiny_detector_dir).eval(), SHAPE), part.keep).eval()
    with torch.no_grad():
        assert (part.model(images) - masked(images)).abs().max() <= 1e-4


def test_detector_commands_disassemble_and_evaluate(tiny_detector_dir, tmp_path, capsys, data_dir):
    import json

    out = tmp_path / "part"
    assert run(["disassemble", str(tiny_detector_dir), "--classes", "1", "--samples", "10", "--no-latency",
                "--thresholds", "paper", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["thresholds"] == "the paper's thresholds" and report["calibration"] is None
    assert run(["eval", str(out), "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["classes"] == [1] and evaluation["map_50"] == pytest.approx(report["part_map_50"])
    assert run(["disassemble", str(tiny_detector_dir), "--classes", "1", "--method", "gradient",
                "--out", str(tmp_path / "g")]) == 2
    assert "contribution attribution only" in capsys.readouterr().err


@pytest.fixture(scope="module")
def garment_detector_dir(tmp_path_factory, data_dir):
    """An untrained width-8 fcos-lite for det-fashion-mnist (its scores are noise: enough to join)."""
    from mdakit.artifacts import ModelCard, save

    info = mdata.dataset_info("det-fashion-mnist")
    torch.manual_seed(3)
    model = _randomised(build_model("fcos-lite", info.input_shape, info.num_classes, info.mean, info.std, width=8))
    return save(model, tmp_path_factory.mktemp("det") / "garments",
                ModelCard.for_dataset("fcos-lite", info, arch_kwargs={"width": 8}))


@pytest.fixture(scope="module")
def digit_part(tiny_detector_dir):
    import mdakit

    return mdakit.disassemble(tiny_detector_dir, "det-mnist", "0,1", samples=10, thresholds="paper")


def test_an_assembly_of_detectors_stacks_their_maps(digit_part, garment_detector_dir, det_train):
    from mdakit.artifacts import load
    from mdakit.detection.assembly import assemble_detectors

    joined = assemble_detectors([digit_part, garment_detector_dir], rescale="none")
    garments = load(garment_detector_dir)
    images = torch.stack([det_train[i][0] for i in range(4)])
    with torch.no_grad():
        want = torch.cat([digit_part.model(images), garments(images)], 1)
        assert torch.equal(joined.model(images), want)
    assert [c["name"] for c in joined.classes][:3] == ["det-mnist:0", "det-mnist:1", "det-fashion-mnist:T-shirt/top"]
    found = joined.detections(images)[0]
    own = detect(digit_part.model(images), 64, [0, 1])[0]
    digits = found["labels"] < 2
    assert torch.equal(found["boxes"][digits][:len(own["boxes"])], own["boxes"][:int(digits.sum())])


def test_a_calibrated_detector_assembly_saves_loads_and_evaluates(digit_part, garment_detector_dir, tmp_path,
                                                                  det_train):
    from mdakit.detection.assembly import assemble_detectors, evaluate_detector_assembly, load_detector_assembly

    joined = assemble_detectors([digit_part, garment_detector_dir], fit_canvases=60)
    assert (joined.model.scale > 0).all() and joined.fit["canvases"] == 120
    loaded = load_detector_assembly(joined.save(tmp_path / "joined"))
    images = torch.stack([det_train[i][0] for i in range(4)])
    with torch.no_grad():
        assert torch.allclose(loaded.model(images), joined.model(images), atol=1e-6)
    report = evaluate_detector_assembly(loaded)
    assert report["assembled"]["images"] == 4000 and report["mixed"]["dataset"] == "det-mnist-fashion"
    assert report["originals"][0]["map_50"] > 0 and "originals_mean_map_50" in report


def test_detector_parts_assemble_on_the_command_line(digit_part, garment_detector_dir, tmp_path, capsys):
    part = digit_part.save(tmp_path / "digits")
    assert run(["assemble", str(part), str(garment_detector_dir), "--layout", "padded", "--out",
                str(tmp_path / "p")]) == 2
    assert "parallel layout only" in capsys.readouterr().err and not (tmp_path / "p").exists()
    assert run(["assemble", str(part), str(garment_detector_dir), "--rescale", "paper", "--out",
                str(tmp_path / "q")]) == 2
    assert "rescale must be one of calibrated, none" in capsys.readouterr().err


def test_an_assembled_detector_is_evaluated_by_the_eval_command(digit_part, garment_detector_dir, tmp_path, capsys):
    import json

    from mdakit.detection.assembly import assemble_detectors

    saved = assemble_detectors([digit_part, garment_detector_dir], rescale="none").save(tmp_path / "joined")
    assert run(["eval", str(saved), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["assembled"]["objects"] > 0 and report["mixed"]["images"] == 2000
