"""Defaults the command line shows in its help, as plain values: reading them imports no torch.

The library's settings take their defaults from here, so ``mdakit --help`` and the library agree.

>>> THRESHOLDS.alpha_conv, THRESHOLDS.beta_linear, DEFAULT_TIMEOUT, CALIBRATION_TOLERANCE
(0.3, 0.3, 1800.0, 0.5)
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    """The contribution method's thresholds (the contribution paper's §6): α and β for conv and linear layers."""

    alpha_conv: float = 0.3
    beta_conv: float = 0.2
    alpha_linear: float = 0.4
    beta_linear: float = 0.3


THRESHOLDS = Thresholds()
"""The default thresholds of :class:`~mdakit.attribution.contribution.ContributionSettings` and of the
threshold options."""

CALIBRATION_TOLERANCE = 0.5
"""Accuracy points a part may lose, on held-out training images, against the original restricted to its
classes, when its thresholds are calibrated (the default unless thresholds are given)."""

THRESHOLD_MODES = ("calibrated", "paper")
"""How the thresholds are chosen when none are given: ``calibrated`` (relaxed from the paper's until the part
holds, :mod:`mdakit.calibration`) or ``paper`` (the paper's §6 values as they are)."""

DEFAULT_TIMEOUT = 1800.0
"""Seconds a process waits for the others under ``torchrun`` before failing (:mod:`mdakit.distributed`)."""

MEASURE_LATENCY = True
"""Whether ``disassemble``, ``compress`` and ``assemble`` time the result against its original
(:mod:`mdakit.latency`) unless told otherwise (``latency=False``, ``--no-latency``)."""
