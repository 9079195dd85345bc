import json
import math

import pytest
import torch

from mdakit.analysis.accuracy import accuracy_bin, histogram, sub_architecture_accuracy
from mdakit.analysis.hit_rate import activation_maps, hit_rates, make_mosaics, mosaic_hit_rate, tile
from mdakit.analysis.misclassification import misclassification_analysis, misclassification_stats, most_similar
from mdakit.analysis.similarity import jaccard_matrices, layer_similarity, similarity_layers, similarity_matrix
from mdakit.analysis.subarch import check_masks, class_keep, sub_architecture, whole_network_masks
from mdakit.cli import run
from mdakit.component_masks import ComponentMasks, LayerMask
from mdakit.data import ImageTensorDataset, per_class_subset
from mdakit.disassembly import compute_masks, extract
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.surgery import MaskedModel
from mdakit.workspace import Workspace
from mdakit.zoo import build_model

ANALYSES = ("accuracy", "similarity", "hit_rate", "misclassification")


def _mask(outputs):
    out = torch.tensor(outputs)
    return LayerMask(out[:, None] & torch.ones(1, 2, dtype=torch.bool), torch.ones(2, dtype=torch.bool), out)


def _random_masks(classes=4, layers=("a", "b", "logits"), width=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ComponentMasks({c: {name: _mask((torch.rand(width, generator=g) > 0.5).tolist()) for name in layers}
                           for c in range(classes)}, method="random")


@pytest.fixture(scope="module")
def lenet_source(tiny_lenet_dir, data_dir):
    return Workspace.open(tiny_lenet_dir, "mnist", data_dir=data_dir)


@pytest.fixture(scope="module")
def lenet_masks(lenet_source):
    masks, graph, _ = compute_masks(lenet_source, [0, 1, 2, 3, 4], "contribution", samples=20)
    return masks, graph


# ------------------------------------------------------------------ similarity

def test_jaccard_of_identical_masks_is_one_and_disjoint_zero():
    same = ComponentMasks({0: {"a": _mask([True, False, True]), "z": _mask([True])},
                           1: {"a": _mask([True, False, True]), "z": _mask([False])},
                           2: {"a": _mask([False, True, False]), "z": _mask([False])}}, method="hand")
    assert layer_similarity(same, [0, 1]) == {"a": 1.0}
    assert layer_similarity(same, [0, 2]) == {"a": 0.0}
    assert layer_similarity(same)["a"] == pytest.approx(1 / 3)  # pairs: (0,1)=1, (0,2)=0, (1,2)=0
    assert similarity_matrix(same).diagonal().tolist() == [1.0, 1.0, 1.0]


def test_jaccard_matrices_match_pairwise_jaccard():
    masks = _random_masks()
    matrices = jaccard_matrices(masks)
    assert list(matrices) == ["a", "b"]  # the logit layer is left out
    for a in range(4):
        for b in range(4):
            pair = masks.jaccard(a, b)
            for name in ("a", "b"):
                assert matrices[name][a, b].item() == pytest.approx(pair[name])
    expected = torch.stack([matrices["a"], matrices["b"]]).mean(0)
    assert torch.allclose(similarity_matrix(masks), expected)


def test_similarity_refuses_unknown_layers_and_classes():
    masks = _random_masks()
    with pytest.raises(MdakitError, match="no layer"):
        similarity_layers(masks, ["nope"])
    with pytest.raises(MdakitError, match="class 9"):
        layer_similarity(masks, [0, 9])
    with pytest.raises(MdakitError, match="at least two"):
        layer_similarity(masks, [0])


# ------------------------------------------------------------------ hit rate

def test_hit_rate_of_maps_in_one_quadrant():
    maps = torch.zeros(4, 6, 6)
    for q, (r, c) in enumerate([(0, 0), (0, 3), (3, 0), (3, 3)]):
        maps[q, r:r + 3, c:c + 3] = torch.rand(3, 3) + 0.5
    assert hit_rates(maps, torch.arange(4), (12, 12)).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert hit_rates(maps, torch.tensor([1, 0, 3, 2]), (12, 12)).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_hit_rate_of_flat_and_empty_maps():
    rates = hit_rates(torch.stack([torch.ones(4, 4), torch.zeros(4, 4)]), torch.tensor([2, 2]), (8, 8))
    assert rates[0].item() == 0.25  # a constant map: every pixel ties at the threshold
    assert math.isnan(rates[1].item())


def test_hit_rate_takes_the_top_share():
    maps = torch.zeros(1, 10, 10)
    maps[0, 0, 0] = 5.0  # the single strongest pixel, top-left
    maps[0, 5:, 5:] = 1.0  # a broad weaker bottom-right area
    assert hit_rates(maps, torch.tensor([0]), (10, 10), top=0.01).item() == 1.0
    assert hit_rates(maps, torch.tensor([3]), (10, 10), top=0.3).item() > 0.9


def test_mosaics_put_each_class_in_its_quadrant():
    labels = torch.arange(40) % 5
    images = (labels * 50).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 3, 3).contiguous()
    mosaics, layout = make_mosaics(ImageTensorDataset(images, labels), [0, 1, 2, 3, 4], 30, seed=1)
    assert mosaics.shape == (30, 1, 6, 6)
    for mosaic, classes in zip(mosaics, layout):
        assert len(set(classes.tolist())) == 4
        quads = [mosaic[0, :3, :3], mosaic[0, :3, 3:], mosaic[0, 3:, :3], mosaic[0, 3:, 3:]]
        for quad, c in zip(quads, classes.tolist()):
            assert torch.allclose(quad, torch.full((3, 3), c * 50 / 255))
    again, layout_again = make_mosaics(ImageTensorDataset(images, labels), [0, 1, 2, 3, 4], 30, seed=1)
    assert torch.equal(again, mosaics) and torch.equal(layout, layout_again)
    with pytest.raises(MdakitError, match="four classes"):
        make_mosaics(ImageTensorDataset(images, labels), [0, 1, 2], 3)
    assert tile(torch.stack(quads[:4]).unsqueeze(1)).shape == (1, 6, 6)


def test_activation_maps_stop_before_a_fixed_size_classifier():
    model = build_model("lenet5", (1, 28, 28), 10).eval()  # its Linear needs 28×28 inputs
    graph = trace(model, (1, 28, 28))
    masks = whole_network_masks(graph, [0])
    keep = class_keep(graph, masks, 0)
    kept = {name: keep.layers[name]["out"][:3] for name in ("net.features.0", "net.features.3")}
    maps = activation_maps(MaskedModel(graph, keep), graph, kept, torch.rand(2, 1, 56, 56))
    assert maps["net.features.0"].shape == (2, 56, 56) and maps["net.features.3"].shape == (2, 24, 24)
    with torch.no_grad():
        direct = model.net.features[0](model.normalize(torch.ones(1, 1, 56, 56)))
    got = activation_maps(MaskedModel(graph, keep), graph, {"net.features.0": [0, 2]}, torch.ones(1, 1, 56, 56))
    assert torch.allclose(got["net.features.0"], direct[:, [0, 2]].clamp(min=0).sum(1), atol=1e-6)


def test_mosaic_hit_rate_on_real_masks(lenet_source, lenet_masks):
    masks, graph = lenet_masks
    result = mosaic_hit_rate(graph, masks, lenet_source.test, mosaics=12, seed=3)
    assert result.layers == ["net.features.0", "net.features.3"]
    for name in result.layers:
        assert result.counted[name] + result.left_out[name] == 12 * 4
        assert 0.0 <= result.overall[name] <= 1.0
    again = mosaic_hit_rate(graph, masks, lenet_source.test, mosaics=12, seed=3)
    assert again.overall == result.overall


# ------------------------------------------------------------------ accuracy

def test_accuracy_bins():
    assert [accuracy_bin(a) for a in (0.0, 0.1, 0.11, 0.5, 0.9, 0.905, 1.0)] == [0, 0, 1, 4, 8, 9, 9]
    assert histogram([1.0] * 3 + [0.0]) == [1] + [0] * 8 + [3]
    with pytest.raises(MdakitError):
        accuracy_bin(1.5)


def test_sub_architecture_keeps_all_logits_and_matches_the_extracted_part(lenet_source, lenet_masks):
    masks, graph = lenet_masks
    images = torch.stack([lenet_source.test[i][0] for i in range(16)])
    for cls in (0, 3):
        part, _, _ = extract(lenet_source, graph, masks, [cls])
        with torch.no_grad():
            logits = sub_architecture(graph, masks, cls)(images)
            assert logits.shape == (16, 10)
            assert torch.allclose(logits[:, cls], part(images)[:, 0], atol=1e-5)


def test_sub_architecture_accuracy_on_real_data(lenet_source, lenet_masks):
    masks, graph = lenet_masks
    result = sub_architecture_accuracy(graph, masks, lenet_source.test, lenet_source.card.logit_classes,
                                       per_class=40)
    assert result.classes == [0, 1, 2, 3, 4] and set(result.images.values()) == {40}
    report = result.to_dict()
    assert sum(report["original_histogram"]) == sum(report["sub_architecture_histogram"]) == 5
    whole = sub_architecture_accuracy(graph, whole_network_masks(graph, [0, 1, 2, 3, 4]), lenet_source.test,
                                      lenet_source.card.logit_classes, per_class=40)
    assert whole.sub_architecture == whole.original == result.original


def test_masks_of_another_model_are_refused(lenet_masks):
    masks, _ = lenet_masks
    graph = trace(build_model("vgg16", (1, 28, 28), 10, width=0.125), (1, 28, 28))
    with pytest.raises(MdakitError, match="another model"):
        check_masks(graph, masks)


# ------------------------------------------------------------------ misclassification

def test_misclassification_stats_on_a_hand_made_confusion():
    s = torch.tensor([[1.0, 0.8, 0.2, 0.5], [0.8, 1.0, 0.4, 0.1], [0.2, 0.4, 1.0, 0.3], [0.5, 0.1, 0.3, 1.0]])
    confusion = torch.tensor([[9, 2, 0, 0], [0, 9, 0, 1], [0, 0, 9, 0], [0, 0, 0, 9]])
    stats = misclassification_stats(s, confusion)
    # 0→1 twice: mistaken 0.8, other mean(0.2, 0.5) = 0.35; 1→3 once: mistaken 0.1, other mean(0.8, 0.4) = 0.6
    assert stats.mistakes == 3
    assert stats.mistaken == pytest.approx((2 * 0.8 + 0.1) / 3)
    assert stats.other == pytest.approx((2 * 0.35 + 0.6) / 3)
    assert stats.difference == pytest.approx(stats.mistaken - stats.other)
    assert misclassification_stats(s, torch.eye(4, dtype=torch.long)).to_dict() == {
        "mistaken": None, "other": None, "difference": None, "mistakes": 0}
    two = misclassification_stats(s[:2, :2], torch.tensor([[1, 1], [0, 1]]))
    assert two.mistaken == pytest.approx(0.8) and two.other is None


def test_most_similar_names_the_top_three():
    s = torch.tensor([[1.0, 0.8, 0.2, 0.5], [0.8, 1.0, 0.4, 0.1], [0.2, 0.4, 1.0, 0.3], [0.5, 0.1, 0.3, 1.0]])
    top = most_similar(s, [5, 6, 7, 8], {5: "five", 6: "six", 7: "seven", 8: "eight"})
    assert [e["name"] for e in top[5]] == ["six", "eight", "seven"]
    assert [e["class"] for e in top[7]] == [6, 8, 5]


def test_misclassification_analysis_on_real_data(lenet_source, lenet_masks):
    masks, graph = lenet_masks
    matrix = similarity_matrix(masks, layers=[layer.name for layer in graph.layers][:-1])
    test = per_class_subset(lenet_source.test, 100)
    report = misclassification_analysis(graph.model, test, matrix, masks.classes, lenet_source.card.logit_classes,
                                        masks.class_names)
    confusion = torch.tensor(report["confusion"])
    assert confusion.sum() + report["mistakes_outside_classes"] == 500
    assert report["overall"]["mistakes"] == confusion.sum() - confusion.trace()
    assert set(report["most_similar"]) == {"0", "1", "2", "3", "4"}
    assert all(len(v) == 3 for v in report["most_similar"].values())


# ------------------------------------------------------------------ CLI

def _files(out):
    return {p.name for p in out.iterdir()}


def test_cli_analyze_masks_dir_end_to_end(tmp_path, capsys, lenet_source, lenet_masks, data_dir):
    masks, _ = lenet_masks
    masks.save(tmp_path / "masks")
    out = tmp_path / "analysis"
    code = run(["analyze", str(tmp_path / "masks"), "--dataset", "mnist", "--out", str(out), "--mosaics", "8",
                "--per-class", "20", "--data-dir", str(data_dir), "--json"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads(printed)
    assert summary["classes"] == [0, 1, 2, 3, 4] and summary["method"] == "contribution"
    assert _files(out) == {f"{n}.{ext}" for n in ANALYSES for ext in ("json", "png")} | {"summary.json"}
    for name in ANALYSES:
        report = json.loads((out / f"{name}.json").read_text())
        assert report["source"] == str(lenet_source.label)
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "hit_rate.json").read_text())["mosaics"] == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left
    assert run(["analyze", str(tmp_path / "masks"), "--out", str(out), "--data-dir", str(data_dir)]) == 2


@pytest.mark.slow
def test_cli_analyze_model_dir_computes_masks(tmp_path, capsys, tiny_lenet_dir, data_dir):
    out = tmp_path / "analysis"
    code = run(["analyze", str(tiny_lenet_dir), "--out", str(out), "--method", "gradient", "--classes", "2-5",
                "--samples", "10", "--mosaics", "6", "--per-class", "10", "--data-dir", str(data_dir)])
    assert code == 0, capsys.readouterr().err
    assert "masks" in _files(out) and ComponentMasks.load(out / "masks").method == "gradient"
    assert json.loads((out / "accuracy.json").read_text())["classes"] == [2, 3, 4, 5]


@pytest.mark.parametrize("args, message", [
    (["{masks}", "--classes", "0,1,2,42"], "out of range"),
    (["{masks}", "--classes", "0,1,2,7"], "no masks for class 7"),
    (["{masks}", "--classes", "0-2"], "at least four classes"),
    (["{tmp}/missing"], "does not exist"),
    (["{orphan}"], "does not exist"),
    (["{model}", "--method", "magic"], "unknown method"),
    (["{model}", "--dataset", "nope"], "unknown dataset"),
])
def test_cli_analyze_refuses_bad_input(tmp_path, capsys, tiny_lenet_dir, lenet_masks, data_dir, args, message):
    masks, _ = lenet_masks
    masks.save(tmp_path / "masks")
    orphan = ComponentMasks(masks.per_class, masks.method, info={"source": str(tmp_path / "gone")})
    orphan.save(tmp_path / "orphan")
    values = {"masks": tmp_path / "masks", "orphan": tmp_path / "orphan", "model": tiny_lenet_dir, "tmp": tmp_path}
    argv = ["analyze", *(a.format(**values) for a in args), "--out", str(tmp_path / "out"),
            "--data-dir", str(data_dir)]
    assert run(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
