"""timm architectures in the zoo: graph, extraction equivalence and assembly (resnet18, efficientnet_b0 with
its squeeze-excitation gates and BatchNormAct layers; ghostnet and rexnet with their channel slices;
mobilenetv3 with its functional linear head), and the precise error for a timm model whose ops mdakit
cannot follow yet (edgenext's channel attention)."""

import warnings

import pytest
import torch

from mdakit.artifacts import ModelCard, load_with_card, save
from mdakit.assembly import assemble
from mdakit.component_masks import LayerMask
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.surgery import MaskedModel, keep_sets, rebuild
from mdakit.zoo import build_model
from nets import randomize_batchnorm

pytest.importorskip("timm")
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def images(mnist_test):
    test, _ = mnist_test
    return torch.stack([test[i][0] for i in range(0, 600, 100)])


@pytest.fixture(scope="module", params=["resnet18", "efficientnet_b0"])
def timm_model(request):
    torch.manual_seed(0)
    return request.param, randomize_batchnorm(build_model(f"timm:{request.param}", SHAPE, 10)).eval()


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return randomize_batchnorm(build_model("timm:resnet18", SHAPE, 10)).eval()


def _random_masks(graph, seed):
    g = torch.Generator().manual_seed(seed)
    return {layer.name: LayerMask(torch.ones(layer.out_size, layer.in_size, dtype=torch.bool),
                                  torch.rand(layer.in_size, generator=g) < 0.6,
                                  torch.ones(layer.out_size, dtype=torch.bool)) for layer in graph.layers}


def test_timm_model_is_built_for_the_dataset_shape(resnet18):
    assert resnet18(torch.zeros(2, *SHAPE)).shape == (2, 10)
    assert resnet18.net.conv1.in_channels == 1
    with pytest.raises(MdakitError, match="unknown timm model"):
        build_model("timm:no_such_net", SHAPE, 10)


def test_resnet18_graph_couples_residual_channels(resnet18):
    graph = trace(resnet18, SHAPE)
    assert len(graph.layers) == 21 and graph.output_layer.name == "net.fc"
    first, second = graph.layer("net.layer1.0.conv2"), graph.layer("net.layer1.1.conv2")
    assert torch.equal(graph.groups(first.out_ids), graph.groups(second.out_ids))  # identity shortcuts
    assert torch.equal(graph.groups(graph.layer("net.conv1").out_ids), graph.groups(first.out_ids))
    proj = graph.layer("net.layer2.0.downsample.0")
    assert torch.equal(graph.groups(proj.out_ids), graph.groups(graph.layer("net.layer2.0.conv2").out_ids))


def test_efficientnet_squeeze_excitation_couples_the_gated_channels():
    model = build_model("timm:efficientnet_b0", SHAPE, 10).eval()
    graph = trace(model, SHAPE)
    block = "net.blocks.1.0"
    dw, expand = graph.layer(f"{block}.conv_dw"), graph.layer(f"{block}.se.conv_expand")
    assert dw.module.groups == dw.in_size  # depthwise: its input and output channels are one group
    assert torch.equal(graph.groups(dw.out_ids), graph.groups(expand.out_ids))  # x * gate(x)
    assert torch.equal(graph.groups(dw.in_ids), graph.groups(dw.out_ids))
    assert not graph.pinned_mask()[graph.groups(graph.layer(f"{block}.se.conv_reduce").out_ids)].any()


def test_extraction_equals_masked_original(timm_model, images):
    name, model = timm_model
    graph = trace(model, SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keep = keep_sets(graph, _random_masks(graph, 1), [7, 2, 4])
    part = rebuild(model, keep).eval()
    with torch.no_grad():
        diff = (part(images) - MaskedModel(graph, keep).eval()(images)).abs().max()
    assert diff <= 1e-4, (name, float(diff))
    assert sum(p.numel() for p in part.parameters()) < sum(p.numel() for p in model.parameters())
    if name == "efficientnet_b0":  # the sliced BatchNormAct layers keep their SiLU
        assert type(part.net.bn2).__name__ == "BatchNormAct2d"
        assert type(part.net.bn2.act).__name__ == type(model.net.bn2.act).__name__ == "SiLU"


@pytest.mark.parametrize("layout", ["parallel", "padded"])
def test_parts_assemble(timm_model, images, tmp_path, layout):
    name, model = timm_model
    graph = trace(model, SHAPE)
    parts = []
    for p, (classes, seed) in enumerate((([0, 1], 2), ([5], 3))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keep = keep_sets(graph, _random_masks(graph, seed), classes)
        card = ModelCard(f"timm:{name}", list(SHAPE), 10, dataset="mnist", logit_classes=classes,
                         edits=[keep.to_dict()])
        parts.append(save(rebuild(model, keep).eval(), tmp_path / f"part-{p}", card))
    assembled, _ = assemble(parts, layout=layout)
    with torch.no_grad():
        want = torch.cat([load_with_card(path)[0](images) for path in parts], dim=1)
        assert (assembled.eval()(images) - want).abs().max() <= 1e-4


@pytest.mark.parametrize("name, message", [("edgenext_xx_small", "unsupported reshape call_method 'reshape' at node")])
def test_unsupported_timm_models_name_the_op(name, message):
    model = build_model(f"timm:{name}", (1, 32, 32), 10)
    with pytest.raises(MdakitError, match=message):
        trace(model, (1, 32, 32))


@pytest.mark.parametrize("name, sliced", [("ghostnet_100", True), ("rexnet_100", True),
                                          ("mobilenetv3_small_100", False)])
def test_sliced_and_functional_linear_models_extract_exactly_and_assemble(name, sliced, images, tmp_path):
    """GhostNet cuts its concats back with ``[:, :n]`` and ReXNet adds its shortcut to ``[:, :n]``: sliced
    sources are pinned, so extraction stays exact, and the padded layout refuses the fixed slices.
    GhostNet's and MobileNetV3's heads are timm ``Linear`` layers that call ``F.linear``."""
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(f"timm:{name}", SHAPE, 10)).eval()
    graph = trace(model, SHAPE)
    assert bool(graph.unmergeable) == sliced
    parts = []
    for p, (classes, seed) in enumerate((([0, 1], 2), ([5], 3))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keep = keep_sets(graph, _random_masks(graph, seed), classes)
        part = rebuild(model, keep).eval()
        with torch.no_grad():
            assert (part(images) - MaskedModel(graph, keep).eval()(images)).abs().max() <= 1e-4
        card = ModelCard(f"timm:{name}", list(SHAPE), 10, dataset="mnist", logit_classes=classes,
                         edits=[keep.to_dict()])
        parts.append(save(part, tmp_path / f"part-{p}", card))
    assembled, _ = assemble(parts, layout="parallel")
    with torch.no_grad():
        want = torch.cat([load_with_card(path)[0](images) for path in parts], dim=1)
        assert (assembled.eval()(images) - want).abs().max() <= 1e-4
    if sliced:
        with pytest.raises(MdakitError, match="picks channels at fixed positions"):
            assemble(parts, layout="padded")
    else:
        padded, _ = assemble(parts, layout="padded")
        with torch.no_grad():
            assert (padded.eval()(images) - want).abs().max() <= 1e-4
