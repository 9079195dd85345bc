"""insert_after: a call between a node and all of its readers, or a tap beside them."""

import torch
import torch.fx
from torch import nn

from mdakit.graph import fx_trace, insert_after


class _TwoReaders(nn.Module):
    """The ReLU's output is read twice (a residual)."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(2, 2, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        y = self.act(x)
        return self.conv(y) + y


def _halved(reroute: bool) -> tuple[nn.Module, torch.fx.GraphModule, torch.fx.Node, torch.fx.Node]:
    """The model, and its graph with ``act * 0.5`` inserted after the ReLU."""
    model = _TwoReaders().eval()
    graph = fx_trace(model)
    act = next(n for n in graph.nodes if n.target == "act")
    new = insert_after(graph, act, torch.mul, (act, 0.5), reroute=reroute)
    return model, torch.fx.GraphModule(model, graph), act, new


def test_a_rerouted_call_sits_between_the_node_and_every_reader():
    model, gm, act, new = _halved(reroute=True)
    assert list(act.users) == [new] and len(new.users) == 2 and new.prev is act
    x = torch.randn(1, 2, 3, 3)
    with torch.no_grad():
        y = torch.relu(x) * 0.5
        assert torch.allclose(gm(x), model.conv(y) + y)


def test_a_tap_reads_the_node_and_changes_nothing():
    model, gm, act, new = _halved(reroute=False)
    assert new in act.users and len(act.users) == 3 and not new.users
    x = torch.randn(1, 2, 3, 3)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


def test_a_submodule_is_called_by_its_name():
    graph = fx_trace(_TwoReaders())
    act = next(n for n in graph.nodes if n.target == "act")
    gate = insert_after(graph, act, "gate")
    assert (gate.op, gate.target, gate.args) == ("call_module", "gate", (act,))
