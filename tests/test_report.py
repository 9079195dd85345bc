"""The HTML report: self-contained, every number taken from the run's files, bad input refused cleanly."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import pytest
import torch
from PIL import Image

from mdakit.artifacts import load_with_card, read_card, save
from mdakit.assembly import assemble, evaluate_assembled, save_assembled
from mdakit.cli import run
from mdakit.data import load_dataset
from mdakit.disassembly import disassemble
from mdakit.evaluate import evaluate
from mdakit.figures import figure_bytes, new_figure
from mdakit.metrics import model_size
from mdakit.report.build import build_report
from mdakit.report.context import ReportOptions
from mdakit.report.items import classify
from mdakit.report.markup import esc, num, pct, ratio


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_lenet_dir, data_dir):
    """A small run: a model, two parts of it, their assembly and an analysis directory."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("run")
    module, card = load_with_card(tiny_lenet_dir)
    test, _ = load_dataset("mnist", "test", data_dir)
    evaluation = evaluate(module, test, card.logit_classes)
    card.metrics = {"test_accuracy": evaluation.accuracy, "per_class_test_accuracy": evaluation.per_class_accuracy,
                    **model_size(module, card.input_shape)}
    save(module, root / "lenet5-mnist", card)
    for classes in ("0,1", "2,3"):
        part = disassemble(root / "lenet5-mnist", "mnist", classes, samples=10, data_dir=data_dir)
        part.save(root / f"part-{classes.replace(',', '')}")
    model, card = assemble([root / "part-01", root / "part-23"])
    card.metrics = evaluate_assembled(model, card, data_dir=data_dir)
    save_assembled(model, root / "assembled", card)
    analysis = root / "analysis"
    analysis.mkdir()
    (analysis / "summary.json").write_text(json.dumps({"method": "nad", "similarity_mean": 0.4321,
                                                       "misclassification": {"difference": 0.0123}}))
    (analysis / "similarity.json").write_text(json.dumps({"mean": 0.4321}))
    (analysis / "misclassification.json").write_text(json.dumps({"overall": {"mistaken": 0.5, "other": 0.3}}))
    (analysis / "similarity.png").write_bytes(figure_bytes(new_figure(2, 2)))
    return root


@pytest.fixture(scope="module")
def report(run_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    argv = ["report", str(run_dir), "--out", str(out), "--samples", "10", "--max-classes", "4", "--route-classes",
            "2", "--data-dir", str(data_dir), "--json"]
    assert run(argv) == 0
    return out, out.read_text()


def test_run_directory_kinds(run_dir):
    kinds = {p.name: classify(p) for p in run_dir.iterdir()}
    assert kinds == {"lenet5-mnist": "model", "part-01": "part", "part-23": "part", "assembled": "assembly",
                     "analysis": "analysis"}
    assert classify(run_dir) is None


def test_report_is_self_contained(report):
    _, html = report
    assert html.startswith("<!DOCTYPE html>")
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert links and not [u for u in links if re.match(r"(https?:)?//", u)]
    assert all(u.startswith(("data:", "#")) for u in links)
    assert "<script" not in html and "@import" not in html and "url(" not in html


def test_every_section_and_block_is_there(report):
    _, html = report
    ids = re.findall(r'<section id="([^"]+)"', html)
    assert ids == ["summary", "overview", "model-lenet5-mnist", "part-part-01", "part-part-23", "assembly-assembled",
                   "analysis-analysis"]
    for title in ("Decision routes", "Class similarity", "Contribution patterns", "Kept filters per class",
                  "Size and cost", "Accuracy, size and cost", "Misclassification"):
        assert f"<h3>{title}</h3>" in html
    assert "Not computed" not in html
    assert html.count('src="data:image/svg+xml;base64,') == 3  # the model's routes and each part's


def _section(html: str, section_id: str) -> str:
    start = html.index(f'<section id="{section_id}"')
    return html[start:html.index("</section>", start)]


def test_numbers_equal_the_files(report, run_dir):
    _, html = report
    _, model_card = read_card(run_dir / "lenet5-mnist")
    model = _section(html, "model-lenet5-mnist")
    metrics = model_card["metrics"]
    assert f"<td>{pct(metrics['test_accuracy'])}</td>" in model
    for key in ("params", "nonzero_params", "macs"):
        assert f"<td>{num(metrics[key])}</td>" in model
    for c, acc in metrics["per_class_test_accuracy"].items():
        assert f'<td class="l">{c} {c}</td><td>{pct(acc)}</td>' in model
    for name in ("part-01", "part-23"):
        m = read_card(run_dir / name)[1]["metrics"]
        part = _section(html, f"part-{name}")
        for key in ("part_accuracy", "original_accuracy", "original_restricted_accuracy"):
            assert f"<td>{pct(m[key])}</td>" in part
        assert f"<td>{num(m['part_size']['params'])}</td><td>{num(m['part_size']['nonzero_params'])}</td>" \
               f"<td>{num(m['part_size']['macs'])}</td>" in part
        assert "restricted to the part&#x27;s logits (reference)" in part
    assembly = json.loads((run_dir / "assembled" / "assembly.json").read_text())["metrics"]
    section = _section(html, "assembly-assembled")
    assert f"<td>{pct(assembly['accuracy'])}</td>" in section
    assert f"<td>{pct(assembly['original_accuracy'])}</td>" in section
    assert f"<td>{num(assembly['size']['macs'])}</td>" in section
    assert "<td>0.4321</td>" in _section(html, "analysis-analysis")


def _summary(paths) -> str:
    html, ids = build_report(paths, ReportOptions(compute=False))
    assert ids[0] == "summary" and html.index('<section id="summary"') < html.index("<nav>") < html.index(
        '<section id="overview"')
    return _section(html, "summary")


def _row(*cells) -> str:
    return "<tr>" + "".join(f'<td class="l">{esc(c)}</td>' if i < 2 else f"<td>{esc(c)}</td>"
                            for i, c in enumerate(cells)) + "</tr>"


def _chart(summary: str) -> Image.Image:
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', summary)
    assert len(uris) == 1
    return Image.open(io.BytesIO(base64.b64decode(uris[0])))


def test_summary_of_a_part(run_dir):
    summary = _summary([run_dir / "part-01"])
    m = read_card(run_dir / "part-01")[1]["metrics"]
    sentence = (f"{run_dir / 'part-01'}: classes 0, 1 of mnist (2 of its 10 logits) cut from the lenet5 model "
                f"{run_dir / 'lenet5-mnist'} by contribution attribution.")
    assert f"<li>{esc(sentence)}</li>" in summary
    size, original = m["part_size"], m["original_size"]
    assert _row("part-01", "0, 1", pct(m["part_accuracy"]), pct(m["original_restricted_accuracy"]),
                ratio(size["params"], original["params"]), ratio(size["macs"], original["macs"])) in summary
    assert summary.count("<tr>") == 2  # the header and the part
    assert _chart(summary).format == "PNG"
    assert not re.search(r"speed|latency|\bms\b|seconds", summary, re.IGNORECASE)


def test_summary_of_an_assembly(run_dir):
    summary = _summary([run_dir / "assembled"])
    raw = json.loads((run_dir / "assembled" / "assembly.json").read_text())
    joined = (f"{run_dir / 'assembled'}: 2 parts joined in the parallel layout (rescaling: none) into one classifier "
              f"of 4 logits: part 0, classes 0, 1 of mnist from {run_dir / 'part-01'}; part 1, classes 2, 3 of mnist "
              f"from {run_dir / 'part-23'}.")
    assert f"<li>{esc(joined)}</li>" in summary
    for p, classes in enumerate(("0, 1", "2, 3")):
        card = read_card(run_dir / "assembled" / f"part-{p}")[1]["metrics"]
        size, original = card["part_size"], card["original_size"]
        assert _row(f"assembled: part {p}", classes, pct(raw["metrics"]["parts"][p]["accuracy"]),
                    pct(card["original_restricted_accuracy"]), ratio(size["params"], original["params"]),
                    ratio(size["macs"], original["macs"])) in summary
    whole, lenet = raw["metrics"]["size"], read_card(run_dir / "lenet5-mnist")[1]["metrics"]  # one original
    assert _row("assembled (all parts)", "4 logits", pct(raw["metrics"]["accuracy"]), "n/a",
                ratio(whole["params"], lenet["params"]), ratio(whole["macs"], lenet["macs"])) in summary
    assert _chart(summary).format == "PNG"


def test_no_summary_without_models(run_dir):
    html, ids = build_report([run_dir / "analysis"], ReportOptions(compute=False))
    assert ids == ["overview", "analysis-analysis"] and 'id="summary"' not in html


def test_files_only_report_without_data(run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert run(["report", str(run_dir / "assembled"), str(run_dir / "part-01"), "--no-compute", "--out", str(out),
                "--data-dir", str(tmp_path / "no-data"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sections"] == ["summary", "overview", "part-part-01",
                                                                 "assembly-assembled"]
    assert "Decision routes" not in out.read_text()


def test_missing_data_becomes_a_note(run_dir, tmp_path):
    out = tmp_path / "r.html"
    assert run(["report", str(run_dir / "lenet5-mnist"), "--out", str(out), "--data-dir", str(tmp_path / "none")]) == 0
    assert '<p class="note">Not computed: ' in out.read_text()


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/missing"], "does not exist"),
    (["{tmp}/empty"], "is not a model, part, assembly"),
    (["{tmp}/corrupt"], "not valid JSON"),
    (["{run}", "--samples", "0"], "--samples must be at least 1"),
])
def test_bad_input_exits_2_and_writes_nothing(argv, message, run_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "card.json").write_text('{"format": "mdakit-mo')
    out = tmp_path / "out" / "report.html"
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    assert run(["report", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))


def test_existing_report_is_kept_without_force(run_dir, tmp_path, capsys):
    out = tmp_path / "report.html"
    out.write_text("previous")
    assert run(["report", str(run_dir / "assembled"), "--out", str(out), "--no-compute"]) == 2
    assert out.read_text() == "previous" and "already exists" in capsys.readouterr().err


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("broken, message", [
    ("part-1/model.safetensors", "does not match the checksum in its card"),
    ("part-0/card.json", "is not valid JSON"),
    ("assembly.json", "is not valid JSON"),
])
def test_assembly_with_a_truncated_file_is_refused(broken, message, run_dir, tmp_path, capsys):
    assembly = tmp_path / "assembled"
    shutil.copytree(run_dir / "assembled", assembly)
    _truncate(assembly / broken)
    out = tmp_path / "out" / "report.html"
    assert run(["report", str(assembly), "--out", str(out), "--no-compute"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(assembly / broken) in err[0], err
    assert not out.parent.exists()


def test_truncated_original_of_a_part_is_refused_when_computing(run_dir, tmp_path, capsys):
    original, part = tmp_path / "original", tmp_path / "part"
    shutil.copytree(run_dir / "lenet5-mnist", original)
    shutil.copytree(run_dir / "part-01", part)
    card = json.loads((part / "card.json").read_text())
    card["provenance"]["disassembled_from"] = str(original)
    (part / "card.json").write_text(json.dumps(card))
    _truncate(original / "model.safetensors")
    out = tmp_path / "out" / "report.html"
    assert run(["report", str(part), "--out", str(out), "--samples", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(original / "model.safetensors") in err[0], err
    assert not out.parent.exists()
    assert run(["report", str(part), "--out", str(out), "--no-compute"]) == 0  # files only: the original is not read
