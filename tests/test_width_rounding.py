"""Hardware-friendly widths (docs/methods.md#width-rounding): every kept width rounded up to a multiple, the
added channels the layer's strongest unkept filters, the part still equal to the masked original."""

import json
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_surgery import random_masks

from mdakit.artifacts import load_with_card
from mdakit.cli import run
from mdakit.disassembly import disassemble
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.surgery import MaskedModel, keep_sets, rebuild
from mdakit.zoo import build_model
from nets import ConcatPoolNet, DepthwiseNet, RandomNet, ResidualNet, ShuffleNet, SliceNet, randomize_batchnorm


def _rounded_part(model, shape, multiple, seed=0):
    model = randomize_batchnorm(model, seed).eval()
    graph = trace(model, shape)
    masks = random_masks(graph, seed, keep_prob=0.4)
    rows = [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain, rounded = keep_sets(graph, masks, rows), keep_sets(graph, masks, rows, multiple)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(seed))
    part = rebuild(model, rounded).eval()
    with torch.no_grad():
        assert (part(x) - MaskedModel(graph, rounded).eval()(x)).abs().max() <= 1e-4
    for layer in graph.layers:
        if layer is graph.output_layer:
            continue
        kept, before = rounded.layers[layer.name]["out"], plain.layers[layer.name]["out"]
        assert set(before) <= set(kept), layer.name
        assert len(kept) % multiple == 0 or len(kept) == layer.out_size, (layer.name, len(kept))
    return graph, plain, rounded


@pytest.mark.parametrize("make, shape", [
    (lambda: build_model("lenet5", (1, 28, 28), 10), (1, 28, 28)),
    (lambda: build_model("resnet20", (3, 32, 32), 10), (3, 32, 32)),
    (ConcatPoolNet, (1, 28, 28)), (ResidualNet, (1, 28, 28)), (DepthwiseNet, (1, 28, 28)),
    (ShuffleNet, (1, 28, 28)), (SliceNet, (1, 28, 28)),
], ids=["lenet5", "resnet20", "concat", "residual", "depthwise", "shuffle", "slice"])
def test_rounded_widths_are_multiples_and_the_part_equals_the_masked_original(make, shape):
    _rounded_part(make(), shape, 4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.sampled_from(["conv", "residual", "concat", "depthwise", "grouped", "pool"]),
                       min_size=1, max_size=4),
       width=st.lists(st.integers(2, 9), min_size=1, max_size=3), multiple=st.integers(2, 5),
       seed=st.integers(0, 50))
def test_rounding_holds_on_random_graphs(blocks, width, multiple, seed):
    torch.manual_seed(seed)
    _rounded_part(RandomNet(blocks, width, 2, 4), (1, 16, 16), multiple, seed)


def test_the_added_channels_are_the_strongest_unkept_filters():
    model = build_model("lenet5", (1, 28, 28), 10).eval()
    graph, plain, rounded = _rounded_part(model, (1, 28, 28), 8)
    first = graph.layers[0]
    added = sorted(set(rounded.layers[first.name]["out"]) - set(plain.layers[first.name]["out"]))
    strength = first.module.weight.detach().flatten(1).abs().sum(1)
    unkept = [c for c in range(first.out_size) if c not in plain.layers[first.name]["out"]]
    strongest = sorted(sorted(unkept, key=lambda c: -float(strength[c]))[:len(added)])
    assert added == strongest


def test_disassemble_reports_what_rounding_cost_and_the_part_loads(tiny_lenet_dir, tmp_path):
    part = disassemble(tiny_lenet_dir, "mnist", [0, 1], thresholds="paper", samples=5, width_multiple=8)
    rounding = part.report["width_rounding"]
    assert rounding["multiple"] == 8
    assert rounding["unrounded_size"]["params"] <= part.report["part_size"]["params"]
    model, card = load_with_card(part.save(tmp_path / "p"))
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), part.model(x))
    assert card.provenance["width_multiple"] == 8
    assert "width_rounding" not in disassemble(tiny_lenet_dir, "mnist", [0, 1], thresholds="paper", samples=5).report


def test_cli_width_multiple(tiny_lenet_dir, tmp_path, capsys):
    out = tmp_path / "p"
    assert run(["disassemble", str(tiny_lenet_dir), "--classes", "0", "--samples", "5", "--thresholds", "paper",
                "--width-multiple", "4", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["width_rounding"]["multiple"] == 4
    bad = tmp_path / "bad"
    assert run(["disassemble", str(tiny_lenet_dir), "--classes", "0", "--width-multiple", "0", "--out", str(bad)]) == 2
    assert "width multiple must be a positive integer" in capsys.readouterr().err and not bad.exists()
    with pytest.raises(MdakitError, match="positive integer"):
        disassemble(tiny_lenet_dir, "mnist", [0], width_multiple=2.5)
