"""Compare what the benchmark suite wrote in two checkouts: every number but the timings, and every file of weights.

    .venv/bin/python benchmarks/compare_runs.py BEFORE AFTER

BEFORE and AFTER are checkouts that each ran the same profile (``benchmarks/suite.py --profile quick``).
Compared: the result files of ``benchmarks/results/`` both hold, and every cached cell under ``runs/``
(JSON), with the timing and cost entries left out (seconds, steps, memory, environment); and every
``.safetensors`` file under ``runs/`` byte for byte. Prints each difference and a summary line; the exit
code is 1 when anything differs or a cached cell is in one checkout only (a result file in one only, such
as one a later change added, is left out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

TIMING = re.compile(r"second|time|rss|wall|cpu|environment|duration|elapsed|steps|speed|threads|command|date|"
                    r"machine|python|torch|mdakit|version|host|load", re.I)
"""Keys whose values depend on the machine or the moment, not on what was computed."""


def comparable(value: Any) -> Any:
    """``value`` without the entries under timing keys (recursively)."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Every place where ``a`` and ``b`` differ, as (path, value in a, value in b)."""
    if type(a) is not type(b):
        return [(path, a, b)]
    if isinstance(a, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                found.append((f"{path}.{key}", a.get(key, "<missing>"), b.get(key, "<missing>")))
            else:
                found += differences(a[key], b[key], f"{path}.{key}")
        return found
    if isinstance(a, list):
        found = [(f"{path}[len]", len(a), len(b))] if len(a) != len(b) else []
        for i, (x, y) in enumerate(zip(a, b)):
            found += differences(x, y, f"{path}[{i}]")
        return found
    return [] if a == b else [(path, a, b)]


def count_values(value: Any) -> int:
    """How many numbers, strings and other leaves ``value`` holds."""
    if isinstance(value, dict):
        return sum(count_values(v) for v in value.values())
    if isinstance(value, list):
        return sum(count_values(v) for v in value)
    return 1


def json_files(root: Path) -> dict[str, Path]:
    """The results and cached cells of a checkout, by path relative to it."""
    files = [*(root / "runs").rglob("*.json"), *(root / "benchmarks" / "results").glob("*.json")]
    return {str(p.relative_to(root)): p for p in files}


def digests(root: Path) -> dict[str, str]:
    """SHA-256 of every weights file under ``runs/``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "runs").rglob("*.safetensors"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    before, after = json_files(args.before), json_files(args.after)
    shared = sorted(set(before) & set(after))
    differing = compared = 0
    for name in shared:
        kept = comparable(json.loads(after[name].read_text()))
        found = differences(comparable(json.loads(before[name].read_text())), kept)
        differing += bool(found)
        compared += count_values(kept)
        for row in found[:5]:
            print(f"{name}: {row}")
    sums_before, sums_after = digests(args.before), digests(args.after)
    same_weights = [k for k in sums_before if sums_after.get(k) == sums_before[k]]
    for name in sorted(set(sums_before) | set(sums_after)):
        if sums_before.get(name) != sums_after.get(name):
            print(f"{name}: weights differ or are missing on one side")
    only = sorted(name for name in set(before) ^ set(after) if name.startswith("runs"))
    for name in only:
        print(f"{name}: in one checkout only")
    print(f"{len(shared)} JSON files in both ({len(only)} cached cells in one only), {differing} with differences "
          f"beyond timings ({compared:,} values compared); "
          f"{len(same_weights)} of {len(sums_before)} weights files byte-identical")
    return int(bool(differing or only or len(same_weights) != len(sums_before) or set(sums_before) ^ set(sums_after)))


if __name__ == "__main__":
    sys.exit(main())
