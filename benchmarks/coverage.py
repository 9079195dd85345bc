"""Coverage benchmark: which torchvision and timm classifiers mdakit takes apart, puts together and exports exactly.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/coverage.py                      # every model (resumable)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/coverage.py --family timm --limit 5
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/coverage.py --only resnet18 ghostnet_100 --force

Models: every torchvision classification model and a panel of timm models across families (:data:`TIMM`),
built through the zoo with random weights (seeded), 10 classes, random BatchNorm affine parameters (some γ
negative, so that pruning is not trivially exact) and running statistics measured on the images
(:func:`fit_batchnorm`), in eval mode, at 3×64×64 where the model takes it (see :func:`input_shapes`).
Data: :data:`IMAGES` random images labelled by the model's own predictions, after its head's bias is centred
on them (:func:`centre_head`: else a random network predicts one class for nearly all). Checks, in order (a check
whose inputs failed is skipped):

- ``build``: the zoo builds the model, its logits depend on the image (else its labels would be rounding
  noise: a refusal that names the benchmark's setup, not mdakit) and it is saved as a model file;
- ``disassemble``: ``mdakit.disassemble`` on the model file for the two most-predicted labels and for the
  third (:data:`SAMPLES` images per class, the paper's thresholds: random weights have no accuracy to
  calibrate against);
- ``extraction``: each part's logits equal the masked original's (``MaskedModel`` over the traced graph and
  the part's keep-sets);
- ``parallel`` / ``padded``: the assembly of both parts in that layout equals their logits side by side;
- ``onnx``: ``mdakit.export`` of the first part (it compares the file with PyTorch itself).

A difference passes when it is at most ``TOLERANCE × max(1, largest |logit|)``: where logits are large,
float32 rounding alone exceeds an absolute 1e-4.
Status of a check: pass, fail (ran, difference above the tolerance), error (a clear ``MdakitError``),
crash (any other exception), skipped. Each model runs in a worker process with a time limit
(``--timeout``) and leaves benchmarks/results/coverage/<family>__<name>.json, so a rerun skips the models
done (``--force`` reruns them). Every run rewrites, from all the cached models of the list,
benchmarks/results/coverage.json (rows, counts, environment), coverage.md (the tables) and
coverage_panel.json (per family the fastest model that passed everything: tests/test_coverage.py's list).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import mdakit
from common import RESULTS_DIR, environment, update_report, write_json
from mdakit.artifacts import ModelCard, save
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.surgery import MaskedModel
from mdakit.zoo import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from nets import randomize_batchnorm  # noqa: E402

CACHE = RESULTS_DIR / "coverage"
FAMILIES = ("torchvision", "timm")
TIMM = ("resnet18", "resnet10t", "resnext26ts", "resnext50_32x4d", "resnest14d", "res2net50_14w_8s",
        "seresnet18", "skresnet18", "ecaresnet26t", "efficientnet_b0", "tf_efficientnetv2_b0", "mixnet_s",
        "mnasnet_100", "semnasnet_075", "spnasnet_100", "fbnetc_100", "tinynet_e", "hardcorenas_a",
        "mobilenetv2_100", "mobilenetv3_small_100", "mobilenetv4_conv_small", "ghostnet_100", "rexnet_100",
        "regnetx_002", "regnety_002", "convnext_atto", "densenet121", "dla34", "dpn68", "hrnet_w18_small",
        "inception_v3", "inception_v4", "xception41", "legacy_xception", "cspresnet50", "cspdarknet53",
        "repvgg_a0", "mobileone_s0", "lcnet_050", "hgnetv2_b0", "gernet_s", "selecsls42b", "ese_vovnet19b_dw",
        "edgenext_xx_small", "mobilevit_xxs", "efficientvit_b0", "fastvit_t8", "poolformer_s12",
        "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "maxvit_nano_rw_256")
SMALL = (3, 64, 64)
INCEPTION = (3, 96, 96)  # torchvision's inception_v3 needs 75×75 at least
NATIVE = (3, 224, 224)
TORCHVISION_NATIVE = ("vit_", "swin", "maxvit")  # fixed patch grids and windows: their own 224×224
NUM_CLASSES = 10
IMAGES = 32
SAMPLES = 4
SEED = 0
TOLERANCE = 1e-4
SPREAD = 1e-4  # logits varying less than this (relative) across images give labels that rounding decides
TIMEOUT = 900
CHECKS = ("build", "disassemble", "extraction", "parallel", "padded", "onnx")
OUTCOMES = ("passed", "wrong", "error", "crash", "timeout")
PANEL_FAST_SECONDS, PANEL_FAST_BUDGET = 20.0, 45.0  # the default test run stays under a minute on 2 cores


def input_shapes(family: str, name: str) -> list[tuple[int, int, int]]:
    """Input shapes to try, in order: the small default (or the size the model needs), then its native one."""
    if family == "timm":
        import timm

        cfg = timm.get_pretrained_cfg(name)
        native = tuple(cfg.input_size) if cfg is not None else NATIVE
        first = native if cfg is not None and cfg.fixed_input_size else SMALL
    else:
        native = NATIVE
        first = native if name.startswith(TORCHVISION_NATIVE) else SMALL
    if "inception" in name and first == SMALL:
        first = INCEPTION
    return list(dict.fromkeys([first, native]))


def family_key(name: str) -> str:
    """The architecture family of a model name: ``mobilenet_v3_small`` and ``mobilenetv2_100`` are both mobilenet.

    >>> [family_key(n) for n in ("resnet18", "tf_efficientnetv2_b0", "regnetx_002", "res2net50_14w_8s")]
    ['resnet', 'efficientnet', 'regnet', 'res2net']
    """
    bare = re.sub(r"^(tf|legacy|wide)_", "", name)
    letters = re.match(r"[a-z]+(?:2net)?", bare)
    return re.sub(r"(v|[xy])$", "", letters.group(0)) if letters else bare


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def where(message: str) -> dict[str, str]:
    """The op and the node an error message names, where it names them.

    >>> where("unsupported op call_method 'permute' at node 'permute_1': mdakit cannot tell how it maps channels")
    {'op': 'permute', 'node': 'permute_1'}
    """
    op = re.search(r"call_\w+ '([^']+)'|unsupported module (\w+)", message)
    node = re.search(r"node '([^']+)'", message)
    return ({"op": op.group(1) or op.group(2)} if op else {}) | ({"node": node.group(1)} if node else {})


def _record(status: str, start: float, **extra: Any) -> dict[str, Any]:
    return {"status": status, "seconds": round(time.perf_counter() - start, 2), **extra}


def attempt(fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run one check: its result (None on failure) and its record (status, seconds, error)."""
    start = time.perf_counter()
    try:
        value = fn()
    except MdakitError as exc:
        return None, _record("error", start, error=first_line(exc), **where(first_line(exc)))
    except Exception as exc:  # any other exception is the finding, recorded as a crash: the run goes on
        message = f"{type(exc).__name__}: {first_line(exc)}"
        return None, _record("crash", start, error=message, **where(message))
    return value, _record("pass", start)


def compare(fn: Callable[[], tuple[float, float]]) -> dict[str, Any]:
    """Run a check that returns (largest difference, largest |logit|): it fails above the tolerance."""
    measured, record = attempt(fn)
    if measured is not None:
        diff, scale = measured
        record.update(status="pass" if diff <= TOLERANCE * max(1.0, scale) else "fail", max_abs_diff=diff,
                      logit_scale=scale)
    return record


def build(family: str, name: str, shape: Sequence[int] | None = None) -> tuple[nn.Module, tuple[int, ...]]:
    """The model at the first input shape it takes, seeded, BatchNorm statistics randomised, in eval mode."""
    refusals = []
    for size in [tuple(shape)] if shape else input_shapes(family, name):
        torch.manual_seed(SEED)
        try:
            model = build_model(f"{family}:{name}", size, NUM_CLASSES)
        except MdakitError as exc:
            refusals.append(first_line(exc))
            continue
        return randomize_batchnorm(model, SEED).eval(), size
    raise MdakitError("; ".join(refusals))


def random_images(shape: Sequence[int]) -> torch.Tensor:
    return torch.rand(IMAGES, *shape, generator=torch.Generator().manual_seed(SEED))


def fit_batchnorm(model: nn.Module, images: torch.Tensor) -> None:
    """Measure every BatchNorm's running statistics on ``images`` (their affine parameters stay random): with
    random statistics the signal dies in deep models (mobilenet_v3_small's logits vary by 1e-9 across images),
    so the labels would be rounding noise."""
    norms = {m: m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one batch gives its own statistics
    model.train()
    with torch.no_grad():
        model(images)
    for norm, momentum in norms.items():
        norm.momentum = momentum
    model.eval()


def centre_head(model: nn.Module, images: torch.Tensor) -> bool:
    """Subtract the images' mean logit from the bias of the last Linear, if it makes the logits: a random network
    gives every noise image the same class (its bias and mean features dominate), a centred one spreads them."""
    head = next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
    if head is None or head.bias is None or head.out_features != NUM_CLASSES:
        return False
    with torch.no_grad():
        head.bias -= model(images).mean(0)
    return True


def self_labelled(model: nn.Module, images: torch.Tensor) -> tuple[TensorDataset, list[list[int]]]:
    """The images labelled by the model, and the class sets to cut: the two most-predicted labels and the third
    (with only two labels predicted, one each). Refused when the logits hardly depend on the image."""
    with torch.no_grad():
        logits = model(images)
    spread, scale = float(logits.std(0).max()), float(logits.abs().max())
    if spread <= SPREAD * max(1.0, scale):
        raise MdakitError(f"benchmark setup: the logits hardly depend on the image (spread {spread:.1e} across "
                          "images); labels would be rounding noise")
    labels = logits.argmax(1)
    tally = torch.bincount(labels, minlength=NUM_CLASSES)
    ranked = [int(c) for c in tally.argsort(descending=True, stable=True) if tally[c] > 0]
    sets = [ranked[:2], ranked[2:3]] if len(ranked) >= 3 else [ranked[:1], ranked[1:2]]
    return TensorDataset(images, labels), [s for s in sets if s]


def _difference(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    return float((got - want).abs().max()), float(want.abs().max())


def _extraction(model: nn.Module, shape: Sequence[int], parts: list, images: torch.Tensor) -> tuple[float, float]:
    graph = trace(model, shape)
    with torch.no_grad():
        diffs = [_difference(part.model.eval()(images), MaskedModel(graph, part.keep).eval()(images))
                 for part in parts]
    return max(d for d, _ in diffs), max(s for _, s in diffs)


def _assembly(parts: list, layout: str, images: torch.Tensor) -> tuple[float, float]:
    if len(parts) < 2:
        raise MdakitError("the model predicts one label only: nothing to assemble")
    joined, _ = mdakit.assemble(parts, layout=layout)
    with torch.no_grad():
        want = torch.cat([part.model.eval()(images) for part in parts], dim=1)
        return _difference(joined.eval()(images), want)


def _export(part: Any, out: Path) -> dict[str, Any]:
    """Export checks the file against PyTorch with its own tolerance: its refusal is the failure."""
    report, record = attempt(lambda: mdakit.export(part, out))
    return record | ({"max_abs_diff": report["max_abs_diff"]} if report is not None else {})


def check_model(family: str, name: str, shape: Sequence[int] | None = None) -> dict[str, Any]:
    """Every check on one model (see the module docstring); never raises for a failing model."""
    start = time.perf_counter()
    row: dict[str, Any] = {"family": family, "name": name, "key": family_key(name), "input_shape": None,
                           "checks": {check: {"status": "skipped"} for check in CHECKS}}
    checks = row["checks"]
    with tempfile.TemporaryDirectory(prefix="mdakit-coverage-") as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keep-set and tracer warnings would drown the progress lines
        built, checks["build"] = attempt(lambda: prepare(family, name, shape, Path(scratch)))
        if built is not None:
            row.update({k: built[k] for k in ("input_shape", "classes", "centred_head")})
            row["params"] = run_checks(built, checks, Path(scratch))
    row["outcome"] = outcome(checks)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def prepare(family: str, name: str, shape: Sequence[int] | None, scratch: Path) -> dict[str, Any]:
    """The model built, its head centred, saved as a model file, and its self-labelled images."""
    model, size = build(family, name, shape)
    images = random_images(size)
    fit_batchnorm(model, images)
    centred = centre_head(model, images)
    data, classes = self_labelled(model, images)
    path = save(model, scratch / "model", ModelCard(f"{family}:{name}", list(size), NUM_CLASSES))
    return {"model": model, "input_shape": list(size), "path": path, "data": data, "classes": classes,
            "centred_head": centred}


def run_checks(built: dict[str, Any], checks: dict[str, dict[str, Any]], scratch: Path) -> dict[str, Any] | None:
    """The checks after the build, each recorded in ``checks``; the parameter counts of the model and its parts."""
    model, data = built["model"], built["data"]
    parts, checks["disassemble"] = attempt(
        lambda: [mdakit.disassemble(built["path"], data, classes, samples=SAMPLES, thresholds="paper")
                 for classes in built["classes"]])
    if parts is None:
        return None
    images = data.tensors[0]
    checks["extraction"] = compare(lambda: _extraction(model, built["input_shape"], parts, images))
    for layout in ("parallel", "padded"):
        checks[layout] = compare(lambda layout=layout: _assembly(parts, layout, images))
    checks["onnx"] = _export(parts[0], scratch / "part.onnx")
    return {"original": sum(p.numel() for p in model.parameters()),
            "parts": [part.report["part_size"]["params"] for part in parts]}


def outcome(checks: dict[str, dict[str, Any]]) -> str:
    """passed (every check), else the worst status: crash, then wrong (a difference too large), then error."""
    statuses = {c["status"] for c in checks.values()}
    if statuses == {"pass"}:
        return "passed"
    return next(o for s, o in (("crash", "crash"), ("fail", "wrong"), ("error", "error")) if s in statuses)


def models(family: str | None, only: Sequence[str] | None, limit: int | None) -> list[tuple[str, str]]:
    """(family, name) of every model of the benchmark's list, filtered."""
    import timm
    import torchvision

    listed = [("torchvision", n) for n in torchvision.models.list_models(module=torchvision.models)]
    listed += [("timm", n) for n in TIMM if timm.is_model(n)]
    chosen = [(f, n) for f, n in listed if family in (None, f) and (not only or n in only)]
    return chosen[:limit] if limit else chosen


def cache_path(family: str, name: str) -> Path:
    return CACHE / f"{family}__{name}.json"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_worker(family: str, name: str, timeout: float) -> dict[str, Any]:
    """One model in its own process (a hang or a hard crash costs that model only), cached as JSON."""
    path = cache_path(family, name)
    command = [sys.executable, __file__, "--worker", family, name]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        row = _failed_row(family, name, "timeout", f"no result within {timeout:g} s", start)
    else:
        if done.returncode == 0 and path.is_file():
            return json.loads(path.read_text())
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        row = _failed_row(family, name, "crash", f"worker exited with code {done.returncode}: {tail}", start)
    _write_text(path, json.dumps(row, indent=2) + "\n")
    return row


def _failed_row(family: str, name: str, result: str, message: str, start: float) -> dict[str, Any]:
    return {"family": family, "name": name, "key": family_key(name), "input_shape": None, "outcome": result,
            "error": message, "seconds": round(time.perf_counter() - start, 2),
            "checks": {check: {"status": "skipped"} for check in CHECKS}}


def _progress(i: int, total: int, row: dict[str, Any], cached: bool) -> None:
    failed = next((f"{c}: {r.get('error') or r.get('max_abs_diff')}" for c, r in row["checks"].items()
                   if r["status"] not in ("pass", "skipped")), row.get("error", ""))
    shape = "×".join(map(str, row["input_shape"] or [])) or "-"
    print(f"[{i}/{total}] {row['family']}:{row['name']} {shape} {row['outcome']} {row['seconds']:.1f}s"
          f"{' (cached)' if cached else ''} {failed}"[:240], flush=True)


def largest_difference(row: dict[str, Any]) -> float | None:
    diffs = [r["max_abs_diff"] for r in row["checks"].values() if r.get("max_abs_diff") is not None]
    return max(diffs) if diffs else None


def counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Outcomes per library, and in all."""
    per = {family: Counter(r["outcome"] for r in rows if r["family"] == family) for family in FAMILIES}
    per["all"] = Counter(r["outcome"] for r in rows)
    return {family: {o: tally[o] for o in OUTCOMES} | {"models": sum(tally.values())} for family, tally in per.items()}


def _failures(row: dict[str, Any]) -> str:
    """Each failed check with the op and node its message names, and the message's start."""
    notes = []
    for check, r in row["checks"].items():
        if r["status"] in ("error", "crash", "fail"):
            named = ", ".join(f"{k} `{r[k]}`" for k in ("op", "node") if k in r)
            notes.append(f"{check}{f' ({named})' if named else ''}: {r.get('error') or r['status']}"[:160])
    return "; ".join(notes) or row.get("error", "")


def markdown(rows: list[dict[str, Any]], tally: dict[str, dict[str, int]], listed: int) -> str:
    """The counts per library (of ``listed`` models in the list), then one row per model."""
    lines = ["# Coverage: torchvision and timm models through mdakit", "",
             f"{len(rows)} of the {listed} listed models have been run"
             + ("." if len(rows) == listed else "; the others are not counted (rerun the benchmark: it resumes)."),
             "",
             "Random weights, random BatchNorm affine parameters with statistics measured on the images, "
             f"{IMAGES} self-labelled random images, {SAMPLES} samples per class; a difference passes at "
             f"≤ {TOLERANCE:g} × max(1, largest |logit|). passed = every check passed; wrong = a difference "
             "above the tolerance; error = a clear MdakitError; crash = another exception; timeout = no result "
             "in the time limit.", "",
             "| library | models | " + " | ".join(OUTCOMES) + " |", "|" + " --- |" * (len(OUTCOMES) + 2)]
    lines += [f"| {family} | {t['models']} | " + " | ".join(str(t[o]) for o in OUTCOMES) + " |"
              for family, t in tally.items()]
    lines += ["", "| library | model | input | " + " | ".join(CHECKS)
              + " | largest diff. | seconds | commit | failures |",
              "|" + " --- |" * (len(CHECKS) + 7)]
    for r in rows:
        diff = largest_difference(r)
        lines.append(f"| {r['family']} | {r['name']} | {'×'.join(map(str, r['input_shape'] or [])) or '-'} | "
                     + " | ".join(r["checks"][c]["status"] for c in CHECKS)
                     + f" | {'-' if diff is None else f'{diff:.1e}'} | {r['seconds']:.0f} | {r.get('commit', '-')} | "
                     + _failures(r).replace("|", "\\|") + " |")
    return "\n".join(lines) + "\n"


def report_section(rows: list[dict[str, Any]], tally: dict[str, dict[str, int]], listed: int) -> str:
    """The RESULTS.md section: how it was run, the counts, and every model that did not pass with why."""
    commits = sorted({r.get("commit", "-") for r in rows})
    lines = ["Written by `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/coverage.py` (resumable; one row per model in "
             "`benchmarks/results/coverage.md`, with the input size, every check, the largest difference and the "
             f"commit it ran at: {', '.join(commits)}). {len(rows)} of {listed} listed models run. Random weights, "
             f"{IMAGES} self-labelled random images; a check passes at ≤ {TOLERANCE:g} × max(1, largest |logit|).",
             "", "| library | models | " + " | ".join(OUTCOMES) + " |", "|" + " --- |" * (len(OUTCOMES) + 2)]
    lines += [f"| {family} | {t['models']} | " + " | ".join(str(t[o]) for o in OUTCOMES) + " |"
              for family, t in tally.items()]
    lines += ["", "Every model that did not pass, with the first line of each failing check:", ""]
    lines += [f"- {r['family']} `{r['name']}` ({r['outcome']}): " + _failures(r).replace("|", "\\|")
              for r in rows if r["outcome"] != "passed"]
    return "\n".join(lines) + "\n"


def panel(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per family the fastest model that passed every check; the slower ones beyond a test budget marked slow."""
    fastest: dict[str, dict[str, Any]] = {}
    for r in sorted((r for r in rows if r["outcome"] == "passed"), key=lambda r: r["seconds"]):
        fastest.setdefault(r["key"], r)
    entries, spent = [], 0.0
    for r in sorted(fastest.values(), key=lambda r: r["seconds"]):
        slow = r["seconds"] > PANEL_FAST_SECONDS or spent + r["seconds"] > PANEL_FAST_BUDGET
        spent += 0.0 if slow else r["seconds"]
        entries.append({"key": r["key"], "family": r["family"], "name": r["name"], "input_shape": r["input_shape"],
                        "seconds": r["seconds"], "slow": slow})
    return entries


def summarise(listed: list[tuple[str, str]]) -> None:
    """coverage.json, coverage.md and coverage_panel.json from every cached model of the list."""
    rows = [json.loads(cache_path(f, n).read_text()) for f, n in listed if cache_path(f, n).is_file()]
    import timm
    import torchvision

    env = {**environment(), "torchvision": torchvision.__version__, "timm": timm.__version__}
    tally = counts(rows)
    settings = {"images": IMAGES, "samples": SAMPLES, "seed": SEED, "tolerance": TOLERANCE, "classes": NUM_CLASSES}
    write_json("coverage", {"environment": env, "settings": settings, "listed": len(listed), "counts": tally,
                            "rows": rows})
    write_json("coverage_panel", {"environment": env, "models": panel(rows)})
    _write_text(RESULTS_DIR / "coverage.md", markdown(rows, tally, len(listed)))
    update_report("Coverage: torchvision and timm models (issue 22)", report_section(rows, tally, len(listed)))
    print(f"{len(rows)} models: " + ", ".join(f"{o} {tally['all'][o]}" for o in OUTCOMES))


def _commit() -> str:
    """The commit of the checkout that ran a model ("+" when its tree had uncommitted changes)."""
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"], cwd=root,
                           capture_output=True, text=True)
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=FAMILIES)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="Only these model names.")
    parser.add_argument("--limit", type=int, help="Only the first N models of the list.")
    parser.add_argument("--force", action="store_true", help="Rerun models already cached.")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="Seconds per model (default %(default)s).")
    parser.add_argument("--worker", nargs=2, metavar=("FAMILY", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.worker:
        row = {**check_model(*args.worker), "commit": _commit()}
        _write_text(cache_path(*args.worker), json.dumps(row, indent=2) + "\n")
        return
    listed = models(args.family, args.only, args.limit)
    for i, (family, name) in enumerate(listed, 1):
        cached = cache_path(family, name).is_file() and not args.force
        row = json.loads(cache_path(family, name).read_text()) if cached else run_worker(family, name, args.timeout)
        _progress(i, len(listed), row, cached)
    summarise(models(None, None, None))


if __name__ == "__main__":
    main()
