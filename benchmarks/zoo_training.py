"""Train the zoo models and record the test accuracies they reach (issue: foundation, item 4; the small ViT: issue 23).

Each model is trained with `mdakit train` into runs/zoo/<arch>-<dataset>/ (a finished model is reused,
so a rerun resumes); the accuracies, commands and environment are written to
benchmarks/results/zoo_training.json and the table in benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/zoo_training.py                   # everything in PLAN
    .venv/bin/python benchmarks/zoo_training.py --only lenet5     # one architecture
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS_DIR, ROOT, environment, update_report, write_json

RESULTS = RESULTS_DIR / "zoo_training.json"

# (arch, dataset, epochs, batch size, target test accuracy from the foundation issue (issue 23 for vit))
PLAN = [
    ("lenet5", "mnist", 5, 32, 0.985),
    ("lenet5", "fashion-mnist", 5, 32, 0.88),
    ("vgg16", "mnist", 2, 128, 0.99),
    ("vgg16", "fashion-mnist", 2, 128, 0.91),
    ("googlenet", "mnist", 2, 128, None),
    ("googlenet", "fashion-mnist", 2, 128, None),
    ("resnet50", "mnist", 1, 128, None),
    ("resnet50", "fashion-mnist", 1, 128, None),
    ("resnet20", "fashion-mnist", 8, 128, None),
    ("vit", "mnist", 6, 128, 0.98),
    ("vit", "fashion-mnist", 6, 128, 0.88),
]
# Options besides the defaults (SGD lr 0.01): a vision transformer needs AdamW.
OPTIONS = {"vit": ["--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.05"]}


def _train(arch: str, dataset: str, epochs: int, batch_size: int, out: Path) -> dict:
    command = [str(ROOT / ".venv" / "bin" / "mdakit"), "train", "--arch", arch, "--dataset", dataset,
               "--epochs", str(epochs), "--batch-size", str(batch_size), *OPTIONS.get(arch, []), "--seed", "0",
               "--out", str(out), "--json"]
    if not (out / "card.json").is_file():
        start = time.perf_counter()
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"training {arch} on {dataset} failed (exit {proc.returncode})")
        print(f"{arch}/{dataset}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    card = json.loads((out / "card.json").read_text())
    result = card["training"]["result"]
    if card["training"]["config"]["batch_size"] != batch_size or card["training"]["config"]["epochs"] != epochs:
        raise SystemExit(f"{out} was trained with other settings than the plan; remove it to retrain")
    return {"arch": arch, "dataset": dataset, "epochs": epochs, "batch_size": batch_size,
            "test_accuracy": card["metrics"]["test_accuracy"], "val_accuracy": card["metrics"]["val_accuracy"],
            "best_epoch": result["best_epoch"], "train_seconds": result["seconds"],
            "seconds_per_epoch": result["seconds"] / epochs, "params": card["metrics"]["params"],
            "macs": card["metrics"]["macs"], "model": str(out.relative_to(ROOT)),
            "command": "mdakit " + " ".join(command[1:-1] if command[-1] == "--json" else command[1:]),
            "environment": environment()}


def _write(rows: list[dict]) -> None:
    write_json("zoo_training", {"environment": environment(), "models": rows})
    by_env: dict[str, list[str]] = {}
    for r in rows:
        env = r["environment"]
        text = (f"Python {env['python']}, torch {env['torch']}, {env['machine']} ({env['cpu']}), {env['cpus']} CPUs, "
                f"{env['threads']} threads, no GPU")
        by_env.setdefault(text, []).append(f"{r['arch']}/{r['dataset']}")
    lines = ["", "",
             "Written by `.venv/bin/python benchmarks/zoo_training.py` (one `mdakit train` per row, seed 0, SGD "
             "lr 0.01, momentum 0.9, weight decay 5e-4, cosine schedule, 10% stratified validation "
             "split for model selection; accuracy on the full test split; vit: AdamW lr 1e-3, weight decay 0.05). "
             "Seconds per epoch are wall time on a 2-core machine that often ran other jobs at the same time: an "
             "upper bound.", "",
             "Environment: " + "; ".join(f"{', '.join(models)}: {text}" for text, models in by_env.items()) + ".", "",
             "| model | dataset | epochs | batch | test acc. | target | best epoch | s / epoch | params | MACs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    targets = {(a, d): t for a, d, _, _, t in PLAN}
    for r in rows:
        target = targets.get((r["arch"], r["dataset"]))
        verdict = "—" if target is None else (f"≥ {100 * target:.1f}% "
                                              + ("met" if r["test_accuracy"] >= target else "**missed**"))
        lines.append(f"| {r['arch']} | {r['dataset']} | {r['epochs']} | {r['batch_size']} | "
                     f"{100 * r['test_accuracy']:.2f}% | {verdict} | "
                     f"{r['best_epoch']} | {r['seconds_per_epoch']:.0f} | {r['params']:,} | {r['macs']:,} |")
    update_report("Zoo training", "\n".join(lines[2:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="architectures to train (default: all in PLAN)")
    args = parser.parse_args()
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"models": []}
    previous = [{"environment": old.get("environment"), **r} for r in old["models"] if "batch_size" in r]
    rows = {(r["arch"], r["dataset"]): r for r in previous}
    for arch, dataset, epochs, batch_size, _ in PLAN:
        if args.only and arch not in args.only:
            continue
        rows[(arch, dataset)] = _train(arch, dataset, epochs, batch_size, ROOT / "runs" / "zoo" / f"{arch}-{dataset}")
        _write([rows[(a, d)] for a, d, _, _, _ in PLAN if (a, d) in rows])


if __name__ == "__main__":
    main()
