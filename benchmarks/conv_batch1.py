"""What halving a conv's filters buys at batch 1 on this CPU (issue 7: why batch-1 speed-ups lag the MACs).

    .venv/bin/python benchmarks/conv_batch1.py

For the 3×3 conv shapes of ResNet-20 and VGG-16 on 28×28 inputs, times one ``F.conv2d`` at batch 1
with one thread (PyTorch picks its own kernel, as it does for the models) with every channel, half
the output channels (filters a gate switched off), half the input channels (channels the previous
gate switched off) and both halved, beside the MACs ratio each would promise (2×, 2×, 4×).
Results: benchmarks/results/conv_batch1.json and a RESULTS.md section.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.nn import functional as F

from common import environment, update_report, write_json

RESULTS = "conv_batch1"
# (network, input channels, output channels, pixels per side) of the 3×3 convs on a 28×28 input.
SHAPES = [("resnet20", 16, 16, 28), ("resnet20", 32, 32, 14), ("resnet20", 64, 64, 7),
          ("vgg16", 64, 64, 28), ("vgg16", 128, 128, 14), ("vgg16", 256, 256, 7), ("vgg16", 512, 512, 3),
          ("vgg16", 512, 512, 1)]
VARIANTS = {"all channels": (1, 1), "half the filters": (1, 2), "half the inputs": (2, 1), "both halved": (2, 2)}


def _microseconds(x: torch.Tensor, weight: torch.Tensor, calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean time of one conv, in µs."""
    with torch.no_grad():
        for _ in range(20):
            F.conv2d(x, weight, padding=1)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                F.conv2d(x, weight, padding=1)
            runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def measure(calls: int = 400) -> list[dict]:
    """One row per shape: µs per call of each variant, measured interleaved shape by shape."""
    torch.manual_seed(0)
    rows = []
    for net, cin, cout, side in SHAPES:
        times = {}
        for name, (in_div, out_div) in VARIANTS.items():
            x = torch.randn(1, cin // in_div, side, side)
            weight = torch.randn(cout // out_div, cin // in_div, 3, 3)
            times[name] = _microseconds(x, weight, calls)
        rows.append({"network": net, "in_channels": cin, "out_channels": cout, "pixels": side, "microseconds": times})
    return rows


def _report(rows: list[dict]) -> str:
    names = list(VARIANTS)
    lines = ["Command: `.venv/bin/python benchmarks/conv_batch1.py`. One `F.conv2d` (3×3, padding 1) at batch 1, "
             "one thread, PyTorch's own kernel choice (at batch 1 on small inputs it runs im2col + GEMM, whose "
             "column copy grows with the input channels and pixels but not with the filters); median of 5 passes. "
             "*Speed-up* = time with every channel / time of the variant; the MACs would promise 2×, 2× and 4×.",
             "", "| network | in → out channels | pixels | " + " | ".join(f"{n} (µs)" for n in names) +
             " | speed-up: half the filters | half the inputs | both |", "|" + "---|" * (3 + len(names) + 3)]
    for r in rows:
        t = r["microseconds"]
        lines.append(f"| {r['network']} | {r['in_channels']} → {r['out_channels']} | {r['pixels']}×{r['pixels']} | "
                     + " | ".join(f"{t[n]:.1f}" for n in names) + " | "
                     + " | ".join(f"{t['all channels'] / t[n]:.2f}×" for n in names[1:]) + " |")
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)
    rows = measure()
    env = environment()
    write_json(RESULTS, {"environment": env, "rows": rows})
    update_report("Conv time at batch 1 against the channels it computes (issue 7)",
                  _report(rows) + f"\n\nEnvironment: {env}.")
    print(_report(rows))


if __name__ == "__main__":
    main()
