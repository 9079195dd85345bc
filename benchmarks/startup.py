"""Start-up time of the command line (issue 27): whole ``python -m mdakit`` processes, timed from outside.

    .venv/bin/python benchmarks/startup.py --baseline main --runs 5

Times ``mdakit --help``, ``mdakit info /nonexistent`` (a user error) and ``mdakit info`` on an untrained
LeNet-5 model directory (made by this tree), from process start to exit. With ``--baseline REF`` the
same commands also run on REF, checked out with ``git worktree add`` into a temporary folder (each
tree is selected by ``PYTHONPATH``); the two alternate run by run, so a shared machine's drift hits
both alike, and each pair gives a ratio. One uncounted warm-up run each compiles the byte code. A run
with ``-X importtime`` records which of torch, torchvision and torch._dynamo each command imports.

Writes ``benchmarks/results/startup.json`` and the "Start-up time" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import ROOT, environment, update_report, write_json

HEAVY = ("torch", "torchvision", "torch._dynamo")
MAKE_LENET = ("import sys, mdakit; from mdakit.data import BUILTIN; from mdakit.zoo import build_model; "
              "mdakit.save(build_model('lenet5', (1, 28, 28), 10), sys.argv[1], "
              "mdakit.ModelCard.for_dataset('lenet5', BUILTIN['mnist']))")


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


@contextmanager
def checkout(ref: str):
    """A temporary worktree of ``ref`` (a commit, detached), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="mdakit-baseline-")) / "tree"
    _git("worktree", "add", "--detach", str(folder), ref)
    try:
        yield folder
    finally:
        _git("worktree", "remove", "--force", str(folder))


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree / "src")}


def run_once(tree: Path, argv: list[str]) -> float:
    """Wall seconds of one ``python -m mdakit argv`` on ``tree`` (its output is discarded)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mdakit", *argv], env=_env(tree), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def heavy_imports(tree: Path, argv: list[str]) -> list[str]:
    """Which of :data:`HEAVY` ``python -m mdakit argv`` imports on ``tree`` (read from ``-X importtime``)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "mdakit", *argv], env=_env(tree),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return [name for name in HEAVY if name in imported]


def summary(seconds: list[float]) -> dict[str, Any]:
    """Every run's seconds, their minimum and median.

    >>> summary([3.0, 1.0, 2.0])["median"]
    2.0
    """
    return {"seconds": [round(s, 3) for s in seconds], "min": round(min(seconds), 3),
            "median": round(statistics.median(seconds), 3)}


def measure(trees: dict[str, Path], commands: dict[str, list[str]], runs: int) -> dict[str, Any]:
    """Each command on each tree, ``runs`` counted runs after one warm-up, the trees alternating run by run."""
    times: dict[str, dict[str, list[float]]] = {name: {side: [] for side in trees} for name in commands}
    for round_ in range(runs + 1):
        for name, argv in commands.items():
            for side, tree in trees.items():
                seconds = run_once(tree, argv)
                if round_ > 0:
                    times[name][side].append(seconds)
    results: dict[str, Any] = {}
    for name, argv in commands.items():
        entry: dict[str, Any] = {side: {**summary(times[name][side]), "imports": heavy_imports(tree, argv)}
                                 for side, tree in trees.items()}
        if "before" in trees:
            ratios = [a / b for a, b in zip(times[name]["after"], times[name]["before"])]
            entry["after_over_before"] = round(statistics.median(ratios), 3)
        results[name] = entry
    return results


def _imports(entry: dict[str, Any]) -> str:
    return ", ".join(entry["imports"]) or "none"


def _seconds(entry: dict[str, Any]) -> str:
    return f"{entry['min']:.2f} / {entry['median']:.2f}"


def report(results: dict[str, Any], payload: dict[str, Any], command: str) -> str:
    """The RESULTS.md section: how it was measured, then one row per command."""
    compared = "baseline" in payload
    env = payload["environment"]
    how = (f"Command: `{command}`. Whole `python -m mdakit` processes, wall clock from start to exit, "
           f"{payload['runs']} counted runs of each after one warm-up, on this tree ({payload['after_commit'][:7]})")
    if compared:
        how += (f" and on {payload['baseline']['ref']} ({payload['baseline']['commit'][:7]}), alternating run by "
                "run; after / before is the median of the per-pair ratios")
    how += (". The LeNet-5 is an untrained model directory; torch._dynamo comes with torchvision, or is imported "
            "when torch's FlopCounterMode first counts MACs (`mdakit.metrics`). Environment: python "
            f"{env['python']}, torch {env['torch']}, {env['cpus']} cores shared with other jobs (noisy: compare "
            "within one run). JSON: `benchmarks/results/startup.json`.")
    if compared:
        rows = ["| command | before: min / median s | after: min / median s | after / before | "
                "heavy modules imported (before → after) |", "|---|---|---|---|---|"]
        rows += [f"| `{name}` | {_seconds(e['before'])} | {_seconds(e['after'])} | {e['after_over_before']:.2f} | "
                 f"{_imports(e['before'])} → {_imports(e['after'])} |" for name, e in results.items()]
    else:
        rows = ["| command | min / median s | heavy modules imported |", "|---|---|---|"]
        rows += [f"| `{name}` | {_seconds(e['after'])} | {_imports(e['after'])} |" for name, e in results.items()]
    return how + "\n\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="git ref timed as 'before' (default: time this tree only)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        lenet = Path(scratch) / "lenet5-mnist"
        subprocess.run([sys.executable, "-c", MAKE_LENET, str(lenet)], env=_env(ROOT), check=True)
        commands = {"mdakit --help": ["--help"], "mdakit info /nonexistent": ["info", "/nonexistent"],
                    "mdakit info <lenet5 model dir>": ["info", str(lenet)]}
        payload: dict[str, Any] = {"environment": environment(), "runs": args.runs,
                                   "after_commit": _git("rev-parse", "HEAD"),
                                   "after_dirty": bool(_git("status", "--porcelain", "--", "src"))}
        if args.baseline:
            payload["baseline"] = {"ref": args.baseline, "commit": _git("rev-parse", args.baseline)}
            with checkout(payload["baseline"]["commit"]) as before:
                payload["commands"] = measure({"before": before, "after": ROOT}, commands, args.runs)
        else:
            payload["commands"] = measure({"after": ROOT}, commands, args.runs)
    write_json("startup", payload)
    command = ".venv/bin/python benchmarks/startup.py" + (f" --baseline {args.baseline}" if args.baseline else "") + (
        f" --runs {args.runs}" if args.runs != 5 else "")
    section = report(payload["commands"], payload, command)
    update_report("Start-up time", section)
    print(section)


if __name__ == "__main__":
    main()
