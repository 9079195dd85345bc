"""Decoupling a trained classifier: gated fine-tuning with the decoupling loss (Eq. 12), settling
under hard gates, and the workflow from a model and its data to a decoupled model file.

:func:`decouple` takes a model directory or an ``nn.Module`` and a dataset name, a map-style dataset
or a DataLoader (through :class:`~mdakit.workspace.Workspace`); :func:`settle_model` a decoupled model file.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mdakit.artifacts import ModelCard, load_with_card
from mdakit.data import labels_of, make_loader
from mdakit.decoupling.calibration import HEAD_START_BATCHES, recalibrate_batchnorm, warm_start_heads
from mdakit.decoupling.gates import DecoupledNet, Gated
from mdakit.decoupling.losses import LossWeights, decoupling_loss
from mdakit.decoupling.paths import collect_paths
from mdakit.errors import MdakitError, OptionError
from mdakit.evaluate import evaluate
from mdakit.progress import progress as progress_bar
from mdakit.seeding import seed_everything
from mdakit.train import fit_and_validation
from mdakit.workspace import DataSpec, Workspace, model_datasets

# interpretable-decoupling Table 5: (λ_m, λ_k, λ_s, R) per network; "resnet56" is the fallback.
TABLE5: dict[str, tuple[float, float, float, float]] = {
    "resnet56": (0.01, 1.0, 0.00015, 0.0),
    "vggnet": (0.04, 1.0, 0.0002, 0.0),
    "googlenet": (0.006, 1.0, 0.00005, 0.0),
    "resnet18": (0.005, 1.0, 0.01, 0.6),
    "vgg16-imagenet": (0.01, 1.0, 0.01, 0.5),
}
_ROW_OF_ARCH = {"resnet20": "resnet56", "resnet56": "resnet56", "vgg16": "vggnet", "googlenet": "googlenet",
                "torchvision:googlenet": "googlenet", "resnet50": "resnet18", "torchvision:resnet18": "resnet18",
                "torchvision:resnet34": "resnet18", "torchvision:resnet50": "resnet18",
                "torchvision:vgg16": "vgg16-imagenet", "torchvision:vgg16_bn": "vgg16-imagenet"}


def default_weights(arch: str | None) -> LossWeights:
    """The Table 5 row for an architecture (CIFAR ResNet-56's row when the table has none).

    >>> default_weights("vgg16").lambda_m, default_weights("lenet5").lambda_s
    (0.04, 0.00015)
    """
    lambda_m, lambda_k, lambda_s, ratio = TABLE5[_ROW_OF_ARCH.get(arch or "", "resnet56")]
    return LossWeights(lambda_m, lambda_k, lambda_s, ratio)


@dataclass
class DecoupleConfig:
    """Fine-tuning settings: SGD (momentum 0.9) with a cosine schedule, and the loss weights.

    ``gate_lr`` is the learning rate of the controlling modules and W_cla heads, which start from
    scratch while the body is pretrained (default: 10 × ``lr``). After each epoch the BatchNorm
    statistics are re-estimated over ``recalibrate_batches`` fine-tuning batches with binary gates
    (:func:`recalibrate_batchnorm`; 0 keeps the statistics gathered while training).
    ``head_start`` > 0 starts the W_cla heads as class readouts of the filters' pooled outputs,
    scaled by it (:func:`warm_start_heads`); 0 keeps their random start.
    """

    epochs: int = 1
    lr: float = 0.01
    gate_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0
    train_subset: int | None = None
    val_fraction: float = 0.1
    recalibrate_batches: int = 50
    head_start: float = 0.0
    weights: LossWeights = field(default_factory=LossWeights)

    def validate(self) -> None:
        if self.epochs < 1:
            raise MdakitError(f"epochs must be at least 1, got {self.epochs}")
        if not all(v > 0 and math.isfinite(v) for v in (self.lr, self.gate_lr or self.lr)) or self.batch_size < 1:
            raise MdakitError("learning rates must be positive and batch size at least 1")
        if not (self.head_start >= 0 and math.isfinite(self.head_start)):
            raise OptionError(f"{{0}} must be >= 0, got {self.head_start}", "head_start")
        if self.recalibrate_batches < 0:
            raise MdakitError(f"recalibrate_batches must be >= 0, got {self.recalibrate_batches}")
        if self.train_subset is not None and self.train_subset < 1:
            raise OptionError(f"{{0}} must be positive, got {self.train_subset}", "train_subset")
        self.weights.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoupleConfig:
        """The config :meth:`to_dict` wrote (as a model card records it).

        >>> DecoupleConfig.from_dict(DecoupleConfig(epochs=3).to_dict()).epochs
        3
        """
        return cls(**{k: v for k, v in data.items() if k != "weights"}, weights=LossWeights(**data["weights"]))


@dataclass
class DecoupleResult:
    """What fine-tuning reached on its validation split, per epoch."""

    seconds: float
    train_samples: int
    val_samples: int
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Split(NamedTuple):
    """The images fine-tuning fits on, its validation images, and a shuffled loader over the first."""

    fit: Dataset
    val: Dataset
    loader: DataLoader


def _fine_tuning_split(train_data: Dataset, config: DecoupleConfig) -> _Split:
    """Seed everything, split off the validation images, and a shuffled loader over the rest."""
    generator = seed_everything(config.seed)
    fit_data, val_data = fit_and_validation(train_data, config.train_subset, config.val_fraction, config.seed)
    return _Split(fit_data, val_data, make_loader(fit_data, config.batch_size, shuffle=True, generator=generator))


def _gate_parameters(net: DecoupledNet) -> list[nn.Parameter]:
    """The controlling modules' and W_cla heads' parameters (everything that is not the body)."""
    return [p for gate in net.gates for p in gate.parameters()] + list(net.heads.parameters())


def finetune(net: DecoupledNet, train_data: Dataset, config: DecoupleConfig, device: torch.device | str = "cpu",
             show_progress: bool = True) -> DecoupleResult:
    """Fine-tune ``net`` in place with the decoupling loss; returns the per-epoch history.

    >>> from mdakit.data import ImageTensorDataset
    >>> from mdakit.zoo import build_model
    >>> ds = ImageTensorDataset(torch.randint(0, 255, (40, 1, 28, 28), dtype=torch.uint8), torch.arange(40) % 2)
    >>> net = DecoupledNet(build_model("lenet5", (1, 28, 28), 2), (1, 28, 28))
    >>> finetune(net, ds, DecoupleConfig(batch_size=8), show_progress=False).history[0]["epoch"]
    1
    """
    config.validate()
    device = torch.device(device)
    split = _fine_tuning_split(train_data, config)
    net.to(device)
    if config.head_start > 0:
        sample = make_loader(split.fit, 256, shuffle=True, generator=torch.Generator().manual_seed(config.seed))
        warm_start_heads(net, sample, HEAD_START_BATCHES, config.head_start, device)
    gate_params = _gate_parameters(net)
    gate_ids = {id(p) for p in gate_params}
    groups = [{"params": [p for p in net.parameters() if id(p) not in gate_ids], "lr": config.lr},
              {"params": gate_params, "lr": config.gate_lr or 10 * config.lr}]
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

    def step(out: Gated, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts = decoupling_loss(out.logits, labels, out.z, out.y, net.heads, config.weights)
        return loss, {**parts, "loss": float(loss.detach())}

    return _train(net, split, optimizer, config, config.epochs, step, device, show_progress, "decouple", ("loss", "ce"))


def settle(net: DecoupledNet, train_data: Dataset, config: DecoupleConfig, epochs: int,
           device: torch.device | str = "cpu", show_progress: bool = True) -> DecoupleResult:
    """Fine-tune the body of a decoupled ``net`` in place with its gates frozen and binary (CE only).

    Decoupling trains under improved SemHash's noisy, half-soft gates; the deployed model runs hard
    gates. These ``epochs`` (SGD, cosine from ``config.lr``, the same fine-tuning split) train the
    filters under the hard gates they will run with. The controlling modules and W_cla heads do not
    change, but a gate reads its layer's input, so paths may shift a little: measure them afterwards.
    Not part of the seeds' method (they fine-tune for 200+ epochs); an option for short budgets.

    >>> from mdakit.data import ImageTensorDataset
    >>> from mdakit.zoo import build_model
    >>> ds = ImageTensorDataset(torch.randint(0, 255, (40, 1, 28, 28), dtype=torch.uint8), torch.arange(40) % 2)
    >>> net = DecoupledNet(build_model("lenet5", (1, 28, 28), 2), (1, 28, 28))
    >>> settle(net, ds, DecoupleConfig(batch_size=8), epochs=1, show_progress=False).history[0]["epoch"]
    1
    """
    config.validate()
    if epochs < 1:
        raise MdakitError(f"settle epochs must be at least 1, got {epochs}")
    device = torch.device(device)
    split = _fine_tuning_split(train_data, config)
    net.to(device)
    frozen = {id(p) for p in _gate_parameters(net)}
    body = [p for p in net.parameters() if id(p) not in frozen]
    optimizer = torch.optim.SGD(body, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

    def step(out: Gated, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = F.cross_entropy(out.logits, labels)
        return loss, {"loss": float(loss.detach()), "ce": float(loss.detach())}

    return _train(net, split, optimizer, config, epochs, step, device, show_progress, "settle", ("ce",),
                  hard_gates=True)


Step = Callable[[Gated, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def _train(net: DecoupledNet, split: _Split, optimizer: torch.optim.Optimizer, config: DecoupleConfig, epochs: int,
           step: Step, device: torch.device, show_progress: bool, label: str, shown: tuple[str, ...],
           hard_gates: bool = False) -> DecoupleResult:
    """``epochs`` of SGD steps on ``step``'s loss under a cosine schedule, each closed by :func:`_end_epoch`.

    ``step(out, labels)`` gives the loss and the numbers to average per image; the progress bar
    (``label``) shows the averages named in ``shown`` and the gate density; ``hard_gates`` keeps
    the gates binary, as at inference.
    """
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(split.loader))
    history: list[dict] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        net.train()
        if hard_gates:
            for gate in net.gates:
                gate.eval()  # binary z = [g > 0], as at inference
        sums: dict[str, float] = {}
        seen = 0
        bar = progress_bar(split.loader, f"{label} {epoch}/{epochs}", enabled=show_progress)
        for images, labels in bar:
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            out = net(images, return_gates=True)
            loss, parts = step(out, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
            parts["density"] = float(torch.cat([z.detach().flatten() for z in out.z]).mean())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(labels)
            means = {k: f"{sums[k] / seen:.4f}" for k in shown}
            bar.set_postfix(means | {"density": f"{sums['density'] / seen:.3f}"}, refresh=False)
        history.append(_end_epoch(net, split, config, device, epoch, sums, seen, show_progress))
    net.eval()
    return DecoupleResult(seconds=time.perf_counter() - start, train_samples=len(split.fit),
                          val_samples=len(split.val), history=history)


def _end_epoch(net: DecoupledNet, split: _Split, config: DecoupleConfig, device: torch.device | str, epoch: int,
               sums: dict[str, float], seen: int, show_progress: bool) -> dict[str, Any]:
    """Re-estimate BatchNorm with binary gates, then the epoch's row: training means, validation accuracy."""
    recalibrate_batchnorm(net, split.loader, config.recalibrate_batches, device)
    paths = collect_paths(net, split.val, device=device)
    row = {"epoch": epoch, **{f"train_{k}": v / seen for k, v in sums.items()},
           "val_accuracy": float((paths.predictions == paths.labels).float().mean()),
           "val_density": paths.density()["all"]}
    if show_progress:
        tqdm.write(f"epoch {epoch}: loss {row['train_loss']:.4f} (ce {row['train_ce']:.4f}), val acc "
                   f"{row['val_accuracy']:.4f}, val gate density {row['val_density']:.3f}", file=sys.stderr)
    return row


@dataclass
class Decoupled:
    """A decoupled model, its card (ready to save) and a report of before / after."""

    model: DecoupledNet
    card: ModelCard
    report: dict[str, Any]


def recorded_config(card: ModelCard) -> DecoupleConfig:
    """The fine-tuning settings a decoupled model's card records (defaults when it records none).

    >>> recorded_config(ModelCard(arch="lenet5", input_shape=[1, 28, 28], num_classes=10)).epochs
    1
    """
    recorded = card.training.get("decoupling", {}).get("config")
    return DecoupleConfig.from_dict(recorded) if recorded else DecoupleConfig()


def load_decoupled(model_path: str | Path, device: torch.device | str = "cpu") -> tuple[DecoupledNet, ModelCard]:
    """A decoupled model file and its card; any other model is a clear error.

    >>> net, card = load_decoupled("runs/decouple/lenet5-mnist-e2-nall")  # doctest: +SKIP
    """
    net, card = load_with_card(model_path, device=device)
    if not isinstance(net, DecoupledNet):
        raise MdakitError(f"{model_path} is not a decoupled model: make one with `mdakit decouple`")
    return net, card


def decouple(model: nn.Module | str | Path, dataset: DataSpec | None = None, config: DecoupleConfig | None = None,
             layers: list[str] | None = None, device: torch.device | str = "cpu", data_dir: str | Path | None = None,
             show_progress: bool = True, test_data: DataSpec | None = None) -> Decoupled:
    """Gate a trained classifier, fine-tune it on ``dataset`` and evaluate it.

    ``model`` is a model directory or an ``nn.Module`` (a module gets a card from the images' shape);
    its logits must be the data's classes 0..K−1. ``dataset`` is a dataset name (default: the model's
    own), a map-style dataset or a DataLoader of ``(image, label)`` pairs (its dataset is used, batched
    by ``config.batch_size``); ``test_data`` likewise (default: a named dataset's test split).
    ``config=None`` uses the Table 5 weights of the model's architecture. Accuracy before and after,
    gate density and filter states are measured on all test images. Without test data (a dataset
    object and no ``test_data``) nothing is measured: the report and the card's metrics then hold no
    test entries (``original_test_accuracy``, ``test_accuracy``, ``test_gate_density``, ...).

    >>> from torch.utils.data import TensorDataset
    >>> images, labels = torch.rand(40, 1, 8, 8), torch.arange(40) % 2
    >>> body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
    ...                      nn.Linear(64, 2))
    >>> result = decouple(body, TensorDataset(images, labels), DecoupleConfig(batch_size=8), show_progress=False)
    >>> result.model.layers, "test_accuracy" in result.report, result.card.input_shape
    (['2'], False, [1, 8, 8])
    """
    source = Workspace.open(model, dataset, test_data, data_dir=data_dir)
    card, original = source.card, source.model.to(device)
    config = config or DecoupleConfig(weights=default_weights(card.arch))
    config.validate()
    _check_full_classifier(card, source.train, card.dataset if dataset is None else dataset)
    seed_everything(config.seed)  # the controlling modules start from seeded weights
    net = DecoupledNet(original, card.input_shape, layers).to(device)
    before = None if source.test is None else \
        evaluate(original, source.test, card.logit_classes, device=device, show_progress=show_progress).accuracy
    result = finetune(net, source.train, config, device=device, show_progress=show_progress)
    tested = _test(net, source.test, card.logit_classes, device, show_progress)
    report = _measured({"original_test_accuracy": before, "test_accuracy": tested.get("accuracy"),
                        "gated_layers": net.layers, "test_gate_density": tested.get("density"),
                        "test_filter_states": tested.get("filter_states"), "finetune": result.to_dict(),
                        "config": config.to_dict()})
    new_card = ModelCard.from_dict(card.to_dict())
    new_card.edits = [*card.edits, net.edit()]
    new_card.training = {**card.training, "decoupling": {"config": config.to_dict(), "result": result.to_dict()}}
    new_card.metrics = _measured({"test_accuracy": tested.get("accuracy"), "original_test_accuracy": before,
                                  "per_class_test_accuracy": tested.get("per_class"),
                                  "test_gate_density": tested.get("density", {}).get("all")})
    if isinstance(model, str | Path):
        new_card.provenance = {**card.provenance, "decoupled_from": str(model)}
    return Decoupled(model=net.cpu().eval(), card=new_card, report=report)


def _check_full_classifier(card: ModelCard, train: Dataset, data: DataSpec | None) -> None:
    """Fine-tuning takes the labels as logit rows: the model's logits must be the data's classes 0..K−1."""
    classes = int(labels_of(train).max()) + 1
    if max(card.logit_classes) >= classes or len(card.logit_classes) != classes:
        name = data if isinstance(data, str) else "the data"
        raise MdakitError(f"the model has {len(card.logit_classes)} logits but {name} has {classes} classes: "
                          "decoupling fine-tunes a full classifier of the dataset")


def _measured(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the entries that were not measured (``None``).

    >>> _measured({"test_accuracy": None, "gated_layers": ["a"]})
    {'gated_layers': ['a']}
    """
    return {k: v for k, v in values.items() if v is not None}


def _test(net: DecoupledNet, test_data: Dataset | None, logit_classes: list[int], device: torch.device | str,
          show_progress: bool) -> dict[str, Any]:
    """Test accuracy (hard gates), per-class accuracy, gate density and filter states; empty without test data."""
    if test_data is None:
        return {}
    paths = collect_paths(net, test_data, device=device, show_progress=show_progress)
    predicted = torch.tensor(logit_classes)[paths.predictions]
    correct = (predicted == paths.labels).float()
    per_class = {str(c): float(correct[paths.labels == c].mean()) for c in logit_classes}
    return {"accuracy": float(correct.mean()), "per_class": per_class, "density": paths.density(),
            "filter_states": paths.filter_states()}


def settle_model(model_path: str | Path, epochs: int, config: DecoupleConfig | None = None,
                 dataset: str | None = None, device: torch.device | str = "cpu", data_dir: str | Path | None = None,
                 show_progress: bool = True) -> Decoupled:
    """Load a decoupled model file and :func:`settle` it on ``dataset`` (default: its own); evaluate.

    ``config`` gives the optimiser settings and the fine-tuning split (default: those the model was
    decoupled with). The card keeps the original's test accuracy and records the settling.

    >>> result = settle_model("runs/decouple/lenet5-mnist-e2-nall", epochs=1)  # doctest: +SKIP
    """
    net, card = load_decoupled(model_path, device)
    config = config or recorded_config(card)
    train_data, test_data, _ = model_datasets(card, dataset, data_dir)
    result = settle(net, train_data, config, epochs, device=device, show_progress=show_progress)
    tested = _test(net, test_data, card.logit_classes, device, show_progress)
    new_card = ModelCard.from_dict(card.to_dict())
    new_card.training = {**card.training, "settle": {"epochs": epochs, "config": config.to_dict(),
                                                     "result": result.to_dict()}}
    new_card.metrics = {**card.metrics, "test_accuracy": tested["accuracy"],
                        "per_class_test_accuracy": tested["per_class"], "test_gate_density": tested["density"]["all"],
                        "test_accuracy_before_settling": card.metrics.get("test_accuracy")}
    new_card.provenance = {**card.provenance, "settled_from": str(model_path)}
    report = {"test_accuracy_before": card.metrics.get("test_accuracy"), "test_accuracy": tested["accuracy"],
              "test_gate_density": tested["density"], "settle": result.to_dict()}
    return Decoupled(model=net.cpu().eval(), card=new_card, report=report)
