"""Shared bits of the decoupling analyses: a pyplot-free figure and JSON + PNG output."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def figure(width: float = 7.0, height: float = 4.0) -> Figure:
    """A matplotlib figure on the Agg canvas (no global pyplot state).

    >>> [float(v) for v in figure(6, 3).get_size_inches()]
    [6.0, 3.0]
    """
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def finite(value: Any) -> Any:
    """``value`` with NaN / infinite floats replaced by ``None`` (strict JSON), recursively.

    >>> finite({"a": [1.0, float("nan")]})
    {'a': [1.0, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented strict JSON.

    >>> import tempfile
    >>> write_json(tempfile.mkdtemp() + "/x.json", {"a": 1}).read_text()
    '{\\n  "a": 1\\n}\\n'
    """
    path = Path(path)
    path.write_text(json.dumps(finite(payload), indent=2, allow_nan=False) + "\n")
    return path
