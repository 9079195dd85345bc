"""Time and memory of conv2d_contributions against the conv forward and a naive partial convolution.

Prints one JSON object. Peak memory is the high-water mark of CPU tensor bytes allocated during
one call, from the allocation/free events that ``torch.profiler`` records with
``profile_memory=True`` (inputs and weights allocated beforehand are not counted).

    .venv/bin/python benchmarks/contribution_kernel.py --batch 64 --channels 64 --size 32
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import median_seconds, peak_tensor_bytes
from mdakit.attribution.kernels import conv2d_contributions


def naive_contributions(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """Partial convolution of every channel with every kernel slice (B x N x K x H x W), summed."""
    k, n = conv.out_channels, conv.in_channels
    weight = conv.weight.transpose(0, 1).reshape(n * k, 1, *conv.kernel_size)
    partial = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, groups=n)
    return partial.reshape(x.shape[0], n, k, -1).sum(3).transpose(1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    conv = nn.Conv2d(args.channels, args.channels, 3, padding=1)
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    methods = {
        "forward": lambda: conv(x),
        "contributions": lambda: conv2d_contributions(x, conv),
        "naive_partial_conv": lambda: naive_contributions(x, conv),
    }
    with torch.no_grad():
        seconds = {name: median_seconds(fn, args.repeats) for name, fn in methods.items()}
        peak = {name: peak_tensor_bytes(fn) for name, fn in methods.items()}
        max_abs_diff = (methods["contributions"]() - methods["naive_partial_conv"]()).abs().max()

    report = {
        "config": vars(args) | {"torch_threads": torch.get_num_threads()},
        "median_seconds": seconds,
        "peak_tensor_mib": {name: round(b / 2**20, 2) for name, b in peak.items()},
        "speedup_vs_forward": seconds["forward"] / seconds["contributions"],
        "speedup_vs_naive": seconds["naive_partial_conv"] / seconds["contributions"],
        "memory_ratio_naive_over_contributions": peak["naive_partial_conv"] / peak["contributions"],
        "max_abs_diff_vs_naive": max_abs_diff.item(),
        "memory_method": "torch.profiler(profile_memory=True): max running sum of [memory] events",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
