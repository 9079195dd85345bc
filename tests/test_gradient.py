import torch
from torch import nn

from mdakit.attribution.contribution import class_batches
from mdakit.attribution.gradient import GradientSettings, class_masks, gradient_masks, gradient_scores
from mdakit.data import ImageTensorDataset
from mdakit.graph import trace
from mdakit.surgery import MaskedModel, keep_sets, rebuild
from nets import ResidualNet, randomize_batchnorm


def _data(n=6, shape=(1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    return ImageTensorDataset(images, torch.zeros(n, dtype=torch.long))


def test_scores_equal_autograd_by_hand():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 3)
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    data = _data()
    graph = trace(net, (1, 8, 8))
    scores = gradient_scores(graph, class_batches(data, {0: torch.arange(6)}, 4), {0: 1})[0]["0"]
    x = torch.stack([data[i][0] for i in range(6)])
    out = conv(x)
    grad, = torch.autograd.grad(net[1:](out)[:, 1].sum(), out)
    assert torch.allclose(scores, grad.clamp(min=0).sum((0, 2, 3)), atol=1e-6)


def test_masks_keep_channels_above_threshold_without_accumulation():
    net = randomize_batchnorm(ResidualNet()).eval()
    graph = trace(net, (1, 8, 8))
    scores = {layer.name: torch.linspace(0, 1, layer.out_size) for layer in graph.layers if layer.kind == "conv"}
    masks = class_masks(graph, scores, row=2, threshold=0.2)
    assert masks["c1"].outputs.tolist() == (torch.linspace(0, 1, 5) > 0.2).tolist()
    assert masks["fc"].outputs.tolist() == [False, False, True, False]
    # residual partners share a group: a channel kept by either member is kept in both
    assert torch.equal(masks["stem"].outputs, masks["c2"].outputs)


def test_gradient_parts_extract_exactly():
    net = randomize_batchnorm(ResidualNet()).eval()
    graph = trace(net, (1, 8, 8))
    data = _data(shape=(1, 8, 8))
    masks = gradient_masks(graph, data, {0: torch.arange(6), 3: torch.arange(3)}, {0: 0, 3: 3},
                           GradientSettings(threshold=0.5))
    keep = keep_sets(graph, masks.union([3, 0]), [3, 0])
    part = rebuild(net, keep).eval()
    x = torch.stack([data[i][0] for i in range(6)])
    with torch.no_grad():
        assert (part(x) - MaskedModel(graph, keep)(x)).abs().max() <= 1e-5
    assert masks.method == "gradient"
