"""Padded (alignment-padding) assembly: one merged network equals its parts' logits concatenated."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_surgery import RandomNet, random_masks

from mdakit.artifacts import ModelCard, load_with_card
from mdakit.assembly import assemble, fold_rescaling, load_assembled, save_assembled
from mdakit.data import ClassSubset
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.padding import merge_padded, split_normalize
from mdakit.surgery import keep_sets, rebuild
from mdakit.zoo import build_model
from nets import DepthwiseNet, GroupNormNet, SliceNet, randomize_batchnorm, zoo_params


@pytest.fixture(scope="module")
def images(mnist_test):
    test, _ = mnist_test
    sub = ClassSubset(test, list(range(10)), remap=False)
    return torch.stack([sub[i][0] for i in range(0, 400, 50)])


def _part(model, shape, seed, rows):
    """A physically extracted part of ``model`` with random keep-sets (so parts differ in width)."""
    graph = trace(model, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keep = keep_sets(graph, random_masks(graph, seed), rows)
    return rebuild(model, keep).eval()


@pytest.mark.parametrize("arch", zoo_params(slow={"resnet56"}) + ["torchvision:resnet18", "torchvision:googlenet"])
def test_padded_merge_equals_parts_concatenated(arch, images):
    shape = (1, 28, 28)
    torch.manual_seed(0)
    a = randomize_batchnorm(build_model(arch, shape, 10, mean=[0.13], std=[0.31]), 1).eval()
    b = randomize_batchnorm(build_model(arch, shape, 10, mean=[0.29], std=[0.35]), 2).eval()
    parts = [_part(a, shape, 1, [0, 1, 2]), _part(b, shape, 2, [5, 3])]
    merged = merge_padded(parts, shape).eval()
    with torch.no_grad():
        want = torch.cat([p(images) for p in parts], 1)
        got = merged(images)
    assert got.shape == (len(images), 5)
    assert (got - want).abs().max() <= 1e-4, float((got - want).abs().max())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(st.sampled_from(["conv", "residual", "concat", "depthwise", "pool"]), min_size=1, max_size=4),
       width=st.lists(st.integers(1, 4), min_size=1, max_size=3), head=st.sampled_from([1, 2]),
       seed=st.integers(0, 1000))
def test_padded_merge_on_random_architectures(blocks, width, head, seed, images):
    torch.manual_seed(seed)
    nets = [randomize_batchnorm(RandomNet(blocks, width, head, classes=4), seed + i).eval() for i in range(3)]
    parts = [_part(net, (1, 28, 28), seed + i, rows) for i, (net, rows) in enumerate(zip(nets, ([0, 1], [3], [2, 0])))]
    merged = merge_padded(parts, (1, 28, 28)).eval()
    with torch.no_grad():
        assert (merged(images) - torch.cat([p(images) for p in parts], 1)).abs().max() <= 1e-4


def test_grouped_convolutions_are_refused():
    nets = [DepthwiseNet().eval(), DepthwiseNet().eval()]
    with pytest.raises(MdakitError, match="grouped convolution 'gc'"):
        merge_padded(nets, (1, 8, 8))


def test_channel_slices_are_refused():
    """A slice's bounds are numbers in the code: on the parts' channels stacked they would pick others."""
    nets = [SliceNet().eval(), SliceNet().eval()]
    with pytest.raises(MdakitError, match="node 'getitem': its code picks channels at fixed positions"):
        merge_padded(nets, (1, 8, 8))


def test_group_norms_are_refused():
    with pytest.raises(MdakitError, match="a GroupNorm's statistics span its channels"):
        merge_padded([GroupNormNet().eval(), GroupNormNet().eval()], (1, 8, 8))


def test_different_graphs_are_refused():
    a, b = build_model("lenet5", (1, 28, 28), 2).eval(), build_model("vgg16", (1, 28, 28), 2).eval()
    with pytest.raises(MdakitError, match="same graph"):
        merge_padded([a, b], (1, 28, 28))


def test_each_part_sees_its_own_normalisation(images):
    a = build_model("lenet5", (1, 28, 28), 2, mean=[0.1], std=[0.2]).eval()
    b = build_model("lenet5", (1, 28, 28), 2, mean=[0.7], std=[0.9]).eval()
    merged = merge_padded([a, b], (1, 28, 28))
    norm, _ = split_normalize(a)
    assert merged.normalize.mean.flatten().tolist() == pytest.approx([0.1, 0.7])
    assert merged.normalize.std.flatten().tolist() == pytest.approx([0.2, 0.9])
    assert norm is not None


def test_folded_rescaling_equals_parallel_rescaling(images):
    torch.manual_seed(3)
    cards, modules = [], []
    for dataset, rows, mean in (("mnist", [0, 1, 2], 0.13), ("fashion-mnist", [4, 7], 0.29)):
        base = build_model("lenet5", (1, 28, 28), 10, mean=[mean], std=[0.3]).eval()
        modules.append(_part(base, (1, 28, 28), len(rows), rows))
        cards.append(ModelCard("lenet5", [1, 28, 28], 10, dataset=dataset, logit_classes=rows, mean=[mean], std=[0.3],
                               edits=[]))
    parts = list(zip(modules, cards))
    parallel, card = assemble(parts, layout="parallel")
    with torch.no_grad():
        parallel.scale.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0]))
        parallel.shift.copy_(torch.tensor([0.0, 0.1, -0.2, 0.3, 0.0]))
    padded, padded_card = assemble(parts, layout="padded")
    fold_rescaling(padded.net, [1, 28, 28], parallel.scale, parallel.shift)
    with torch.no_grad():
        assert (padded(images) - parallel(images)).abs().max() <= 1e-4
    assert padded_card.layout == "padded"


def test_padded_round_trip_through_files(tmp_path, images, tiny_lenet_dir, data_dir):
    from mdakit.disassembly import disassemble

    part_a = disassemble(tiny_lenet_dir, "mnist", "0,1", samples=10, data_dir=data_dir)
    part_b = disassemble(tiny_lenet_dir, "mnist", "7,3,9", samples=10, data_dir=data_dir)
    part_b.card.dataset = "other-digits"  # same classes may not come twice from one dataset
    model, card = assemble([part_a, part_b], layout="padded", rescale="none")
    save_assembled(model, tmp_path / "asm", card)
    standard, standard_card = load_with_card(tmp_path / "asm")
    loaded, _ = load_assembled(tmp_path / "asm")
    with torch.no_grad():
        want = torch.cat([part_a.model(images), part_b.model(images)], 1)
        assert (standard(images) - want).abs().max() <= 1e-4
        assert torch.equal(loaded(images), standard(images))
    assert standard_card.class_names[2] == "other-digits:7"
    x = F.interpolate(images, size=(28, 28))
    assert loaded(x).shape == (len(images), 5)


class _AddAfterConcat(torch.nn.Module):
    """A residual add whose first operand is a concat (interleaved per part after merging)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.b = torch.nn.Conv2d(1, 3, 1)
        self.c = torch.nn.Conv2d(5, 5, 3, padding=1)
        self.fc = torch.nn.Linear(5, 3)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        return self.fc((y + self.c(torch.relu(y))).mean((2, 3)))


def test_residual_add_after_concat_reorders_the_branch(images):
    torch.manual_seed(0)
    nets = [_AddAfterConcat().eval(), _AddAfterConcat().eval()]
    parts = [_part(nets[0], (1, 28, 28), 0, [0, 2]), _part(nets[1], (1, 28, 28), 1, [1])]
    merged = merge_padded(parts, (1, 28, 28)).eval()
    with torch.no_grad():
        assert (merged(images) - torch.cat([p(images) for p in parts], 1)).abs().max() <= 1e-5
