import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mdakit.analysis.decoupling_adversarial import (
    ChannelActivity,
    DetectionData,
    activity_features,
    detection_auc,
    detection_table,
    path_features,
)
from mdakit.analysis.decoupling_attacks import attack, fgsm, pgd
from mdakit.artifacts import load_with_card
from mdakit.decouple.gates import DecoupledNet
from mdakit.errors import MdakitError


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
    with torch.no_grad():
        nn.init.normal_(net.gates[0].fc2.weight, std=3.0)
    scores = path_features(net, x, scores=True, batch_size=3)
    assert scores.dtype == torch.float32 and scores.shape == (8, 16)
    assert torch.equal(scores > 0, path_features(net, x)), "the path is the scores' sign"
    assert (scores[:, :6] > 0).any() and (scores[:, :6] <= 0).any()
    activity = ChannelActivity(model, card.input_shape)
    pooled = activity_features(activity, x, binary=False, batch_size=3)
    assert pooled.dtype == torch.float32 and torch.equal(pooled > 0, activity_features(activity, x))
    assert not any(hook for gate in net.gates for hook in gate.fc2._forward_hooks.values()), "hooks removed"


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
