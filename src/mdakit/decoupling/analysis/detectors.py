"""Adversarial-input detection from calculation paths (interpretable decoupling §4.4, Table 6).

Features of an input: for a decoupled model, its calculation path (every gated layer's binary z,
concatenated) or the gate scores g it is read from (z = [g > 0]); for the baseline, the original
model's binarised channel activity (per conv layer, the global-average-pooled output after its BN /
activation > 0) or the pooled values themselves. Binary classifiers (random forest,
AdaBoost, gradient boosting) learn clean vs adversarial from ``n`` images per class and their
adversarial versions, and are scored by ROC AUC on held-out clean and adversarial images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
from sklearn.ensemble import AdaBoostClassifier, GradientBoostingClassifier, RandomForestClassifier
from sklearn.metrics import roc_auc_score
from torch import nn

from mdakit.decoupling.gates import DecoupledNet, output_points
from mdakit.errors import MdakitError
from mdakit.graph import fx_trace, insert_after, trace

CLASSIFIERS: dict[str, Callable[[int], object]] = {
    "random forest": lambda seed: RandomForestClassifier(n_estimators=100, random_state=seed),
    "adaboost": lambda seed: AdaBoostClassifier(random_state=seed),
    "gradient boosting": lambda seed: GradientBoostingClassifier(random_state=seed),
}


@torch.no_grad()
def path_features(net: DecoupledNet, images: torch.Tensor, scores: bool = False,
                  batch_size: int = 256) -> torch.Tensor:
    """Each image's calculation path: the gated layers' binary z, concatenated (images × Σ filters).

    With ``scores``, the controlling modules' scores g instead (float; the path is [g > 0]).

    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("lenet5", (1, 28, 28), 2), (1, 28, 28))
    >>> path_features(net, torch.rand(3, 1, 28, 28)).shape
    torch.Size([3, 16])
    >>> path_features(net, torch.rand(3, 1, 28, 28), scores=True).dtype
    torch.float32
    """
    net.eval()
    device = next(net.parameters()).device
    captured: list[torch.Tensor] = []
    hooks = [gate.fc2.register_forward_hook(lambda _m, _i, out: captured.append(out)) for gate in net.gates]
    try:
        out = []
        for i in range(0, len(images), batch_size):
            captured.clear()
            z = net(images[i:i + batch_size].to(device), return_gates=True).z
            out.append((torch.cat(captured, dim=1) if scores else torch.cat(z, dim=1).bool()).cpu())
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(out)


class ChannelActivity(nn.Module):
    """A model whose forward returns, per conv layer, each channel's global-average-pooled output.

    The output of a conv layer is taken after the BN and activation that follow it alone (the point a
    decoupling gate would mask).

    >>> from mdakit.zoo import build_model
    >>> activity = ChannelActivity(build_model("lenet5", (1, 28, 28), 2), (1, 28, 28))
    >>> activity(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 22])
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], layers: Sequence[str] | None = None):
        super().__init__()
        graph = trace(model, input_shape)
        fx_graph = fx_trace(model)
        names = [layer.name for layer in graph.layers if layer.kind == "conv"] if layers is None else list(layers)
        if not names:
            raise MdakitError("the model has no conv layer whose channel activity could be read")
        nodes = {node.name: node for node in fx_graph.nodes}
        pooled = [insert_after(fx_graph, nodes[point], torch.mean, (nodes[point], (2, 3)), reroute=False)
                  for point in output_points(fx_graph, graph, names)]
        output = next(node for node in fx_graph.nodes if node.op == "output")
        with fx_graph.inserting_before(output):
            joined = fx_graph.call_function(torch.cat, (pooled, 1))
        output.args = (joined,)
        self.net = torch.fx.GraphModule(model, fx_graph)
        self.net.graph.eliminate_dead_code()
        self.net.recompile()
        self.layers = names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def activity_features(activity: ChannelActivity, images: torch.Tensor, binary: bool = True,
                      batch_size: int = 256) -> torch.Tensor:
    """:class:`ChannelActivity` of many images, in batches, on the CPU: pooled output > 0, or its value."""
    activity.eval()
    device = next(activity.parameters()).device
    pooled = torch.cat([activity(images[i:i + batch_size].to(device)).cpu()
                        for i in range(0, len(images), batch_size)])
    return pooled > 0 if binary else pooled


@dataclass
class DetectionData:
    """Features of clean and adversarial versions of a training pool and of a test set, with pool labels."""

    pool_clean: np.ndarray
    pool_adversarial: np.ndarray
    pool_labels: np.ndarray
    test_clean: np.ndarray
    test_adversarial: np.ndarray


def pick_per_class(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` random items of each label (seeded).

    >>> pick_per_class(np.array([0, 0, 1, 1, 1]), 1, seed=0).size
    2
    """
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n:
            raise MdakitError(f"the pool has {len(idx)} images of class {c}, fewer than {n}")
        picks.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(picks))


def detection_auc(data: DetectionData, per_class: int, classifier: str, seed: int) -> float:
    """Train ``classifier`` on ``per_class`` pool images per class (clean = 0, adversarial = 1), return test AUC.

    A classifier that cannot be fitted because no feature beats chance (AdaBoost's error) scores 0.5.

    >>> rng = np.random.default_rng(0)
    >>> clean, adv = rng.normal(0, 1, (40, 5)), rng.normal(3, 1, (40, 5))
    >>> d = DetectionData(clean, adv, np.arange(40) % 2, clean[:20] + 0.1, adv[:20] + 0.1)
    >>> detection_auc(d, 5, "random forest", seed=0) > 0.95
    True
    """
    if classifier not in CLASSIFIERS:
        raise MdakitError(f"unknown classifier {classifier!r}; available: {', '.join(CLASSIFIERS)}")
    idx = pick_per_class(data.pool_labels, per_class, seed)
    x = np.concatenate([data.pool_clean[idx], data.pool_adversarial[idx]]).astype(np.float32)
    y = np.concatenate([np.zeros(len(idx)), np.ones(len(idx))])
    try:
        model = CLASSIFIERS[classifier](seed).fit(x, y)
    except ValueError as exc:  # AdaBoost when no stump beats chance (e.g. identical clean/adversarial features)
        if "worse than random" not in str(exc):
            raise
        return 0.5
    test_x = np.concatenate([data.test_clean, data.test_adversarial]).astype(np.float32)
    test_y = np.concatenate([np.zeros(len(data.test_clean)), np.ones(len(data.test_adversarial))])
    return float(roc_auc_score(test_y, model.predict_proba(test_x)[:, 1]))


def detection_table(data: DetectionData, sizes: Sequence[int] = (1, 5, 10), runs: int = 5,
                    classifiers: Sequence[str] = tuple(CLASSIFIERS)) -> dict[str, dict[str, dict[str, float]]]:
    """AUC mean and std over ``runs`` (seeds 0..runs−1) per classifier and training size.

    >>> rng = np.random.default_rng(0)
    >>> clean, adv = rng.normal(0, 1, (40, 5)), rng.normal(3, 1, (40, 5))
    >>> d = DetectionData(clean, adv, np.arange(40) % 2, clean[:20], adv[:20])
    >>> t = detection_table(d, sizes=(2,), runs=2, classifiers=("random forest",))
    >>> sorted(t["random forest"]["2"])
    ['mean', 'runs', 'std']
    """
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in classifiers:
        table[name] = {}
        for n in sizes:
            scores = [detection_auc(data, n, name, seed) for seed in range(runs)]
            table[name][str(n)] = {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "runs": scores}
    return table
