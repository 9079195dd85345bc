"""What halving a conv's filters buys at batch 1 on this CPU (issue 7: why batch-1 speed-ups lag the MACs).

    .venv/bin/python benchmarks/conv_batch1.py

For the 3×3 conv shapes of ResNet-20 and VGG-16 on 28×28 inputs, times one ``F.conv2d`` at batch 1
with one thread (PyTorch picks its own kernel, as it does for the models) with every channel, half
the output channels (filters a gate switched off), half the input channels (channels the previous
gate switched off) and both halved, beside the MACs ratio each would promise (2×, 2×, 4×). Then the
same conv as the dynamic model runs it when its gate selects half the filters
(:class:`mdakit.decoupling.dynamic_layers.DynamicGatedConv`, gate evaluation included): the first half (a
prefix, run as a weight slice) and every other filter (copied out where DynamicNet would), to show
what the gate costs.
Results: benchmarks/results/conv_batch1.json and a RESULTS.md section.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from common import environment, update_report, write_json
from mdakit.decoupling.dynamic import GATHER_ABOVE
from mdakit.decoupling.dynamic_layers import DynamicGatedConv
from mdakit.decoupling.gates import ControllingModule

RESULTS = "conv_batch1"
# (network, input channels, output channels, pixels per side) of the 3×3 convs on a 28×28 input.
SHAPES = [("resnet20", 16, 16, 28), ("resnet20", 32, 32, 14), ("resnet20", 64, 64, 7),
          ("vgg16", 64, 64, 28), ("vgg16", 128, 128, 14), ("vgg16", 256, 256, 7), ("vgg16", 512, 512, 3),
          ("vgg16", 512, 512, 1)]
VARIANTS = {"all channels": (1, 1), "half the filters": (1, 2), "half the inputs": (2, 1), "both halved": (2, 2)}
GATED = {"gated, first half selected": lambda j, n: j < n // 2, "gated, every other selected": lambda j, n: j % 2 == 0}


def _microseconds(run: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean time of one call of ``run``, in µs."""
    with torch.no_grad():
        for _ in range(20):
            run()
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                run()
            runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def _gated_conv(cin: int, cout: int, side: int, selected: Callable[[int, int], bool]) -> DynamicGatedConv:
    """A 3×3 conv on side×side inputs whose gate selects, for every input, the filters j with ``selected(j, cout)``;
    it gathers the selected filters only where :class:`~mdakit.decoupling.dynamic.DynamicNet` would."""
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    gate = ControllingModule(cin, cout)
    with torch.no_grad():
        gate.fc2.bias.copy_(torch.tensor([1.0 if selected(j, cout) else -1.0 for j in range(cout)]))
    return DynamicGatedConv(conv, gate, [], torch.arange(cout), None, gather=side * side > GATHER_ABOVE).eval()


def measure(calls: int = 400) -> list[dict]:
    """One row per shape: µs per call of each variant, measured interleaved shape by shape."""
    torch.manual_seed(0)
    rows = []
    for net, cin, cout, side in SHAPES:
        times = {}
        for name, (in_div, out_div) in VARIANTS.items():
            x = torch.randn(1, cin // in_div, side, side)
            weight = torch.randn(cout // out_div, cin // in_div, 3, 3)
            times[name] = _microseconds(lambda x=x, w=weight: F.conv2d(x, w, padding=1), calls)
        x = torch.randn(1, cin, side, side)
        for name, selected in GATED.items():
            times[name] = _microseconds(lambda g=_gated_conv(cin, cout, side, selected), x=x: g(x), calls)
        rows.append({"network": net, "in_channels": cin, "out_channels": cout, "pixels": side, "microseconds": times})
    return rows


def _report(rows: list[dict]) -> str:
    names = list(VARIANTS) + list(GATED)
    lines = ["Command: `.venv/bin/python benchmarks/conv_batch1.py`. One `F.conv2d` (3×3, padding 1) at batch 1, "
             "one thread, PyTorch's own kernel choice (at batch 1 on small inputs it runs im2col + GEMM, whose "
             "column copy grows with the input channels and pixels but not with the filters); median of 5 passes. "
             "*Speed-up* = time with every channel / time of the variant; the MACs would promise 2×, 2× and 4×. "
             "*Gated*: the conv as dynamic inference runs it (`DynamicGatedConv`) when its gate selects half the "
             "filters, gate evaluation (pooling, two small matmuls, threshold, index) included; the first half is "
             f"a prefix and runs as a weight slice, every other filter is copied out first (on outputs of at most "
             f"{GATHER_ABOVE} pixels, as in `DynamicNet`, the filters up to the last selected one run instead).",
             "", "| network | in → out channels | pixels | " + " | ".join(f"{n} (µs)" for n in names) +
             " | speed-up: " + " | ".join(names[1:]) + " |", "|" + "---|" * (3 + 2 * len(names) - 1)]
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
