import pytest
import torch
from torch import nn

from mdakit.attribution.contribution import (
    ContributionSettings,
    class_batches,
    class_masks,
    contribution_sums,
    relative_contributions,
)
from mdakit.attribution.kernels import conv2d_contributions
from mdakit.attribution.samples import select_samples
from mdakit.data import ImageTensorDataset
from mdakit.errors import MdakitError
from mdakit.graph import trace


def _two_layer():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]))
        net[3].weight.copy_(torch.tensor([[1.0, 0.1], [-1.0, 1.0]]))
    return net


class _Ones(torch.utils.data.Dataset):
    targets = torch.tensor([0])

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return torch.ones(1, 1, 3), 0


def test_masks_match_hand_computation():
    net = _two_layer()
    graph = trace(net, (1, 1, 3))
    sums = contribution_sums(graph, class_batches(_Ones(), {0: torch.tensor([0])}), graph.layers)[0]
    # h1 = W1 * x, h2 = W2 * relu(W1 x) with x = 1: positive parts summed over the one sample
    assert torch.allclose(sums["1"], torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]))
    assert torch.allclose(sums["3"], torch.tensor([[3.5, 0.2], [0.0, 2.0]]))
    settings = ContributionSettings(alpha_linear=0.4, beta_linear=0.3)
    m0 = class_masks(graph, sums, row=0, settings=settings)
    assert m0["3"].kernels.tolist() == [[True, False], [False, False]]
    assert m0["3"].inputs.tolist() == [True, False]
    assert m0["1"].outputs.tolist() == [True, False]
    assert m0["1"].kernels.tolist() == [[False, True, False], [False, False, False]]  # r = [1/3, 1, 0]
    assert m0["1"].inputs.tolist() == [False, True, False]
    m1 = class_masks(graph, sums, row=1, settings=settings)
    assert m1["3"].inputs.tolist() == [False, True]
    assert m1["1"].inputs.tolist() == [False, False, True]


def test_beta_divides_by_the_max_count():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False))
    graph = trace(net, (1, 1, 3))
    # the last layer needs all three filters (equal positive contributions give r = 1) ...
    # ... whose kernels pass α = 0.5 as [T F T], [T T F], [T F T]: ü = [3, 1, 2], s = ü / 3
    sums = {"3": torch.tensor([[4.0, 4.0, 4.0]]),
            "1": torch.tensor([[9.0, 0.0, 5.0], [9.0, 5.0, 0.0], [9.0, 0.0, 9.0]])}
    for beta, expected in ((0.3, [True, True, True]), (0.5, [True, False, True]), (0.9, [True, False, False])):
        masks = class_masks(graph, sums, 0, ContributionSettings(alpha_linear=0.5, beta_linear=beta))
        assert masks["3"].inputs.tolist() == [True, True, True]
        assert masks["1"].kernels.sum(0).tolist() == [3, 1, 2]
        assert masks["1"].inputs.tolist() == expected


def test_negative_batchnorm_gamma_flips_rows():
    conv = nn.Conv2d(2, 2, 1, bias=False)
    net = nn.Sequential(conv, nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0], [1.0, -1.0]]).view(2, 2, 1, 1))
        net[1].weight.copy_(torch.tensor([1.0, -2.0]))
    net.eval()
    graph = trace(net, (2, 3, 3))
    x = torch.rand(4, 2, 3, 3)

    class _Data(torch.utils.data.Dataset):
        targets = torch.zeros(4, dtype=torch.long)

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[i], 0

    sums = contribution_sums(graph, class_batches(_Data(), {0: torch.arange(4)}, 3), graph.layers)[0]
    h = conv2d_contributions(x, conv)
    assert torch.allclose(sums["0"][0], h[:, 0].clamp(min=0).sum(0), atol=1e-5)
    assert torch.allclose(sums["0"][1], (-h[:, 1]).clamp(min=0).sum(0), atol=1e-5)


def test_relative_contributions_depthwise_blocks():
    total = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # groups=2: filter 0 sees input 0, filter 1 input 1
    assert relative_contributions(total, groups=2).tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_select_samples_prefers_confident_correct_images():
    images = torch.tensor([[10, 0], [200, 0], [0, 90], [120, 0], [0, 255]], dtype=torch.uint8).view(5, 1, 1, 2)
    labels = torch.tensor([0, 0, 0, 0, 1])
    data = ImageTensorDataset(images, labels)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.eye(2) * 10)
    chosen = select_samples(net, data, [0, 1], [0, 1], n=2, pool_factor=10)
    assert chosen[0].tolist() == [1, 3]  # image 2 is misclassified, image 0 the least confident
    assert chosen[1].tolist() == [4]
    with pytest.raises(MdakitError, match="no correctly classified"):
        select_samples(net, data, [1], [0], n=1)
    with pytest.raises(MdakitError, match="no training images of class 7"):
        select_samples(net, data, [7], [0], n=1)


@pytest.mark.parametrize("field, value", [("alpha_conv", 0.0), ("beta_conv", 1.5), ("alpha_linear", -0.1),
                                          ("beta_linear", 2.0), ("layers", 0)])
def test_settings_are_validated(field, value):
    with pytest.raises(MdakitError):
        ContributionSettings(**{field: value}).validate()


def test_streamed_masks_equal_masks_from_kept_sums(mnist_train):
    from mdakit.attribution.contribution import contribution_masks, iter_class_sums, masks_from_sums
    from mdakit.zoo import build_model

    train, info = mnist_train
    torch.manual_seed(0)
    model = build_model("lenet5", info.input_shape, 10, info.mean, info.std).eval()
    graph = trace(model, info.input_shape)
    samples = {3: torch.arange(0, 40, 3), 1: torch.arange(1, 40, 3)}
    rows = {3: 3, 1: 1}
    kept = contribution_sums(graph, class_batches(train, samples, 5), graph.layers)
    streamed = contribution_masks(graph, train, samples, rows, ContributionSettings(batch_size=5))
    assert streamed.per_class == masks_from_sums(graph, kept, rows, ContributionSettings()).per_class
    assert [c for c, _ in iter_class_sums(graph, class_batches(train, samples, 5), graph.layers)] == [3, 1]
    shuffled = [(3, train[0][0][None]), (1, train[1][0][None]), (3, train[2][0][None])]
    with pytest.raises(ValueError, match="not consecutive"):
        list(iter_class_sums(graph, shuffled, graph.layers))
