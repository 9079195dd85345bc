"""Extraction equivalence: a physically extracted model equals the masked original on real images."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mdakit.component_masks import LayerMask
from mdakit.data import ClassSubset
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.metrics import count_parameters
from mdakit.surgery import MaskedModel, apply_kernel_masks, keep_sets, rebuild
from mdakit.zoo import build_model
from nets import (
    ConcatPoolNet,
    ConvNeXtBlockNet,
    DepthwiseNet,
    FunctionalLinear,
    GroupNormNet,
    RandomNet,
    ResidualNet,
    ShuffleNet,
    SliceNet,
    randomize_batchnorm,
)


def random_masks(graph, seed, keep_prob=0.6):
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for layer in graph.layers:
        inputs = torch.rand(layer.in_size, generator=g) < keep_prob
        kernels = torch.rand(layer.out_size, layer.in_size, generator=g) < 0.7
        masks[layer.name] = LayerMask(kernels, inputs, torch.ones(layer.out_size, dtype=torch.bool))
    return masks


@pytest.fixture(scope="module")
def mnist_images(mnist_test):
    test, _ = mnist_test
    sub = ClassSubset(test, list(range(10)), remap=False)
    return torch.stack([sub[i][0] for i in range(0, 400, 50)])  # 8 real test images


def _check(model, shape, images, seed=0, kernel=False, rows=None):
    model = randomize_batchnorm(model, seed).eval()
    graph = trace(model, shape)
    masks = random_masks(graph, seed)
    out = graph.output_layer.out_size
    rows = rows or [r for r in torch.randperm(out, generator=torch.Generator().manual_seed(seed)).tolist()][:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keep = keep_sets(graph, masks, rows)
    part = rebuild(model, keep).eval()
    if kernel:
        apply_kernel_masks(part, keep, masks)
    reference = MaskedModel(graph, keep, masks if kernel else None).eval()
    with torch.no_grad():
        got, want = part(images), reference(images)
    assert got.shape == (len(images), len(rows))
    assert (got - want).abs().max() <= 1e-4, float((got - want).abs().max())
    assert count_parameters(part) < count_parameters(model)
    return part, keep


ARCHS = [
    ("lenet5", (1, 28, 28)), ("vgg16", (1, 28, 28)), ("resnet50", (1, 28, 28)), ("googlenet", (1, 28, 28)),
    ("torchvision:resnet18", (1, 28, 28)), ("torchvision:googlenet", (1, 28, 28)),
    ("torchvision:mobilenet_v2", (1, 28, 28)), ("torchvision:densenet121", (1, 64, 64)),
    ("torchvision:vgg11_bn", (1, 32, 32)), ("torchvision:shufflenet_v2_x0_5", (1, 32, 32)),
    ("torchvision:efficientnet_b0", (1, 32, 32)),
]


@pytest.mark.parametrize("arch, shape", ARCHS, ids=[a for a, _ in ARCHS])
def test_extraction_equals_masked_original(arch, shape, mnist_images):
    torch.manual_seed(0)
    model = build_model(arch, shape, 10)
    images = F.interpolate(mnist_images, size=shape[1:], mode="bilinear") if shape[1:] != (28, 28) else mnist_images
    _check(model, shape, images, seed=1, kernel=arch in ("lenet5", "resnet50"))


@pytest.mark.parametrize("net, shape", [(ConcatPoolNet(), (1, 28, 28)), (ResidualNet(), (1, 28, 28)),
                                        (DepthwiseNet(), (1, 28, 28)), (ShuffleNet(), (1, 28, 28)),
                                        (SliceNet(), (1, 28, 28)),
                                        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                                                       FunctionalLinear(4 * 26 * 26, 3)), (1, 28, 28)),
                                        (GroupNormNet(), (1, 28, 28)), (ConvNeXtBlockNet(), (1, 28, 28))],
                         ids=["concat-pool", "residual", "depthwise", "shuffle", "slice", "functional-linear",
                              "group-norm", "convnext-block"])
def test_extraction_on_op_patterns(net, shape, mnist_images):
    for seed in range(3):
        _check(net, shape, mnist_images, seed=seed, kernel=seed == 2, rows=[2, 0])


def test_residual_groups_keep_the_same_channels(mnist_images):
    net = randomize_batchnorm(ResidualNet()).eval()
    graph = trace(net, (1, 28, 28))
    masks = random_masks(graph, 3)
    keep = keep_sets(graph, masks, [0, 1])
    assert keep.layers["stem"]["out"] == keep.layers["c2"]["out"] == keep.layers["c1"]["in"]
    assert keep.layers["proj"]["out"] == keep.layers["c3"]["out"] == keep.channel_modules["bn3"]


def test_layer_with_nothing_needed_keeps_its_strongest_channel():
    net = ConcatPoolNet().eval()
    graph = trace(net, (1, 8, 8))
    masks = {layer.name: LayerMask(torch.zeros(layer.out_size, layer.in_size, dtype=torch.bool),
                                   torch.zeros(layer.in_size, dtype=torch.bool),
                                   torch.zeros(layer.out_size, dtype=torch.bool)) for layer in graph.layers}
    with pytest.warns(UserWarning, match="would keep no channel"):
        keep = keep_sets(graph, masks, [1])
    assert len(keep.layers["a"]["out"]) == 1 and len(keep.layers["b"]["out"]) == 1
    part = rebuild(net, keep)
    assert part(torch.rand(2, 1, 8, 8)).shape == (2, 1)


def test_bad_rows_are_refused():
    graph = trace(ConcatPoolNet(), (1, 8, 8))
    masks = random_masks(graph, 0)
    for rows in ([], [1, 1], [7]):
        with pytest.raises(MdakitError, match="logit rows"):
            keep_sets(graph, masks, rows)


# --------------------------------------------------------------------------- random architectures


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(st.sampled_from(["conv", "residual", "concat", "depthwise", "grouped", "pool"]),
                       min_size=1, max_size=5),
       width=st.lists(st.integers(1, 5), min_size=1, max_size=3), head=st.sampled_from([1, 2]),
       seed=st.integers(0, 1000), kernel=st.booleans())
def test_random_architectures_extract_exactly(blocks, width, head, seed, kernel, mnist_images):
    torch.manual_seed(seed)
    net = RandomNet(blocks, width, head, classes=4)
    _check(net, (1, 28, 28), mnist_images, seed=seed, kernel=kernel, rows=[3, 1])
