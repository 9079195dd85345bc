"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of one ``## section`` of the README."""
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def run_block(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_user_module_flow(tmp_path):
    result = run_block(python_blocks("Python API")[0], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "joined.onnx").stat().st_size > 0
    assert "'max_abs_diff'" in result.stdout


@pytest.mark.slow
def test_zoo_flow(tmp_path, data_dir):
    result = run_block(python_blocks("Python API")[1], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "part-012" / "card.json").is_file()
