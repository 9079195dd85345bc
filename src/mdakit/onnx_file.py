"""Writing a module as an ONNX file: the one place the exporter is called.

The file maps a batch of inputs (``images``, any batch size) to ``logits`` and carries JSON metadata under
the ``mdakit`` key. :mod:`mdakit.exporting` adds the checks and the atomic write a user's export gets;
:mod:`mdakit.latency` writes unchecked files to time them in ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdakit.errors import MdakitError

INPUT_NAME, OUTPUT_NAME = "images", "logits"
METADATA_KEY = "mdakit"


def write_onnx(module: nn.Module, example: torch.Tensor, out: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``module`` (in eval mode, on the CPU) traced on ``example`` with a free batch axis; return the path.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_onnx(nn.Linear(3, 2).eval(), torch.zeros(2, 3), Path(tmp) / "m.onnx", {}).suffix
    '.onnx'
    """
    import onnx

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
                                        external_data=False)
        except Exception as exc:  # torch.export raises many types for unsupported code
            raise MdakitError(f"ONNX export failed: {str(exc).strip().splitlines()[0]}") from exc
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save_model(proto, str(out))
    return Path(out)
