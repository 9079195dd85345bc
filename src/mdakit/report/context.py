"""What the report computes and keeps while it is built: options, loaded (and so verified) model files,
attributions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mdakit.artifacts import ModelCard, load_with_card
from mdakit.assembly import AssembledModel, AssemblyCard, PaddedAssembly, load_assembled
from mdakit.attribution.base import MethodSettings, get_method
from mdakit.errors import OptionError
from mdakit.report.contrib import ClassAttribution, attribute
from mdakit.workspace import Workspace


@dataclass
class ReportOptions:
    """``compute=False`` shows only what the files hold (no data needed); otherwise routes,
    similarity and patterns are computed on each model's own training data (``samples`` per class,
    at most ``max_classes`` classes per model, routes of the first ``route_classes`` of them)."""

    compute: bool = True
    samples: int = 50
    seed: int = 0
    max_classes: int = 10
    route_classes: int = 3
    top: int = 12
    data_dir: Path | None = None
    device: str = "cpu"

    def validate(self) -> None:
        """Refuse settings that cannot work.

        >>> ReportOptions(samples=0).validate()
        Traceback (most recent call last):
        mdakit.errors.OptionError: samples must be at least 1, got 0
        """
        for name in ("samples", "max_classes", "route_classes", "top"):
            if getattr(self, name) < 1:
                raise OptionError(f"{{0}} must be at least 1, got {getattr(self, name)}", name)


@dataclass
class Context:
    """Options plus caches, so a model shared by several parts is loaded once.

    Loading a model file verifies it (its weights' checksum, see :func:`~mdakit.artifacts.load_with_card`),
    so :meth:`model` and :meth:`assembly` are also how the report checks what it reads.
    """

    options: ReportOptions
    models: dict[str, tuple[nn.Module, ModelCard]] = field(default_factory=dict)
    assemblies: dict[str, tuple[AssembledModel | PaddedAssembly, AssemblyCard]] = field(default_factory=dict)
    sources: dict[str, Workspace] = field(default_factory=dict)
    attributions: dict[tuple, ClassAttribution] = field(default_factory=dict)

    def model(self, path: str | Path) -> tuple[nn.Module, ModelCard]:
        """The model file at ``path`` and its card, loaded and verified once."""
        key = str(path)
        if key not in self.models:
            self.models[key] = load_with_card(path)
        return self.models[key]

    def assembly(self, path: str | Path) -> tuple[AssembledModel | PaddedAssembly, AssemblyCard]:
        """The assembled model at ``path`` (``assembly.json``, every part, a padded one's merged network),
        loaded and verified once."""
        key = str(path)
        if key not in self.assemblies:
            self.assemblies[key] = load_assembled(path)
        return self.assemblies[key]

    def source(self, path: str | Path) -> Workspace:
        """The model at ``path`` with its own dataset's train and test splits."""
        key = str(path)
        if key not in self.sources:
            self.sources[key] = Workspace.open(path, data_dir=self.options.data_dir)
        return self.sources[key]

    def attribution(self, path: str | Path, classes: list[int], settings: MethodSettings | None = None,
                    samples: int | None = None, seed: int | None = None,
                    method: str = "contribution") -> ClassAttribution:
        """Attribution of ``classes`` of the model at ``path`` by ``method``, with its sums (cached)."""
        settings = settings or get_method(method).default_settings()
        samples = self.options.samples if samples is None else samples
        seed = self.options.seed if seed is None else seed
        key = (str(path), tuple(classes), method, tuple(sorted(settings.to_dict().items())), samples, seed)
        if key not in self.attributions:
            with torch.no_grad():
                self.attributions[key] = attribute(self.source(path), classes, settings, samples, seed,
                                                   self.options.device, method)
        return self.attributions[key]
