import pytest
import torch
from torch import nn

from mdakit import zoo
from mdakit.errors import MdakitError
from mdakit.metrics import count_macs, count_nonzero_parameters, count_parameters, model_size
from mdakit.zoo import Normalize, available, build_model
from nets import zoo_params


@pytest.mark.parametrize("arch", zoo_params() + ["torchvision:resnet18", "torchvision:mobilenet_v2",
                                                 "torchvision:googlenet"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_zoo_builds_for_dataset_shapes(arch, shape):
    torch.manual_seed(0)
    model = build_model(arch, shape, 7, mean=[0.5] * shape[0], std=[0.25] * shape[0]).eval()
    assert isinstance(model[0], Normalize)
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_registry_lists_the_documented_architectures():
    assert {"lenet5", "vgg16", "resnet20", "resnet56", "resnet50", "googlenet"} <= set(available())
    assert all(f"``{arch}``" in zoo.__doc__ for arch in available())


def test_a_registered_architecture_is_one_function(monkeypatch):
    monkeypatch.setattr(zoo, "_REGISTRY", dict(zoo._REGISTRY))

    @zoo.register("tiny-mlp")
    def tiny_mlp(input_shape, num_classes, hidden=8):
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], hidden),
                             nn.ReLU(), nn.Linear(hidden, num_classes))

    assert "tiny-mlp" in available()
    model = build_model("tiny-mlp", (1, 4, 4), 3, hidden=5)
    assert isinstance(model[0], Normalize) and model.net[1].out_features == 5
    assert model(torch.rand(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(MdakitError, match="bad options for tiny-mlp"):
        build_model("tiny-mlp", (1, 4, 4), 3, depth=2)


@pytest.mark.parametrize("family", list(zoo.FAMILIES))
def test_every_family_refuses_an_unknown_name(family):
    with pytest.raises(MdakitError, match=f"unknown {family}"):
        build_model(f"{family}:not_a_model", (1, 28, 28), 10)


def test_normalisation_is_part_of_the_model():
    model = build_model("lenet5", (1, 28, 28), 10, mean=[0.2], std=[0.5]).eval()
    body = model.net
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), body((x - 0.2) / 0.5), atol=1e-6)


@pytest.mark.parametrize("arch, message", [
    ("alexnet2", "unknown architecture"), ("torchvision:not_a_model", "unknown torchvision"),
    ("torchvision:densenet121", "cannot take inputs"), ("torchvision:vit_b_16", "cannot take inputs"),
])
def test_zoo_errors(arch, message):
    with pytest.raises(MdakitError, match=message):
        build_model(arch, (1, 28, 28), 10)


def test_bad_shapes_and_options():
    with pytest.raises(MdakitError, match="C,H,W"):
        build_model("lenet5", (28, 28), 10)
    with pytest.raises(MdakitError, match="one per input channel"):
        build_model("lenet5", (3, 32, 32), 10, mean=[0.1], std=[0.2])
    with pytest.raises(MdakitError, match="bad options"):
        build_model("lenet5", (1, 28, 28), 10, depth=3)


def test_lenet_macs_match_hand_count():
    model = build_model("lenet5", (1, 28, 28), 10)
    # conv1 6*28*28*25 + conv2 16*10*10*150 + fc 400*120 + 120*84 + 84*10
    assert count_macs(model, (1, 28, 28)) == 117600 + 240000 + 48000 + 10080 + 840
    assert count_parameters(model) == ((6 * 25 + 6) + (16 * 150 + 16) + (400 * 120 + 120) + (120 * 84 + 84)
                                       + (84 * 10 + 10))


def test_nonzero_parameters_see_zeroed_kernels():
    model = build_model("lenet5", (1, 28, 28), 10)
    with torch.no_grad():
        model.net.features[0].weight[0].zero_()
    size = model_size(model, (1, 28, 28))
    assert size["params"] - size["nonzero_params"] == 25
    assert count_nonzero_parameters(model) == size["nonzero_params"]


@pytest.mark.parametrize("arch, blocks, params", [("resnet20", 3, 272_474), ("resnet56", 9, 855_770)])
def test_cifar_resnets_have_the_papers_shape(arch, blocks, params):
    from mdakit.zoo import BasicBlock

    model = build_model(arch, (3, 32, 32), 10)
    stages = [m for m in model.net.features if isinstance(m, BasicBlock)]
    assert len(stages) == 3 * blocks
    assert [stages[i * blocks].conv2.out_channels for i in range(3)] == [16, 32, 64]
    assert sum(isinstance(b.shortcut, torch.nn.Sequential) and len(b.shortcut) == 2 for b in stages) == 2  # option B
    assert count_parameters(model) == params
    if arch == "resnet56":  # the paper's 125M FLOPs on CIFAR-10
        assert 125e6 < count_macs(model, (3, 32, 32)) < 126e6


def test_cifar_resnet_depth_must_be_6n_plus_2():
    from mdakit.zoo import cifar_resnet

    with pytest.raises(MdakitError, match="6n"):
        cifar_resnet((1, 28, 28), 10, 21)

