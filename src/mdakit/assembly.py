"""Assembly: join parts cut from several models into one classifier over the union of their classes.

The **parallel** layout runs every part on the shared raw input and concatenates their logits in the
order of the parts. Each part carries its own input normalisation, so parts of models trained on
datasets with different statistics share one raw [0, 1] input; the output equals the parts' outputs
concatenated, and the MACs are the sum of theirs. The **padded** layout (the paper's alignment padding,
:mod:`mdakit.padding`) is one network of the parts' architecture whose layers hold every part's filters
side by side with zero kernels across parts; its logits equal the parts' logits concatenated too.

Logit rescaling is fitted on training images only, never on the test split (docs/methods.md#logit-rescaling):

- ``none``: the parts' logits as they are;
- ``paper`` (Eq. 11 of the contribution paper): logit c is multiplied by e / e_c, where e_c is the mean
  of logit c over class c's selected samples and e the mean of every e_c;
- ``calibrated`` (an extension beyond the paper): per logit k, a scale a_k > 0 and an offset b_k
  (vector scaling), fitted by minimising the cross-entropy of the assembled logits over held-out images
  of every part's classes (the original model's validation split where recorded). One scale and offset
  per class, not per part: a part cut from a model trained on another dataset is confident on images of
  some foreign classes more than on others, and one pair per part cannot undo that (measured in
  benchmarks/RESULTS.md);
- ``calibrated-part``: the same fit with one scale and one offset per part (part 0 fixed), for the
  ablation.

An assembled model is saved as a directory: ``assembly.json`` (layout, rescaling and fitted numbers,
the meaning of every output logit, metrics) and the parts as standard model files ``part-0/``,
``part-1/``, ... A padded assembly also stores the merged network itself, with the rescaling folded
into its last layer, as a standard model file at the top of the directory (``mdakit.load`` reads it).
Load either kind with :func:`load_assembled`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from mdakit.artifacts import CARD_FILE, WEIGHTS_FILE, ModelCard, load_with_card, save
from mdakit.attribution.samples import select_samples
from mdakit.data import ClassSubset, ClassUnion, load_dataset, per_class_subset
from mdakit.disassembly import Part, holdout_images
from mdakit.errors import MdakitError
from mdakit.evaluate import evaluate, predict_logits
from mdakit.files import write_directory
from mdakit.graph import trace
from mdakit.metrics import model_size
from mdakit.padding import merge_padded, padded_widths
from mdakit.train import TrainConfig, TrainResult
from mdakit.train import train as train_model
from mdakit.workspace import Workspace

LAYOUTS = ("parallel", "padded")
RESCALES = ("none", "paper", "calibrated", "calibrated-part")
ASSEMBLY_FILE = "assembly.json"
FORMAT = "mdakit-assembly"
FORMAT_VERSION = 1

PartSpec = str | Path | Part | tuple[nn.Module, ModelCard]
DataSpec = Mapping[int, Dataset | str] | Sequence[Dataset | str | None] | None


class AssembledModel(nn.Module):
    """Parts run side by side on one input; their logits concatenated, then ``logits * scale + shift``.

    ``sizes[i]`` is the number of logits of ``parts[i]``. ``scale`` and ``shift`` are buffers with one
    entry per output logit (the identity by default). The parts are held, not copied.

    >>> m = AssembledModel([nn.Linear(2, 3), nn.Linear(2, 1)], [3, 1])
    >>> m(torch.zeros(5, 2)).shape
    torch.Size([5, 4])
    """

    def __init__(self, parts: Sequence[nn.Module], sizes: Sequence[int]):
        super().__init__()
        if len(parts) != len(sizes):
            raise ValueError(f"{len(parts)} parts but {len(sizes)} sizes")
        self.parts = nn.ModuleList(parts)
        self.sizes = [int(s) for s in sizes]
        self.register_buffer("scale", torch.ones(sum(self.sizes)))
        self.register_buffer("shift", torch.zeros(sum(self.sizes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=1) * self.scale + self.shift


class PaddedAssembly(nn.Module):
    """A merged (padded) network, with the parts it was merged from kept for reference (not as
    submodules: parameters and MACs are the merged network's alone).

    >>> from mdakit.zoo import build_model
    >>> from mdakit.padding import merge_padded
    >>> a, b = build_model("lenet5", (1, 28, 28), 2).eval(), build_model("lenet5", (1, 28, 28), 1).eval()
    >>> PaddedAssembly(merge_padded([a, b], (1, 28, 28)), [a, b], [2, 1])(torch.zeros(1, 1, 28, 28)).shape
    torch.Size([1, 3])
    """

    def __init__(self, net: nn.Module, parts: Sequence[nn.Module], sizes: Sequence[int]):
        super().__init__()
        self.net = net
        self.__dict__["parts"] = list(parts)
        self.sizes = [int(s) for s in sizes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fold_rescaling(net: nn.Sequential, input_shape: Sequence[int], scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Fold ``logits * scale + shift`` into the last layer of a merged network, in place (exact: that
    layer is linear in its weights and bias)."""
    body, copies = net[1], net[0].copies
    graph = trace(body, (input_shape[0] * copies, *input_shape[1:]))
    name = graph.output_layer.name
    last = body.get_submodule(name)
    with torch.no_grad():
        scale, shift = scale.to(last.weight), shift.to(last.weight)
        last.weight.mul_(scale.view(-1, *([1] * (last.weight.dim() - 1))))
        if last.bias is None:
            last.bias = nn.Parameter(torch.zeros_like(scale))
        last.bias.mul_(scale).add_(shift)


def _class_name(card: ModelCard, label: int) -> str:
    return card.class_names[label] if label < len(card.class_names) else str(label)


@dataclass
class AssemblyCard:
    """What an assembled model is made of and what each of its logits means.

    >>> a = ModelCard("lenet5", [1, 28, 28], 10, dataset="mnist", logit_classes=[0, 2])
    >>> b = ModelCard("lenet5", [1, 28, 28], 10, dataset="fashion-mnist", logit_classes=[1])
    >>> card = AssemblyCard([a, b], sources=["p0", "p1"])
    >>> card.offsets, card.logits[2]
    ([0, 2], {'part': 1, 'dataset': 'fashion-mnist', 'label': 1, 'name': '1'})
    """

    part_cards: list[ModelCard]
    sources: list[str | None]
    layout: str = "parallel"
    rescale: str = "none"
    fit: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> list[int]:
        return list(self.part_cards[0].input_shape)

    @property
    def sizes(self) -> list[int]:
        return [len(card.logit_classes) for card in self.part_cards]

    @property
    def offsets(self) -> list[int]:
        """Index of each part's first logit in the output."""
        return [sum(self.sizes[:i]) for i in range(len(self.sizes))]

    @property
    def logits(self) -> list[dict[str, Any]]:
        """For each output logit: its part, that part's dataset, the dataset label and the class name."""
        return [{"part": p, "dataset": card.dataset, "label": int(c), "name": _class_name(card, c)}
                for p, card in enumerate(self.part_cards) for c in card.logit_classes]

    def to_dict(self) -> dict[str, Any]:
        first = self.part_cards[0]
        parts = [{"dir": f"part-{p}", "source": self.sources[p], "dataset": card.dataset,
                  "classes": list(card.logit_classes), "num_logits": len(card.logit_classes)}
                 for p, card in enumerate(self.part_cards)]
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "layout": self.layout, "rescale": self.rescale,
                "arch": first.arch, "arch_kwargs": first.arch_kwargs, "input_shape": self.input_shape,
                "parts": parts, "logits": self.logits, "fit": self.fit, "metrics": self.metrics}


# --------------------------------------------------------------------------- checks


def _check_options(layout: str, rescale: str, samples: int) -> None:
    if layout not in LAYOUTS:
        raise MdakitError(f"unknown layout {layout!r}; available: {', '.join(LAYOUTS)}")
    if rescale not in RESCALES:
        raise MdakitError(f"unknown rescaling {rescale!r}; available: {', '.join(RESCALES)}")
    if samples < 1:
        raise MdakitError(f"the number of samples per class must be positive, got {samples}")


def _arch_label(card: ModelCard) -> str:
    return f"{card.arch} {card.arch_kwargs}" if card.arch_kwargs else str(card.arch)


def check_compatible(cards: Sequence[ModelCard]) -> None:
    """Refuse parts that cannot be assembled: no zoo architecture, different architectures, constructor
    arguments or input shapes, or a class of one dataset in two parts.

    >>> a = ModelCard("lenet5", [1, 28, 28], 10, dataset="mnist")
    >>> b = ModelCard("lenet5", [3, 32, 32], 10, dataset="cifar10")
    >>> check_compatible([a, b])
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: parts have different input shapes: [1, 28, 28] (part 0) vs [3, 32, 32] (part 1)
    """
    first = cards[0]
    for p, card in enumerate(cards):
        if card.arch is None:
            raise MdakitError(f"part {p} was saved from a user-built module (its card names no zoo architecture); "
                              "only parts of zoo architectures can be checked and assembled")
        if (card.arch, card.arch_kwargs) != (first.arch, first.arch_kwargs):
            raise MdakitError(f"parts have different architectures: {_arch_label(first)} (part 0) "
                              f"vs {_arch_label(card)} (part {p})")
        if list(card.input_shape) != list(first.input_shape):
            raise MdakitError(f"parts have different input shapes: {list(first.input_shape)} (part 0) "
                              f"vs {list(card.input_shape)} (part {p})")
    seen: dict[tuple[str, int], int] = {}
    for p, card in enumerate(cards):
        for c in card.logit_classes:
            key = (card.dataset, int(c))
            if card.dataset is not None and key in seen:
                raise MdakitError(f"class {c} ({_class_name(card, c)}) of {card.dataset} is in part {seen[key]} and "
                                  f"part {p}: each class may appear in one part only")
            seen[key] = p


def _check_width(module: nn.Module, card: ModelCard, index: int) -> None:
    param = next(module.parameters(), None)
    module.eval()
    with torch.no_grad():
        width = module(torch.zeros(1, *card.input_shape, device=param.device if param is not None else "cpu")).shape[1]
    if width != len(card.logit_classes):
        raise MdakitError(f"part {index} returns {width} logits but its card names {len(card.logit_classes)} classes")


def _resolve(part: PartSpec, index: int) -> tuple[nn.Module, ModelCard, str | None]:
    if isinstance(part, str | Path):
        if is_assembled(part):
            raise MdakitError(f"{part} is an assembled model; assemble its parts ({Path(part) / 'part-0'}, ...) "
                              "instead")
        module, card = load_with_card(part)
        return module, card, str(part)
    if isinstance(part, Part):
        return part.model, part.card, None
    if isinstance(part, tuple) and len(part) == 2 and isinstance(part[0], nn.Module) and isinstance(part[1], ModelCard):
        return part[0], part[1], None
    raise MdakitError(f"part {index}: expected a model directory, a Part or a (module, ModelCard) pair, "
                      f"got {type(part).__name__}")


def _datasets(spec: DataSpec, cards: Sequence[ModelCard], split: str, data_dir: str | Path | None) -> list[Dataset]:
    """One dataset per part: given (a dataset or a name) or, by default, the split of the part's dataset."""
    if isinstance(spec, Dataset):
        raise MdakitError("pass one dataset per part: a list, or a mapping part index -> dataset")
    given = dict(spec) if isinstance(spec, Mapping) else dict(enumerate(spec or []))
    loaded: dict[str, Dataset] = {}
    out = []
    for p, card in enumerate(cards):
        item = given.get(p)
        if item is None:
            if card.dataset is None:
                raise MdakitError(f"part {p} names no dataset: pass its {split} data")
            item = card.dataset
        if isinstance(item, str):
            if item not in loaded:
                loaded[item] = load_dataset(item, split, data_dir)[0]
            item = loaded[item]
        shape = list(item[0][0].shape)
        if shape != list(card.input_shape):
            raise MdakitError(f"part {p}'s {split} images are {shape} but it takes {list(card.input_shape)}")
        out.append(item)
    return out


# --------------------------------------------------------------------------- rescaling


def paper_scales(class_means: torch.Tensor) -> tuple[torch.Tensor, float, list[str]]:
    """Eq. 11: logit c is multiplied by e / e_c, with e_c = ``class_means[c]`` and e the mean of all e_c.

    A logit whose e_c is not positive keeps scale 1 (dividing by it would flip or blow up the logit);
    so does every logit when e itself is not positive. The notes say which.

    >>> scale, e, notes = paper_scales(torch.tensor([2.0, 8.0, -1.0]))
    >>> scale.tolist(), e, notes
    ([1.5, 0.375, 1.0], 3.0, ['logit 2: mean own-class logit -1 <= 0, scale 1'])
    """
    e = float(class_means.mean())
    if e <= 0:
        return torch.ones_like(class_means), e, [f"the mean own-class logit e = {e:.4g} is not positive: no rescaling"]
    bad = class_means <= 0
    scale = torch.where(bad, torch.ones_like(class_means), e / class_means)
    notes = [f"logit {i}: mean own-class logit {float(class_means[i]):.4g} <= 0, scale 1"
             for i in torch.nonzero(bad).flatten().tolist()]
    return scale, e, notes


def _per_logit(values: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    return torch.repeat_interleave(values, torch.tensor(list(sizes)))


def calibrate(logits: torch.Tensor, labels: torch.Tensor, sizes: Sequence[int], per: str = "logit",
              steps: int = 200, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Per-logit scales a > 0 and offsets b minimising the cross-entropy of ``logits * a + b``.

    ``logits`` (N × sum(sizes)) are raw assembled logits of N samples and ``labels`` their assembled
    labels. ``per="logit"`` fits one (a, b) per logit; ``per="part"`` one per part, shared by its logits,
    with part 0 fixed at a = 1, b = 0 (only differences between parts matter). a = exp(log a). A small
    ridge on log a and b / std(logits) keeps the fit finite when the samples are separable. Full-batch
    L-BFGS in float64, so the result is a function of the inputs alone. Returns per-logit a and b.

    >>> logits = torch.tensor([[2.0, 0.0], [2.0, 1.0]]); labels = torch.tensor([0, 1])
    >>> a, b, losses = calibrate(logits, labels, [1, 1], per="part")
    >>> a[0].item(), b[0].item(), (logits * a + b).argmax(1).tolist(), losses["loss"] < losses["loss_before"]
    (1.0, 0.0, [0, 1], True)
    """
    if per not in ("logit", "part"):
        raise MdakitError(f"calibrate per 'logit' or 'part', not {per!r}")
    x, y = logits.double(), labels.long()
    free = sum(sizes) if per == "logit" else len(sizes) - 1
    log_a = torch.zeros(free, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(free, dtype=torch.float64, requires_grad=True)
    spread = float(x.std()) if x.numel() > 1 and float(x.std()) > 0 else 1.0
    zero = torch.zeros(1, dtype=torch.float64)

    def affine() -> tuple[torch.Tensor, torch.Tensor]:
        if per == "logit":
            return log_a.exp(), b
        return _per_logit(torch.cat([zero, log_a]).exp(), sizes), _per_logit(torch.cat([zero, b]), sizes)

    def objective() -> torch.Tensor:
        a_k, b_k = affine()
        ce = F.cross_entropy(x * a_k + b_k, y)
        return ce + ridge * (log_a.square().sum() + (b / spread).square().sum())

    optimizer = torch.optim.LBFGS([log_a, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        a_k, b_k = affine()
        loss = float(F.cross_entropy(x * a_k + b_k, y))
    return a_k.detach(), b_k.detach(), {"loss_before": float(F.cross_entropy(x, y)), "loss": loss}


def _sample_logits(model: nn.Module, dataset: Dataset, chosen: Mapping[int, torch.Tensor], classes: Sequence[int],
                   device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``model`` on the chosen images, with their labels (the class's position in ``classes``)."""
    indices = torch.cat([chosen[c] for c in classes]).tolist()
    labels = torch.cat([torch.full((len(chosen[c]),), i, dtype=torch.long) for i, c in enumerate(classes)])
    return predict_logits(model, Subset(dataset, indices), device=device)[0].double(), labels


def _fit_paper(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset],
               chosen: Sequence[Mapping[int, torch.Tensor]], device: torch.device | str) -> dict[str, Any]:
    means: list[float] = []
    for part, part_card, train, part_chosen in zip(model.parts, card.part_cards, train_sets, chosen, strict=True):
        logits, labels = _sample_logits(part, train, part_chosen, part_card.logit_classes, device)
        means += [float(logits[labels == i, i].mean()) for i in range(len(part_card.logit_classes))]
    scale, e, notes = paper_scales(torch.tensor(means, dtype=torch.float64))
    with torch.no_grad():
        model.scale.copy_(scale)
    return {"class_mean_logits": means, "e": e, "scale": scale.tolist(), "warnings": notes}


def _fit_calibrated(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset],
                    chosen: Sequence[Mapping[int, torch.Tensor]], device: torch.device | str) -> dict[str, Any]:
    """Fit on held-out images of every part's classes: the original model's validation split where its
    card records it (never trained on), else training images not selected above. The selected samples,
    the most confident of each class, are nearly separable and would make a poor basis for the fit."""
    all_logits, all_labels, kinds = [], [], []
    for offset, part, part_card, train, part_chosen in zip(card.offsets, model.parts, card.part_cards, train_sets,
                                                            chosen, strict=True):
        source = Workspace(part, part_card, train, None, "")
        per_class = max(4 * min(len(v) for v in part_chosen.values()), 1)
        images, labels, kind = holdout_images(source, list(part_card.logit_classes), dict(part_chosen), per_class,
                                        seed=0)
        all_logits.append(predict_logits(model, TensorDataset(images, labels), device=device)[0].double())
        all_labels.append(labels + offset)
        kinds.append(kind)
    per = "part" if card.rescale == "calibrated-part" else "logit"
    a, b, losses = calibrate(torch.cat(all_logits), torch.cat(all_labels), card.sizes, per=per)
    with torch.no_grad():
        model.scale.copy_(a)
        model.shift.copy_(b)
    return {"per": per, "scale": a.tolist(), "shift": b.tolist(), "fitted_on": kinds,
            "images": int(sum(len(x) for x in all_logits)), **losses, "warnings": []}


def _fit(model: AssembledModel, card: AssemblyCard, train_sets: Sequence[Dataset], samples: int, seed: int,
         device: torch.device | str) -> dict[str, Any]:
    """Select each part's training samples (on the part itself) and fit the rescaling into ``model``."""
    chosen = []
    for i, (part, c, train) in enumerate(zip(model.parts, card.part_cards, train_sets, strict=True)):
        try:
            chosen.append(select_samples(part, train, c.logit_classes, list(range(len(c.logit_classes))), n=samples,
                                         seed=seed, device=device))
        except MdakitError as exc:
            raise MdakitError(f"cannot fit the {card.rescale!r} rescaling: part {i} ({c.dataset}) {exc}; "
                              "rescale 'none' assembles it as it is") from exc
    fitter = _fit_paper if card.rescale == "paper" else _fit_calibrated
    fit = {"split": "train", "samples_per_class": samples, "seed": seed,
           "samples": [{str(c): v.tolist() for c, v in part_chosen.items()} for part_chosen in chosen],
           **fitter(model, card, train_sets, chosen, device)}
    for note in fit["warnings"]:
        warnings.warn(note, stacklevel=3)
    return fit


# --------------------------------------------------------------------------- assembly


def assemble(parts: Sequence[PartSpec], layout: str = "parallel", rescale: str = "none", data: DataSpec = None,
             samples: int = 50, seed: int = 0, data_dir: str | Path | None = None,
             device: torch.device | str = "cpu") -> tuple[AssembledModel | PaddedAssembly, AssemblyCard]:
    """Join parts (model directories, :class:`~mdakit.disassembly.Part` objects or ``(module, ModelCard)``
    pairs) into one classifier whose logits are the parts' logits in the order of the parts.

    Parts need the same zoo architecture (and constructor arguments) and input shape; a whole model
    counts as a part with all its classes. ``layout="padded"`` merges them into one network of that
    architecture (rescaling folded into its last layer). ``rescale`` other than ``none`` fits on the training
    images of each part's classes: ``samples`` per class, chosen by the part itself, from ``data``
    (part index -> dataset or dataset name) or, by default, the train split of the part's dataset.

    >>> model, card = assemble(["parts/mnist-0-2", "parts/fmnist-0-2"], rescale="paper")  # doctest: +SKIP
    >>> [logit["name"] for logit in card.logits]  # doctest: +SKIP
    ['0', '1', '2', 'T-shirt/top', 'Trouser', 'Pullover']
    """
    _check_options(layout, rescale, samples)
    if len(parts) < 2:
        raise MdakitError(f"assembly needs at least two parts, got {len(parts)}")
    modules, cards, sources = zip(*(_resolve(part, i) for i, part in enumerate(parts)), strict=True)
    check_compatible(cards)
    for i, (module, card) in enumerate(zip(modules, cards, strict=True)):
        _check_width(module, card, i)
    model = AssembledModel(modules, [len(card.logit_classes) for card in cards]).to(device).eval()
    card = AssemblyCard(list(cards), list(sources), layout, rescale)
    if rescale != "none":
        card.fit = _fit(model, card, _datasets(data, cards, "train", data_dir), samples, seed, device)
    if layout == "padded":
        merged = merge_padded([m.cpu() for m in modules], card.input_shape)
        fold_rescaling(merged, card.input_shape, model.scale.cpu(), model.shift.cpu())
        return PaddedAssembly(merged.to(device), modules, model.sizes), card
    return model, card


# --------------------------------------------------------------------------- evaluation


def _original(card: ModelCard, part: nn.Module) -> tuple[nn.Module | None, ModelCard | None, str]:
    """The model a part was cut from (the part itself for a whole model), or None and why."""
    source = card.provenance.get("disassembled_from")
    if source is None:
        return part, card, "the part is a whole model: its own original"
    try:
        module, original_card = load_with_card(source)
    except MdakitError as exc:
        return None, None, f"original model {source} is missing or unreadable ({exc})"
    return module, original_card, f"original model {source}"


def _evaluate_part(model: AssembledModel, card: AssemblyCard, p: int, test: Dataset,
                   device: torch.device | str) -> dict[str, Any]:
    part_card = card.part_cards[p]
    subset = ClassSubset(test, part_card.logit_classes, remap=True)
    if len(subset) == 0:
        raise MdakitError(f"part {p}'s test data has no images of its classes {part_card.logit_classes}")
    logits, local = predict_logits(model, subset, device=device)
    predicted = logits.argmax(dim=1)
    owner = _per_logit(torch.arange(len(card.sizes)), card.sizes)[predicted]
    original, original_card, note = _original(part_card, model.parts[p])
    original_accuracy = None if original is None else evaluate(
        original, test, original_card.logit_classes, part_card.logit_classes, device=device).accuracy
    correct = predicted == local + card.offsets[p]
    return {"part": p, "source": card.sources[p], "dataset": part_card.dataset,
            "classes": list(part_card.logit_classes), "num_images": len(subset), "correct": int(correct.sum()),
            "accuracy": float(correct.float().mean()),
            "original_accuracy": original_accuracy, "original": note,
            "into_parts": [float((owner == j).float().mean()) for j in range(len(card.sizes))],
            "size": model_size(model.parts[p], card.input_shape)}


def evaluate_assembled(model: AssembledModel, card: AssemblyCard, test_data: DataSpec = None,
                       data_dir: str | Path | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Accuracy of an assembly, its originals' and the cross-part confusion (docs/methods.md#evaluation-protocol).

    The test set is the union of each part's classes' test images (``test_data``: part index -> dataset
    or name; by default the test split of the part's own dataset), labelled by the part's offset plus
    the class's position in the part; accuracy is the argmax over all logits. ``original_accuracy``
    is the mean over parts of each original model's accuracy (all its logits) on the part's classes;
    ``cross_part_confusion[i][j]`` is the share of part i's images classified into part j's classes.

    >>> report = evaluate_assembled(model, card)  # doctest: +SKIP
    >>> report["accuracy"], report["original_accuracy"], report["cross_part_confusion"]  # doctest: +SKIP
    """
    tests = _datasets(test_data, card.part_cards, "test", data_dir)
    parts = [_evaluate_part(model, card, p, test, device) for p, test in enumerate(tests)]
    originals = [entry["original_accuracy"] for entry in parts if entry["original_accuracy"] is not None]
    return {"accuracy": sum(e["correct"] for e in parts) / sum(e["num_images"] for e in parts),
            "num_images": sum(e["num_images"] for e in parts),
            "original_accuracy": sum(originals) / len(originals) if originals else None,
            "originals_missing": [e["part"] for e in parts if e["original_accuracy"] is None],
            "cross_part_confusion": [e["into_parts"] for e in parts], "parts": parts,
            "size": model_size(model, card.input_shape)}


def finetune_assembled(model: AssembledModel, card: AssemblyCard, epochs: int = 1, per_class: int | None = None,
                       train_data: DataSpec = None, data_dir: str | Path | None = None, seed: int = 0,
                       device: torch.device | str = "cpu", show_progress: bool = False) -> TrainResult:
    """Fine-tune every part of an assembled model, in place, on the union of the parts' training classes.

    This is the seed's "ep.+1" reference (Table 5), not part of assembly, which needs no training:
    ``epochs`` of SGD (the zoo's settings) over each part's training images of its classes (at most
    ``per_class`` per class, seeded), labels offset as in the assembled output; the rescaling buffers
    stay fixed. A tenth of the images is held out to pick the best epoch (see :func:`mdakit.train.train`).

    >>> result = finetune_assembled(model, card, epochs=1, per_class=100)  # doctest: +SKIP
    """
    trains = _datasets(train_data, card.part_cards, "train", data_dir)
    union: Dataset = ClassUnion(trains, [c.logit_classes for c in card.part_cards])
    if per_class is not None:
        union = per_class_subset(union, per_class, seed=seed)
    return train_model(model, union, TrainConfig(epochs=epochs, batch_size=64, seed=seed), device=device,
                 show_progress=show_progress)


# --------------------------------------------------------------------------- files


def is_assembled(path: str | Path) -> bool:
    """Whether ``path`` is an assembled-model directory (read it with :func:`load_assembled`).

    >>> is_assembled("/nonexistent")
    False
    """
    return (Path(path) / ASSEMBLY_FILE).is_file()


def merged_card(model: PaddedAssembly, card: AssemblyCard) -> ModelCard:
    """The standard model card of a padded assembly's merged network."""
    first = card.part_cards[0]
    return ModelCard(arch=first.arch, input_shape=card.input_shape, num_classes=first.num_classes,
                     class_names=[f"{logit['dataset']}:{logit['name']}" for logit in card.logits],
                     logit_classes=list(range(len(card.logits))), mean=first.mean, std=first.std,
                     arch_kwargs=first.arch_kwargs, edits=[padded_widths(model.net, card.input_shape)],
                     provenance={"assembled_from": card.sources, "layout": "padded", "rescale": card.rescale})


def save_assembled(model: AssembledModel | PaddedAssembly, path: str | Path, card: AssemblyCard,
                   force: bool = False) -> Path:
    """Write ``assembly.json`` and each part as ``part-<i>/`` into ``path``, atomically (all or nothing);
    a padded assembly's merged network goes at the top as a standard model file.

    >>> save_assembled(model, "runs/mnist+fmnist", card)  # doctest: +SKIP
    """
    padded = isinstance(model, PaddedAssembly)
    total = sum(card.sizes)
    scale = [1.0] * total if padded else model.scale.tolist()
    shift = [0.0] * total if padded else model.shift.tolist()
    raw = {**card.to_dict(), "scale": scale, "shift": shift, "rescaling_folded_into_last_layer": padded}

    def write(tmp: Path) -> None:
        for p, (part, part_card) in enumerate(zip(model.parts, card.part_cards, strict=True)):
            save(part, tmp / f"part-{p}", part_card)
        if padded:
            save(model.net, tmp / "merged", merged_card(model, card))
            for name in (CARD_FILE, WEIGHTS_FILE):
                (tmp / "merged" / name).replace(tmp / name)
            (tmp / "merged").rmdir()
        (tmp / ASSEMBLY_FILE).write_text(json.dumps(raw, indent=2) + "\n")

    write_directory(path, force, write)
    return Path(path)


def _read_assembly(path: Path) -> dict[str, Any]:
    if not is_assembled(path):
        raise MdakitError(f"{path} is not an assembled model (expected {ASSEMBLY_FILE} inside)")
    try:
        raw = json.loads((path / ASSEMBLY_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MdakitError(f"{path / ASSEMBLY_FILE} is not valid JSON (truncated or corrupt): {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise MdakitError(f"{path / ASSEMBLY_FILE} does not describe an assembled model")
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise MdakitError(f"assembly format {raw['format_version']} is newer than this mdakit reads "
                          f"({FORMAT_VERSION}); upgrade mdakit")
    return raw


def load_assembled(path: str | Path, device: torch.device | str = "cpu"
                   ) -> tuple[AssembledModel | PaddedAssembly, AssemblyCard]:
    """Rebuild an assembled model saved by :func:`save_assembled` (eval mode) with its card.

    >>> model, card = load_assembled("runs/mnist+fmnist")  # doctest: +SKIP
    """
    path = Path(path)
    raw = _read_assembly(path)
    try:
        loaded = [load_with_card(path / f"part-{p}") for p in range(len(raw["parts"]))]
        card = AssemblyCard([c for _, c in loaded], [entry.get("source") for entry in raw["parts"]], raw["layout"],
                            raw["rescale"], raw.get("fit", {}), raw.get("metrics", {}))
        scale, shift, logits = raw["scale"], raw["shift"], raw["logits"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise MdakitError(f"{path / ASSEMBLY_FILE} is incomplete: {exc}") from exc
    if card.logits != logits or len(scale) != sum(card.sizes) or len(shift) != sum(card.sizes):
        raise MdakitError(f"the parts in {path} do not match the logits described in its {ASSEMBLY_FILE}")
    if card.layout == "padded":
        merged, _ = load_with_card(path, device=device)
        return PaddedAssembly(merged, [m for m, _ in loaded], card.sizes), card
    model = AssembledModel([m for m, _ in loaded], card.sizes)
    with torch.no_grad():
        model.scale.copy_(torch.tensor(scale))
        model.shift.copy_(torch.tensor(shift))
    return model.to(device).eval(), card
