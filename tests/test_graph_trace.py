import re

import pytest
import torch
from torch import nn

from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.zoo import build_model
from nets import ConcatPoolNet, DepthwiseNet, ResidualNet, ShuffleNet


def test_lenet_flatten_maps_features_to_channels():
    g = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    conv2, fc1 = g.layer("net.features.3"), g.layer("net.classifier.1")
    # feature f of fc1 comes from channel f // 25 of conv2 (16 × 5 × 5 flattened)
    assert torch.equal(fc1.in_ids, conv2.out_ids.repeat_interleave(25))
    assert g.output_layer.name == "net.classifier.5"
    assert g.layer("net.features.0").in_ids.tolist() == g.node_ids[g.order[0]].tolist()


def test_lenet_traces_at_another_input_shape():
    g = trace(build_model("lenet5", (3, 32, 32), 10), (3, 32, 32))
    assert g.layer("net.classifier.1").in_size == 16 * 6 * 6


def test_concat_offsets_then_pool_and_flatten():
    net = ConcatPoolNet()
    g = trace(net, (1, 8, 8))
    a, b, fc = g.layer("a"), g.layer("b"), g.layer("fc")
    expected = torch.cat([a.out_ids, b.out_ids]).repeat_interleave(4)
    assert torch.equal(fc.in_ids, expected)


def test_residual_adds_couple_channels():
    g = trace(ResidualNet(), (1, 8, 8))
    stem, c2, proj, c3 = (g.layer(n) for n in ("stem", "c2", "proj", "c3"))
    assert torch.equal(g.groups(stem.out_ids), g.groups(c2.out_ids))
    assert torch.equal(g.groups(proj.out_ids), g.groups(c3.out_ids))
    assert not set(g.groups(stem.out_ids).tolist()) & set(g.groups(proj.out_ids).tolist())
    assert g.layer("c3").bn_after == "bn3" and g.layer("stem").bn_after == "bn0"
    assert set(g.channel_modules) == {"bn0", "bn3"}


def test_depthwise_couples_and_grouped_pins():
    g = trace(DepthwiseNet(), (1, 8, 8))
    pw, dw, gc = g.layer("pw"), g.layer("dw"), g.layer("gc")
    assert torch.equal(g.groups(pw.out_ids), g.groups(dw.out_ids))
    pinned = g.pinned_mask()
    assert pinned[g.groups(gc.in_ids)].all() and pinned[g.groups(gc.out_ids)].all()


def test_walk_back_follows_concat_and_flatten():
    g = trace(ConcatPoolNet(), (1, 8, 8))
    seen = {}

    def rule(layer, needed_out):
        seen[layer.name] = needed_out.clone()
        if layer.name == "fc":  # need features of channel 1 (branch a) and channel 5 (branch b)
            x = torch.zeros(layer.in_size, dtype=torch.bool)
            x[4:8] = True
            x[20] = True
            return x
        return torch.ones(layer.in_size, dtype=torch.bool)

    g.walk_back(torch.tensor([True, False, False, False, False]), rule)
    assert seen["fc"].tolist() == [True, False, False, False, False]
    assert seen["a"].tolist() == [False, True, False]
    assert seen["b"].tolist() == [False, False, True, False]


class _Permute(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):  # a reduction over the channels once they are last
        return self.fc(self.conv(x).permute(0, 2, 3, 1).amax(3).flatten(1))


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 2)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        x = x.flatten(1)
        return self.a(x) + self.b(x)


class _Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


@pytest.mark.parametrize("net, shape, message", [
    (_Permute(), (1, 6, 6), "unsupported op call_method 'amax' at node 'amax': a reduction over channels that are on "
                            "dim 3"),
    (_Shared(), (2, 4, 4), "called more than once"),
    (_TwoHeads(), (1, 2, 2), "do not come straight from one Linear"),
    (_Branchy(), (1, 2, 2), "cannot trace _Branchy with torch.fx: at test_graph_trace.py:105: symbolically"),
    (nn.Sequential(nn.Conv2d(1, 1, 1), _Branchy()), (1, 2, 2),
     r"cannot trace Sequential with torch.fx: in module '1' \(_Branchy\), at test_graph_trace.py:105"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.LayerNorm([2, 2, 2]), nn.Flatten(), nn.Linear(8, 2)), (1, 4, 4),
     "mdakit follows a LayerNorm over the channels only"),
    (nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), (1, 3, 3), "does not run on inputs of shape"),
])
def test_unsupported_patterns_are_clear_errors(net, shape, message):
    with pytest.raises(MdakitError, match=message):
        trace(net, shape)


def test_channel_shuffles_and_chunks_permute_and_slice_ids():
    g = trace(ShuffleNet(), (1, 8, 8))
    ids = g.node_ids
    stem = ids["stem"]
    assert torch.equal(ids["getitem"], stem[:4]) and torch.equal(ids["getitem_1"], stem[4:])
    cat = ids["cat"]
    as_channels = cat.float().view(1, -1, 1, 1)  # what the ops do to a tensor whose channel j holds id j
    assert torch.equal(ids["shuffle"], torch.nn.functional.channel_shuffle(as_channels, 2).flatten().long())
    by_view = torch.nn.functional.channel_shuffle(ids["shuffle"].float().view(1, -1, 1, 1), 4).flatten().long()
    assert torch.equal(ids["view_1"], by_view)
    pinned = g.pinned_mask()
    assert all(pinned[g.find(int(i))] for i in torch.cat((stem, cat)))  # fixed group sizes: all kept
    assert not any(pinned[g.find(int(i))] for i in g.layer("branch.0").out_ids)  # inside the branch: prunable


class _Grouping(nn.Module):
    """Channel shuffles and splits written each way the tracer records differently."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.conv(x)
        b, c, h, w = x.size()
        x = x.view(b, c // 4, 4, h, w).transpose(1, 2).reshape(b, c, h, w)  # 4 channels a group: fixed
        x = x.reshape(b, 2, 4, h, w).transpose(1, 2).reshape(b, c, h, w)  # both sizes literal
        x = torch.channel_shuffle(x, 2)
        a, rest = x.split([3, 5], dim=1)
        x = torch.cat([a, torch.chunk(rest, 1, 1)[0]], 1)
        return self.fc(x.mean((2, 3)))


def test_shuffles_and_pieces_are_recorded_with_what_their_code_fixes():
    from mdakit.graph import Piece, Shuffle

    g = trace(ShuffleNet(), (1, 8, 8))
    assert g.shuffles == {"shuffle": Shuffle(2, 4, "groups"), "transpose": Shuffle(4, 2, "groups")}
    assert g.pieces == {"getitem": Piece("relu", 0, 2), "getitem_1": Piece("relu", 1, 2)}
    g = trace(_Grouping(), (1, 2, 2))
    assert g.shuffles == {"transpose": Shuffle(2, 4, "per_group"), "transpose_1": Shuffle(2, 4, "both"),
                          "channel_shuffle": Shuffle(2, 4, "groups")}
    assert g.pieces == {"getitem_4": Piece("channel_shuffle", 0, None),  # getitem .. getitem_3 unpack the size
                        "getitem_5": Piece("channel_shuffle", 1, None), "getitem_6": Piece("getitem_5", 0, 1)}
    assert g.output_layer.name == "fc"


def test_piece_zero_of_a_chunk_is_not_the_identity():
    """Piece 0 reads channels 0..k-1 of more: logits taken from it do not come straight from the layer."""
    class HalfLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            return self.fc(x.flatten(1)).chunk(2, 1)[0]

    with pytest.raises(MdakitError, match="do not come straight from one Linear"):
        trace(HalfLogits(), (1, 2, 2))


class _ChannelsLast(nn.Module):
    """Channels-last, then a pooling there (an op followed on channels at dim 1 only)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)
        return self.fc(nn.functional.max_pool2d(x, 1).mean((1, 2)))


class _ChunkRows(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        top, _ = self.conv(x).chunk(2, dim=2)
        return self.fc(top.mean((2, 3)))


@pytest.mark.parametrize("net, message", [(_ChannelsLast(), "on a tensor whose channels are on dim 3"),
                                          (_ChunkRows(), "only chunks and splits along channels")])
def test_permutes_and_chunks_it_cannot_follow_are_refused(net, message):
    with pytest.raises(MdakitError, match=message):
        trace(net, (1, 8, 8))


class _Apply(nn.Module):
    """conv → ``fn`` → mean → linear, with a per-channel constant at hand."""

    def __init__(self, fn, conv=None, width=4):
        super().__init__()
        self.conv = conv or nn.Conv2d(1, 4, 3, padding=1)
        self.fn = fn
        self.register_buffer("scale", torch.ones(1, 4, 1, 1))
        self.fc = nn.Linear(width, 2)

    def forward(self, x):
        return self.fc(self.fn(self, self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("fn, message", [
    (lambda m, x: torch.erf(x), "unsupported op call_function 'erf' at node 'erf': mdakit cannot tell how it maps "
                                "channels"),
    (lambda m, x: x.erf(), "unsupported op call_method 'erf' at node 'erf': mdakit cannot tell how it maps channels"),
    (lambda m, x: x[:, :, 0:1, None][..., 0], "unsupported op call_function 'getitem' at node 'getitem': only "
                                              "slices along channels or the spatial dimensions (x[:, a:b, ...]), "
                                              "and picking tokens before channels-last, are followed"),
    (lambda m, x: x.mT, "unsupported op call_function 'getattr' at node 'getattr_1': mdakit cannot tell how it maps "
                        "channels"),
    (lambda m, x: torch.stack(torch.unbind(x, 1), 1), "unsupported op call_function 'unbind' at node 'unbind': its "
                                                      "result is not a tensor mdakit can follow"),
    (lambda m, x: torch.cat([x, x], 0), "concat along the batch dim at node 'cat' is not supported"),
    (lambda m, x: x.view(2, 4, 36, 1), "unsupported reshape call_method 'view' at node 'view' from [2, 4, 6, 6] to "
                                       "[2, 4, 36, 1]"),
    (lambda m, x: x.mean(1, keepdim=True) + m.scale, "unsupported broadcast in call_function 'add' at node 'add'"),
    (lambda m, x: nn.functional.prelu(x, m.scale.flatten()), "unsupported op call_function 'prelu' at node 'prelu'"),
])
def test_ops_it_cannot_follow_are_refused_naming_op_and_node(fn, message):
    with pytest.raises(MdakitError, match=re.escape(message)):
        trace(_Apply(fn), (1, 6, 6))


@pytest.mark.parametrize("net, message", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.PReLU(4), nn.Flatten(), nn.Linear(64, 2)),
     "per-channel PReLU at node '_1' is not supported"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.LocalResponseNorm(2), nn.Flatten(), nn.Linear(64, 2)),
     "unsupported module LocalResponseNorm ('1') at node '_1': mdakit cannot tell how it maps channels"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 2)), "Linear '1' at node '_1' reads a 4-D tensor whose channels "
                                                          "are on dim 1; only B×features inputs, or channels last"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(144, 2)),
     "Conv2d '0' uses padding_mode='reflect'; only zeros is supported"),
])
def test_modules_it_cannot_follow_are_refused_naming_module_and_node(net, message):
    with pytest.raises(MdakitError, match=re.escape(message)):
        trace(net, (1, 6, 6))


def test_a_per_channel_constant_pins_and_a_scalar_prefactor_couples_nothing():
    g = trace(_Apply(lambda m, x: x * m.scale), (1, 6, 6))
    assert g.pinned_mask()[g.groups(g.layer("conv").out_ids)].all()
    g = trace(_Apply(lambda m, x: 0.5 * x), (1, 6, 6))
    assert not g.pinned_mask()[g.groups(g.layer("conv").out_ids)].any()


def test_channel_slices_pin_what_they_cut_and_pass_what_they_keep():
    from nets import SliceNet

    g = trace(SliceNet(), (1, 8, 8))
    ids, pinned = g.node_ids, g.pinned_mask()
    assert torch.equal(ids["getitem"], ids["cat"][:9])  # the concat cut back to 9 of its 10 channels
    assert torch.equal(ids["getitem_1"], ids["relu_1"])  # [:, :8] of 8 channels keeps them all
    assert torch.equal(ids["getitem_2"], ids["getitem_1"][:4]) and torch.equal(ids["getitem_3"], ids["getitem_1"][4:])
    assert all(pinned[g.find(int(i))] for i in torch.cat((ids["cat"], ids["relu_1"])))
    assert set(g.unmergeable) == {"getitem", "getitem_1", "getitem_2", "getitem_3"}


@pytest.mark.parametrize("index", ["x[:, 0]", "x[0]", "x[..., :2]", "x[:, None]"])
def test_other_indexing_of_channels_is_refused(index):
    class Indexed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 1)

        def forward(self, x):
            x = self.conv(x)
            return eval(index).flatten(1)

    with pytest.raises(MdakitError, match="getitem"):
        trace(Indexed(), (1, 2, 2))


class _BorrowedWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        return nn.functional.linear(self.conv(x).mean((2, 3)), self.fc.weight)


class _ScaledLinear(nn.Linear):
    def forward(self, x):
        return nn.functional.linear(x * 2, self.weight, self.bias)


def test_functional_linear_of_a_linear_subclass_is_that_layer():
    from nets import FunctionalLinear

    net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Flatten(), FunctionalLinear(4 * 2 * 2, 3))
    g = trace(net, (1, 2, 2))
    assert [layer.name for layer in g.layers] == ["0", "2"] and g.output_layer.name == "2"
    assert g.layer("2").kind == "linear" and g.layer("2").in_size == 16
    with pytest.raises(MdakitError, match="functional linear is followed only inside an nn.Linear subclass"):
        trace(_BorrowedWeight(), (1, 2, 2))
    with pytest.raises(MdakitError, match="the forward of '2' computes more than F.linear"):
        trace(nn.Sequential(nn.Conv2d(1, 4, 1), nn.Flatten(), _ScaledLinear(16, 3)), (1, 2, 2))


def test_group_norm_pins_its_channels_and_keeps_the_rest_removable():
    from nets import GroupNormNet

    g = trace(GroupNormNet(), (1, 8, 8))
    pinned = g.pinned_mask()
    assert all(pinned[g.find(int(i))] for i in g.layer("stem.0").out_ids)
    assert not any(pinned[g.find(int(i))] for i in g.layer("wide.0").out_ids)
    assert g.group_norms == {"stem.1": "stem_1", "block.1": "block_1"} and not g.unmergeable
