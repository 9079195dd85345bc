"""Small hand-built networks that exercise each channel-flow pattern, and the zoo's architectures as
test parameters (shared by the tests)."""

from __future__ import annotations

from collections.abc import Collection

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from mdakit.zoo import available, is_detector


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random statistics and affine parameters (some γ negative)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=g))
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


class ConcatPoolNet(nn.Module):
    """Two branches concatenated, adaptive-pooled to 2×2, flattened into a Linear."""

    def __init__(self, in_ch: int = 1, classes: int = 5):
        super().__init__()
        self.a = nn.Conv2d(in_ch, 3, 3, padding=1)
        self.b = nn.Conv2d(in_ch, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(7 * 4, classes)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.fc(torch.flatten(self.pool(y), 1))


class ResidualNet(nn.Module):
    """Stem, an identity residual block, a projection residual block, global pool, Linear."""

    def __init__(self, in_ch: int = 1, classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(in_ch, 6, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(6)
        self.c1 = nn.Conv2d(6, 5, 3, padding=1)
        self.c2 = nn.Conv2d(5, 6, 3, padding=1)
        self.proj = nn.Conv2d(6, 8, 1, stride=2)
        self.c3 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(x + self.c2(torch.relu(self.c1(x))))
        x = torch.relu(self.proj(x) + self.bn3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


class DepthwiseNet(nn.Module):
    """Pointwise, depthwise, grouped (groups=2) convolutions and a view-based flatten."""

    def __init__(self, in_ch: int = 1, classes: int = 3):
        super().__init__()
        self.pw = nn.Conv2d(in_ch, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.gc = nn.Conv2d(8, 4, 3, stride=2, groups=2)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.dw(self.pw(x))))
        x = self.pool(self.gc(x))
        return self.fc(x.view(x.size(0), -1))


class GroupedNet(nn.Module):
    """Grouped convolutions between removable channels: a depthwise convolution with a channel multiplier
    (2 filters per input channel), a ResNeXt-style bottleneck (1×1, 3×3 in 4 groups, 1×1, residual add) and
    a grouped 1×1 reading a concat whose two branches are its two groups."""

    def __init__(self, in_ch: int = 1, classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(in_ch, 4, 3, padding=1)
        self.multiplier = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.mid = nn.Conv2d(8, 6, 1)
        self.reduce = nn.Sequential(nn.Conv2d(6, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6))
        self.a = nn.Conv2d(6, 3, 1)
        self.b = nn.Conv2d(6, 3, 3, padding=1)
        self.pair = nn.Conv2d(6, 4, 1, groups=2)
        self.wide = nn.Conv2d(4, 7, 1)
        self.fc = nn.Linear(7, classes)

    def forward(self, x):
        x = torch.relu(self.multiplier(torch.relu(self.stem(x))))
        x = torch.relu(self.mid(x))
        x = torch.relu(x + self.expand(self.grouped(self.reduce(x))))
        x = torch.relu(self.pair(torch.cat([self.a(x), torch.relu(self.b(x))], 1)))
        return self.fc(torch.relu(self.wide(x)).mean((2, 3)))


class ChunkNet(nn.Module):
    """Chunks along channels: a conv's output in three pieces (two of them added), and a concat of two
    branches chunked back into them."""

    def __init__(self, in_ch: int = 1, classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(in_ch, 6, 3, padding=1)
        self.left = nn.Sequential(nn.Conv2d(2, 5, 1), nn.ReLU(), nn.Conv2d(5, 3, 3, padding=1))
        self.right = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
        self.head = nn.Conv2d(3, 5, 1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        p, q, r = torch.relu(self.stem(x)).chunk(3, dim=1)
        y = torch.cat([self.left(p), self.right(q + r)], 1)
        a, b = torch.chunk(y, 2, 1)
        return self.fc(torch.cat([torch.relu(self.head(a)), b], 1).mean((2, 3)))


class ShuffleNet(nn.Module):
    """A ShuffleNet-style unit: chunk along channels, a branch, concat, then two channel shuffles (the
    module and the view → transpose → view form), and stochastic depth on a residual branch."""

    def __init__(self, in_ch: int = 1, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_ch, 8, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1))
        self.shuffle = nn.ChannelShuffle(2)
        self.mix = nn.Conv2d(8, 8, 1)
        self.depth = StochasticDepth(0.2, "row")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        left, right = x.chunk(2, dim=1)
        x = self.shuffle(torch.cat((left, self.branch(right)), 1))
        b, c, h, w = x.size()
        x = x.view(b, 4, c // 4, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        x = x + self.depth(torch.relu(self.mix(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class SliceNet(nn.Module):
    """Channel slices as GhostNet and ReXNet write them: a concat cut back to a width (``[:, :9]`` of 10
    channels), a slice that keeps every channel (``[:, :8]`` of 8), a shortcut added to the first channels
    (``[:, :4]`` + shortcut, concatenated with the rest) and a spatial crop."""

    def __init__(self, in_ch: int = 1, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_ch, 4, 3, padding=1)
        self.primary = nn.Sequential(nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(5, 5, 3, padding=1, groups=5), nn.BatchNorm2d(5), nn.ReLU())
        self.expand = nn.Conv2d(9, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        shortcut = torch.relu(self.stem(x))
        a = self.primary(shortcut)
        x = torch.cat([a, self.cheap(a)], 1)[:, :9]
        x = torch.relu(self.expand(x))[:, :8]
        x = torch.cat([x[:, 0:4] + shortcut, x[:, 4:]], dim=1)[:, :, 1:, 1:]
        return self.fc(x.mean((2, 3)))


class FunctionalLinear(nn.Linear):
    """A Linear subclass written as timm's: it is traced through to ``F.linear`` on its own parameters."""

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


class GroupNormNet(nn.Module):
    """Convs with GroupNorm (its channels pinned) on a residual path, before a removable conv."""

    def __init__(self, in_ch: int = 1, classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(4, 8))
        self.wide = nn.Sequential(nn.Conv2d(8, 12, 1), nn.ReLU())
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.fc(self.wide(x).mean((2, 3)))


class RandomNet(nn.Module):
    """A random stack of blocks: plain conv, residual, concat, depthwise, grouped, pooling."""

    def __init__(self, blocks, width, head, classes):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.kinds = []
        ch = 1
        for i, kind in enumerate(blocks):
            w = width[i % len(width)]
            if kind == "conv":
                mod = nn.Sequential(nn.Conv2d(ch, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
                ch = w
            elif kind == "residual":
                mod = nn.ModuleDict({"a": nn.Conv2d(ch, w, 3, padding=1), "b": nn.Conv2d(w, ch, 3, padding=1),
                                     "bn": nn.BatchNorm2d(ch)})
            elif kind == "concat":
                mod = nn.ModuleDict({"a": nn.Conv2d(ch, w, 1), "b": nn.Conv2d(ch, 2, 3, padding=1)})
                ch = w + 2
            elif kind == "depthwise":
                mod = nn.Conv2d(ch, ch, 3, padding=1, groups=ch)
            elif kind == "grouped":
                mod = nn.Conv2d(ch, 2 * w, 3, padding=1, groups=2) if ch % 2 == 0 else nn.Conv2d(ch, 2 * w, 1)
                ch = 2 * w
            else:
                mod = nn.MaxPool2d(2)
            self.blocks.append(mod)
            self.kinds.append(kind)
        self.pool = nn.AdaptiveAvgPool2d(head)
        self.fc1 = nn.Linear(ch * head * head, 6)
        self.fc2 = nn.Linear(6, classes)

    def forward(self, x):
        for kind, mod in zip(self.kinds, self.blocks):
            if kind == "residual":
                x = torch.relu(x + mod["bn"](mod["b"](torch.relu(mod["a"](x)))))
            elif kind == "concat":
                x = torch.cat([mod["a"](x), torch.relu(mod["b"](x))], 1)
            else:
                x = mod(x)
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.pool(x), 1))))


def first_images(dataset, n: int) -> torch.Tensor:
    """The first ``n`` images of a dataset, stacked."""
    return torch.stack([dataset[i][0] for i in range(n)])


def input_dependent_gates(net: nn.Module, seed: int = 0) -> nn.Module:
    """A decoupled net whose gate biases sit around 0, so inputs select different, partial filter sets (eval mode)."""
    torch.manual_seed(seed)
    for gate in net.gates:
        nn.init.normal_(gate.fc2.weight, 0.0, 0.5)  # input-dependent gates (they start input-blind)
        nn.init.normal_(gate.fc2.bias, 0.0, 0.5)
    return net.eval()


def zoo_params(slow: Collection[str] = (), exclude: Collection[str] = ()) -> list:
    """Every classifier of the zoo registry but ``exclude`` as a pytest parameter, those in ``slow`` marked
    slow (the detectors have tests of their own, tests/test_detectors.py)."""
    return [pytest.param(arch, marks=pytest.mark.slow) if arch in slow else arch
            for arch in available() if arch not in exclude and not is_detector(arch)]


class ChannelsLastLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a B×C×H×W tensor, as ConvNeXt's ``LayerNorm2d`` (traced through)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlockNet(nn.Module):
    """A ConvNeXt in miniature: a patchify stem and a channels-first LayerNorm, one block (depthwise conv,
    permute to channels-last, LayerNorm, Linear → GELU → Linear, permute back, a C×1×1 layer scale, residual)
    and a head of pooling, LayerNorm over features and Linear."""

    def __init__(self, in_ch: int = 1, classes: int = 3, width: int = 6, hidden: int = 12):
        super().__init__()
        self.stem = nn.Conv2d(in_ch, width, 2, stride=2)
        self.stem_norm = ChannelsLastLayerNorm(width)
        self.dwconv = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)
        self.layer_scale = nn.Parameter(torch.linspace(0.5, 1.5, width).view(width, 1, 1))
        self.head_norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.stem_norm(self.stem(x))
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.fc2(self.act(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        x = x + self.layer_scale * y
        return self.fc(self.head_norm(x.mean((2, 3))))
