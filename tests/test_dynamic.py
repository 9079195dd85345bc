"""Dynamic inference computes exactly the decoupled model's function, with fewer MACs per input."""

import pytest
import torch
from torch import nn

from mdakit.decoupling.dynamic import DynamicNet, macs_per_input
from mdakit.decoupling.gates import DecoupledNet
from mdakit.decoupling.paths import collect_paths
from mdakit.metrics import count_macs
from mdakit.zoo import build_model
from nets import first_images, input_dependent_gates


def _assert_equals_gated(dynamic: nn.Module, x: torch.Tensor, ref: torch.Tensor, batched: bool = True) -> None:
    """``dynamic`` gives the gated logits ``ref`` image by image (batch 1) and, if ``batched``, on the batch."""
    with torch.no_grad():
        assert (torch.cat([dynamic(x[i:i + 1]) for i in range(len(x))]) - ref).abs().max() <= 1e-4
        if batched:
            assert (dynamic(x) - ref).abs().max() <= 1e-4


class _TinyResidual(nn.Module):
    """A user-built net: an in-place residual add after a gated conv, and a conv → ReLU → BN order."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.late, self.late_bn = nn.Conv2d(8, 12, 3, stride=2), nn.BatchNorm2d(12)
        self.head = nn.Sequential(nn.Conv2d(12, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        out += x
        out = torch.relu(out)
        return self.head(self.late_bn(torch.relu(self.late(out))))


def test_dynamic_equals_gated_on_a_user_residual_net(mnist_test):
    test, info = mnist_test
    torch.manual_seed(0)
    model = _TinyResidual()
    for bn in (model.bn1, model.bn2, model.late_bn):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    net = input_dependent_gates(DecoupledNet(model.eval(), info.input_shape))
    assert net.layers == ["conv1", "conv2", "late"]
    x = first_images(test, 12)
    dynamic = DynamicNet(net)
    with torch.no_grad():
        ref = net(x)
    _assert_equals_gated(dynamic, x, ref)
    macs = macs_per_input(dynamic, x[:4])
    assert max(macs) < count_macs(net, info.input_shape)
    paths = collect_paths(net, torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)))
    _assert_equals_gated(DynamicNet(net, paths.alive(), paths.energetic()), x, ref, batched=False)
    for gather_above in (0, 10 ** 9):
        ordered = DynamicNet(net, paths.alive(by_frequency=True), paths.energetic(), gather_above=gather_above)
        _assert_equals_gated(ordered, x, ref, batched=False)
    ungated = DynamicNet(net, always_on={name: torch.arange(8 if name != "late" else 12) for name in net.layers})
    assert all(block.gate_w2t is None for block in ungated.net.blocks.children())  # no gate left to run
    with torch.no_grad():
        plain = DynamicNet(input_dependent_gates(DecoupledNet(model.eval(), info.input_shape)))
        for gate in plain.net.blocks.children():
            gate.gate_b2.data.fill_(50.0)  # every gate open: the same function as running no gate
        assert (ungated(x) - plain(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("arch, width", [("vgg16", {"width": 0.125}), ("lenet5", {}),
                                         pytest.param("resnet20", {}, marks=pytest.mark.slow)])
def test_dynamic_equals_gated_on_realfirst_images(arch, width, mnist_test, mnist_train):
    test, info = mnist_test
    torch.manual_seed(0)
    model = build_model(arch, info.input_shape, 10, info.mean, info.std, **width)
    net = input_dependent_gates(DecoupledNet(model, info.input_shape))
    x = first_images(test, 12)
    dynamic = DynamicNet(net)
    with torch.no_grad():
        ref = net(x)
    _assert_equals_gated(dynamic, x, ref)
    paths = collect_paths(net, torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)))
    alive = paths.alive()
    pruned = DynamicNet(net, alive)  # filters silent on these images removed: same outputs on them
    _assert_equals_gated(pruned, x, ref, batched=False)
    assert sum(p.numel() for p in pruned.parameters()) <= sum(p.numel() for p in dynamic.parameters())
    macs = macs_per_input(pruned, x[:2])
    assert max(macs) < count_macs(net, info.input_shape)
    for gather_above in (0, 10 ** 9):  # every gated conv copies out its selected filters / none does
        every = DynamicNet(net, gather_above=gather_above)
        assert {block.gather for block in every.net.blocks.children()} == {gather_above == 0}
        readers = list(every.net.sparse_inputs.children()) if hasattr(every.net, "sparse_inputs") else []
        assert {conv.gather for conv in readers} <= {gather_above == 0}
        _assert_equals_gated(every, x, ref)
    static = DynamicNet(net, alive, paths.energetic())  # filters every image selects run without their gate
    assert sum(static.always_on.values()) == sum(len(v) for v in paths.energetic().values()) > 0
    _assert_equals_gated(static, x, ref)
    for gather_above in (0, 10 ** 9):  # filters most often selected first: same function
        ordered = DynamicNet(net, paths.alive(by_frequency=True), paths.energetic(), gather_above=gather_above)
        _assert_equals_gated(ordered, x, ref)


def test_nested_selections_run_as_prefixes_of_the_frequency_order(mnist_test):
    test, info = mnist_test
    torch.manual_seed(0)
    net = DecoupledNet(build_model("lenet5", info.input_shape, 10, info.mean, info.std), info.input_shape).eval()
    gate, x = net.gates[0], first_images(test, 12)
    hidden: list[torch.Tensor] = []
    hook = gate.fc2.register_forward_hook(lambda _m, inputs, _o: hidden.append(inputs[0]))
    with torch.no_grad():
        direction = torch.randn(gate.fc2.in_features)
        gate.fc2.weight.copy_(direction.expand_as(gate.fc2.weight))  # g_j = a(x) − t_j: selections are nested
        net(x)
        hook.remove()
        score = hidden[0] @ direction
        thresholds = torch.quantile(score, torch.linspace(0.9, 0.05, gate.fc2.out_features))
        gate.fc2.bias.copy_(-thresholds)  # the higher a filter's index, the more often it is selected
        ref = net(x)
    paths = collect_paths(net, torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)))
    ordered = paths.alive(by_frequency=True)
    counts = paths.z[net.layers[0]].sum(0)[ordered[net.layers[0]]]
    assert (counts[:-1] >= counts[1:]).all() and len(counts.unique()) > 3
    sliced = DynamicNet(net, ordered, gather_above=10 ** 9)  # runs up to the last selected filter
    gathered = DynamicNet(net, ordered, gather_above=0)
    by_index = DynamicNet(net, paths.alive(), gather_above=10 ** 9)
    for dynamic in (sliced, gathered, by_index):
        _assert_equals_gated(dynamic, x, ref)
    assert macs_per_input(sliced, x) == macs_per_input(gathered, x), "a prefix is exactly the selected filters"
    assert sum(macs_per_input(by_index, x)) > sum(macs_per_input(sliced, x))


@pytest.mark.parametrize("gather_above", [0, 10 ** 9])
@pytest.mark.parametrize("site", [0, 2])
def test_a_gate_that_selects_nothing_zeroes_its_filters(site, gather_above, mnist_test):
    test, info = mnist_test
    torch.manual_seed(0)
    model = _TinyResidual()
    for bn in (model.bn1, model.bn2, model.late_bn):  # non-zero shifts: an unmasked filter would show
        bn.running_mean.uniform_(-0.5, 0.5)
    net = input_dependent_gates(DecoupledNet(model.eval(), info.input_shape))
    x, layer = first_images(test, 6), net.layers[site]
    for on in (0, 3):  # the gated layer selects nothing / only its first three filters, for every input
        with torch.no_grad():
            net.gates[site].fc2.bias.fill_(-50.0)[:on] = 50.0
            gated = net(x, return_gates=True)
        ref, z = gated.logits, gated.z[site]
        assert z[:, :on].all() and not z[:, on:].any()
        selected = {layer: torch.arange(max(on, 1))}  # the filters ever selected (or one, to compute and zero)
        for alive, always_on in ((None, None), (None, {layer: torch.arange(on)}), (selected, None)):
            dynamic = DynamicNet(net, alive, always_on, gather_above=gather_above)
            assert dynamic.always_on[layer] == (on if always_on else 0)
            assert dynamic.kept[layer] == (max(on, 1) if alive else net.sites[site].channels)
            _assert_equals_gated(dynamic, x, ref)
