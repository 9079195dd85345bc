"""Training a zoo detector on detection canvases, selecting the epoch by mAP@0.5 on held-out canvases."""

from __future__ import annotations

import copy
import sys
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from mdakit.data.canvas import CanvasDetection, detection_loader
from mdakit.detection.boxes import detection_loss
from mdakit.detection.evaluate import evaluate_detector
from mdakit.progress import progress as progress_bar
from mdakit.seeding import seed_everything
from mdakit.train import OPTIMIZERS, TrainConfig, TrainResult

VALIDATION_CANVASES = 500


def train_detector(model: nn.Module, train_data: CanvasDetection, config: TrainConfig = TrainConfig(),
                   device: torch.device | str = "cpu", show_progress: bool = True) -> TrainResult:
    """Train ``model`` in place on ``train_data`` and load the weights of its best epoch by mAP@0.5 on
    canvases of the training split's held-out objects (``config.val_fraction`` is not used: the split is
    fixed by the dataset). ``config.train_subset``: train on the first that many canvases.

    >>> from mdakit.zoo import build_model  # doctest: +SKIP
    >>> train_detector(build_model("fcos-lite", (1, 64, 64), 10), load_dataset("det-mnist")[0])  # doctest: +SKIP
    """
    config.validate()
    device = torch.device(device)
    generator = seed_everything(config.seed)
    fit = train_data if config.train_subset is None else torch.utils.data.Subset(
        train_data, range(min(config.train_subset, len(train_data))))
    validation = train_data.holdout(VALIDATION_CANVASES, seed=config.seed + 1)
    labels = list(range(model(torch.zeros(1, 1, *train_data[0][0].shape[-2:])).shape[1] - 4))
    loader = detection_loader(fit, config.batch_size, shuffle=True, generator=generator)
    model.to(device)
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), config)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, pct_start=0.1,
                                                    total_steps=config.epochs * len(loader))
    best, best_epoch, best_state, history = -1.0, 0, None, []
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        seen, total = 0, 0.0
        bar = progress_bar(loader, f"epoch {epoch}/{config.epochs}", enabled=show_progress)
        for images, targets in bar:
            loss = detection_loss(model(images.to(device)), targets, images.shape[-1], labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(images)
            total += float(loss.detach()) * len(images)
            bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        score = evaluate_detector(model, validation, labels, device=device)["map_50"]
        history.append({"epoch": epoch, "train_loss": total / seen, "val_map_50": score})
        if show_progress:
            tqdm.write(f"epoch {epoch}: loss {total / seen:.4f}, held-out mAP@0.5 {score:.4f}", file=sys.stderr)
        if score > best:
            best, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best_val_accuracy=best, best_epoch=best_epoch, seconds=time.perf_counter() - start,
                       train_samples=len(fit), val_samples=len(validation), history=history)
