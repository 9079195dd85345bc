"""Neural architecture disentanglement (NAD; paper §3–4; docs/methods.md#nad): learned per-class channel masks.

The model stays frozen. For one class ``c``, a sigmoid-gated mask ``σ(θ)`` multiplies the channels of
every *block output* (:func:`mask_points`); ``θ`` is trained on class-``c`` images with the loss of
:func:`nad_loss`, each step moving every mask block by the learning rate along its L2-normalised
gradient (Eq. 15); a channel is kept where ``σ(θ) > 0.5`` (Eq. 16).

Mask points, from the traced graph and no architecture names: a *trunk* node is a 4-D node that every
path from the input to the logits passes through (no edge of the traced DAG jumps over it). Trunk
nodes joined by one channel-preserving edge (BatchNorm, activation, pooling, dropout) form a *run*;
a conv, an add or a concat starts a new run. The block output of a run is its last node before its
first pooling op (else its last node), unless all its channels are pinned (the model input's are).
This gives the output of each conv's BN+ReLU in VGG and LeNet, the add+ReLU of each residual block
and the stem's ReLU in ResNet, each inception concat and the stem's ReLUs in GoogLeNet.
With ``linear=True`` (:class:`NADSettings`), runs of 2-D trunk nodes that start at a hidden fully
connected layer (not the logits) are block outputs too: the Linear+ReLU(+Dropout) blocks of a
classifier head, whose units the sub-architectures then share out as well.

Channels coupled across mask points (a residual stream passes through every block output of a stage)
share one mask entry: physically they are one channel, so what the search learns is exactly what
extraction can cut. Each entry belongs to the first mask point that carries it, and that point's
entries form one block of the gradient normalisation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F
from torch.utils.data import Dataset, Subset

from mdakit.component_masks import ComponentMasks, LayerMask
from mdakit.data import make_loader
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph, fx_trace
from mdakit.progress import progress as progress_bar

POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)
POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.lp_pool2d}
LOSSES = ("code", "paper")
DEFAULT_BETA = {"plain": 0.3, "residual": 0.3, "inception": 0.3}
BETA_SWEEP = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


@dataclass
class NADSettings:
    """Search settings; ``beta`` is a number, ``None`` (the family default) or ``"auto"`` (elbow).

    ``iterations`` steps of ``batch_size`` class images each; ``epochs`` (when set) replaces them
    by that many passes over the class's images, as the authors' code does. ``linear`` also masks
    the outputs of hidden fully connected blocks (by default masks sit after conv blocks only,
    docs/methods.md#nad-mask-points): a narrow conv body such as LeNet-5's 6- and 16-channel blocks
    leaves a class too little to drop, while its 120- and 84-unit hidden layers carry the per-class
    features.
    """

    beta: float | str | None = None
    loss: str = "code"
    iterations: int = 20
    epochs: int | None = None
    batch_size: int = 16
    lr: float = 0.1
    init: float = 0.0
    seed: int = 0
    linear: bool = False

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise MdakitError(f"unknown NAD loss {self.loss!r}; available: {', '.join(LOSSES)}")
        if isinstance(self.beta, str) and self.beta != "auto":
            raise MdakitError(f"beta must be a positive number or 'auto', got {self.beta!r}")
        if isinstance(self.beta, int | float) and not (self.beta > 0 and math.isfinite(self.beta)):
            raise MdakitError(f"beta must be positive, got {self.beta}")
        if self.iterations < 1 or (self.epochs is not None and self.epochs < 1):
            raise MdakitError("iterations and epochs must be at least 1")
        if self.batch_size < 1:
            raise MdakitError("batch size must be positive")
        if not self.lr > 0:
            raise MdakitError(f"the learning rate must be positive, got {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)


def parse_beta(text: str | float | None) -> float | str | None:
    """A β given on the command line: a number, ``auto`` or nothing (the family default).

    >>> parse_beta("0.5"), parse_beta("auto"), parse_beta(None)
    (0.5, 'auto', None)
    """
    if text is None or text == "auto" or isinstance(text, float | int):
        return text
    try:
        return float(text)
    except ValueError:
        raise MdakitError(f"beta must be a positive number or 'auto', got {text!r}") from None


# ------------------------------------------------------------------ mask points
def _traced(graph: ChannelGraph) -> torch.fx.GraphModule:
    """The model as an fx GraphModule with the node names of :func:`mdakit.graph.trace`."""
    gm = torch.fx.GraphModule(graph.model, fx_trace(graph.model))
    param = next(graph.model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = graph.model.training
    graph.model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(2, *graph.input_shape, device=device))
    finally:
        graph.model.train(was_training)
    return gm


def _flow_edges(graph: ChannelGraph) -> list[tuple[str, str]]:
    edges = [(e.input, name) for name, es in graph.edges.items() for e in es]
    return edges + [(layer.input_node, layer.node) for layer in graph.layers]


def _trunk(graph: ChannelGraph) -> list[str]:
    """Nodes on every input→logits path of the channel-flow DAG, in execution order."""
    edges = _flow_edges(graph)
    pos = {name: i for i, name in enumerate(graph.order)}
    down: dict[str, set[str]] = {}
    up: dict[str, set[str]] = {}
    for a, b in edges:
        down.setdefault(a, set()).add(b)
        up.setdefault(b, set()).add(a)
    sources = [n for n in graph.order if n in graph.node_ids and n not in up]
    live = _reach(sources, down) & _reach([graph.output_node], up)
    jumped = [0] * (len(graph.order) + 1)
    for a, b in edges:
        if a in live and b in live and pos[b] - pos[a] > 1:
            jumped[pos[a] + 1] += 1
            jumped[pos[b]] -= 1
    trunk, open_edges = [], 0
    for i, name in enumerate(graph.order):
        open_edges += jumped[i]
        if name in live and open_edges == 0:
            trunk.append(name)
    return trunk


def _reach(starts: Sequence[str], nxt: Mapping[str, set[str]]) -> set[str]:
    seen, todo = set(starts), list(starts)
    while todo:
        for m in nxt.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def _continues(graph: ChannelGraph, node: str, previous: str) -> bool:
    edges = graph.edges.get(node, [])
    return (len(edges) == 1 and edges[0].input == previous and edges[0].src is not None
            and torch.equal(edges[0].src, torch.arange(len(graph.node_ids[node]))))


def _is_pool(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), POOL_MODULES)
    return node.op == "call_function" and node.target in POOL_FUNCTIONS


def mask_points(graph: ChannelGraph, linear: bool = False) -> list[str]:
    """The fx node names whose output channels NAD masks: one block output per trunk run (module doc).

    >>> from mdakit.graph import trace
    >>> from mdakit.zoo import build_model
    >>> g = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> mask_points(g), mask_points(g, linear=True)[2:]
    (['net_features_1', 'net_features_4'], ['net_classifier_2', 'net_classifier_4'])
    """
    return _mask_points(graph, _traced(graph), linear)


def _mask_points(graph: ChannelGraph, gm: torch.fx.GraphModule, linear: bool = False) -> list[str]:
    shapes = {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes
              if hasattr(n.meta.get("tensor_meta"), "shape")}
    pools = {n.name for n in gm.graph.nodes if _is_pool(gm, n)}
    hidden = {layer.node for layer in graph.layers if layer is not graph.output_layer} if linear else set()
    pinned = graph.pinned_mask()
    runs: list[list[str]] = []
    previous = None
    for name in _trunk(graph):
        rank = len(shapes.get(name, ()))
        if previous is not None and rank == len(shapes[previous]) and _continues(graph, name, previous):
            runs[-1].append(name)
        elif rank == 4 or (rank == 2 and name in hidden):
            runs.append([name])
        else:
            previous = None
            continue
        previous = name
    points = []
    for run in runs:
        end = next((run[i - 1] for i, n in enumerate(run) if n in pools and i > 0), run[-1])
        if not bool(pinned[graph.groups(graph.node_ids[end])].all()):
            points.append(end)
    return points


# ------------------------------------------------------------------ gates
@dataclass
class _GateLayout:
    """Where each mask point's channels read the shared mask vector (``-1``: pinned, always 1)."""

    points: list[str]
    index: list[torch.Tensor]
    blocks: list[torch.Tensor]
    groups: torch.Tensor  # group representative of each mask entry
    size: int


def gate_layout(graph: ChannelGraph, points: Sequence[str]) -> _GateLayout:
    """One mask entry per coupled channel group seen at the mask points; blocks by first point."""
    pinned = graph.pinned_mask()
    entry: dict[int, int] = {}
    index, blocks = [], []
    for name in points:
        groups = graph.groups(graph.node_ids[name]).tolist()
        start = len(entry)
        for g in groups:
            if not pinned[g] and g not in entry:
                entry[g] = len(entry)
        index.append(torch.tensor([entry.get(g, -1) for g in groups], dtype=torch.long))
        if len(entry) > start:
            blocks.append(torch.arange(start, len(entry)))
    return _GateLayout(list(points), index, blocks, torch.tensor(list(entry), dtype=torch.long), len(entry))


class _State:
    """Gate values shared by all gates of one gated model, and the activations they saw."""

    def __init__(self, size: int):
        self.values = torch.ones(size + 1)
        self.seen: list[torch.Tensor] = []


class _Gate(nn.Module):
    def __init__(self, index: torch.Tensor, state: _State):
        super().__init__()
        self.index = index
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.state.seen.append(x)
        gate = self.state.values[self.index.to(self.state.values.device)]
        return x * gate.view(1, -1, *([1] * (x.dim() - 2)))


def _gated(gm: torch.fx.GraphModule, layout: _GateLayout) -> tuple[torch.fx.GraphModule, _State]:
    state = _State(layout.size)
    nodes = {n.name: n for n in gm.graph.nodes}
    for k, name in enumerate(layout.points):
        target = f"nad_gate_{k}"
        gm.add_submodule(target, _Gate(layout.index[k], state))
        with gm.graph.inserting_after(nodes[name]):
            gate = gm.graph.call_module(target, (nodes[name],))
        nodes[name].replace_all_uses_with(gate, delete_user_cb=lambda user, gate=gate: user is not gate)
    gm.recompile()
    return gm, state


def gated_model(graph: ChannelGraph, keep: torch.Tensor, linear: bool = False) -> nn.Module:
    """The model with each mask point's channels multiplied by ``keep`` (bool or float over group
    representatives, as :func:`mdakit.surgery.kept_groups` returns): the binary sub-architecture.
    ``linear`` places the masks as :class:`NADSettings` ``linear`` does (hidden fully connected blocks too).

    >>> from mdakit.graph import trace
    >>> from mdakit.zoo import build_model
    >>> g = trace(build_model("lenet5", (1, 28, 28), 10).eval(), (1, 28, 28))
    >>> gated_model(g, torch.zeros(g.num_ids))(torch.rand(1, 1, 28, 28)).shape
    torch.Size([1, 10])
    """
    gm = _traced(graph)
    layout = gate_layout(graph, _mask_points(graph, gm, linear))
    gm, state = _gated(gm, layout)
    state.values = torch.cat([keep[layout.groups].float(), torch.ones(1)])
    return _Clearing(gm, state).eval()


class _Clearing(nn.Module):
    """A gated model that forgets the activations its gates saw after each call."""

    def __init__(self, gm: torch.fx.GraphModule, state: _State):
        super().__init__()
        self.gm = gm
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.state.values = self.state.values.to(x.device)
        try:
            return self.gm(x)
        finally:
            self.state.seen.clear()


# ------------------------------------------------------------------ loss and update
def nad_loss(logits: torch.Tensor, row: int, activations: Sequence[torch.Tensor], gates: Sequence[torch.Tensor],
             beta: float, loss: str = "code", correct: torch.Tensor | None = None) -> torch.Tensor:
    """The NAD objective of one batch of class images; ``activations[i]`` is the unmasked ``r_i``
    at mask point ``i`` and ``gates[i]`` its per-channel gate ``μ_i``.

    ``"paper"`` (Eq. 12–14): ``CE + Σ_i β·mean((r_i μ_i)²) + ‖r_i − μ_i r_i‖²`` (squared norm per
    image, averaged over the batch). ``"code"`` (the authors' code): ``CE + mean_i [MSE(μ_i r_i, r_i)
    + β·mean(μ_i²)]`` on the correctly classified images only (``correct``).

    >>> r, mu = [torch.ones(2, 3, 1, 1)], [torch.full((3,), 0.5)]
    >>> float(nad_loss(torch.zeros(2, 2), 0, r, mu, beta=1.0, loss="code"))  # log 2 + 0.25 + 0.25
    1.1931...
    """
    if correct is not None and loss == "code":
        if not bool(correct.any()):
            return logits.sum() * 0.0
        logits = logits[correct]
        activations = [a[correct] for a in activations]
    ce = F.cross_entropy(logits, torch.full((len(logits),), row, device=logits.device))
    terms = []
    for r, mu in zip(activations, gates):
        r = r.detach()
        mu = mu.view(1, -1, *([1] * (r.dim() - 2)))
        if loss == "paper":
            terms.append(beta * (r * mu).square().mean() + (r - mu * r).square().sum() / len(r))
        else:
            terms.append(F.mse_loss(mu * r, r) + beta * mu.square().mean())
    if not terms:
        return ce
    reg = torch.stack(terms)
    return ce + (reg.sum() if loss == "paper" else reg.mean())


def normalized_step(theta: torch.Tensor, grad: torch.Tensor, blocks: Sequence[torch.Tensor], lr: float) -> None:
    """Eq. 15 in place, per block ``b`` of ``n`` entries: ``θ_b ← θ_b − lr · √n · g_b / ‖g_b‖₂``.

    The gradient is L2-normalised per block as in the paper, then scaled by ``√n`` so that ``lr`` is
    the root-mean-square step of one entry whatever the block's width: with a unit-length step, a
    512-channel block would move each entry by about 0.004, and in 20 steps the masks would barely
    leave their start. Zero gradients do not move.

    >>> theta = torch.zeros(3)
    >>> normalized_step(theta, torch.tensor([3.0, 4.0, 2.0]), [torch.tensor([0, 1]), torch.tensor([2])], 0.1)
    >>> theta
    tensor([-0.0849, -0.1131, -0.1000])
    """
    with torch.no_grad():
        for block in blocks:
            g = grad[block]
            norm = g.norm()
            if norm > 0:
                theta[block] -= lr * math.sqrt(len(block)) * g / norm


# ------------------------------------------------------------------ search
@dataclass
class _Search:
    """A gated model ready to search masks of any class."""

    graph: ChannelGraph
    layout: _GateLayout
    gm: torch.fx.GraphModule
    state: _State
    device: torch.device
    log: list[dict] = field(default_factory=list)


def _prepare(graph: ChannelGraph, device: torch.device | str, linear: bool = False) -> _Search:
    graph.model.eval().to(device)
    gm = _traced(graph)
    points = _mask_points(graph, gm, linear)
    if not points:
        raise MdakitError("NAD found no block output to mask in this model")
    layout = gate_layout(graph, points)
    gm, state = _gated(gm, layout)
    return _Search(graph, layout, gm.eval(), state, torch.device(device))


def _gates(search: _Search, theta: torch.Tensor) -> list[torch.Tensor]:
    values = torch.cat([torch.sigmoid(theta), theta.new_ones(1)])
    search.state.values = values
    return [values[idx.to(values.device)] for idx in search.layout.index]


def _schedule(n: int, settings: NADSettings, generator: torch.Generator) -> list[torch.Tensor]:
    """Batches of positions into the class's images: ``iterations`` steps, or ``epochs`` passes."""
    size = min(settings.batch_size, n)
    if settings.epochs is not None:
        perms = [torch.randperm(n, generator=generator) for _ in range(settings.epochs)]
        return [p[i:i + size] for p in perms for i in range(0, n, size)]
    order = torch.cat([torch.randperm(n, generator=generator)
                       for _ in range(math.ceil(settings.iterations * size / n))])
    return [order[i * size:(i + 1) * size] for i in range(settings.iterations)]


def search_class(search: _Search, images: torch.Tensor, row: int, beta: float, settings: NADSettings
                 ) -> torch.Tensor:
    """The trained mask logits ``θ`` of one class from its images (all on the search's device)."""
    generator = torch.Generator().manual_seed(settings.seed)
    theta = torch.full((search.layout.size,), float(settings.init), device=search.device, requires_grad=True)
    with torch.no_grad():
        search.state.values = torch.ones(search.layout.size + 1, device=search.device)
        correct = search.gm(images).argmax(1) == row
        search.state.seen.clear()
    moved = torch.zeros(search.layout.size, dtype=torch.bool, device=search.device)
    for batch in _schedule(len(images), settings, generator):
        gates = _gates(search, theta)
        with torch.enable_grad():
            logits = search.gm(images[batch])
            loss = nad_loss(logits, row, search.state.seen, gates, beta, settings.loss, correct[batch])
            grad = torch.autograd.grad(loss, theta, allow_unused=True)[0] if loss.requires_grad else None
        search.state.seen.clear()
        if grad is not None:
            normalized_step(theta, grad, search.layout.blocks, settings.lr)
            moved |= grad != 0
    # an entry no gradient ever reached has no evidence against it: keep it (θ = +inf) rather than let
    # the start decide (at θ = 0, Eq. 16's "σ ≤ 0.5 → 0" would drop it)
    return torch.where(moved, theta.detach(), torch.full_like(theta.detach(), math.inf))


def class_masks(graph: ChannelGraph, layout: _GateLayout, theta: torch.Tensor, row: int) -> dict[str, LayerMask]:
    """Binarise ``σ(θ) > 0.5`` (Eq. 16) into the per-layer mask type: dropped channel groups leave the
    outputs of every layer producing them and the inputs of every layer reading them; channels no
    mask point covers are kept; the last layer keeps only logit ``row``."""
    keep = torch.ones(graph.num_ids, dtype=torch.bool)
    keep[layout.groups] = theta.cpu() > 0
    masks = {}
    for layer in graph.layers:
        inputs = keep[graph.groups(layer.in_ids)]
        if layer is graph.output_layer:
            outputs = F.one_hot(torch.tensor(row), layer.out_size).bool()
        else:
            outputs = keep[graph.groups(layer.out_ids)]
        masks[layer.name] = LayerMask(outputs[:, None] & inputs[None, :], inputs, outputs)
    return masks


def architecture_family(graph: ChannelGraph) -> str:
    """``"inception"`` (channel concats), ``"residual"`` (adds of traced tensors) or ``"plain"``.

    >>> from mdakit.graph import trace
    >>> from mdakit.zoo import build_model
    >>> architecture_family(trace(build_model("vgg16", (1, 28, 28), 10), (1, 28, 28)))
    'plain'
    """
    edges = [es for es in graph.edges.values()]
    if any(len(es) > 1 and any(e.src is not None and bool((e.src < 0).any()) for e in es) for es in edges):
        return "inception"
    if any(len(es) > 1 for es in edges):
        return "residual"
    return "plain"


def elbow(xs: Sequence[float], ys: Sequence[float]) -> int:
    """Index of the point farthest from the chord between the first and last points (both axes
    scaled to [0, 1]); 0 when the curve is flat.

    >>> elbow([0, 1, 2, 3, 4], [1.0, 0.9, 0.3, 0.2, 0.1])
    2
    """
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    span_x, span_y = x.max() - x.min(), y.max() - y.min()
    if span_x == 0 or span_y == 0:
        return 0
    x, y = (x - x.min()) / span_x, (y - y.min()) / span_y
    dx, dy = x[-1] - x[0], y[-1] - y[0]
    distance = (dy * (x - x[0]) - dx * (y - y[0])).abs() / math.hypot(dx, dy)
    return int(distance.argmax())


def auto_beta(search: _Search, images: torch.Tensor, row: int, settings: NADSettings,
              sweep: Sequence[float] = BETA_SWEEP) -> tuple[float, list[dict]]:
    """β by the elbow method: the kept share of mask entries against log β over ``sweep``."""
    kept = [float((search_class(search, images, row, b, settings) > 0).float().mean()) for b in sweep]
    choice = elbow([math.log(b) for b in sweep], kept)
    return float(sweep[choice]), [{"beta": b, "kept": k} for b, k in zip(sweep, kept)]


def _images(dataset: Dataset, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.cat([b for b, _ in make_loader(Subset(dataset, idx.tolist()), 256)]).to(device)


def nad_masks(graph: ChannelGraph, dataset: Dataset, samples: Mapping[int, torch.Tensor], rows: Mapping[int, int],
              settings: NADSettings = NADSettings(), device: torch.device | str = "cpu",
              show_progress: bool = False, on_class: Callable[[int, float], None] | None = None) -> ComponentMasks:
    """Per-class NAD masks learned on each class's images (``samples[c]``: indices into ``dataset``;
    ``rows[c]``: class ``c``'s logit), as the same mask type as the other methods.

    Defaults and why: ``loss="code"``: its β weighs the mean squared mask against the mean squared
    activation, so one β means the same in every layer (the paper's sum-of-squares term grows with a
    layer's size and swamps the CE term); ``iterations=20`` of 16 images (the paper's count; 20
    epochs over the images, as the authors' code does, is many times slower and misses the 10 s
    target on VGG-16); ``init=0`` (σ = 0.5, the midpoint of the paper's random start, so runs are
    deterministic): each entry then ends on the side of 0.5 its accumulated normalised gradient
    points to (an entry no gradient reaches is kept), and β acts as the sparsity weight it is. A
    start near the original network (θ = 3, σ ≈ 0.95) cannot leave it in 20 steps of RMS size
    ``lr``: on VGG-16 MNIST it kept about 92% of the filters whatever β (0.1 to 3), while θ = 0
    kept 64%, 43% and 28% at β = 0.1, 0.3 and 1, every class's sub-architecture still at least as
    accurate as the original on its own class. ``β`` per architecture family from
    :data:`DEFAULT_BETA` (0.3; the residual and inception families use the same value, untuned),
    or ``"auto"`` (:func:`auto_beta` on the first class).
    ``on_class(c, seconds)`` is called after each class.

    >>> from mdakit.graph import trace
    >>> from mdakit.data import ImageTensorDataset
    >>> from mdakit.zoo import build_model
    >>> g = trace(build_model("lenet5", (1, 28, 28), 10).eval(), (1, 28, 28))
    >>> ds = ImageTensorDataset(torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8), torch.zeros(4).long())
    >>> m = nad_masks(g, ds, {0: torch.arange(4)}, {0: 0}, NADSettings(iterations=2, loss="paper", beta=1.0))
    >>> m.method, m.classes
    ('nad', [0])
    """
    settings.validate()
    search = _prepare(graph, device, settings.linear)
    settings_out = settings.to_dict()
    beta = settings.beta if isinstance(settings.beta, float | int) else DEFAULT_BETA[architecture_family(graph)]
    per_class: dict[int, dict[str, LayerMask]] = {}
    for c in progress_bar(list(samples), "NAD mask search", enabled=show_progress):
        images = _images(dataset, samples[c], search.device)
        if settings.beta == "auto" and "beta_sweep" not in settings_out:
            beta, settings_out["beta_sweep"] = auto_beta(search, images, rows[c], settings)
        start = time.perf_counter()
        theta = search_class(search, images, rows[c], float(beta), settings)
        per_class[c] = class_masks(graph, search.layout, theta, rows[c])
        if on_class is not None:
            on_class(c, time.perf_counter() - start)
    settings_out.update(beta=float(beta), beta_given=settings.beta, mask_points=search.layout.points)
    return ComponentMasks(per_class, method="nad", settings=settings_out)
