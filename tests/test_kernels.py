"""Contribution kernels against plain partial convolutions and explicit products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mdakit.attribution import kernels
from mdakit.attribution.kernels import (
    conv2d_contributions,
    linear_contributions,
    positive_contribution_sum,
    tap_sums,
)


def partial_conv_reference(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """h[b, k, n]: each input channel convolved alone with its kernel slice, summed over space."""
    in_per_group = conv.in_channels // conv.groups
    out_per_group = conv.out_channels // conv.groups
    h = x.new_zeros(x.shape[0], conv.out_channels, conv.in_channels)
    for k in range(conv.out_channels):
        group = k // out_per_group
        for n_local in range(in_per_group):
            n = group * in_per_group + n_local
            kernel = conv.weight[k, n_local][None, None].to(x.dtype)
            out = F.conv2d(x[:, n : n + 1], kernel, None, conv.stride, conv.padding, conv.dilation)
            h[:, k, n] = out.sum((1, 2, 3))
    return h


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-30)).item()


@st.composite
def conv_setups(draw: st.DrawFn) -> tuple[nn.Conv2d, tuple[int, int]]:
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(
        st.one_of(
            st.sampled_from(["same", "valid"]),
            st.tuples(st.integers(0, 2), st.integers(0, 2)),
        )
    )
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    conv = nn.Conv2d(
        groups * draw(st.integers(1, 3)),
        groups * draw(st.integers(1, 3)),
        kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
    )
    reach = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    size = (draw(st.integers(reach[0], reach[0] + 6)), draw(st.integers(reach[1], reach[1] + 6)))
    return conv, size


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@settings(max_examples=40, deadline=None)
@given(setup=conv_setups(), seed=st.integers(0, 2**16))
def test_conv_matches_partial_convolution(setup, seed):
    conv, (height, width) = setup
    torch.manual_seed(seed)
    x = torch.randn(3, conv.in_channels, height, width, dtype=torch.float64)
    conv64 = conv.double()
    expected = partial_conv_reference(x, conv64)
    h = conv2d_contributions(x, conv64)
    assert h.dtype == torch.float64 and h.shape == expected.shape
    assert relative_error(h, expected) <= 1e-6

    conv32 = conv.float()
    h32 = conv2d_contributions(x.float(), conv32)
    assert h32.dtype == torch.float32
    assert relative_error(h32.double(), expected) <= 1e-4


@settings(max_examples=20, deadline=None)
@given(setup=conv_setups(), seed=st.integers(0, 2**16))
def test_contributions_plus_bias_sum_to_conv_output(setup, seed):
    conv, (height, width) = setup
    torch.manual_seed(seed)
    conv = conv.double()
    x = torch.randn(2, conv.in_channels, height, width, dtype=torch.float64)
    with torch.no_grad():
        y = conv(x)
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    total = conv2d_contributions(x, conv).sum(2) + bias * y.shape[2] * y.shape[3]
    torch.testing.assert_close(total, y.sum((2, 3)), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("padding", "stride", "dilation"),
    [(0, 1, 1), (1, 2, 1), ((2, 0), (1, 3), (2, 1)), ((1, 2), 2, 2)],
)
def test_tap_sums_match_unfold(padding, stride, dilation):
    conv = nn.Conv2d(3, 2, (3, 2), stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(4, 3, 9, 8, dtype=torch.float64)
    patches = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    expected = patches.sum(2).reshape(4, 3, *conv.kernel_size)
    torch.testing.assert_close(tap_sums(x, conv), expected)


def test_depthwise_is_diagonal_and_matches_reference():
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=4).double()
    x = torch.randn(5, 4, 11, 10, dtype=torch.float64)
    h = conv2d_contributions(x, conv)
    assert relative_error(h, partial_conv_reference(x, conv)) <= 1e-6
    outside_group = torch.ones(8, 4, dtype=torch.bool)
    outside_group[torch.arange(8), torch.arange(8) // 2] = False
    assert (h[:, outside_group] == 0).all()


def test_linear_matches_explicit_product():
    linear = nn.Linear(5, 3).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    expected = torch.stack([linear.weight.detach() * row for row in x])
    torch.testing.assert_close(linear_contributions(x, linear), expected, rtol=0, atol=0)
    torch.testing.assert_close(
        linear_contributions(x, linear).sum(2) + linear.bias, linear(x).detach()
    )


@pytest.mark.parametrize("with_sign", [False, True])
@pytest.mark.parametrize(
    "layer",
    [
        nn.Linear(6, 4),
        nn.Conv2d(6, 4, 3, padding=1),
        nn.Conv2d(6, 4, (2, 3), stride=2, groups=2),
        nn.Conv2d(6, 4, 1),
        nn.Conv2d(6, 4, 1, stride=2, padding=1, groups=2),
    ],
    ids=["linear", "conv", "grouped-conv", "pointwise", "grouped-pointwise-strided-padded"],
)
def test_positive_contribution_sum_matches_reference(layer, with_sign):
    layer = layer.double()
    x = torch.randn(10, 6, 7, 7, dtype=torch.float64)
    if isinstance(layer, nn.Linear):
        x = x[:, :, 0, 0]
        h = torch.stack([layer.weight.detach() * row for row in x])
    else:
        h = partial_conv_reference(x, layer)
    sign = torch.tensor([1, -1, -1, 1]) if with_sign else None
    flipped = h * sign[:, None] if with_sign else h
    expected = flipped.clamp(min=0).sum(0)
    for chunk_size in (None, 1, 3, 100):
        result = positive_contribution_sum(x, layer, sign, chunk_size=chunk_size)
        torch.testing.assert_close(result, expected)


@pytest.mark.parametrize("with_sign", [False, True])
@pytest.mark.parametrize("layer", [
    nn.Conv2d(6, 4, 3, padding=1), nn.Conv2d(6, 4, 5, padding=2, groups=2), nn.Conv2d(6, 6, 3, padding=1, groups=6),
    nn.Conv2d(6, 4, (3, 1), padding=(1, 0)), nn.Conv2d(6, 4, 3, stride=2, padding=1, dilation=1),
    nn.Conv2d(6, 4, 3, padding=2, dilation=2),
], ids=["3x3", "grouped-5x5", "depthwise", "3x1", "strided", "dilated"])
def test_a_one_pixel_input_needs_only_the_taps_that_meet_it(layer, with_sign):
    layer = layer.double()
    x = torch.randn(10, 6, 1, 1, dtype=torch.float64)
    sign = torch.tensor([1, -1, -1, 1] + [1, -1] * (layer.out_channels == 6)) if with_sign else None
    h = partial_conv_reference(x, layer)
    expected = (h * sign[:, None] if with_sign else h).clamp(min=0).sum(0)
    torch.testing.assert_close(positive_contribution_sum(x, layer, sign), expected)


def test_default_chunking_splits_input_channels(monkeypatch):
    conv = nn.Conv2d(5, 4, 3).double()
    x = torch.randn(3, 5, 6, 6, dtype=torch.float64)
    expected = positive_contribution_sum(x, conv, chunk_size=5)
    monkeypatch.setattr(kernels, "_CHUNK_BYTES", 2 * 3 * 4 * 8)  # two input channels (3 samples × 4 filters) a chunk
    calls = []
    original = torch.bmm

    def counting(a, b):
        calls.append(len(a))
        return original(a, b)

    monkeypatch.setattr(torch, "bmm", counting)
    torch.testing.assert_close(positive_contribution_sum(x, conv), expected)
    assert calls == [2, 2, 1]


def test_unsupported_padding_mode():
    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    with pytest.raises(NotImplementedError, match="reflect"):
        conv2d_contributions(torch.randn(1, 2, 5, 5), conv)
    with pytest.raises(NotImplementedError, match="reflect"):
        positive_contribution_sum(torch.randn(1, 2, 5, 5), conv)


def test_unsupported_layer_type():
    with pytest.raises(TypeError, match="Conv1d"):
        positive_contribution_sum(torch.randn(2, 3, 5), nn.Conv1d(3, 2, 3))


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 4, 5, 5), (3, 5, 5)])
def test_conv_rejects_wrong_input_shape(shape):
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        conv2d_contributions(torch.randn(*shape), nn.Conv2d(3, 2, 3))


def test_conv_rejects_too_small_input():
    with pytest.raises(ValueError, match="too small"):
        conv2d_contributions(torch.randn(1, 3, 2, 8), nn.Conv2d(3, 2, 3))


@pytest.mark.parametrize("shape", [(2, 4, 3), (4,), (2, 5)])
def test_linear_rejects_wrong_input_shape(shape):  # B × 4, or channels last: B × ... × 4
    with pytest.raises(ValueError, match=r"B x \.\.\. x 4"):
        linear_contributions(torch.randn(*shape), nn.Linear(4, 2))


@pytest.mark.parametrize("row_sign", [torch.ones(3), torch.tensor([1.0, 0.0]), torch.ones(2, 1)])
def test_rejects_bad_row_sign(row_sign):
    with pytest.raises(ValueError, match="row_sign"):
        positive_contribution_sum(torch.randn(4, 3), nn.Linear(3, 2), row_sign)
