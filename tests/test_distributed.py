"""Class-parallel masks across 2 local CPU processes (gloo): identical to one process, failures, resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mdakit.component_masks import ComponentMasks, LayerMask
from mdakit.disassembly import compute_masks
from mdakit.distributed import WorkDir, World, joined, run_per_class
from mdakit.errors import MdakitError
from mdakit.workspace import Workspace

CLASSES = list(range(10))
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toy_masks(classes: list[int]) -> ComponentMasks:
    """Masks that differ by class (the class's bits), as a per-class method would return them."""
    per_class = {}
    for c in classes:
        bits = torch.tensor([(c >> i) & 1 for i in range(6)], dtype=torch.bool).view(2, 3)
        per_class[c] = {"fc": LayerMask(bits, bits.any(0), bits.any(1))}
    return ComponentMasks(per_class, "toy", {"alpha": 0.5}, info={"samples_used": {c: c + 1 for c in classes}})


def _worker(rank: int, size: int, port: int, out: str, log: str, die_in_chunk: int | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank))
    chunks = []

    def compute(classes: list[int]) -> ComponentMasks:
        chunks.append(classes)
        if rank == 1 and die_in_chunk is not None and len(chunks) == die_in_chunk:
            os._exit(3)  # a rank dying mid-run, without any clean-up
        with open(f"{log}/computed-{rank}.txt", "a") as f:
            f.write("".join(f"{c}\n" for c in classes))
        return _toy_masks(classes)

    try:
        with joined("cpu", timeout=20) as world:
            run_per_class(CLASSES, compute, out, chunk=2, world=world, fingerprint={"run": "toy"})
        outcome = "ok"
    except MdakitError as exc:
        outcome = f"MdakitError: {exc}"
    Path(f"{log}/outcome-{rank}.txt").write_text(outcome)


def _run_two(out: Path, log: Path, die_in_chunk: int | None = None) -> dict[int, str]:
    log.mkdir(exist_ok=True)
    port = _free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(out), str(log), die_in_chunk)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
        assert not p.is_alive(), "a worker hung"
    return {r: (log / f"outcome-{r}.txt").read_text() if (log / f"outcome-{r}.txt").exists() else "died"
            for r in range(2)}


def _computed(log: Path) -> list[int]:
    return sorted(int(line) for f in log.glob("computed-*.txt") for line in f.read_text().split())


def test_dying_rank_fails_clearly_and_rerun_resumes(tmp_path):
    out = tmp_path / "masks"
    first = _run_two(out, tmp_path / "log1", die_in_chunk=2)
    assert first[1] == "died"
    assert first[0].startswith("MdakitError: rank 0: not every process reached 'every class finished'")
    assert "Rerun the same command to resume" in first[0]
    assert not out.exists()
    work = WorkDir(tmp_path / "masks.work")
    finished = work.finished()
    assert finished == _computed(tmp_path / "log1") == [0, 1, 2, 3, 4, 6, 8]  # rank 0: all; rank 1: 1 chunk
    assert not list(work.path.glob(".*tmp*"))

    second = _run_two(out, tmp_path / "log2")
    assert second == {0: "ok", 1: "ok"}
    assert _computed(tmp_path / "log2") == [5, 7, 9]  # only what was missing
    assert not work.path.exists()
    single = _toy_masks(CLASSES).save(tmp_path / "single")
    gathered = ComponentMasks.load(out)
    assert gathered.per_class == ComponentMasks.load(single).per_class
    assert gathered.info["samples_used"] == {str(c): c + 1 for c in CLASSES}


def test_work_dir_of_another_run_is_refused(tmp_path):
    calls = []

    def compute(classes):
        if 3 in classes:
            raise MdakitError("stop")
        calls.extend(classes)
        return _toy_masks(classes)

    with pytest.raises(MdakitError, match="stop"):
        run_per_class(CLASSES, compute, tmp_path / "m", chunk=3, fingerprint={"seed": 0})
    with pytest.raises(MdakitError, match="another run \\(different seed\\)"):
        run_per_class(CLASSES, _toy_masks, tmp_path / "m", fingerprint={"seed": 1})
    masks = run_per_class(CLASSES, lambda cs: calls.extend(cs) or _toy_masks(cs), tmp_path / "m", chunk=4,
                          fingerprint={"seed": 0})
    assert sorted(calls) == CLASSES  # 0-2 were done by the first run and not computed again
    assert masks.classes == CLASSES
    assert World().on_rank0(lambda: "x", "testing") == "x"


def _torchrun_masks(model: Path, data_dir: Path, out: Path, extra: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "mdakit", "masks",
           str(model), "--classes", "0-9", "--out", str(out), "--data-dir", str(data_dir), "--json", "--timeout", "60",
           *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _single(model: Path, data_dir: Path, out: Path, method: str, samples: int, settings=None) -> Path:
    source = Workspace.open(model, "mnist", data_dir=data_dir)
    masks, _, _ = compute_masks(source, CLASSES, method, samples=samples, settings=settings)
    return masks.save(out)


def test_torchrun_two_processes_match_one_bit_for_bit(tiny_lenet_dir, data_dir, tmp_path):
    done = _torchrun_masks(tiny_lenet_dir, data_dir, tmp_path / "dist", ["--samples", "6", "--class-chunk", "2"])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # only rank 0 prints
    assert report["classes"] == CLASSES
    single = _single(tiny_lenet_dir, data_dir, tmp_path / "single", "contribution", 6)
    for name in ("masks.safetensors", "masks.json"):
        assert (tmp_path / "dist" / name).read_bytes() == (single / name).read_bytes()
    assert not (tmp_path / "dist.work").exists()


@pytest.mark.slow
def test_torchrun_nad_matches_one_process(tiny_lenet_dir, data_dir, tmp_path):
    from mdakit.attribution.nad import NADSettings

    done = _torchrun_masks(tiny_lenet_dir, data_dir, tmp_path / "dist", ["--method", "nad", "--beta", "0.3",
                                                                          "--samples", "8"])
    assert done.returncode == 0, done.stderr[-3000:]
    single = _single(tiny_lenet_dir, data_dir, tmp_path / "single", "nad", 8, NADSettings(beta=0.3))
    for name in ("masks.safetensors", "masks.json"):
        assert (tmp_path / "dist" / name).read_bytes() == (single / name).read_bytes()
