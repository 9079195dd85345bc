"""Measured latency (docs/methods.md#measured-latency): rows per timed setting, both models interleaved, a
runtime that cannot run the models skipped with the reason, and the timing carried by reports, cards and
``mdakit info``."""

import json

import pytest
import torch
from torch import nn

import mdakit
from mdakit.artifacts import load_with_card
from mdakit.assembly import assemble, save_assembled
from mdakit.cli import run
from mdakit.disassembly import disassemble
from mdakit.errors import MdakitError
from mdakit.latency import LatencySettings, compare_latency, time_interleaved

QUICK = LatencySettings(batches=(1, 3), threads=(1,), seconds=0.0, min_rounds=3, warmup=1)


def _wide() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 4))


def _narrow() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2, 4))


class DataDependent(nn.Module):
    """A branch on a value: torch.export (hence the ONNX file) cannot follow it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :4] if x.sum() > 0 else -x.flatten(1)[:, :4]


def test_every_setting_gets_a_row_and_a_model_with_far_fewer_macs_is_faster():
    torch.manual_seed(0)
    report = compare_latency(_narrow(), _wide(), (3, 32, 32), QUICK)
    settings = [(r["runtime"], r["threads"], r["batch"]) for r in report["rows"]]
    assert settings == [("eager", 1, 1), ("eager", 1, 3), ("onnxruntime", 1, 1), ("onnxruntime", 1, 3)]
    for row in report["rows"]:
        ms = row["ms_per_image"]
        assert row["speedup"] == pytest.approx(ms["original"] / ms["part"])
        assert row["speedup"] > 1.5  # about 4,000x fewer MACs
    assert report["environment"]["torch"] == torch.__version__ and "skipped" not in report


def test_all_threads_is_one_row_per_distinct_count():
    report = compare_latency(_narrow(), _narrow(), (3, 8, 8), LatencySettings(
        runtimes=("eager",), batches=(1,), threads=(None, torch.get_num_threads()), seconds=0.0, min_rounds=1))
    assert [r["threads"] for r in report["rows"]] == [torch.get_num_threads()]


def test_a_runtime_that_cannot_run_the_models_is_skipped_with_its_reason():
    report = compare_latency(DataDependent(), DataDependent(), (1, 4, 4), QUICK)
    assert {r["runtime"] for r in report["rows"]} == {"eager"}
    assert report["skipped"]["onnxruntime"].startswith("ONNX export failed")


def test_runners_are_timed_in_turn_and_alternate_order():
    calls: list[str] = []
    settings = LatencySettings(seconds=0.0, min_rounds=3, warmup=0)
    times = time_interleaved({"a": lambda x: calls.append("a"), "b": lambda x: calls.append("b")},
                             torch.zeros(1), settings)
    assert calls == ["a", "b", "b", "a", "a", "b"] and set(times) == {"a", "b"}


@pytest.mark.parametrize("settings, message", [
    (dict(runtimes=("tensorrt",)), "unknown runtime 'tensorrt'"),
    (dict(batches=(0,)), "at least one batch size"),
    (dict(min_rounds=0), "one timed round"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(MdakitError, match=message):
        LatencySettings(**settings)


def test_a_part_carries_its_latency_in_report_card_and_info(tiny_lenet_dir, tmp_path, capsys):
    part = disassemble(tiny_lenet_dir, "mnist", [0], thresholds="paper", samples=5, latency=QUICK)
    latency = part.report["latency"]
    assert len(latency["rows"]) == 4 and latency["labels"] == ["part", "original"]
    _, card = load_with_card(part.save(tmp_path / "part"))
    assert card.metrics["latency"]["rows"] == json.loads(json.dumps(latency["rows"]))
    assert run(["info", str(tmp_path / "part")]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # rich wraps captions at the terminal width
    assert "measured latency" in shown and "onnxruntime" in shown and "MACs promise" in shown
    assert "latency" not in disassemble(tiny_lenet_dir, "mnist", [0], thresholds="paper", samples=5,
                                        latency=False).report


def test_cli_times_with_latency_and_not_without(tiny_lenet_dir, tmp_path, capsys):
    common = ["--classes", "1", "--samples", "5", "--thresholds", "paper", "--json"]
    assert run(["disassemble", str(tiny_lenet_dir), *common, "--out", str(tmp_path / "a"), "--latency"]) == 0
    timed = json.loads(capsys.readouterr().out)["latency"]
    assert {(r["runtime"], r["batch"]) for r in timed["rows"]} >= {("eager", 1), ("eager", 64),
                                                                    ("onnxruntime", 1), ("onnxruntime", 64)}
    assert run(["disassemble", str(tiny_lenet_dir), *common, "--out", str(tmp_path / "b"), "--no-latency"]) == 0
    assert "latency" not in json.loads(capsys.readouterr().out)


def test_an_assembly_is_timed_against_its_originals_side_by_side(tiny_lenet_dir, tmp_path, capsys):
    parts = [disassemble(tiny_lenet_dir, "mnist", c, thresholds="paper", samples=5) for c in ([0, 1], [2])]
    for layout in ("parallel", "padded"):
        model, card = assemble(parts, layout, latency=QUICK)
        latency = card.metrics["latency"]
        assert latency["labels"] == ["assembled", "originals"] and len(latency["rows"]) == 4
    save_assembled(model, tmp_path / "asm", card)
    assert run(["info", str(tmp_path / "asm")]) == 0
    assert "measured latency" in capsys.readouterr().out


def test_an_assembly_whose_original_cannot_be_read_says_so():
    model, data = mdakit.examples.toy_problem()
    parts = [mdakit.disassemble(model, data, c, thresholds="paper", samples=5) for c in ([0], [1])]
    _, assembled = assemble(parts, latency=QUICK)
    latency = assembled.metrics["latency"]
    assert latency["rows"] == [] and "original model TinyNet is missing" in latency["skipped"]["eager"]
