"""Options that several commands share, declared once, and the attribution settings they build.

Each alias is an ``Annotated`` type typer reads the flag and its help from; a command still names
the parameter (typer needs it in the signature) and gives its default, e.g. ``seed: SeedOpt = 0``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mdakit.defaults import MEASURE_LATENCY
from mdakit.errors import OptionError

if TYPE_CHECKING:
    from mdakit.attribution.base import MethodSettings
    from mdakit.attribution.contribution import ContributionSettings

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Dataset folder (default $MDAKIT_DATA "
                                                 "or ~/.cache/mdakit/data).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
SeedOpt = Annotated[int, typer.Option()]
SamplesOpt = Annotated[int, typer.Option(help="Training samples per class.")]

ModelArg = Annotated[Path, typer.Argument(metavar="MODEL", help="Model directory.")]
DecoupledModelArg = Annotated[Path, typer.Argument(metavar="MODEL", help="Decoupled model directory.")]
DatasetOpt = Annotated[str | None, typer.Option(help="Default: the model's dataset.")]
OutModelOpt = Annotated[Path, typer.Option(help="Output model directory.")]
ClassesOpt = Annotated[str, typer.Option(help="Classes, e.g. 0-2, 0,3,5 or class names; order sets the logits.")]

MethodOpt = Annotated[str, typer.Option(help="Attribution method: contribution, gradient or nad.")]
AlphaConv = Annotated[float | None, typer.Option(help="α for conv layers (Eq. 7), in (0, 1] (the paper's: 0.3).")]
BetaConv = Annotated[float | None, typer.Option(help="β for conv layers (Eq. 9), in (0, 1] (the paper's: 0.2).")]
AlphaLinear = Annotated[float | None, typer.Option(help="α for linear layers, in (0, 1] (the paper's: 0.4).")]
BetaLinear = Annotated[float | None, typer.Option(help="β for linear layers, in (0, 1] (the paper's: 0.3).")]
LayersOpt = Annotated[int | None, typer.Option("--layers", help="Attribute only the last L layers.")]
CalibrateOpt = Annotated[float | None, typer.Option(
    help="Relax the thresholds until the part is within this many accuracy points of the original restricted "
         "to its classes, on held-out training images (default: 0.5 when --thresholds calibrated).")]
ThresholdsOpt = Annotated[str, typer.Option(
    help="Given no α or β: calibrated (the paper's relaxed until the part holds, contribution only) or paper "
         "(the paper's as they are).")]
NadBetaOpt = Annotated[str | None, typer.Option(
    "--beta", help="NAD: β (a positive number or 'auto' for the elbow method; default: per architecture).")]
NadLossOpt = Annotated[str, typer.Option(help="NAD loss: code (the authors' code) or paper (Eq. 12–14).")]
NadLinearOpt = Annotated[bool, typer.Option(
    help="NAD: also mask the outputs of hidden fully connected blocks (default: conv blocks only).")]
LatencyOpt = Annotated[bool | None, typer.Option(
    "--latency/--no-latency", show_default=False,
    help="Time the result against the original per image (batch 1 and 64, one and all threads, PyTorch and ONNX "
         f"Runtime; default: {'on' if MEASURE_LATENCY else 'off'}); --no-latency is quicker.")]

BudgetOpt = Annotated[str | None, typer.Option(
    help="Instead of thresholds: the most accurate part within a cost ratio to the original, macs=R, params=R or "
         "latency=R (e.g. macs=0.3), searched on held-out training images; with --calibrate, within that "
         "tolerance too.")]
WidthMultipleOpt = Annotated[int, typer.Option(
    help="Round every kept width up to a multiple of N with the layer's next-strongest filters (e.g. 8), so the "
         "runtime's kernels see friendly sizes; the table says what it costs.")]


@dataclass(frozen=True)
class NadOptions:
    """The NAD options as typed: ``--beta``, ``--nad-loss``, ``--nad-linear``."""

    beta: str | None = None
    loss: str = "code"
    linear: bool = False


def threshold_settings(alpha_conv: float | None, beta_conv: float | None, alpha_linear: float | None,
                       beta_linear: float | None, layers: int | None) -> tuple[ContributionSettings, bool]:
    """The contribution settings of the threshold options (the paper's where not given), and whether any was.

    >>> settings, given = threshold_settings(None, 0.1, None, None, None)
    >>> settings.alpha_conv, settings.beta_conv, given
    (0.3, 0.1, True)
    """
    from mdakit.attribution.contribution import ContributionSettings

    given = {name: value for name, value in (("alpha_conv", alpha_conv), ("beta_conv", beta_conv),
                                             ("alpha_linear", alpha_linear), ("beta_linear", beta_linear))
             if value is not None}
    return ContributionSettings(**given, layers=layers), bool(given)


def attribution_settings(method: str, thresholds: ContributionSettings,
                         nad: NadOptions = NadOptions()) -> MethodSettings:
    """The validated settings of ``method`` (by the attribution registry) from the threshold and NAD options.

    >>> from mdakit.attribution.contribution import ContributionSettings
    >>> attribution_settings("gradient", ContributionSettings(alpha_conv=0.5)).alpha_conv
    0.5
    >>> attribution_settings("nad", ContributionSettings(), NadOptions(beta="auto")).beta
    'auto'
    """
    from mdakit.attribution.base import get_method

    options = {**asdict(thresholds), "beta": nad.beta, "nad_loss": nad.loss, "nad_linear": nad.linear}
    return get_method(method).settings_from_options(options)


def finite_numbers(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` refusing NaN and infinite values in its number options (click's float parser accepts
    them, and a NaN learning rate or tolerance would otherwise run to a meaningless result), and integers
    beyond 64 bits (a seed torch cannot take).

    >>> finite_numbers(lambda lr=0.1: None)(lr=float("nan"))
    Traceback (most recent call last):
    ...
    mdakit.errors.OptionError: lr must be a finite number, got nan
    """
    @functools.wraps(command)
    def checked(*args: object, **kwargs: object) -> None:
        for name, value in kwargs.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise OptionError(f"{{0}} must be a finite number, got {value}", name)
            if isinstance(value, int) and not -(2 ** 63) <= value < 2 ** 63:
                raise OptionError(f"{{0}} must fit in 64 bits, got {value}", name)
        command(*args, **kwargs)

    return checked
