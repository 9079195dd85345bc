"""A budget instead of thresholds (docs/methods.md#budget-search): the most accurate part within a MACs,
parameter or latency ratio, searched on held-out training images, and which of budget and tolerance bound."""

import json

import pytest

from mdakit.budget import BUDGET_FACTORS, Budget
from mdakit.cli import run
from mdakit.disassembly import disassemble
from mdakit.errors import MdakitError


@pytest.mark.parametrize("text, message", [
    ("macs", "KIND=RATIO"), ("macs=abc", "KIND=RATIO"), ("macs=0", r"in \(0, 1\]"), ("params=1.5", r"in \(0, 1\]"),
    ("speed=0.3", "unknown budget 'speed'"), ("macs=nan", "KIND=RATIO"),
])
def test_bad_budgets_are_refused(text, message):
    with pytest.raises(MdakitError, match=message):
        Budget.parse(text)


def _ratio(report, kind):
    return report["part_size"][kind] / report["original_size"][kind]


@pytest.mark.parametrize("kind", ["macs", "params"])
def test_the_part_is_the_most_accurate_within_its_budget(tiny_lenet_dir, kind):
    part = disassemble(tiny_lenet_dir, "mnist", [0, 1, 2], samples=10, budget=f"{kind}=0.5")
    search = part.report["budget"]
    assert search["met"] and search["cost_ratio"] <= 0.5
    assert _ratio(part.report, kind) == pytest.approx(search["cost_ratio"])
    factors = [t["factor"] for t in search["trials"]]
    assert factors == list(BUDGET_FACTORS[:len(factors)])
    fitting = [t for t in search["trials"] if t["cost_ratio"] <= 0.5]
    assert search["holdout_accuracy"] == max(t["holdout_accuracy"] for t in fitting)
    assert part.report["thresholds"] == f"searched for the budget {kind} ≤ 0.5"
    assert part.card.provenance["settings"]["budget"]["chosen_factor"] == search["chosen_factor"]


def test_with_a_tolerance_the_smallest_part_that_holds_is_kept(tiny_lenet_dir):
    part = disassemble(tiny_lenet_dir, "mnist", [0, 1, 2], samples=10, budget="macs=0.9", calibrate=100.0)
    search = part.report["budget"]
    assert search["bound"] == "tolerance" and search["tolerance_met"]
    assert search["chosen_factor"] == search["trials"][0]["factor"]  # a 100-point tolerance: the strictest holds


def test_an_unreachable_budget_warns_and_keeps_the_smallest_part(tiny_lenet_dir):
    with pytest.warns(UserWarning, match="NOT reached even at the strictest thresholds"):
        part = disassemble(tiny_lenet_dir, "mnist", [0, 1], samples=10, budget="macs=0.001")
    search = part.report["budget"]
    assert not search["met"] and search["chosen_factor"] == BUDGET_FACTORS[0] and len(search["trials"]) == 1


def test_a_latency_budget_is_measured_against_the_original(tiny_lenet_dir):
    with pytest.warns(UserWarning):  # LeNet at batch 1 is all overhead: no part reaches a tenth of its time
        part = disassemble(tiny_lenet_dir, "mnist", [0], samples=10, budget="latency=0.1")
    assert 0.1 < part.report["budget"]["cost_ratio"] < 10


def test_a_budget_needs_per_class_sums(tiny_lenet_dir):
    with pytest.raises(MdakitError, match="a budget searches the thresholds of contribution attribution"):
        disassemble(tiny_lenet_dir, "mnist", [0], method="gradient", samples=5, budget="macs=0.5")


def test_cli_budget(tiny_lenet_dir, tmp_path, capsys):
    out = tmp_path / "p"
    assert run(["disassemble", str(tiny_lenet_dir), "--classes", "0,1", "--samples", "10", "--budget", "macs=0.6",
                "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["budget"]["met"] and report["budget"]["cost_ratio"] <= 0.6
    assert run(["disassemble", str(tiny_lenet_dir), "--classes", "0,1", "--samples", "10", "--budget", "macs=0.6",
                "--out", str(tmp_path / "q")]) == 0
    assert "budget macs ≤ 0.6" in capsys.readouterr().out
    bad = tmp_path / "bad"
    assert run(["disassemble", str(tiny_lenet_dir), "--classes", "0", "--budget", "fast", "--out", str(bad)]) == 2
    assert "a budget reads KIND=RATIO" in capsys.readouterr().err and not bad.exists()
