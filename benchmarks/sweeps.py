"""Threshold and depth sweeps (seed Fig. 4): accuracy, MACs ratio and parameter ratio of the part.

    .venv/bin/python benchmarks/sweeps.py [--archs lenet5] [--datasets mnist fashion-mnist] [--classes 0,1,2]

For one model and class set, the contribution sums are computed once (50 samples per class, seed 0);
each point then re-thresholds them, extracts the part physically and evaluates it on the test images of
the classes. (a–c): one of α_conv, β_conv, α_linear, β_linear varied over 0.1…0.9, the others at the
paper's defaults. (d–f): only the last L prunable layers attributed (earlier layers keep every channel
their consumers need), L = 1 … all. Ratios are part / original. Plots: benchmarks/results/fig4-*.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import RESULTS_DIR, ROOT, environment, update_report, write_json  # noqa: E402
from mdakit.attribution.contribution import ContributionSettings, class_sums, masks_from_sums  # noqa: E402
from mdakit.attribution.samples import select_samples  # noqa: E402
from mdakit.data import ClassSubset, parse_classes  # noqa: E402
from mdakit.disassembly import extract  # noqa: E402
from mdakit.evaluate import evaluate_logits, predict_logits  # noqa: E402
from mdakit.graph import trace  # noqa: E402
from mdakit.metrics import count_macs, count_parameters  # noqa: E402
from mdakit.progress import progress  # noqa: E402
from mdakit.workspace import Workspace  # noqa: E402

THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
KNOBS = ("alpha_conv", "beta_conv", "alpha_linear", "beta_linear")
CACHE = ROOT / "runs" / "bench" / "sweeps"


def _sweep(arch: str, dataset: str, classes: str, samples: int, seed: int) -> dict:
    source = Workspace.open(ROOT / "runs" / "zoo" / f"{arch}-{dataset}", None)
    class_list = parse_classes(classes, source.card.class_names)
    rows = {c: source.card.logit_classes.index(c) for c in class_list}
    graph = trace(source.model, source.card.input_shape)
    chosen = select_samples(source.model, source.train, class_list, list(rows.values()), n=samples, seed=seed)
    sums = class_sums(graph, source.train, chosen)
    subset = ClassSubset(source.test, class_list, remap=False)
    images_logits, labels = predict_logits(source.model, subset)
    base_params = count_parameters(source.model)
    base_macs = count_macs(source.model, source.card.input_shape)
    layer_order = [layer.name for layer in graph.layers]

    def point(settings: ContributionSettings, layers: int | None = None) -> dict:
        kept = sums if layers is None else {c: {k: v for k, v in s.items() if k in layer_order[-layers:]}
                                            for c, s in sums.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            masks = masks_from_sums(graph, kept, rows, settings)
            part, _, _ = extract(source, graph, masks, class_list)
        logits, _ = predict_logits(part, subset)
        return {"accuracy": evaluate_logits(logits, labels, class_list, class_list).accuracy,
                "macs_ratio": count_macs(part, source.card.input_shape) / base_macs,
                "params_ratio": count_parameters(part) / base_params}

    defaults = ContributionSettings()
    jobs = [(knob, value) for knob in KNOBS for value in THRESHOLDS] + [("layers", n)
                                                                         for n in range(1, len(layer_order) + 1)]
    result = {"arch": arch, "dataset": dataset, "classes": classes, "samples": samples, "seed": seed,
              "restricted_accuracy": evaluate_logits(images_logits, labels, source.card.logit_classes, class_list,
                                                     True).accuracy,
              "thresholds": {k: [] for k in KNOBS}, "layers": []}
    for knob, value in progress(jobs, f"sweep {arch}/{dataset}"):
        if knob == "layers":
            result["layers"].append({"layers": value, **point(defaults, value)})
        else:
            result["thresholds"][knob].append({"value": value,
                                               **point(dataclasses.replace(defaults, **{knob: value}))})
    return result


def _plot(r: dict) -> str:
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    metrics = (("accuracy", "accuracy (%)"), ("macs_ratio", "MACs ratio"), ("params_ratio", "parameter ratio"))
    for col, (key, label) in enumerate(metrics):
        ax = axes[0, col]
        for knob, points in r["thresholds"].items():
            scale = 100 if key == "accuracy" else 1
            ax.plot([p["value"] for p in points], [scale * p[key] for p in points], marker="o", label=knob)
        ax.set_xlabel("threshold")
        ax.set_ylabel(label)
        ax.set_title(f"({'abc'[col]}) {label} vs threshold")
        if col == 0:
            ax.axhline(100 * r["restricted_accuracy"], color="grey", ls="--", lw=1, label="original (restricted)")
            ax.legend(fontsize=8)
        ax = axes[1, col]
        scale = 100 if key == "accuracy" else 1
        ax.plot([p["layers"] for p in r["layers"]], [scale * p[key] for p in r["layers"]], marker="o")
        ax.set_xlabel("layers attributed (from the output)")
        ax.set_ylabel(label)
        ax.set_title(f"({'def'[col]}) {label} vs attributed layers")
    fig.suptitle(f"{r['arch']} on {r['dataset']}, classes {r['classes']} (contribution attribution)")
    fig.tight_layout()
    name = f"fig4-{r['arch']}-{r['dataset']}.png"
    fig.savefig(RESULTS_DIR / name, dpi=90)
    plt.close(fig)
    return name


def run(archs: list[str], datasets: list[str], classes: str, samples: int, seed: int) -> list[dict]:
    CACHE.mkdir(parents=True, exist_ok=True)
    out = []
    for arch in archs:
        for dataset in datasets:
            if not (ROOT / "runs" / "zoo" / f"{arch}-{dataset}" / "card.json").is_file():
                print(f"skipping {arch}/{dataset}: not trained yet (make zoo)")
                continue
            cache = CACHE / f"{arch}-{dataset}-{classes.replace(',', '_')}-n{samples}-s{seed}.json"
            if not cache.is_file():
                cache.write_text(json.dumps(_sweep(arch, dataset, classes, samples, seed), indent=2))
            out.append(json.loads(cache.read_text()))
    return out


def report(results: list[dict]) -> str:
    lines = ["Command: `.venv/bin/python benchmarks/sweeps.py --archs ...`. Contribution sums computed once per "
             "model (50 samples per class, seed 0), re-thresholded per point; each part physically extracted and "
             "evaluated on the test images of its classes. Ratios are part / original.", ""]
    for r in results:
        name = _plot(r)
        best = max(r["layers"], key=lambda p: p["accuracy"])
        lines += [f"**{r['arch']} / {r['dataset']}, classes {r['classes']}** (original restricted "
                  f"{100 * r['restricted_accuracy']:.2f} %): ![{name}](results/{name})", "",
                  "| threshold | " + " | ".join(f"{v:g}" for v in THRESHOLDS) + " |",
                  "|---" * (len(THRESHOLDS) + 1) + "|"]
        for knob, points in r["thresholds"].items():
            lines.append(f"| {knob}: acc. / MACs | " + " | ".join(
                f"{100 * p['accuracy']:.1f} / {p['macs_ratio']:.2f}" for p in points) + " |")
        lines += ["", "Attributed layers L (acc. / MACs ratio / params ratio): " + ", ".join(
            f"{p['layers']}: {100 * p['accuracy']:.1f} / {p['macs_ratio']:.2f} / {p['params_ratio']:.2f}"
            for p in r["layers"]) + f". Best accuracy at L = {best['layers']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="*", default=["lenet5"])
    parser.add_argument("--datasets", nargs="*", default=["mnist", "fashion-mnist"])
    parser.add_argument("--classes", default="0,1,2")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = run(args.archs, args.datasets, args.classes, args.samples, args.seed)
    write_json("sweeps", {"environment": environment(), "sweeps": results})
    text = report(results)
    update_report("Threshold and depth sweeps (Fig. 4)", text + f"\nEnvironment: {environment()}.")
    print(text)


if __name__ == "__main__":
    main()
