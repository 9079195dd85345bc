"""Decoupling ablation (issue 7 part 5): the losses one by one (interpretable-decoupling Table 7) and
λ_m / λ_s sweeps (Fig. 12), each a short gated fine-tune of the same trained model.

    .venv/bin/python benchmarks/decoupling_ablation.py --arch resnet20 --dataset fashion-mnist \\
        --train-subset 12000 --epochs 2

Every run starts from runs/zoo/<arch>-<dataset> with the same seed, data and schedule; only the loss
weights change. *Base* weights are the command's ``--lambda-*`` / ``--target-ratio``; Table 7 switches
terms off (ACM = the controlling modules with cross-entropy only); a sweep varies one λ and keeps the
others at the base. Reported per run: test accuracy of the dynamic model (full test split), mean MACs per
test image at batch 1 (``--macs-images`` images, only what runs), and the share of gated filters that
are silent, energetic and dynamic on the fine-tuning images. Decoupled models are cached under
runs/decouple/ablation/, so a rerun only measures. Results: benchmarks/results/decoupling_ablation.json,
a PNG of the sweeps and a RESULTS.md section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from common import RESULTS_DIR, ROOT, environment, update_report, write_json  # noqa: E402
from mdakit.artifacts import load, load_with_card, save  # noqa: E402
from mdakit.data import load_dataset  # noqa: E402
from mdakit.decoupling.analysis.states import filter_states  # noqa: E402
from mdakit.decoupling.dynamic import DynamicNet, macs_per_input  # noqa: E402
from mdakit.decoupling.finetune import DecoupleConfig, decouple  # noqa: E402
from mdakit.decoupling.losses import LossWeights  # noqa: E402
from mdakit.decoupling.paths import collect_paths  # noqa: E402
from mdakit.evaluate import evaluate  # noqa: E402
from mdakit.metrics import count_macs  # noqa: E402
from mdakit.train import fit_and_validation  # noqa: E402

RESULTS = "decoupling_ablation"
# interpretable-decoupling Table 7 (ResNet-56, CIFAR-10, 200 epochs): accuracy %, MFLOPs, dynamic / silent /
# energetic filters %.
PUBLISHED = {
    "ACM": (93.17, 118, 0.30, 13.25, 86.45),
    "ACM+Ls": (92.94, 63, 0.24, 59.60, 40.16),
    "ACM+Ls+Lkl": (92.81, 117, 0.00, 15.22, 84.78),
    "ACM+Ls+Lmi": (92.99, 67, 29.00, 32.55, 38.45),
    "ACM+Ls+Lmi+Lkl": (93.08, 63, 30.27, 35.24, 34.49),
}


def table7(base: LossWeights) -> dict[str, LossWeights]:
    """The five loss combinations of Table 7 built from the base weights."""
    off = dict(lambda_m=0.0, lambda_k=0.0, lambda_s=0.0)
    return {
        "ACM": dataclasses.replace(base, **off),
        "ACM+Ls": dataclasses.replace(base, lambda_m=0.0, lambda_k=0.0),
        "ACM+Ls+Lkl": dataclasses.replace(base, lambda_m=0.0),
        "ACM+Ls+Lmi": dataclasses.replace(base, lambda_k=0.0),
        "ACM+Ls+Lmi+Lkl": base,
    }


def _run_name(weights: LossWeights) -> str:
    return f"m{weights.lambda_m:g}-k{weights.lambda_k:g}-s{weights.lambda_s:g}-r{weights.target_ratio:g}"


def measure(arch: str, dataset: str, config: DecoupleConfig, macs_images: int) -> dict:
    """Fine-tune (or reuse) one decoupled model and measure accuracy, mean MACs and filter states."""
    source = ROOT / "runs" / "zoo" / f"{arch}-{dataset}"
    out = (ROOT / "runs" / "decouple" / "ablation" /
           f"{arch}-{dataset}-e{config.epochs}-n{config.train_subset or 'all'}-{_run_name(config.weights)}")
    if not (out / "card.json").is_file():
        result = decouple(source, dataset, config)
        save(result.model, out, result.card, force=True)
    net, card = load_with_card(out)
    train, info = load_dataset(dataset, "train")
    test, _ = load_dataset(dataset, "test")
    fit, _ = fit_and_validation(train, config.train_subset, config.val_fraction, config.seed)
    paths = collect_paths(net, fit)
    dynamic = DynamicNet(net, paths.alive(by_frequency=True), paths.energetic())
    accuracy = evaluate(dynamic, test, card.logit_classes, show_progress=False).accuracy
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:macs_images]
    macs = macs_per_input(dynamic, torch.stack([test[int(i)][0] for i in order]))
    states = filter_states(paths)
    return {"model": str(out.relative_to(ROOT)), "weights": dataclasses.asdict(config.weights),
            "accuracy": {"original": card.metrics["original_test_accuracy"], "gated": card.metrics["test_accuracy"],
                         "dynamic": accuracy},
            "macs": {"original": count_macs(load(source), info.input_shape),
                     "dynamic_mean": statistics.mean(macs), "images": len(macs)},
            "filters": {**states["total"], "gated_filters": sum(states["total"].values())},
            "filter_share": states["total_shares"],
            "gate_density_test": card.metrics["test_gate_density"]}


def _row(label: str, r: dict, published: tuple | None = None) -> str:
    share = r["filter_share"]
    ratio = r["macs"]["original"] / r["macs"]["dynamic_mean"]
    w = r["weights"]
    cells = (f"| {label} | {w['lambda_m']:g} / {w['lambda_k']:g} / {w['lambda_s']:g} | "
             f"{100 * r['accuracy']['dynamic']:.2f} | {r['macs']['dynamic_mean'] / 1e6:.2f} M ({ratio:.2f}×) | "
             f"{100 * share['dynamic']:.1f} / {100 * share['silent']:.1f} / {100 * share['energetic']:.1f} |")
    if published is not None:
        acc, mflops, dyn, silent, energetic = published
        cells += f" {acc:.2f} | {mflops} M | {dyn:.2f} / {silent:.2f} / {energetic:.2f} |"
    return cells


def _plot(sweeps: dict[str, list[dict]], path: str) -> None:
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.5 * len(sweeps), 4), squeeze=False)
    for ax, (name, runs) in zip(axes[0], sweeps.items(), strict=True):
        values = [r["weights"][name] for r in runs]
        labels = [f"{v:g}" for v in values]
        bottom = [0.0] * len(runs)
        for state, colour in (("dynamic", "tab:green"), ("silent", "tab:grey"), ("energetic", "tab:orange")):
            heights = [100 * r["filter_share"][state] for r in runs]
            ax.bar(labels, heights, bottom=bottom, color=colour, label=state)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_xlabel(name.replace("lambda_", "λ_"))
        ax.set_ylabel("gated filters (%)")
        twin = ax.twinx()
        twin.plot(labels, [100 * r["accuracy"]["dynamic"] for r in runs], "k.-", label="test accuracy")
        twin.set_ylabel("test accuracy (%)")
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle("Filter states against the loss weights (cf. interpretable decoupling Fig. 12)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=12000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--gate-lr", type=float, default=0.3)
    parser.add_argument("--lambda-m", type=float, default=0.05)
    parser.add_argument("--lambda-k", type=float, default=1.0)
    parser.add_argument("--lambda-s", type=float, default=0.01)
    parser.add_argument("--target-ratio", type=float, default=0.5)
    parser.add_argument("--sweep-m", type=float, nargs="*", default=[0.0, 0.01, 0.05, 0.2, 1.0])
    parser.add_argument("--sweep-s", type=float, nargs="*", default=[0.0, 0.003, 0.01, 0.03, 0.1])
    parser.add_argument("--macs-images", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    base = LossWeights(args.lambda_m, args.lambda_k, args.lambda_s, args.target_ratio)

    def config(weights: LossWeights) -> DecoupleConfig:
        return DecoupleConfig(epochs=args.epochs, gate_lr=args.gate_lr, batch_size=args.batch_size,
                              train_subset=args.train_subset, weights=weights)

    cache: dict[str, dict] = {}

    def run(weights: LossWeights) -> dict:
        key = _run_name(weights)
        if key not in cache:
            cache[key] = measure(args.arch, args.dataset, config(weights), args.macs_images)
        return cache[key]

    losses = {label: run(w) for label, w in table7(base).items()}
    sweeps = {"lambda_m": [run(dataclasses.replace(base, lambda_m=v)) for v in args.sweep_m],
              "lambda_s": [run(dataclasses.replace(base, lambda_s=v)) for v in args.sweep_s]}
    plot = f"{RESULTS}-{args.arch}-{args.dataset}.png"
    _plot(sweeps, str(RESULTS_DIR / plot))
    env = environment()
    settings = {"arch": args.arch, "dataset": args.dataset, "epochs": args.epochs, "train_subset": args.train_subset,
                "batch_size": args.batch_size, "gate_lr": args.gate_lr, "base": dataclasses.asdict(base)}
    write_json(RESULTS, {"environment": env, "settings": settings, "table7": losses, "sweeps": sweeps})
    original = next(iter(losses.values()))
    lines = [
        f"Command: `.venv/bin/python benchmarks/decoupling_ablation.py --arch {args.arch} --dataset {args.dataset} "
        f"--train-subset {args.train_subset} --epochs {args.epochs}` (base λ_m / λ_k / λ_s / R = {base.lambda_m:g} / "
        f"{base.lambda_k:g} / {base.lambda_s:g} / {base.target_ratio:g}, KL {base.kl_direction}, gate lr "
        f"{args.gate_lr:g}, batch {args.batch_size}; {args.epochs} epochs on a stratified {args.train_subset}-image "
        "training subset, 90% "
        "for fitting; every run from the same trained model, seed and schedule). Accuracy: the dynamic model on "
        f"the full test split (original {100 * original['accuracy']['original']:.2f}%); MACs: mean per test image at "
        f"batch 1 over {args.macs_images} images (original {original['macs']['original'] / 1e6:.2f} M); filter "
        "states over the gated filters on the fine-tuning images. The paper's numbers are ResNet-56 on CIFAR-10 "
        "after 200 epochs: context, not a like-for-like comparison.", "",
        "| losses | λ_m / λ_k / λ_s | acc. (%) | MACs / input | dynamic / silent / energetic (%) | paper acc. | "
        "paper FLOPs | paper dynamic / silent / energetic (%) |",
        "|---|---|---|---|---|---|---|---|"]
    lines += [_row(label, r, PUBLISHED[label]) for label, r in losses.items()]
    for name, runs in sweeps.items():
        lines += ["", f"Sweep of {name.replace('lambda_', 'λ_')} (others at the base):", "",
                  "| run | λ_m / λ_k / λ_s | acc. (%) | MACs / input | dynamic / silent / energetic (%) |",
                  "|---|---|---|---|---|"]
        lines += [_row(f"{name.replace('lambda_', 'λ_')} = {r['weights'][name]:g}", r) for r in runs]
    lines += ["", f"![filter states against λ](results/{plot})", "", f"Environment: {env}."]
    update_report("Decoupling ablation: the losses and their weights (Table 7, Fig. 12)", "\n".join(lines))
    print(json.dumps({"table7": {k: [v["accuracy"]["dynamic"], v["filter_share"]] for k, v in losses.items()}},
                     indent=1))


if __name__ == "__main__":
    main()
