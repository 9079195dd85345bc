"""Gated fine-tuning of a trained model with the decoupling loss (Eq. 12), and the model-file workflow."""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mdakit.artifacts import ModelCard, load_with_card
from mdakit.data import load_dataset, make_loader
from mdakit.decoupling.gates import DecoupledNet
from mdakit.decoupling.losses import LossWeights, decoupling_loss
from mdakit.decoupling.paths import collect_paths
from mdakit.errors import MdakitError
from mdakit.evaluate import evaluate
from mdakit.progress import progress as progress_bar
from mdakit.seeding import seed_everything
from mdakit.train import fit_and_validation

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
            raise MdakitError(f"head_start (--head-start) must be >= 0, got {self.head_start}")
        if self.recalibrate_batches < 0:
            raise MdakitError(f"recalibrate_batches must be >= 0, got {self.recalibrate_batches}")
        if self.train_subset is not None and self.train_subset < 1:
            raise MdakitError(f"--train-subset must be positive, got {self.train_subset}")
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


@torch.no_grad()
def recalibrate_batchnorm(net: DecoupledNet, loader: Iterable, batches: int, device: torch.device | str = "cpu"
                          ) -> int:
    """Re-estimate every BatchNorm's running statistics with the gates deciding as at inference.

    Training mixes soft and noisy gates (improved SemHash), so the statistics gathered while
    fine-tuning describe activations the deployed, hard-gated network never sees. This pass resets
    them and averages over ``batches`` batches with binary gates; weights are untouched. Returns the
    number of batches used; the model is left in the mode it came in.

    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("vgg16", (1, 28, 28), 2, width=0.125), (1, 28, 28))
    >>> recalibrate_batchnorm(net, [(torch.rand(8, 1, 28, 28), None)], batches=4)
    1
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = net.training
    net.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    used = 0
    try:
        for images, _ in loader:
            if used == batches:
                break
            net(images.to(device))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        net.train(was_training)
    return used


HEAD_START_BATCHES = 20  # of 256 shuffled fine-tuning images: the class means of :func:`warm_start_heads`


@torch.no_grad()
def warm_start_heads(net: DecoupledNet, loader: Iterable, batches: int, scale: float,
                     device: torch.device | str = "cpu") -> int:
    """Start each W_cla head as a readout of which of its layer's filters respond to which class.

    Row c of head l becomes ``scale · (m_c − mean_c m_c) / (s · √N)``: ``m_c`` the mean over class-c
    images of the layer's pooled output y (before masking, every gate as it decides), the mean taken
    over the classes present, ``s`` y's standard deviation over images, N the layer's filters; over
    the first ``batches`` batches of ``loader``. Rows of classes absent from those batches are 0.
    Why: with every gate open, z is the same for every input, so a randomly started head learns
    nothing from it, and the push L_mi gives the gates through it carries no information about which
    filters a class uses (measured: L_mi stays at N_layers · log K for a whole fine-tune and no filter
    becomes dynamic). A head that already reads the class from the filters sends each image's gates
    towards its class's filters from the first step. Returns the number of batches used.

    >>> from mdakit.zoo import build_model
    >>> net = DecoupledNet(build_model("lenet5", (1, 28, 28), 2), (1, 28, 28))
    >>> warm_start_heads(net, [(torch.rand(8, 1, 28, 28), torch.arange(8) % 2)], batches=4, scale=1.0)
    1
    """
    was_training = net.training
    net.eval()
    classes = net.num_classes
    counts = torch.zeros(classes, dtype=torch.float64, device=device)
    sums: list[torch.Tensor] = []
    moments: list[torch.Tensor] = []
    used = 0
    try:
        for batch, labels in itertools.islice(loader, batches):
            out = net(batch.to(device), return_gates=True)
            onehot = F.one_hot(torch.as_tensor(labels).to(device), classes).double()
            if not sums:
                sums = [onehot.new_zeros(classes, y.shape[1]) for y in out.y]
                moments = [onehot.new_zeros(2, y.shape[1]) for y in out.y]
            for total, moment, y in zip(sums, moments, out.y, strict=True):
                y = y.double()
                total += onehot.T @ y
                moment += torch.stack((y.sum(0), y.square().sum(0)))
            counts += onehot.sum(0)
            used += 1
    finally:
        net.train(was_training)
    seen = counts.sum()
    present = counts > 0
    for head, total, moment in zip(net.heads, sums, moments, strict=False):
        means = total / counts.clamp_min(1)[:, None]
        spread = (moment[1] / seen - (moment[0] / seen).square()).clamp_min(0).sqrt()
        readout = (means - means[present].mean(0)) / (spread + 1e-6) * present[:, None]
        head.weight.copy_((scale * readout / math.sqrt(readout.shape[1])).to(head.weight.dtype))
    return used


def _fine_tuning_split(train_data: Dataset, config: DecoupleConfig) -> tuple[Dataset, Dataset, Iterable]:
    """Seed everything, split off the validation images, and a shuffled loader over the rest."""
    generator = seed_everything(config.seed)
    fit_data, val_data = fit_and_validation(train_data, config.train_subset, config.val_fraction, config.seed)
    return fit_data, val_data, make_loader(fit_data, config.batch_size, shuffle=True, generator=generator)


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
    fit_data, val_data, loader = _fine_tuning_split(train_data, config)
    net.to(device)
    if config.head_start > 0:
        sample = make_loader(fit_data, 256, shuffle=True, generator=torch.Generator().manual_seed(config.seed))
        warm_start_heads(net, sample, HEAD_START_BATCHES, config.head_start, device)
    gate_params = _gate_parameters(net)
    gate_ids = {id(p) for p in gate_params}
    groups = [{"params": [p for p in net.parameters() if id(p) not in gate_ids], "lr": config.lr},
              {"params": gate_params, "lr": config.gate_lr or 10 * config.lr}]
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * len(loader))
    history: list[dict] = []
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        net.train()
        sums: dict[str, float] = {}
        seen = 0
        bar = progress_bar(loader, f"decouple {epoch}/{config.epochs}", enabled=show_progress)
        for images, labels in bar:
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            out = net(images, return_gates=True)
            loss, parts = decoupling_loss(out.logits, labels, out.z, out.y, net.heads, config.weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
            parts["loss"] = float(loss.detach())
            parts["density"] = float(torch.cat([z.detach().flatten() for z in out.z]).mean())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(labels)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}", ce=f"{sums['ce'] / seen:.4f}",
                            density=f"{sums['density'] / seen:.3f}", refresh=False)
        history.append(_end_epoch(net, loader, val_data, config, device, epoch, sums, seen, show_progress))
    net.eval()
    return DecoupleResult(seconds=time.perf_counter() - start, train_samples=len(fit_data),
                          val_samples=len(val_data), history=history)


def _end_epoch(net: DecoupledNet, loader: Iterable, val_data: Dataset, config: DecoupleConfig,
               device: torch.device | str, epoch: int, sums: dict[str, float], seen: int, show_progress: bool
               ) -> dict[str, Any]:
    """Re-estimate BatchNorm with binary gates, then the epoch's row: training means, validation accuracy."""
    recalibrate_batchnorm(net, loader, config.recalibrate_batches, device)
    paths = collect_paths(net, val_data, device=device)
    row = {"epoch": epoch, **{f"train_{k}": v / seen for k, v in sums.items()},
           "val_accuracy": float((paths.predictions == paths.labels).float().mean()),
           "val_density": paths.density()["all"]}
    if show_progress:
        tqdm.write(f"epoch {epoch}: loss {row['train_loss']:.4f} (ce {row['train_ce']:.4f}), val acc "
                   f"{row['val_accuracy']:.4f}, val gate density {row['val_density']:.3f}", file=sys.stderr)
    return row


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
    fit_data, val_data, loader = _fine_tuning_split(train_data, config)
    net.to(device)
    frozen = {id(p) for p in _gate_parameters(net)}
    body = [p for p in net.parameters() if id(p) not in frozen]
    optimizer = torch.optim.SGD(body, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    history: list[dict] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        net.train()
        for gate in net.gates:
            gate.eval()  # binary z = [g > 0], as at inference
        sums: dict[str, float] = {}
        seen = 0
        bar = progress_bar(loader, f"settle {epoch}/{epochs}", enabled=show_progress)
        for images, labels in bar:
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            out = net(images, return_gates=True)
            loss = F.cross_entropy(out.logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
            density = float(torch.cat([z.detach().flatten() for z in out.z]).mean())
            for k, v in {"loss": float(loss.detach()), "ce": float(loss.detach()), "density": density}.items():
                sums[k] = sums.get(k, 0.0) + v * len(labels)
            bar.set_postfix(ce=f"{sums['ce'] / seen:.4f}", density=f"{sums['density'] / seen:.3f}", refresh=False)
        history.append(_end_epoch(net, loader, val_data, config, device, epoch, sums, seen, show_progress))
    net.eval()
    return DecoupleResult(seconds=time.perf_counter() - start, train_samples=len(fit_data),
                          val_samples=len(val_data), history=history)


@dataclass
class Decoupled:
    """A decoupled model, its card (ready to save) and a report of before / after."""

    model: DecoupledNet
    card: ModelCard
    report: dict[str, Any]


def recorded_config(card: ModelCard) -> DecoupleConfig:
    """The fine-tuning settings a decoupled model's card records (defaults when it records none)."""
    recorded = card.training.get("decoupling", {}).get("config")
    return DecoupleConfig.from_dict(recorded) if recorded else DecoupleConfig()


def load_decoupled(model_path: str | Path, device: torch.device | str = "cpu") -> tuple[DecoupledNet, ModelCard]:
    """A decoupled model file and its card; any other model is a clear error."""
    net, card = load_with_card(model_path, device=device)
    if not isinstance(net, DecoupledNet):
        raise MdakitError(f"{model_path} is not a decoupled model: make one with `mdakit decouple`")
    return net, card


def model_datasets(card: ModelCard, dataset: str | None = None, data_dir: str | Path | None = None
                   ) -> tuple[Dataset, Dataset, Any]:
    """Train and test splits of ``dataset`` (default: the card's), checked against the model's input shape."""
    name = dataset or card.dataset
    if name is None:
        raise MdakitError("the model card names no dataset: pass --dataset")
    train_data, info = load_dataset(name, "train", data_dir)
    test_data, _ = load_dataset(name, "test", data_dir)
    if list(info.input_shape) != list(card.input_shape):
        raise MdakitError(f"{info.name} images are {list(info.input_shape)} but the model takes {card.input_shape}")
    return train_data, test_data, info


def decouple(model_path: str | Path, dataset: str | None = None, config: DecoupleConfig | None = None,
             layers: list[str] | None = None, device: torch.device | str = "cpu", data_dir: str | Path | None = None,
             show_progress: bool = True) -> Decoupled:
    """Load a trained model file, gate it, fine-tune it on ``dataset`` (default: its own) and evaluate.

    ``config=None`` uses the Table 5 weights of the model's architecture. Accuracy before and after is
    on the full test split; the gate density and filter states on the training images used.

    >>> result = decouple("runs/zoo/lenet5-mnist", config=DecoupleConfig(epochs=1))  # doctest: +SKIP
    """
    original, card = load_with_card(model_path, device=device)
    config = config or DecoupleConfig(weights=default_weights(card.arch))
    config.validate()
    train_data, test_data, info = model_datasets(card, dataset, data_dir)
    if max(card.logit_classes) >= info.num_classes or len(card.logit_classes) != info.num_classes:
        raise MdakitError(f"the model has {len(card.logit_classes)} logits but {info.name} has {info.num_classes} "
                          "classes: decoupling fine-tunes a full classifier of the dataset")
    seed_everything(config.seed)  # the controlling modules start from seeded weights
    net = DecoupledNet(original, card.input_shape, layers).to(device)
    before = evaluate(original, test_data, card.logit_classes, device=device, show_progress=show_progress)
    result = finetune(net, train_data, config, device=device, show_progress=show_progress)
    accuracy, per_class, paths = _test(net, test_data, card.logit_classes, device, show_progress)
    report = {"original_test_accuracy": before.accuracy, "test_accuracy": accuracy,
              "gated_layers": net.layers, "test_gate_density": paths.density(),
              "test_filter_states": paths.filter_states(), "finetune": result.to_dict(), "config": config.to_dict()}
    new_card = ModelCard.from_dict(card.to_dict())
    new_card.edits = [*card.edits, net.edit()]
    new_card.training = {**card.training, "decoupling": {"config": config.to_dict(), "result": result.to_dict()}}
    new_card.metrics = {"test_accuracy": accuracy, "original_test_accuracy": before.accuracy,
                        "per_class_test_accuracy": per_class,
                        "test_gate_density": paths.density()["all"]}
    new_card.provenance = {**card.provenance, "decoupled_from": str(model_path)}
    return Decoupled(model=net.cpu().eval(), card=new_card, report=report)


def _test(net: DecoupledNet, test_data: Dataset, logit_classes: list[int], device: torch.device | str,
          show_progress: bool) -> tuple[float, dict[str, float], Any]:
    """Test accuracy (hard gates), per-class accuracy and the test paths."""
    paths = collect_paths(net, test_data, device=device, show_progress=show_progress)
    predicted = torch.tensor(logit_classes)[paths.predictions]
    correct = (predicted == paths.labels).float()
    per_class = {str(c): float(correct[paths.labels == c].mean()) for c in logit_classes}
    return float(correct.mean()), per_class, paths


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
    accuracy, per_class, paths = _test(net, test_data, card.logit_classes, device, show_progress)
    new_card = ModelCard.from_dict(card.to_dict())
    new_card.training = {**card.training, "settle": {"epochs": epochs, "config": config.to_dict(),
                                                     "result": result.to_dict()}}
    new_card.metrics = {**card.metrics, "test_accuracy": accuracy, "per_class_test_accuracy": per_class,
                        "test_gate_density": paths.density()["all"],
                        "test_accuracy_before_settling": card.metrics.get("test_accuracy")}
    new_card.provenance = {**card.provenance, "settled_from": str(model_path)}
    report = {"test_accuracy_before": card.metrics.get("test_accuracy"), "test_accuracy": accuracy,
              "test_gate_density": paths.density(), "settle": result.to_dict()}
    return Decoupled(model=net.cpu().eval(), card=new_card, report=report)
