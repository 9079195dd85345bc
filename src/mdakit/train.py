"""Supervised training with a validation split for model selection (never the test split)."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mdakit.data import labels_of, make_loader, per_class_subset, stratified_split
from mdakit.errors import MdakitError, OptionError
from mdakit.progress import progress as progress_bar
from mdakit.seeding import seed_everything

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
}
"""How each optimizer of :attr:`TrainConfig.optimizer` is built from the parameters and the config."""


@dataclass
class TrainConfig:
    """Training settings; the defaults are SGD(0.01, momentum 0.9, wd 5e-4) with a cosine schedule.

    ``optimizer="adamw"`` uses AdamW (``momentum`` unused), which vision transformers need: with SGD a
    small ViT learns MNIST slowly. Typical settings for it: lr 1e-3, weight decay 0.05.
    """

    epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    val_fraction: float = 0.1
    seed: int = 0
    train_subset: int | None = None
    optimizer: str = "sgd"

    def validate(self) -> None:
        """Refuse settings training cannot use (NaN and infinities included).

        >>> TrainConfig(lr=float("nan")).validate()
        Traceback (most recent call last):
        ...
        mdakit.errors.OptionError: lr must be a positive finite number, got nan
        """
        if self.epochs < 1:
            raise OptionError(f"{{0}} must be at least 1, got {self.epochs}", "epochs")
        if self.batch_size < 1:
            raise OptionError(f"{{0}} must be at least 1, got {self.batch_size}", "batch_size")
        if not 0 < self.lr < math.inf:
            raise OptionError(f"{{0}} must be a positive finite number, got {self.lr}", "lr")
        for name in ("momentum", "weight_decay"):
            if not 0 <= getattr(self, name) < math.inf:
                raise OptionError(f"{{0}} must be a non-negative finite number, got {getattr(self, name)}", name)
        if not 0 < self.val_fraction < 1:
            raise OptionError(f"{{0}} must be in (0, 1) (a validation split is always held out), got "
                              f"{self.val_fraction}", "val_fraction")
        if self.optimizer not in OPTIMIZERS:
            raise OptionError(f"{{0}} must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}", "optimizer")
        if self.train_subset is not None and self.train_subset < 1:
            raise OptionError(f"{{0}} must be positive, got {self.train_subset}", "train_subset")


@dataclass
class TrainResult:
    """What training reached: the best validation accuracy, its epoch, and the per-epoch history."""

    best_val_accuracy: float
    best_epoch: int
    seconds: float
    train_samples: int
    val_samples: int
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def _accuracy(model: nn.Module, data: Dataset, device: torch.device, batch_size: int) -> float:
    model.eval()
    correct = total = 0
    for images, labels in make_loader(data, batch_size * 2):
        labels = torch.as_tensor(labels).to(device)
        correct += int((model(images.to(device)).argmax(1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)


def fit_and_validation(train_data: Dataset, train_subset: int | None, val_fraction: float, seed: int
                       ) -> tuple[Dataset, Dataset]:
    """The images to fit on and the stratified validation split held out of them, after taking a
    stratified subset of about ``train_subset`` images when one is asked for.

    >>> from mdakit.data import ImageTensorDataset
    >>> ds = ImageTensorDataset(torch.zeros(40, 1, 2, 2, dtype=torch.uint8), torch.arange(40) % 2)
    >>> fit, val = fit_and_validation(ds, 20, 0.5, seed=0)
    >>> len(fit), len(val)
    (10, 10)
    """
    data = train_data
    if train_subset is not None:
        num_classes = len(torch.unique(labels_of(train_data)))
        data = per_class_subset(train_data, max(1, train_subset // num_classes), seed=seed)
    fit_data, val_data = stratified_split(data, val_fraction, seed=seed)
    if len(fit_data) == 0 or len(val_data) == 0:
        raise MdakitError("too few training images to hold out a validation split")
    return fit_data, val_data


def train(model: nn.Module, train_data: Dataset, config: TrainConfig = TrainConfig(),
          device: torch.device | str = "cpu", show_progress: bool = True) -> TrainResult:
    """Train ``model`` in place on ``train_data`` and load the weights of its best validation epoch.

    The validation split is carved from ``train_data`` (stratified, seeded).

    >>> from mdakit.data import ImageTensorDataset
    >>> ds = ImageTensorDataset(torch.randint(0, 255, (40, 1, 4, 4), dtype=torch.uint8), torch.arange(40) % 2)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    >>> train(model, ds, TrainConfig(epochs=1, batch_size=8), show_progress=False).best_epoch
    1
    """
    config.validate()
    device = torch.device(device)
    generator = seed_everything(config.seed)
    fit_data, val_data = fit_and_validation(train_data, config.train_subset, config.val_fraction, config.seed)
    loader = make_loader(fit_data, config.batch_size, shuffle=True, generator=generator)
    model.to(device)
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss()
    best_acc, best_epoch, best_state = -1.0, 0, None
    history: list[dict] = []
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        seen = correct = 0
        total_loss = 0.0
        bar = progress_bar(loader, f"epoch {epoch}/{config.epochs}", enabled=show_progress)
        for images, labels in bar:
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            logits = model(images)
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
            total_loss += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        val_acc = _accuracy(model, val_data, device, config.batch_size)
        history.append({"epoch": epoch, "train_loss": total_loss / seen, "train_accuracy": correct / seen,
                        "val_accuracy": val_acc})
        if show_progress:
            tqdm.write(f"epoch {epoch}: loss {total_loss / seen:.4f}, train acc {correct / seen:.4f}, "
                       f"val acc {val_acc:.4f}", file=sys.stderr)
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best_val_accuracy=best_acc, best_epoch=best_epoch, seconds=time.perf_counter() - start,
                       train_samples=len(fit_data), val_samples=len(val_data), history=history)
