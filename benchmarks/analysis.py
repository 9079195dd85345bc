"""Sub-architecture analyses (issue 6, NAD §4) for every mask method on the zoo models.

    .venv/bin/python benchmarks/analysis.py                      # lenet5 and vgg16, MNIST and Fashion-MNIST
    .venv/bin/python benchmarks/analysis.py --archs resnet50 googlenet

Per model: the original's confusion on the whole test split (once), then per method (contribution,
gradient and nad) the masks of all ten classes (50 samples
each), the per-layer similarity, the misclassification statistics (Table 1), the sub-architecture
accuracy on ``--per-class`` test images per class (Fig. 2) and the hit rate on ``--mosaics`` mosaics
(Fig. 4). Cells are cached under runs/bench/analysis/, so a rerun resumes. Results:
benchmarks/results/analysis.json and a section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings

import torch

from common import ROOT, environment, update_report, write_json
from mdakit.analysis.accuracy import sub_architecture_accuracy
from mdakit.analysis.hit_rate import mosaic_hit_rate
from mdakit.analysis.misclassification import confusion_among, misclassification_stats, most_similar
from mdakit.analysis.similarity import layer_similarity, similarity_matrix
from mdakit.attribution import available_methods
from mdakit.disassembly import compute_masks
from mdakit.graph import trace
from mdakit.workspace import Workspace

ARCHS = ["lenet5", "vgg16", "resnet50", "googlenet"]
DATASETS = ["mnist", "fashion-mnist"]
CACHE = ROOT / "runs" / "bench" / "analysis"
SAMPLES = 50


def _method_cell(source, graph, confusion: torch.Tensor, method: str, per_class: int, mosaics: int) -> dict:
    classes = list(source.card.logit_classes)
    names = {c: source.card.class_names[c] for c in classes}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masks, _, cost = compute_masks(source, classes, method, samples=SAMPLES, graph=graph,
                                       thresholds="paper")
    mask_seconds = time.perf_counter() - start
    layers = [layer.name for layer in graph.layers if layer is not graph.output_layer]
    matrix = similarity_matrix(masks, classes, layers)
    start = time.perf_counter()
    accuracy = sub_architecture_accuracy(graph, masks, source.test, classes, classes, per_class).to_dict()
    accuracy_seconds = time.perf_counter() - start
    start = time.perf_counter()
    hits = mosaic_hit_rate(graph, masks, source.test, classes, mosaics).to_dict()
    hit_seconds = time.perf_counter() - start
    return {"method": method, "mask_seconds": mask_seconds, "mask_steps": {k: v["seconds"] for k, v in cost.items()},
            "similarity_per_layer": layer_similarity(masks, classes, layers),
            "misclassification": misclassification_stats(matrix, confusion).to_dict(),
            "most_similar": {str(c): [e["name"] for e in v] for c, v in most_similar(matrix, classes, names).items()},
            "accuracy": {k: accuracy[k] for k in ("original_mean", "sub_architecture_mean",
                                                  "share_at_least_original", "original_histogram",
                                                  "sub_architecture_histogram")},
            "accuracy_seconds": accuracy_seconds,
            "hit_rate": hits["hit_rate"], "hit_rate_left_out": hits["left_out_no_activation"],
            "hit_rate_seconds": hit_seconds}


def cell(arch: str, dataset: str, method_list: list[str], per_class: int, mosaics: int) -> dict | None:
    """All methods on one zoo model (each method cached on its own)."""
    model_dir = ROOT / "runs" / "zoo" / f"{arch}-{dataset}"
    if not (model_dir / "card.json").is_file():
        print(f"skipping {arch}/{dataset}: {model_dir} not trained", file=sys.stderr)
        return None
    source = Workspace.open(model_dir, None)
    classes = list(source.card.logit_classes)
    graph = None
    confusion_file = CACHE / f"{arch}-{dataset}-confusion.json"
    if not confusion_file.is_file():
        start = time.perf_counter()
        confusion, outside = confusion_among(source.model, source.test, classes, classes)
        confusion_file.write_text(json.dumps({"confusion": confusion.tolist(), "outside": outside,
                                              "seconds": time.perf_counter() - start}))
    confusion = torch.tensor(json.loads(confusion_file.read_text())["confusion"])
    row = {"arch": arch, "dataset": dataset, "test_images": int(confusion.sum()),
           "original_mistakes": int(confusion.sum() - confusion.trace()), "methods": {}}
    for method in method_list:
        cache = CACHE / f"{arch}-{dataset}-{method}-p{per_class}-m{mosaics}.json"
        if not cache.is_file():
            print(f"{arch}/{dataset}/{method} ...", file=sys.stderr, flush=True)
            graph = graph or trace(source.model, source.card.input_shape)
            cache.write_text(json.dumps(_method_cell(source, graph, confusion, method, per_class, mosaics), indent=2))
        row["methods"][method] = json.loads(cache.read_text())
    return row


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _best(hit: dict[str, float]) -> tuple[int, float]:
    values = list(hit.values())
    finite = [(i, v) for i, v in enumerate(values) if not math.isnan(v)]
    i, v = max(finite, key=lambda t: t[1])
    return i + 1, v


def report(rows: list[dict], per_class: int, mosaics: int) -> str:
    lines = [
        "Command: `.venv/bin/python benchmarks/analysis.py` (archs as listed; 2 CPU cores shared with other jobs). "
        f"Masks of all ten classes from {SAMPLES} training samples each (seed 0, default thresholds). Samples kept "
        f"modest for the 2 cores: sub-architecture accuracy on {per_class} test images per class, hit rate on "
        f"{mosaics} seeded 2×2 mosaics (four test images of four different classes; top 5% of each layer's "
        "activation under the class's mask, chance 0.25); the misclassification statistics use every mistake of "
        "the original on the whole test split (argmax over all logits). Similarity = mean over layers (logit "
        "layer left out) of the Jaccard similarity of kept filters. *Mis.* / *Oth.*: mean similarity of the true "
        "class's sub-architecture with the mistaken class's / with every other class's, over mistaken images; "
        "*Dif.* = Mis. − Oth. (target: > 0 on all four architectures).", ""]
    lines += ["| model | dataset | method | mistakes | Mis. | Oth. | Dif. | sign | sub-arch acc. / orig. (mean) | "
              "sub ≥ orig. | similarity first → last layer | hit rate last conv | best (layer) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for method, m in r["methods"].items():
            mis, acc, sim = m["misclassification"], m["accuracy"], list(m["similarity_per_layer"].values())
            hit = m["hit_rate"]
            layer, best = _best(hit)
            dif = mis["difference"]
            lines.append(
                f"| {r['arch']} | {r['dataset']} | {method} | {mis['mistakes']} | {_fmt(mis['mistaken'])} | "
                f"{_fmt(mis['other'])} | {_fmt(dif)} | {'+' if dif and dif > 0 else '**−**'} | "
                f"{100 * acc['sub_architecture_mean']:.2f} / {100 * acc['original_mean']:.2f} | "
                f"{100 * acc['share_at_least_original']:.0f}% | {sim[0]:.3f} → {sim[-1]:.3f} | "
                f"{_fmt(list(hit.values())[-1], 3)} | {best:.3f} ({layer}/{len(hit)}) |")
    lines += ["", "Sign of Dif. per architecture (target: positive on every dataset):", ""]
    archs = sorted({r["arch"] for r in rows}, key=ARCHS.index)
    method_names = sorted({m for r in rows for m in r["methods"]}, key=["contribution", "gradient", "nad"].index)
    lines += ["| model | " + " | ".join(method_names) + " |", "|---|" + "---|" * len(method_names)]
    for arch in archs:
        cells = []
        for method in method_names:
            difs = [r["methods"][method]["misclassification"]["difference"] for r in rows
                    if r["arch"] == arch and method in r["methods"]]
            ok = difs and all(d is not None and d > 0 for d in difs)
            cells.append(("met" if ok else "**missed**") + f" ({', '.join(_fmt(d) for d in difs)})")
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    lines += ["", "Hit rate per conv layer (first → last), per model and method:", ""]
    for r in rows:
        for method, m in r["methods"].items():
            lines.append(f"- {r['arch']}/{r['dataset']}/{method}: "
                         + " ".join(_fmt(v, 2) for v in m["hit_rate"].values()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["lenet5", "vgg16"], choices=ARCHS)
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--mosaics", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = [row for a in args.archs for d in args.datasets
            if (row := cell(a, d, available_methods(), args.per_class, args.mosaics)) is not None]
    previous = ROOT / "benchmarks" / "results" / "analysis.json"
    if previous.is_file():  # keep the cells of architectures not rerun this time
        done = {(r["arch"], r["dataset"]) for r in rows}
        rows = [r for r in json.loads(previous.read_text())["rows"] if (r["arch"], r["dataset"]) not in done] + rows
    rows.sort(key=lambda r: (ARCHS.index(r["arch"]), DATASETS.index(r["dataset"])))
    write_json("analysis", {"environment": environment(), "per_class": args.per_class, "mosaics": args.mosaics,
                            "samples": SAMPLES, "rows": rows})
    update_report("Sub-architecture analyses (issue 6: NAD §4)", report(rows, args.per_class, args.mosaics))


if __name__ == "__main__":
    main()
