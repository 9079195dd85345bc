import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from mdakit.artifacts import ModelCard, load, load_with_card, save
from mdakit.cli import run
from mdakit.data import ClassSubset
from mdakit.decoupling.calibration import recalibrate_batchnorm, warm_start_heads
from mdakit.decoupling.finetune import DecoupleConfig, decouple, settle
from mdakit.decoupling.gates import DecoupledNet, improved_semhash, saturating_sigmoid
from mdakit.decoupling.losses import LossWeights, kl_loss, mi_loss, sparse_loss
from mdakit.decoupling.paths import collect_paths
from mdakit.errors import MdakitError
from mdakit.zoo import build_model
from nets import first_images, input_dependent_gates


def test_semhash_mixes_per_sample_when_channels_exceed_batch():
    torch.manual_seed(0)
    z = improved_semhash(torch.zeros(6, 200), training=True)
    binary = ((z == 0) | (z == 1)).all(1)
    soft = ((z > 0) & (z < 1)).float().mean(1) > 0.5
    assert bool((binary ^ soft).all()), "each sample is either all hard or all soft"
    assert 0 < int(binary.sum()) < 6
    choices = set()
    for seed in range(20):
        torch.manual_seed(seed)
        z = improved_semhash(torch.zeros(2, 300), training=True)
        choices.add(tuple(((z == 0) | (z == 1)).all(1).tolist()))
    assert len(choices) == 4  # both samples choose independently


def test_straight_through_gradient_is_v1s():
    g = torch.linspace(-3, 3, 40).repeat(8, 1).requires_grad_()
    torch.manual_seed(1)
    z = improved_semhash(g, training=True)
    (z * torch.arange(40.0)).sum().backward()
    torch.manual_seed(1)
    s = g.detach() + torch.randn_like(g)
    hard = torch.rand(8, 1) < 0.5
    sig = torch.sigmoid(s)
    inside = (1.2 * sig - 0.1 > 0) & (1.2 * sig - 0.1 < 1)
    expected = 1.2 * sig * (1 - sig) * inside * torch.arange(40.0)
    assert torch.allclose(g.grad, expected, atol=1e-6)
    assert torch.equal(z.detach()[hard.flatten()], (s > 0).float()[hard.flatten()])
    assert torch.allclose(z.detach()[~hard.flatten()], saturating_sigmoid(s)[~hard.flatten()])
    assert torch.equal(improved_semhash(g.detach(), training=False), (g.detach() > 0).float())


def test_loss_terms_by_hand():
    z = [torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]), torch.tensor([[0.5, 0.5], [1.0, 0.0]])]
    assert float(sparse_loss(z, 0.0)) == pytest.approx(3.0 + 1.0)
    assert float(sparse_loss(z, 0.5)) == pytest.approx(abs(3.0 - 2.0) + abs(1.0 - 1.0))

    zk, yk = [torch.tensor([[1.0, 0.0]])], [torch.tensor([[1.0, 1.0]])]
    eps = 1e-3
    p = torch.tensor([1 + eps, eps]) / (1 + 2 * eps)
    q = torch.tensor([0.5, 0.5])
    assert float(kl_loss(zk, yk, "z||y", eps)) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)
    assert float(kl_loss(zk, yk, "y||z", eps)) == pytest.approx(float((q * (q / p).log()).sum()), rel=1e-5)
    y_negative = [torch.tensor([[1.0, -5.0]])]  # y is clamped at 0 before normalising
    assert float(kl_loss(zk, y_negative, "z||y", eps)) == pytest.approx(float(kl_loss(zk, [torch.tensor([[1.0, 0.0]])],
                                                                                      "z||y", eps)))

    head = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    logits = torch.tensor([1.0, 0.0, 0.0])
    expected = -math.log(math.exp(1) / (math.exp(1) + 2))
    assert float(mi_loss([torch.tensor([[1.0, 0.0]])], [head], torch.tensor([0]))) == pytest.approx(expected)
    assert float(mi_loss([torch.tensor([[1.0, 0.0]])] * 2, [head] * 2, torch.tensor([0]))) == pytest.approx(
        2 * float(torch.log_softmax(logits, 0)[0].neg()))


@pytest.mark.parametrize("kwargs, message", [
    ({"lambda_k": -0.1}, "lambda_k"), ({"lambda_s": float("nan")}, "lambda_s"), ({"target_ratio": 1.0}, "target_ratio"),
    ({"target_ratio": -0.2}, "target_ratio"), ({"kl_direction": "z|y"}, "KL direction"),
])
def test_bad_loss_weights(kwargs, message):
    with pytest.raises(MdakitError, match=message):
        LossWeights(**kwargs).validate()


def test_gate_sites_follow_the_graph():
    net = DecoupledNet(build_model("resnet20", (1, 28, 28), 10), (1, 28, 28))
    by_layer = {site.layer: site for site in net.sites}
    assert "net.features.0" not in by_layer  # the first conv reads the image
    block = by_layer["net.features.3.conv1"]
    assert block.chain == ["net_features_3_bn1", "net_features_3_relu1"]  # after BN and ReLU
    assert by_layer["net.features.3.conv2"].chain == ["net_features_3_bn2"]  # its own output, before the add
    assert by_layer["net.features.6.shortcut.0"].chain == ["net_features_6_shortcut_1"]
    assert len(net.layers) == 21 - 2  # stem + 18 block convs + 2 projections, minus the first and the last
    with pytest.raises(MdakitError, match="no conv layer to gate|at least two"):
        DecoupledNet(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 2)), (1, 28, 28))


def test_save_load_round_trip(tmp_path, mnist_test):
    test, info = mnist_test
    torch.manual_seed(0)
    model = build_model("vgg16", info.input_shape, 10, info.mean, info.std, width=0.125)
    net = input_dependent_gates(DecoupledNet(model, info.input_shape))
    card = ModelCard.for_dataset("vgg16", info, arch_kwargs={"width": 0.125})
    card.edits = [net.edit()]
    save(net, tmp_path / "d", card)
    loaded, loaded_card = load_with_card(tmp_path / "d")
    assert isinstance(loaded, DecoupledNet) and loaded.layers == net.layers
    assert loaded_card.edits[-1]["kind"] == "decoupled"
    x = first_images(test, 16)
    with torch.no_grad():
        a, b = net(x, return_gates=True), loaded(x, return_gates=True)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(za, zb) for za, zb in zip(a.z, b.z))
    assert 0.05 < float(torch.cat([z.flatten() for z in a.z]).mean()) < 0.95


def test_collect_paths_shapes_and_states(tiny_lenet_dir, mnist_test):
    test, _ = mnist_test
    net = input_dependent_gates(DecoupledNet(load(tiny_lenet_dir), (1, 28, 28)))
    subset = ClassSubset(test, [0, 1], remap=False)
    paths = collect_paths(net, subset)
    assert paths.z["net.features.3"].shape == (len(subset), 16) and paths.z["net.features.3"].dtype == torch.bool
    states = paths.filter_states()["net.features.3"]
    assert sum(states.values()) == 16
    assert set(paths.labels.tolist()) == {0, 1}


def test_cli_decouple_end_to_end(tmp_path, capsys, tiny_lenet_dir, data_dir):
    out = tmp_path / "dec"
    code = run(["decouple", str(tiny_lenet_dir), "--out", str(out), "--epochs", "1", "--train-subset", "600",
                "--batch-size", "32", "--lambda-s", "0.01", "--head-start", "2", "--data-dir", str(data_dir), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["gated_layers"] == ["net.features.3"]
    assert report["config"]["weights"]["lambda_s"] == 0.01 and report["config"]["weights"]["lambda_m"] == 0.01
    assert report["test_accuracy"] > 0.8 and report["config"]["head_start"] == 2
    model, card = load_with_card(out)
    assert isinstance(model, DecoupledNet) and card.provenance["decoupled_from"] == str(tiny_lenet_dir)
    assert card.metrics["test_accuracy"] == report["test_accuracy"]


def test_decouple_a_module_with_its_data_as_from_its_model_file(tiny_lenet_dir, mnist_train, mnist_test, data_dir):
    train, test = mnist_train[0], mnist_test[0]
    config = DecoupleConfig(batch_size=64, train_subset=300)
    from_file = decouple(tiny_lenet_dir, "mnist", config, data_dir=data_dir, show_progress=False)
    module = load(tiny_lenet_dir)
    from_objects = decouple(module, DataLoader(train, batch_size=5), config, test_data=test, show_progress=False)
    untested = decouple(module, train, config, show_progress=False)
    for result in (from_objects, untested):
        assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(),
                                                     from_file.model.state_dict().values(), strict=True))
        assert result.card.arch is None and "decoupled_from" not in result.card.provenance
    assert from_objects.report == {**from_file.report, "finetune": from_objects.report["finetune"]}
    assert from_objects.report["finetune"]["history"] == from_file.report["finetune"]["history"]
    assert from_objects.card.metrics == from_file.card.metrics
    assert from_file.card.provenance["decoupled_from"] == str(tiny_lenet_dir)
    assert untested.card.metrics == {} and not [key for key in untested.report if "test" in key]
    assert untested.report["gated_layers"] == from_file.report["gated_layers"]


def test_decouple_refuses_a_model_that_is_not_a_full_classifier_of_its_data(mnist_train):
    three = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 24 * 24, 3))
    with pytest.raises(MdakitError, match="3 logits but the data has 10 classes"):
        decouple(three, mnist_train[0], DecoupleConfig(), show_progress=False)


@pytest.mark.parametrize("extra, message", [
    (["--lambda-m", "-1"], "lambda-m"), (["--target-ratio", "1.5"], "target-ratio"),
    (["--target-ratio", "-0.1"], "target-ratio"), (["--epochs", "0"], "epochs"), (["--head-start", "-1"], "head-start"),
])
def test_cli_decouple_bad_input(tmp_path, capsys, tiny_lenet_dir, extra, message):
    out = tmp_path / "never"
    assert run(["decouple", str(tiny_lenet_dir), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()



def test_warm_started_heads_read_the_class_from_the_filters(mnist_test):
    test, info = mnist_test
    images, labels = zip(*(test[i] for i in range(64)))
    images, labels = torch.stack(images), torch.tensor(labels)
    keep = labels != 3  # one class absent: its row stays 0 and the others are centred without it
    images, labels = images[keep][:48], labels[keep][:48]
    torch.manual_seed(0)
    net = DecoupledNet(build_model("vgg16", info.input_shape, 10, width=0.125), info.input_shape).train()
    batches = [(images[:24], labels[:24]), (images[24:], labels[24:]), (images, labels)]
    assert warm_start_heads(net, batches, batches=2, scale=3.0) == 2
    assert net.training  # the mode it came in
    net.eval()
    with torch.no_grad():
        ys = net(images, return_gates=True).y
    present = labels.unique()
    for head, y in zip(net.heads, ys, strict=True):
        means = torch.stack([y[labels == c].mean(0) for c in present])
        expected = torch.zeros(10, y.shape[1]).index_copy_(0, present, means - means.mean(0))
        expected = expected / (y.std(0, unbiased=False) + 1e-6) * 3.0 / math.sqrt(y.shape[1])
        assert torch.allclose(head.weight, expected, atol=1e-4)
        assert bool((head.weight[3] == 0).all())


def test_batchnorm_subclasses_after_gated_convs_are_refused():
    pytest.importorskip("timm")
    model = build_model("timm:efficientnet_b0", (1, 28, 28), 10).eval()
    with pytest.raises(MdakitError, match="BatchNormAct2d"):
        DecoupledNet(model, (1, 28, 28))


def test_batchnorm_recalibration_uses_the_hard_gated_statistics(mnist_test):
    test, info = mnist_test
    torch.manual_seed(0)
    net = input_dependent_gates(DecoupledNet(build_model("vgg16", info.input_shape, 10, info.mean, info.std,
                                                      width=0.125), info.input_shape))
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.running_mean.fill_(5.0)
    x = first_images(test, 32)
    seen: list[torch.Tensor] = []
    late = norms[3]  # behind gated layers: what it sees depends on the gates' binary decisions
    gates: list[torch.Tensor] = []
    handles = [late.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].mean((0, 2, 3)))),
               net.gates[0].register_forward_hook(lambda _m, _inputs, z: gates.append(z))]
    net.train()
    assert recalibrate_batchnorm(net, [(x[:16], None), (x[16:], None), (x, None)], batches=2) == 2
    for handle in handles:
        handle.remove()
    assert net.training and all(bn.training for bn in norms) and late.momentum == 0.1  # mode restored
    assert len(seen) == 2 and torch.allclose(late.running_mean, (seen[0] + seen[1]) / 2, atol=1e-5)
    assert all(((z == 0) | (z == 1)).all() for z in gates), "binary gates, as at inference"
    assert 0 < float(torch.cat(gates).mean()) < 1


def _saved_decoupled(tiny_lenet_dir, path, subset: int = 600):
    """The tiny LeNet with input-dependent gates, saved with a decoupling config of ``subset`` images."""
    model, card = load_with_card(tiny_lenet_dir)
    torch.manual_seed(0)
    net = DecoupledNet(model, card.input_shape)
    for gate in net.gates:
        nn.init.normal_(gate.fc2.weight, 0.0, 0.5)
    card.edits = [*card.edits, net.edit()]
    card.training = {**card.training, "decoupling": {"config": DecoupleConfig(train_subset=subset,
                                                                              batch_size=64).to_dict()}}
    card.metrics = {**card.metrics, "test_accuracy": 0.25}
    save(net.eval(), path, card)
    return net


def test_settle_trains_the_filters_under_frozen_binary_gates(tmp_path, capsys, tiny_lenet_dir, data_dir):
    net = _saved_decoupled(tiny_lenet_dir, tmp_path / "decoupled")
    out = tmp_path / "settled"
    assert run(["settle", str(tmp_path / "decoupled"), "--out", str(out), "--data-dir", str(data_dir),
                "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    settled, card = load_with_card(out)
    assert card.training["settle"]["epochs"] == 1 and card.training["settle"]["result"]["train_samples"] == 540
    assert card.metrics["test_accuracy_before_settling"] == 0.25 == report["test_accuracy_before"]
    assert card.metrics["test_accuracy"] == report["test_accuracy"]
    before, after = net.state_dict(), settled.state_dict()
    frozen = [k for k in before if ".decouple_gates." in k or k.startswith("heads.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), "gates and heads do not move"
    convs = [k for k in before if k.endswith("weight") and k not in frozen and before[k].dim() == 4]
    assert convs and all(not torch.equal(before[k], after[k]) for k in convs), "the filters train"
    with pytest.raises(MdakitError, match="at least 1"):
        settle(net, torch.utils.data.TensorDataset(torch.zeros(2, 1, 28, 28), torch.zeros(2)), DecoupleConfig(), 0)


def test_settle_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, tiny_lenet_dir, data_dir):
    _saved_decoupled(tiny_lenet_dir, tmp_path / "decoupled")
    out = tmp_path / "settled"
    assert run(["settle", str(tmp_path / "decoupled"), "--out", str(out), "--epochs", "0"]) == 2
    assert run(["settle", str(tiny_lenet_dir), "--out", str(out), "--data-dir", str(data_dir)]) == 2
    assert run(["settle", str(tmp_path / "decoupled"), "--out", str(out), "--dataset", "cifar10",
                "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "not a decoupled model" in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["decoupled"]
