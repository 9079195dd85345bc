"""Channels moved to the last dim by a permute (ConvNeXt-style blocks): followed through elementwise ops,
Linear layers over the channels (``pointwise``), LayerNorm (pinned) and the permute back; every other op
refused there; per-channel constants such as a layer scale pin their channels."""

import re
import warnings

import pytest
import torch
import torchvision
from torch import nn

from mdakit.attribution.kernels import positive_contribution_sum
from mdakit.component_masks import LayerMask
from mdakit.errors import MdakitError
from mdakit.graph import passthrough_ops, trace
from mdakit.graph.registry import CHANNELS_ANYWHERE
from mdakit.surgery import MaskedModel, keep_sets, rebuild
from nets import ConvNeXtBlockNet

SHAPE = (1, 8, 8)


def random_masks(graph, seed: int = 0) -> dict[str, LayerMask]:
    """Masks that need a random half of every layer's inputs."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for layer in graph.layers:
        inputs = torch.rand(layer.in_size, generator=g) < 0.5
        masks[layer.name] = LayerMask(torch.ones(layer.out_size, layer.in_size, dtype=torch.bool), inputs,
                                      torch.ones(layer.out_size, dtype=torch.bool))
    return masks


def extract(net: nn.Module, shape, rows=(0, 2)):
    graph = trace(net.eval(), shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keep = keep_sets(graph, random_masks(graph), list(rows))
    return graph, keep, rebuild(net, keep).eval(), MaskedModel(graph, keep).eval()


def test_a_convnext_block_is_followed_through_its_permutes():
    graph = trace(ConvNeXtBlockNet().eval(), SHAPE)
    kinds = {layer.name: layer.kind for layer in graph.layers}
    assert kinds == {"stem": "conv", "dwconv": "conv", "fc1": "pointwise", "fc2": "pointwise", "fc": "linear"}
    fc1, fc2, stem = graph.layer("fc1"), graph.layer("fc2"), graph.layer("stem")
    pinned = graph.pinned_mask()
    assert pinned[graph.groups(stem.out_ids)].all()  # LayerNorm statistics span the stream's channels
    assert not pinned[graph.groups(fc1.out_ids)].any()  # the hidden units can go
    assert torch.equal(fc2.in_ids, fc1.out_ids)
    assert graph.channel_dims[fc1.node] == 3 and fc2.node in graph.channel_dims
    assert not set(graph.channel_dims) & {"add", "mean"}  # back on dim 1 after the permute back


def test_a_convnext_block_extracts_to_the_masked_original():
    graph, keep, part, reference = extract(ConvNeXtBlockNet(), SHAPE)
    assert 0 < len(keep.layers["fc2"]["in"]) < 12  # some hidden units removed
    assert len(keep.layers["fc2"]["out"]) == 6
    images = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(part(images), reference(images), rtol=1e-5, atol=1e-5)


def test_torchvision_convnext_extracts_to_the_masked_original():
    torch.manual_seed(0)
    net = torchvision.models.convnext_tiny(num_classes=5)
    net.features = net.features[:4]  # the stem and the first two stages keep the test small
    net.classifier[0] = type(net.classifier[0])(192, eps=1e-6)
    net.classifier[2] = nn.Linear(192, 5)
    graph, keep, part, reference = extract(net, (3, 32, 32))
    assert sum(layer.kind == "pointwise" for layer in graph.layers) == 12
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(images)
        torch.testing.assert_close(part(images), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("conv_mlp", [False, True])
def test_timm_convnext_extracts_to_the_masked_original(conv_mlp):
    """timm's blocks: LayerNorm subclasses calling F.layer_norm, an Mlp of Linear layers (or 1×1 convs) and
    ``x.mul(self.gamma.reshape(1, -1, 1, 1))``."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("convnext_atto", num_classes=5, conv_mlp=conv_mlp, depths=(1, 1, 1, 1),
                            ls_init_value=0.5)
    graph, keep, part, reference = extract(net, (3, 32, 32))
    assert any(layer.kind == "pointwise" for layer in graph.layers) != conv_mlp
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(images)
        torch.testing.assert_close(part(images), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_a_pointwise_linear_contributes_as_the_same_1x1_convolution():
    torch.manual_seed(0)
    linear = nn.Linear(4, 3)
    conv = nn.Conv2d(4, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        conv.bias.copy_(linear.bias)
    x = torch.randn(5, 4, 6, 6)
    sign = torch.tensor([1.0, -1.0, 1.0])
    torch.testing.assert_close(positive_contribution_sum(x.permute(0, 2, 3, 1), linear, sign),
                               positive_contribution_sum(x, conv, sign))


def _channels_last_probe(op: nn.Module, back: bool = True):
    """conv → permute to channels-last → ``op`` → the permute back and a spatial mean (``back``), or a flatten
    (an op that is not elementwise may change the shape) → linear."""
    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.op = nn.Conv2d(1, 4, 3, padding=1), op
            with torch.no_grad():
                features = self.body(torch.zeros(1, *SHAPE)).shape[1]
            self.fc = nn.Linear(features, 3)

        def body(self, x):
            y = self.op(self.conv(x).permute(0, 2, 3, 1))
            return y.permute(0, 3, 1, 2).mean((2, 3)) if back else y.flatten(1)

        def forward(self, x):
            return self.fc(self.body(x))
    return Probe().eval()


@pytest.mark.parametrize("op", [op for op in passthrough_ops() if isinstance(op, type)], ids=lambda op: op.__name__)
def test_pass_through_modules_follow_channels_last_only_when_elementwise(op):
    from test_graph_ops import _call
    if op in CHANNELS_ANYWHERE:
        graph = trace(_channels_last_probe(_call(op)), SHAPE)
        assert torch.equal(graph.layer("fc").in_ids, graph.layer("conv").out_ids)
    else:
        with pytest.raises(MdakitError, match=re.escape("on a tensor whose channels are on dim 3")):
            trace(_channels_last_probe(_call(op), back=False), SHAPE)


@pytest.mark.parametrize("forward, message", [
    (lambda m, x: m.fc(m.conv(x).permute(1, 0, 2, 3).mean((2, 3)).t()), "keep the batch dim first"),
    (lambda m, x: m.fc(nn.functional.layer_norm(m.conv(x), [4, 8, 8]).mean((2, 3))),
     "a LayerNorm over the channels only"),
    (lambda m, x: m.fc(m.conv(x).permute(0, 2, 3, 1).sum(3).flatten(1)[:, :4]), "channels that are on dim 3"),
    (lambda m, x: m.fc(m.conv(x).permute(0, 2, 3, 1).flatten(1)[:, :4]), "channels are on dim 3"),
])
def test_what_channels_last_cannot_follow_is_refused_by_name(forward, message):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 3)

        def forward(self, x):
            return forward(self, x)
    with pytest.raises(MdakitError, match=re.escape(message)):
        trace(Net().eval(), SHAPE)


@pytest.mark.parametrize("scale_shape", [(4,), (4, 1, 1), (1, 4, 1, 1)])
def test_a_per_channel_constant_pins_its_channels(scale_shape):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 3)
            self.gamma = nn.Parameter(torch.ones(*scale_shape))

        def forward(self, x):
            y = self.conv(x)
            if len(scale_shape) == 1:
                return self.fc(y.mean((2, 3)) * self.gamma)
            return self.fc((self.gamma.reshape(scale_shape) * y).mean((2, 3)))
    graph = trace(Scaled().eval(), SHAPE)
    assert graph.pinned_mask()[graph.groups(graph.layer("conv").out_ids)].all()


class EcaNet(nn.Module):
    """conv → efficient channel attention (a Conv1d along the pooled channels, viewed B×1×C) → conv → head."""

    def __init__(self):
        super().__init__()
        self.conv, self.eca, self.mid = nn.Conv2d(1, 6, 3, padding=1), nn.Conv1d(1, 1, 3, padding=1), nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = self.conv(x)
        y = self.eca(x.mean((2, 3)).view(x.shape[0], 1, -1)).sigmoid().view(x.shape[0], -1, 1, 1)
        return self.fc(self.mid(x * y.expand_as(x)).mean((2, 3)))


def test_efficient_channel_attention_pins_the_channels_it_slides_along():
    graph, keep, part, reference = extract(EcaNet(), SHAPE)
    assert graph.pinned_mask()[graph.groups(graph.layer("conv").out_ids)].all()
    assert len(keep.layers["mid"]["out"]) < 5  # the channels after the gate can still go
    images = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(part(images), reference(images), rtol=1e-5, atol=1e-5)


def test_a_conv1d_that_is_not_channel_attention_is_refused():
    class Wide(EcaNet):  # two output channels: no longer a gate per channel
        def __init__(self):
            super().__init__()
            self.eca = nn.Conv1d(1, 2, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)
            y = self.eca(x.mean((2, 3)).view(x.shape[0], 1, -1)).mean(1).view(x.shape[0], -1, 1, 1)
            return self.fc(self.mid(x * y).mean((2, 3)))
    with pytest.raises(MdakitError, match="mdakit follows a Conv1d only with one channel sliding along"):
        trace(Wide().eval(), SHAPE)


def test_shapes_are_read_wherever_the_channels_are():
    class Reads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.LayerNorm(4), nn.Linear(4, 3)

        def forward(self, x):
            y = self.norm(self.conv(x).permute(0, 2, 3, 1))
            b, h, w, c = y.shape
            return self.fc(y.reshape(b, h, w, c).permute(0, 3, 1, 2).mean((2, 3)))
    graph = trace(Reads().eval(), SHAPE)
    assert torch.equal(graph.layer("fc").in_ids, graph.layer("conv").out_ids)


def test_a_functional_group_norm_pins_its_channels():
    class GroupNorm1(nn.GroupNorm):  # timm's: one group, called through F.group_norm
        def forward(self, x):
            return nn.functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), GroupNorm1(1, 4), nn.Conv2d(4, 5, 1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(5, 3))
    graph, keep, part, reference = extract(net, SHAPE)
    assert graph.pinned_mask()[graph.groups(graph.layer("0").out_ids)].all() and graph.unmergeable
    images = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(part(images), reference(images), rtol=1e-5, atol=1e-5)
