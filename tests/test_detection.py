import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mdakit.artifacts import load_with_card, save
from mdakit.cli import run
from mdakit.decoupling.analysis.attacks import attack, fgsm, pgd
from mdakit.decoupling.analysis.detection import ACTIVITY, PATHS, POOLED, SCORES
from mdakit.decoupling.analysis.detectors import (
    ChannelActivity,
    DetectionData,
    activity_features,
    detection_auc,
    detection_table,
    path_features,
)
from mdakit.decoupling.gates import DecoupledNet
from mdakit.errors import MdakitError
from nets import DepthwiseNet


def _batch(dataset, n=64):
    items = [dataset[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def test_fgsm_and_pgd_increase_the_loss_within_the_ball(tiny_lenet_dir, mnist_test):
    model = load_with_card(tiny_lenet_dir)[0]
    x, y = _batch(mnist_test[0])
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y)
    adv = fgsm(model, x, y, epsilon=0.1)
    strong = pgd(model, x, y, epsilon=0.1, steps=5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > clean + 0.1
        assert F.cross_entropy(model(strong), y) > F.cross_entropy(model(adv), y)
    for a in (adv, strong):
        assert float((a - x).abs().max()) <= 0.1 + 1e-6 and a.min() >= 0 and a.max() <= 1
    assert not any(p.grad is not None for p in model.parameters()), "attacks leave the weights' gradients alone"


def test_fgsm_on_a_linear_model_moves_against_the_weight_sign():
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]]))
    x = torch.full((1, 3), 0.5)
    # CE of class 0 falls as logit 0 rises, so the attack steps along -sign(w0)
    assert torch.allclose(fgsm(model, x, torch.tensor([0]), 0.1), torch.tensor([[0.4, 0.6, 0.4]]))
    with pytest.raises(MdakitError):
        attack(model, x, torch.tensor([0]), "cw")
    with pytest.raises(MdakitError):
        fgsm(model, x, torch.tensor([0]), 2.0)


def test_features_are_binary_and_shaped_per_model(tiny_lenet_dir, mnist_test):
    model, card = load_with_card(tiny_lenet_dir)
    x, _ = _batch(mnist_test[0], 8)
    paths = path_features(DecoupledNet(model, card.input_shape), x)
    activity = activity_features(ChannelActivity(model, card.input_shape), x)
    assert paths.dtype == torch.bool and paths.shape == (8, 16)
    assert activity.dtype == torch.bool and activity.shape == (8, 6 + 16)
    with torch.no_grad():
        pooled = model.net.features[:2](model.normalize(x)).mean((2, 3))
    assert torch.equal(activity[:, :6], pooled > 0)


def test_scores_and_pooled_values_are_what_the_binary_features_threshold(tiny_lenet_dir, mnist_test):
    model, card = load_with_card(tiny_lenet_dir)
    x, _ = _batch(mnist_test[0], 8)
    net = DecoupledNet(model, card.input_shape).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        nn.init.normal_(net.gates[0].fc2.weight, std=3.0)
        net.gates[0].fc2.bias.zero_()  # scores around 0, so the path has both states
    scores = path_features(net, x, scores=True, batch_size=3)
    assert scores.dtype == torch.float32 and scores.shape == (8, 16)
    assert torch.equal(scores > 0, path_features(net, x)), "the path is the scores' sign"
    assert (scores[:, :6] > 0).any() and (scores[:, :6] <= 0).any()
    activity = ChannelActivity(model, card.input_shape)
    pooled = activity_features(activity, x, binary=False, batch_size=3)
    assert pooled.dtype == torch.float32 and torch.equal(pooled > 0, activity_features(activity, x))
    assert not any(hook for gate in net.gates for hook in gate.fc2._forward_hooks.values()), "hooks removed"


def test_channel_activity_reads_depthwise_and_grouped_convs_after_their_bn_and_relu():
    torch.manual_seed(0)
    net = DepthwiseNet().eval()  # pointwise conv, depthwise conv → BN → ReLU, grouped conv
    net.bn.running_mean.uniform_(-0.5, 0.5)
    x = torch.rand(5, 1, 12, 12)
    with torch.no_grad():
        pw = net.pw(x)
        dw = torch.relu(net.bn(net.dw(pw)))
        want = torch.cat([pw.mean((2, 3)), dw.mean((2, 3)), net.gc(dw).mean((2, 3))], 1)
        got = ChannelActivity(net, (1, 12, 12))(x)
    assert got.shape == (5, 8 + 8 + 4) and torch.allclose(got, want, atol=1e-6)
    with pytest.raises(MdakitError, match="not a conv layer"):
        ChannelActivity(net, (1, 12, 12), layers=["fc"])


def test_detection_separable_features_score_one_and_identical_ones_one_half():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    clean = rng.integers(0, 2, (40, 8))
    adversarial = clean.copy()
    adversarial[:, 0], clean[:, 0] = 1, 0
    data = DetectionData(clean, adversarial, labels, clean[:20], adversarial[:20])
    assert detection_auc(data, 5, "random forest", seed=0) == 1.0
    same = DetectionData(clean, clean, labels, clean[:20], clean[:20])
    table = detection_table(same, sizes=(1, 5), runs=2)
    assert all(v["mean"] == pytest.approx(0.5) for clf in table.values() for v in clf.values())
    with pytest.raises(MdakitError):
        detection_auc(data, 11, "random forest", seed=0)


def _saved_decoupled(tiny_lenet_dir, tmp_path):
    """The tiny LeNet with input-dependent gates, saved as a decoupled model that names its original."""
    model, card = load_with_card(tiny_lenet_dir)
    torch.manual_seed(0)
    net = DecoupledNet(model, card.input_shape)
    for gate in net.gates:
        nn.init.normal_(gate.fc2.weight, 0.0, 0.5)
        nn.init.normal_(gate.fc2.bias, 0.0, 0.5)
    card.edits = [*card.edits, net.edit()]
    card.provenance = {**card.provenance, "decoupled_from": str(tiny_lenet_dir)}
    save(net.eval(), tmp_path / "decoupled", card)
    return tmp_path / "decoupled"


def test_cli_detect_writes_the_study_of_all_four_feature_sets(tmp_path, capsys, tiny_lenet_dir, data_dir):
    model_dir = _saved_decoupled(tiny_lenet_dir, tmp_path)
    out = tmp_path / "detect"
    args = ["detect", str(model_dir), "--out", str(out), "--data-dir", str(data_dir), "--attacks", "fgsm",
            "--pool-per-class", "10", "--test-per-class", "3", "--runs", "2", "--json"]
    assert run(args) == 0
    study = json.loads(capsys.readouterr().out)
    assert study["pool_images"] == 100 and study["test_images"] == 30 and study["original"] == str(tiny_lenet_dir)
    entry = study["attacks"]["fgsm"]
    assert sorted(entry) == sorted([PATHS, SCORES, ACTIVITY, POOLED])
    assert entry[PATHS]["features"] == entry[SCORES]["features"] == 16 and entry[ACTIVITY]["features"] == 22
    assert entry[POOLED]["test_inputs_with_changed_features"] == 1.0, "ε = 0.1 moves every pooled value"
    assert entry[PATHS]["adversarial_accuracy"] < entry[PATHS]["clean_accuracy"]
    for features in entry.values():
        for sizes in features["auc"].values():
            assert sorted(sizes, key=int) == ["1", "5", "10"]
            assert all(0.0 <= s <= 1.0 for v in sizes.values() for s in v["runs"]) and len(sizes["10"]["runs"]) == 2
    assert json.loads((out / "detection.json").read_text())["attacks"]["fgsm"][PATHS]["auc"] == entry[PATHS]["auc"]
    assert (out / "detection.png").stat().st_size > 0
    assert run(args) == 2, "an existing output needs --force"


@pytest.mark.parametrize("extra", [["--epsilon", "0"], ["--epsilon", "1.5"], ["--attacks", "cw"],
                                   ["--attacks", "fgsm,fgsm"], ["--pool-per-class", "5"], ["--runs", "0"],
                                   ["--dataset", "cifar10"], ["--original", "nowhere"]])
def test_cli_detect_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, tiny_lenet_dir, data_dir, extra):
    model_dir = _saved_decoupled(tiny_lenet_dir, tmp_path)
    out = tmp_path / "detect"
    assert run(["detect", str(model_dir), "--out", str(out), "--data-dir", str(data_dir), *extra]) == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["decoupled"]


def test_cli_detect_refuses_a_model_that_is_not_decoupled(tmp_path, capsys, tiny_lenet_dir, data_dir):
    out = tmp_path / "detect"
    assert run(["detect", str(tiny_lenet_dir), "--out", str(out), "--data-dir", str(data_dir)]) == 2
    assert "not a decoupled model" in capsys.readouterr().err and not out.exists()
