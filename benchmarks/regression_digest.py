"""Digests of what mdakit computes, to show that a refactoring changed nothing.

    .venv/bin/python benchmarks/regression_digest.py --work runs/digest --out digest.json
    PYTHONPATH=<other checkout>/src .venv/bin/python benchmarks/regression_digest.py --work runs/digest-old \\
        --out digest-old.json
    .venv/bin/python benchmarks/regression_digest.py --compare digest-old.json digest.json

Runs a fixed list of CLI commands (training, masks by every method, chunked masks, calibrated and
paper-threshold parts, compression, assemblies in both layouts) through ``python -m mdakit`` of
whatever checkout ``PYTHONPATH`` selects, and records the SHA-256 of every safetensors file written
and each command's JSON output without its timings. Two digests are equal when the code computes the
same models, masks and numbers. The models are small (LeNet-5 and ResNet-20 on 3,000 training images,
two epochs), so a run takes minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

VOLATILE = {"seconds", "peak_rss_mb", "peak_is_step", "steps", "environment", "out", "path", "work_dir",
            "source", "disassembled_from", "compressed_from", "sources", "bytes"}
ARCHS = ("lenet5", "resnet20")


def commands(work: Path, archs: tuple[str, ...] = ARCHS) -> list[list[str]]:
    """The CLI commands whose outputs are digested, in order (later ones read earlier outputs)."""
    runs: list[list[str]] = []
    for arch in archs:
        for dataset in ("mnist", "fashion-mnist"):
            model = str(work / f"{arch}-{dataset}")
            runs += [
                ["train", "--arch", arch, "--dataset", dataset, "--epochs", "2", "--train-subset", "3000",
                 "--batch-size", "32", "--lr", "0.05", "--out", model],
                ["masks", model, "--classes", "0-9", "--out", f"{model}-masks"],
                ["masks", model, "--classes", "0-9", "--method", "gradient", "--out", f"{model}-grad"],
                ["masks", model, "--classes", "0-9", "--class-chunk", "4", "--out", f"{model}-chunked"],
                ["disassemble", model, "--classes", "0-2", "--calibrate", "0.25", "--out", f"{model}-012"],
                ["disassemble", model, "--classes", "3-9", "--out", f"{model}-39"],
                ["compress", model, "--out", f"{model}-compressed"],
            ]
        runs += [["masks", str(work / f"{arch}-mnist"), "--classes", "0,1", "--method", "nad", "--samples", "10",
                  "--out", str(work / f"{arch}-mnist-nad")]]
    for layout in ("parallel", "padded"):
        runs.append(["assemble", str(work / "lenet5-mnist-012"), str(work / "lenet5-fashion-mnist-39"),
                     "--rescale", "calibrated", "--layout", layout, "--out", str(work / f"assembled-{layout}")])
    return runs


def _scrub(value: Any, work: Path) -> Any:
    """``value`` without timings and output paths, and with paths inside ``work`` made relative."""
    if isinstance(value, dict):
        return {k: _scrub(v, work) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_scrub(v, work) for v in value]
    if isinstance(value, str):
        return value.replace(f"{work}/", "")
    return value


def _tensor_digests(work: Path, out_dir: str) -> dict[str, str]:
    root = Path(out_dir)
    return {str(f.relative_to(work)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*.safetensors"))}


def run(work: Path, archs: tuple[str, ...] = ARCHS, out: Path | None = None) -> dict[str, Any]:
    """Run every command into ``work`` and return their digests (written to ``out`` after each command)."""
    work.mkdir(parents=True, exist_ok=True)
    digest: dict[str, Any] = {}
    for command in commands(work, archs):
        target = command[command.index("--out") + 1]
        key = " ".join(command).replace(str(work) + "/", "")
        print(f"== {key}", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, "-m", "mdakit", *command, "--json", "--force"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            digest[key] = {"exit_code": proc.returncode, "error": proc.stderr.strip().splitlines()[-1:]}
        else:
            digest[key] = {"json": _scrub(json.loads(proc.stdout), work), "tensors": _tensor_digests(work, target)}
        if out is not None:
            out.write_text(json.dumps(digest, indent=2, sort_keys=True) + "\n")
    return digest


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The commands whose digests differ."""
    return [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/digest"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        old, new = (json.loads(p.read_text()) for p in args.compare)
        differing = compare(old, new)
        print(json.dumps({"commands": len(set(old) | set(new)), "differing": differing}, indent=2))
        sys.exit(1 if differing else 0)
    digest = run(args.work, tuple(args.archs), args.out)
    if args.out is None:
        print(json.dumps(digest, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
