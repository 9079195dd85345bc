"""Hidden contributions of input channels to output units (Eq. 4 of the paper).

For a ``Conv2d`` the contribution ``h[b, k, n]`` of input channel ``n`` to filter ``k`` on sample
``b`` is the spatial sum of the bias-free partial convolution of channel ``n`` with the kernel slice
``W[k, n]``. Because the spatial sum commutes with the convolution,

    h[b, k, n] = sum_{i, j} W[k, n, i, j] * S[b, n, i, j],

where ``S`` (:func:`tap_sums`) sums the zero-padded input over every position that kernel tap
``(i, j)`` meets. ``S`` costs two small matrix products with 0/1 tap-coverage matrices (padding,
stride and dilation act on rows and columns separately), after which all contributions of a batch
are one einsum; no ``B x K x N x H x W`` tensor is ever built.

For a ``Linear`` layer, ``h[b, k, n] = W[k, n] * x[b, n]``.

All functions are statistics of a trained model and run without autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_CHUNK_BYTES = 2 * 2**20


@torch.no_grad()
def tap_sums(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """Zero-padded input summed under each kernel tap over all output positions: B x N x kh x kw.

    >>> conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    >>> tap_sums(torch.ones(1, 1, 3, 3), conv)[0, 0]
    tensor([[4., 6., 4.],
            [6., 9., 6.],
            [4., 6., 4.]])
    """
    _check_conv_input(x, conv)
    pad_h, pad_w = _padding(conv)
    rows = _coverage(x.shape[2], conv.kernel_size[0], conv.stride[0], conv.dilation[0], pad_h)
    cols = _coverage(x.shape[3], conv.kernel_size[1], conv.stride[1], conv.dilation[1], pad_w)
    rows, cols = rows.to(x), cols.to(x)
    return rows @ (x @ cols.T)


@torch.no_grad()
def conv2d_contributions(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """Contributions ``h[b, k, n]`` of input channels to the filters of ``conv``: B x K x N.

    Entries linking a filter to a channel outside its group are zero. Computed in ``x.dtype``.

    >>> conv = nn.Conv2d(2, 3, 3, padding=1)
    >>> x = torch.randn(4, 2, 8, 8)
    >>> h = conv2d_contributions(x, conv)
    >>> h.shape
    torch.Size([4, 3, 2])
    >>> bias_total = conv.bias * 64  # 8 x 8 output positions
    >>> torch.allclose(h.sum(2) + bias_total, conv(x).sum((2, 3)), atol=1e-4)
    True
    """
    return _block_diagonal(_grouped_contributions(x, conv))


@torch.no_grad()
def linear_contributions(x: Tensor, linear: nn.Linear) -> Tensor:
    """Contributions ``h[b, k, n] = W[k, n] * x[b, n]`` of the inputs of ``linear``: B x K x N.

    >>> linear = nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = linear.weight.copy_(torch.tensor([[1.0, -2.0]]))
    >>> linear_contributions(torch.tensor([[3.0, 4.0]]), linear)
    tensor([[[ 3., -8.]]])
    """
    _check_linear_input(x, linear)
    if x.dim() > 2:  # channels last: summed over positions per sample
        x = x.flatten(1, -2).sum(1)
    return linear.weight.to(x.dtype) * x[:, None, :]


@torch.no_grad()
def positive_contribution_sum(
    x: Tensor,
    layer: nn.Module,
    row_sign: Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """``sum_b max(row_sign[k] * h[b, k, n], 0)`` for a ``Conv2d`` or ``Linear`` layer: K x N.

    ``row_sign`` (length K, entries +-1) flips whole rows before the positive part is taken, e.g.
    for a following BatchNorm with negative gamma. Convolutions are computed as one batched matrix
    product per input channel (its tap sums against its group's kernels), ``chunk_size`` input
    channels at a time (by default as many as keep one chunk's contributions under 2 MiB, so they
    stay in cache); linear layers (over channels-last inputs too, summed over positions like a 1×1
    convolution) and 1×1 convolutions need no per-sample products, as
    ``max(w * x, 0) = relu(w) * relu(x) + relu(-w) * relu(-x)``.

    >>> linear = nn.Linear(1, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = linear.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    >>> x = torch.tensor([[2.0], [-3.0]])
    >>> positive_contribution_sum(x, linear)
    tensor([[2.],
            [3.]])
    >>> positive_contribution_sum(x, linear, row_sign=torch.tensor([1, -1]))
    tensor([[2.],
            [2.]])
    """
    if isinstance(layer, nn.Linear):
        _check_linear_input(x, layer)
        if x.dim() > 2:  # channels last (B × ... × N): summed over positions per sample, as a 1×1 convolution
            x = x.flatten(1, -2).sum(1)
        sign = _row_sign(row_sign, layer.out_features, x)
        weight = sign[:, None] * layer.weight.to(x.dtype)
        up, down = weight.clamp(min=0), (-weight).clamp(min=0)
        return up * x.clamp(min=0).sum(0) + down * (-x).clamp(min=0).sum(0)
    if not isinstance(layer, nn.Conv2d):
        raise TypeError(f"expected nn.Conv2d or nn.Linear, got {type(layer).__name__}")

    _check_conv_input(x, layer)
    g, k, n = layer.groups, layer.out_channels, layer.in_channels
    kg, ng = k // g, n // g
    signed = layer.weight.to(x.dtype) * _row_sign(row_sign, k, x).view(k, 1, 1, 1)  # flip rows before max(., 0)
    s, signed = _contribution_factors(x, layer, signed)
    taps = s.shape[-1]
    # per input channel c (of group c // ng): its factors (B × taps) against its group's kernels (taps × kg)
    s = s.permute(1, 0, 2).contiguous()
    weight = signed.reshape(g, kg, ng, taps).permute(0, 2, 3, 1).reshape(n, taps, kg).contiguous()
    if taps == 1:  # one product per (k, n): the positive part splits as for a linear layer, no per-sample tensor
        w, t = weight[:, 0], s[:, :, 0]  # N × kg, N × B
        up, down = t.clamp(min=0).sum(1, keepdim=True), (-t).clamp(min=0).sum(1, keepdim=True)
        total = w.clamp(min=0) * up + (-w).clamp(min=0) * down
        return _block_diagonal(total.reshape(g, ng, kg).transpose(1, 2))
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_BYTES // (x.shape[0] * kg * x.element_size()))
    total = x.new_empty(n, kg)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        total[start:stop] = torch.bmm(s[start:stop], weight[start:stop]).clamp_(min=0).sum(1)
    return _block_diagonal(total.reshape(g, ng, kg).transpose(1, 2))


def _contribution_factors(x: Tensor, conv: nn.Conv2d, weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(s, w)`` with ``h[b, k, n] = Σ_t s[b, n, t] · w[k, n, t]``: tap sums against the kernel taps
    (B × N × taps), or, for a one-pixel input (a deep layer of a small image), the pixel against the sum of
    the taps that meet it (B × N × 1), which needs no per-sample product at all."""
    b, n, h, w = x.shape
    kh, kw = conv.kernel_size
    if h * w != 1:
        return tap_sums(x, conv).reshape(b, n, kh * kw), weight.reshape(*weight.shape[:2], kh * kw)
    pad_h, pad_w = _padding(conv)
    rows = _coverage(h, kh, conv.stride[0], conv.dilation[0], pad_h).to(x)
    cols = _coverage(w, kw, conv.stride[1], conv.dilation[1], pad_w).to(x)
    pixel_kernel = (rows.T @ weight @ cols).reshape(*weight.shape[:2], 1)  # the taps that meet the pixel
    return x.reshape(b, n, 1), pixel_kernel


def _grouped_contributions(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """Within-group contributions: B x groups x (K / groups) x (N / groups)."""
    s = tap_sums(x, conv)
    g = conv.groups
    kh, kw = conv.kernel_size
    weight = conv.weight.to(x.dtype).reshape(g, conv.out_channels // g, -1, kh, kw)
    s = s.reshape(s.shape[0], g, -1, kh, kw)
    return torch.einsum("bgnij,gknij->bgkn", s, weight)


def _block_diagonal(blocks: Tensor) -> Tensor:
    """Place ``(..., g, p, q)`` blocks on the diagonal of a zero ``(..., g * p, g * q)`` tensor."""
    *lead, g, p, q = blocks.shape
    out = blocks.new_zeros(*lead, g, p, g, q)
    out.diagonal(dim1=-4, dim2=-2).copy_(blocks.movedim(-3, -1))
    return out.reshape(*lead, g * p, g * q)


def _coverage(length: int, kernel: int, stride: int, dilation: int, pad: tuple[int, int]) -> Tensor:
    """0/1 matrix (kernel x length): which unpadded input positions each tap meets."""
    lo, hi = pad
    outputs = (length + lo + hi - dilation * (kernel - 1) - 1) // stride + 1
    if outputs < 1:
        raise ValueError(f"input size {length} is too small for the kernel of this convolution")
    # Input position y meets tap i at output o iff y + lo = i * dilation + o * stride.
    offset = torch.arange(length)[None, :] + lo - dilation * torch.arange(kernel)[:, None]
    return (offset >= 0) & (offset % stride == 0) & (offset < outputs * stride)


def _padding(conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int]]:
    """(low, high) zero padding of the height and width axes."""
    if conv.padding_mode != "zeros":
        raise NotImplementedError(
            f"padding_mode={conv.padding_mode!r} is not supported, only 'zeros'"
        )
    if conv.padding == "valid":
        return (0, 0), (0, 0)
    if conv.padding == "same":  # PyTorch puts the odd pixel at the bottom/right
        (dh, dw), (kh, kw) = conv.dilation, conv.kernel_size
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (th // 2, th - th // 2), (tw // 2, tw - tw // 2)
    ph, pw = conv.padding
    return (ph, ph), (pw, pw)


def _check_conv_input(x: Tensor, conv: nn.Conv2d) -> None:
    if x.dim() != 4 or x.shape[1] != conv.in_channels:
        raise ValueError(
            f"expected input of shape B x {conv.in_channels} x H x W, got {tuple(x.shape)}"
        )


def _check_linear_input(x: Tensor, linear: nn.Linear) -> None:
    if x.dim() < 2 or x.shape[-1] != linear.in_features:
        raise ValueError(f"expected input of shape B x ... x {linear.in_features}, got {tuple(x.shape)}")


def _row_sign(row_sign: Tensor | None, out_channels: int, x: Tensor) -> Tensor:
    if row_sign is None:
        return x.new_ones(out_channels)
    if row_sign.shape != (out_channels,) or not bool((row_sign.abs() == 1).all()):
        raise ValueError(f"row_sign must hold {out_channels} entries of +1 or -1")
    return row_sign.to(x)
