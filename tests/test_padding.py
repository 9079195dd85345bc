"""Padded (alignment-padding) assembly: one merged network equals its parts' logits concatenated."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_surgery import RandomNet, random_masks

from mdakit.artifacts import ModelCard, load_with_card
from mdakit.assembly import assemble, fold_rescaling, load_assembled, save_assembled
from mdakit.data import ClassSubset
from mdakit.errors import MdakitError
from mdakit.examples import quadrant_images
from mdakit.graph import trace
from mdakit.padding import merge_padded, padded_widths, replay_padded, split_normalize
from mdakit.surgery import keep_sets, rebuild
from mdakit.zoo import build_model
from nets import (
    ChunkNet,
    ConvNeXtBlockNet,
    DepthwiseNet,
    GroupedNet,
    GroupNormNet,
    ShuffleNet,
    SliceNet,
    randomize_batchnorm,
    zoo_params,
)


@pytest.fixture(scope="module")
def images(mnist_test):
    test, _ = mnist_test
    sub = ClassSubset(test, list(range(10)), remap=False)
    return torch.stack([sub[i][0] for i in range(0, 400, 50)])


def _part(model, shape, seed, rows, with_keep=False):
    """A physically extracted part of ``model`` with random keep-sets (so parts differ in width)."""
    graph = trace(model, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keep = keep_sets(graph, random_masks(graph, seed), rows)
    part = rebuild(model, keep).eval()
    return (part, keep) if with_keep else part


def _widths(part, shape):
    return [layer.out_size for layer in trace(part, shape).layers]


def _assert_merges(parts, shape, x, atol=1e-5):
    """The padded merge of ``parts`` equals their logits side by side, to ``atol`` of the logits' scale."""
    merged = merge_padded(parts, shape).eval()
    with torch.no_grad():
        want = torch.cat([p(x) for p in parts], 1)
        got = merged(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= atol * max(1.0, float(want.abs().max())), float((got - want).abs().max())
    return merged


# the zoo's ViT is refused by the padded layout (tests/test_transformers.py)
@pytest.mark.parametrize("arch", zoo_params(slow={"resnet56"}, exclude={"vit"})
                         + ["torchvision:resnet18", "torchvision:googlenet"])
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


def _group_straddles_concat(net):
    """Whether a grouped conv reads a concat whose branches its groups cut across: no layer's order can put
    each part's groups side by side there, and the padded layout refuses it (see mdakit.padding)."""
    kinds, blocks = net.kinds, net.blocks
    for i, kind in enumerate(kinds):
        if kind == "grouped" and blocks[i].groups > 1:
            source = next((j for j in range(i - 1, -1, -1) if kinds[j] not in ("pool", "depthwise", "residual")), None)
            width = blocks[i].in_channels // blocks[i].groups
            if source is not None and kinds[source] == "concat" and blocks[source]["a"].out_channels % width:
                return True
    return False


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(st.sampled_from(["conv", "residual", "concat", "depthwise", "grouped", "pool"]), min_size=1,
                      max_size=4),
       width=st.lists(st.integers(1, 4), min_size=1, max_size=3), head=st.sampled_from([1, 2]),
       seed=st.integers(0, 1000))
@example(blocks=["concat", "grouped"], width=[4], head=1, seed=0)  # a group straddles the concat: refused
@example(blocks=["concat", "grouped"], width=[2], head=1, seed=0)  # each branch whole groups: merged
def test_padded_merge_on_random_architectures(blocks, width, head, seed, images):
    torch.manual_seed(seed)
    nets = [randomize_batchnorm(RandomNet(blocks, width, head, classes=4), seed + i).eval() for i in range(3)]
    parts = [_part(net, (1, 28, 28), seed + i, rows) for i, (net, rows) in enumerate(zip(nets, ([0, 1], [3], [2, 0])))]
    if _group_straddles_concat(nets[0]):
        with pytest.raises(MdakitError, match="grouped convolution .* needs each group of each part's input"):
            merge_padded(parts, (1, 28, 28))
        return
    merged = merge_padded(parts, (1, 28, 28)).eval()
    with torch.no_grad():
        assert (merged(images) - torch.cat([p(images) for p in parts], 1)).abs().max() <= 1e-4


def _parts_of(cls, seed=0, rows=([0, 2], [1], [2, 1]), shape=(1, 8, 8)):
    """Parts of differently initialised ``cls`` nets, with different random keep-sets (so widths differ)."""
    torch.manual_seed(seed)
    nets = [randomize_batchnorm(cls(), seed + i).eval() for i in range(len(rows))]
    return [_part(net, shape, seed + i, list(r)) for i, (net, r) in enumerate(zip(nets, rows))]


def test_grouped_convolutions_merge_group_by_group():
    """Each part keeps a grouped conv whole; the merged conv has a group per part and group, its input
    laid out part by part (or, after a concat, branch by branch: each branch is one group)."""
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for seed in (0, 1):
        parts = _parts_of(GroupedNet, seed)
        assert len({tuple(_widths(p, (1, 8, 8))) for p in parts}) > 1  # the parts keep different channels
        merged = _assert_merges(parts, (1, 8, 8), x)
        body = merged.net
        assert (body.multiplier.groups, body.grouped[0].groups, body.pair.groups) == (12, 12, 6)
        assert body.pair.in_channels == 18 and body.grouped[0].weight.shape[1] == 2
    _assert_merges(_parts_of(DepthwiseNet, 0, rows=([0, 2], [1])), (1, 8, 8), x)


def test_channel_slices_are_refused():
    """A slice's bounds are numbers in the code: on the parts' channels stacked they would pick others."""
    nets = [SliceNet().eval(), SliceNet().eval()]
    with pytest.raises(MdakitError, match="node 'getitem': its code picks channels at fixed positions"):
        merge_padded(nets, (1, 8, 8))


class _ShuffleForms(torch.nn.Module):
    """Channel shuffles in the forms not in ``ShuffleNet``: ``F.channel_shuffle``, ``torch.channel_shuffle``,
    and a view that fixes the group size (2 channels a group, as many groups as the width gives)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.mid = torch.nn.Conv2d(6, 6, 1)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        x = F.channel_shuffle(torch.relu(self.stem(x)), 3)
        b, c, h, w = x.shape
        x = x.reshape(b, c // 2, 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        x = torch.channel_shuffle(torch.relu(self.mid(x)) + x, 2)
        return self.fc(x.mean((2, 3)))


def test_channel_shuffles_merge_as_the_same_shuffle_at_the_merged_width():
    """nn.ChannelShuffle and view-transpose-view (``ShuffleNet``, after a chunk whose producer is reordered),
    F./torch.channel_shuffle and a view fixing the group size (``_ShuffleForms``)."""
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for cls in (ShuffleNet, _ShuffleForms):
        parts = _parts_of(cls)
        merged = _assert_merges(parts, (1, 8, 8), x)
        assert set(trace(merged.net, (3, 8, 8)).shuffles) == set(trace(parts[0], (1, 8, 8)).shuffles)


def test_chunk_pieces_merge_when_each_merged_piece_holds_every_parts_piece():
    """``ChunkNet``: a conv's output chunked in three (its filters are laid out piece by piece), and a
    concat of two branches chunked back into them (already piece by piece)."""
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for seed in (0, 1):
        parts = _parts_of(ChunkNet, seed)
        assert len({tuple(_widths(p, (1, 8, 8))) for p in parts}) > 1
        _assert_merges(parts, (1, 8, 8), x)


def test_group_norms_merge_group_by_group():
    """GroupNorm(G, C) of each part side by side is GroupNorm(P·G, P·C) on a part-by-part layout."""
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for seed in (0, 1):
        parts = _parts_of(GroupNormNet, seed)
        for part in parts:  # GroupNorms with random affine parameters
            for norm in (m for m in part.modules() if isinstance(m, torch.nn.GroupNorm)):
                torch.nn.init.normal_(norm.weight)
                torch.nn.init.normal_(norm.bias)
        merged = _assert_merges(parts, (1, 8, 8), x)
        assert (merged.net.stem[1].num_groups, merged.net.stem[1].num_channels) == (6, 24)
        assert (merged.net.block[1].num_groups, merged.net.block[1].num_channels) == (12, 24)


def _torchvision_parts(arch, shape=(3, 32, 32), with_keep=False):
    torch.manual_seed(0)
    models = [randomize_batchnorm(build_model(f"torchvision:{arch}", shape, 10, mean=[m] * 3, std=[0.3] * 3), i).eval()
              for i, m in enumerate((0.4, 0.5))]
    return [_part(model, shape, i, rows, with_keep) for i, (model, rows) in enumerate(zip(models, ([0, 1, 2], [5, 3])))]


@pytest.mark.parametrize("arch", ["regnet_x_400mf", "resnext50_32x4d"])
def test_torchvision_grouped_convolution_models_merge(arch):
    """RegNet and ResNeXt: every bottleneck's 3×3 is a grouped conv (random weights, 32×32 inputs)."""
    parts = _torchvision_parts(arch)
    assert _widths(parts[0].net, (3, 32, 32)) != _widths(parts[1].net, (3, 32, 32))
    _assert_merges(parts, (3, 32, 32), torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_torchvision_shufflenet_is_refused_at_its_first_chunk_of_a_shuffle():
    """A ShuffleNetV2 stride-1 block chunks the output of the previous block's shuffle, which no layer can
    reorder; and no order could do: the channels passed on unchanged (piece 0) move from merged position i
    to 2i, block after block, so after k blocks the first ⌈P·m/2^k⌉ merged positions survive while each part
    keeps ⌈m/2^k⌉ (m = 48 per branch in x0.5's third stage, 7 such blocks: 3 ≠ 2·2 at k = 5)."""
    with pytest.raises(MdakitError, match=r"cannot merge node 'getitem_4': merged piece 0 of the chunk of 'view_1' "
                                          r"would not hold exactly each part's piece 0; no Conv2d or Linear layer "
                                          r"produces 'view_1'"):
        merge_padded(_torchvision_parts("shufflenet_v2_x0_5"), (3, 32, 32))


class _Refused(torch.nn.Module):
    """One pattern the padded layout cannot merge, by name."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.a, self.b = torch.nn.Conv2d(1, 3, 1), torch.nn.Conv2d(1, 5, 3, padding=1)
        self.grouped = torch.nn.Conv2d(8, 4, 1, groups=2)
        self.norm = torch.nn.GroupNorm(1, 8)
        self.odd, self.c = torch.nn.Conv2d(1, 5, 1), torch.nn.Conv2d(1, 3, 1)
        self.fc = torch.nn.Linear(4 if kind == "grouped" else 8, 2)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        if self.kind == "grouped":
            y = self.grouped(y)
        elif self.kind == "group-norm":
            y = self.norm(y)
        elif self.kind == "split":
            first, second = y.split([2, 6], 1)
            y = torch.cat([second, first], 1)
        elif self.kind == "odd-chunk":
            first, second = self.odd(x).chunk(2, 1)
            y = torch.cat([first, second, self.c(x)], 1)
        elif self.kind == "both-sizes":
            b, c, h, w = y.shape
            y = y.view(b, 2, 4, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("kind, message", [
    ("grouped", "cannot merge node 'grouped': the grouped convolution 'grouped' needs each group of each part's input "
                "channels side by side, and its input is laid out otherwise; no Conv2d or Linear layer produces 'cat'"),
    ("group-norm", "cannot merge node 'norm': GroupNorm 'norm' needs each group of each part's channels side by side, "
                   "and its input is laid out otherwise; no Conv2d or Linear layer produces 'cat'"),
    ("split", "cannot merge node 'getitem': it is a piece of a split whose sizes are numbers in the model's code"),
    ("odd-chunk", r"cannot merge node 'getitem': chunk\(2\) of the parts' 10 stacked channels gives pieces of "
                  r"\[5, 5\], not the parts' pieces side by side \(\[6, 4\]\)"),
    ("both-sizes", "cannot merge the channel shuffle at node 'transpose': its code fixes both its number of groups "
                   "and their size"),
])
def test_each_refusal_is_one_line_naming_the_node_and_why(kind, message):
    nets = [_Refused(kind).eval(), _Refused(kind).eval()]
    with pytest.raises(MdakitError, match=message) as caught:
        merge_padded(nets, (1, 8, 8))
    assert "\n" not in str(caught.value)


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


@pytest.mark.parametrize("cls", [GroupedNet, ShuffleNet, ChunkNet, GroupNormNet])
def test_group_wise_merges_round_trip_through_files(cls, tmp_path):
    """Parts of two user-built nets (their cards recording the module, then the keep-sets), assembled padded,
    saved and loaded again: the merged network is rebuilt from the recorded structure and the ``padded`` edit
    (grouped convs' groups, GroupNorms' groups and widths), and still equals the parts side by side."""
    from mdakit.graph.recorded import record_graph

    shape = (1, 8, 8)
    torch.manual_seed(0)
    nets = [randomize_batchnorm(cls(classes=4), i).eval() for i in range(2)]
    specs = []
    for i, (net, rows) in enumerate(zip(nets, ([0, 1], [3, 2]))):
        part, keep = _part(net, shape, i, rows, with_keep=True)
        specs.append((part, ModelCard(None, list(shape), 4, dataset="quadrants", logit_classes=rows,
                                      edits=[record_graph(net, shape), keep.to_dict()])))
    model, card = assemble(specs, layout="padded", rescale="none")
    edit = padded_widths(model.net, card.input_shape)
    save_assembled(model, tmp_path / "asm", card)
    standard, _ = load_with_card(tmp_path / "asm")
    images = quadrant_images(2).tensors[0]
    with torch.no_grad():
        want = torch.cat([part(images) for part, _ in specs], 1)
        assert (standard(images) - want).abs().max() <= 1e-5
    assert padded_widths(standard, card.input_shape) == edit
    if cls is GroupNormNet:
        assert edit["group_norms"] == {"net.stem.1": {"channels": 16, "groups": 4},
                                       "net.block.1": {"channels": 16, "groups": 8}}


def test_torchvision_regnet_round_trips_through_files(tmp_path):
    """A padded RegNet (grouped convs) saved as a model file rebuilds from ``torchvision:regnet_x_400mf``."""
    shape = (3, 32, 32)
    parts = _torchvision_parts("regnet_x_400mf", shape, with_keep=True)
    specs = [(part, ModelCard("torchvision:regnet_x_400mf", list(shape), 10, dataset=name, logit_classes=rows,
                              mean=[m] * 3, std=[0.3] * 3, edits=[keep.to_dict()]))
             for (part, keep), name, rows, m in zip(parts, ("a", "b"), ([0, 1, 2], [5, 3]), (0.4, 0.5))]
    model, card = assemble(specs, layout="padded", rescale="none")
    save_assembled(model, tmp_path / "asm", card)
    standard, _ = load_with_card(tmp_path / "asm")
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = torch.cat([part(x) for part, _ in parts], 1)
        assert (standard(x) - want).abs().max() <= 1e-5
    groups = {name: w["groups"] for name, w in padded_widths(standard, shape)["layers"].items() if w["groups"] > 1}
    assert groups and all(g % 2 == 0 for g in groups.values())


def test_replay_padded_rebuilds_group_norms_from_the_base_architecture():
    parts = _parts_of(GroupNormNet, rows=([0, 2], [1]))
    merged = merge_padded(parts, (1, 8, 8))
    rebuilt = replay_padded(GroupNormNet(), padded_widths(merged, (1, 8, 8)))
    rebuilt.load_state_dict(merged.state_dict())
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), merged(x))


def _convnext_parts(net_factory, shape):
    torch.manual_seed(0)
    nets = [net_factory().eval() for _ in range(2)]
    for i, net in enumerate(nets):  # random affine parameters and layer scales, so that every part differs
        torch.manual_seed(i + 1)
        for norm in (m for m in net.modules() if isinstance(m, torch.nn.LayerNorm)):
            torch.nn.init.normal_(norm.weight)
            torch.nn.init.normal_(norm.bias)
    return [_part(net, shape, i, rows) for i, (net, rows) in enumerate(zip(nets, ([0, 2], [1])))]


def _small_torchvision_convnext():
    import torchvision

    net = torchvision.models.convnext_tiny(num_classes=3)
    net.features = net.features[:4]
    net.classifier[0] = type(net.classifier[0])(192, eps=1e-6)
    net.classifier[2] = torch.nn.Linear(192, 3)
    return net


def _timm_convnext(conv_mlp):
    timm = pytest.importorskip("timm")
    return lambda: timm.create_model("convnext_atto", num_classes=3, conv_mlp=conv_mlp, depths=(1, 1, 1, 1),
                                     ls_init_value=0.5)


@pytest.mark.parametrize("factory, shape", [
    (ConvNeXtBlockNet, (1, 8, 8)), (_small_torchvision_convnext, (3, 32, 32)),
    (_timm_convnext(False), (3, 32, 32)), (_timm_convnext(True), (3, 32, 32)),
], ids=["block", "torchvision", "timm", "timm-conv-mlp"])
def test_layer_norms_and_layer_scales_merge_part_by_part(factory, shape):
    """ConvNeXt: every LayerNorm (channels-last, or a LayerNorm2d permuting inside) becomes a part-wise
    LayerNorm, every layer scale is stacked in layout order; the merge equals the parts and the padded edit
    rebuilds it from the base architecture."""
    parts = _convnext_parts(factory, shape)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    merged = _assert_merges(parts, shape, x)
    edit = padded_widths(merged, shape)
    assert edit["layer_norms"] and edit["channel_params"]
    rebuilt = replay_padded(factory(), edit)
    rebuilt.load_state_dict(merged.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), merged(x))


def test_a_functional_layer_norm_of_a_rebuilt_module_is_refused(tmp_path):
    """A user-built module's LayerNorm2d-style subclass is traced through: in the module its card rebuilds it
    is a function call of no LayerNorm module, which no part-wise norm can take the place of."""
    from mdakit.graph.recorded import record_graph, replay_graph

    net = ConvNeXtBlockNet().eval()
    rebuilt = replay_graph(None, record_graph(net, (1, 8, 8)))
    rebuilt.load_state_dict(net.state_dict())
    parts = [_part(rebuilt.eval(), (1, 8, 8), i, rows) for i, rows in enumerate(([0, 2], [1]))]
    with pytest.raises(MdakitError, match="node 'layer_norm': a LayerNorm's statistics span its channels, and would "
                                          "span the parts'; use the parallel layout"):
        merge_padded(parts, (1, 8, 8))


def test_a_per_channel_constant_computed_in_the_code_is_refused():
    class Computed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Linear(4, 3)
            self.gamma = torch.nn.Parameter(torch.ones(4, 1, 1))

        def forward(self, x):
            return self.fc((self.conv(x) * self.gamma.exp()).mean((2, 3)))

    net = Computed().eval()
    assert trace(net, (1, 8, 8)).channel_params == {}
    with pytest.raises(MdakitError, match="a per-channel constant computed in the code would need stacking"):
        merge_padded([_part(net, (1, 8, 8), i, [0]) for i in range(2)], (1, 8, 8))
