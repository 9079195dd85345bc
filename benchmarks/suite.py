"""The benchmark suite: every table and figure of the contribution paper that this machine can reproduce.

    make bench                      # = .venv/bin/python benchmarks/suite.py --profile quick
    make bench PROFILE=full

*quick* (LeNet-5 on MNIST and Fashion-MNIST, minutes): zoo training, Table 1 and Table 4 over 3 seeds,
Tables 2 and 5, Fig. 4 sweeps, and NAD beside contribution and gradient (the NAD mask search and the
sub-architecture analyses of the NAD paper). *full* adds VGG-16, ResNet-50 and GoogLeNet (training them takes hours
on 2 CPU cores: see the zoo table in RESULTS.md for the epochs), the disassembly speed benchmark,
two seeds for the larger models, and the decoupling paper's runs (ResNet-20 and VGG-16 on Fashion-MNIST:
dynamic inference, the Table 7 ablation with the λ sweeps, adversarial detection). Every step caches
its cells under runs/, so a rerun resumes where the last one stopped; each step is a script in
benchmarks/ that can also be run alone. The wall time of each step is written to
benchmarks/results/suite-<profile>.json and RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import ROOT, environment, update_report, write_json

LARGE = ["vgg16", "resnet50", "googlenet"]
# The decoupling runs of RESULTS.md (Fashion-MNIST) and the model directories they write.
DECOUPLE_RESNET20 = ["--arch", "resnet20", "--dataset", "fashion-mnist", "--epochs", "10", "--lambda-m", "0.05",
                     "--lambda-s", "0.01", "--target-ratio", "0.5", "--gate-lr", "0.3", "--tag=-m005-s001-r05"]
DECOUPLED_RESNET20 = "runs/decouple/resnet20-fashion-mnist-e10-nall-m005-s001-r05"
DECOUPLE_RESNET20_READOUT = ["--arch", "resnet20", "--dataset", "fashion-mnist", "--epochs", "10", "--lambda-m", "0.1",
                             "--lambda-s", "0.0075", "--target-ratio", "0.5", "--gate-lr", "0.3", "--head-start", "4",
                             "--tag=-m01-s00075-r05-h4"]
DECOUPLED_RESNET20_READOUT = "runs/decouple/resnet20-fashion-mnist-e10-nall-m01-s00075-r05-h4"
DECOUPLE_VGG16 = ["--arch", "vgg16", "--dataset", "fashion-mnist", "--epochs", "5", "--train-subset", "30000",
                  "--lambda-m", "0.05", "--lambda-s", "0.002", "--target-ratio", "0.5", "--gate-lr", "0.3",
                  "--tag=-m005-s0002-r05"]
DECOUPLED_VGG16 = "runs/decouple/vgg16-fashion-mnist-e5-n30000-m005-s0002-r05"
DECOUPLED_VGG16_SETTLED = f"{DECOUPLED_VGG16}-settle2"
# All 54,000 fine-tuning images, then 3 settling epochs: the run that meets the VGG-16 targets.
DECOUPLE_VGG16_ALL = ["--arch", "vgg16", "--dataset", "fashion-mnist", "--epochs", "5", "--lambda-m", "0.05",
                      "--lambda-s", "0.002", "--target-ratio", "0.5", "--gate-lr", "0.3", "--tag=-m005-s0002-r05",
                      "--settle-epochs", "3"]
DECOUPLED_VGG16_ALL = "runs/decouple/vgg16-fashion-mnist-e5-nall-m005-s0002-r05-settle3"
PROFILES: dict[str, list[tuple[str, list[str]]]] = {
    "quick": [
        ("zoo training", ["zoo_training.py", "--only", "lenet5"]),
        ("Tables 1 and 4: disassembly", ["disassembly.py", "accuracy", "--archs", "lenet5", "--seeds", "0", "1", "2"]),
        ("Tables 2 and 5: assembly", ["assembly.py", "--archs", "lenet5"]),
        ("Fig. 4: sweeps", ["sweeps.py", "--archs", "lenet5"]),
        ("NAD mask search", ["nad.py", "--archs", "lenet5", "--linear", "--threads", "1"]),
        ("NAD analyses, all three methods", ["analysis.py", "--archs", "lenet5"]),
    ],
    "full": [
        ("zoo training", ["zoo_training.py"]),
        ("disassembly speed (VGG-16)", ["disassembly.py", "speed"]),
        ("Tables 1 and 4: disassembly, LeNet-5 over 3 seeds", ["disassembly.py", "accuracy", "--archs", "lenet5",
                                                              "--seeds", "0", "1", "2"]),
        ("Tables 1 and 4: disassembly, all architectures", ["disassembly.py", "accuracy", "--seeds", "0", "1"]),
        ("Tables 2 and 5: assembly", ["assembly.py", "--archs", "lenet5", *LARGE]),
        ("Fig. 4: sweeps", ["sweeps.py", "--archs", "lenet5", "vgg16"]),
        ("NAD mask search", ["nad.py", "--archs", "lenet5", "vgg16", "--variants", "--linear",
                                                 "--threads", "1"]),
        ("NAD analyses, all three methods", ["analysis.py", "--archs", "lenet5", *LARGE]),
        ("decoupling: ResNet-20", ["decoupling.py", *DECOUPLE_RESNET20]),
        ("decoupling: ResNet-20, W_cla heads started as class readouts", ["decoupling.py", *DECOUPLE_RESNET20_READOUT]),
        ("decoupling: VGG-16", ["decoupling.py", *DECOUPLE_VGG16]),
        ("decoupling: VGG-16, settled 2 epochs", ["decoupling.py", *DECOUPLE_VGG16, "--settle-epochs", "2"]),
        ("decoupling: VGG-16 on all images, settled 3 epochs", ["decoupling.py", *DECOUPLE_VGG16_ALL]),
        ("decoupling ablation (Table 7, Fig. 12)", ["decoupling_ablation.py"]),
        ("conv time at batch 1 against the channels computed", ["conv_batch1.py"]),
        ("adversarial detection: ResNet-20", ["adversarial.py", "--model", DECOUPLED_RESNET20, "--name", "resnet20"]),
        ("adversarial detection: ResNet-20 with readout heads",
         ["adversarial.py", "--model", DECOUPLED_RESNET20_READOUT, "--name", "resnet20-readout"]),
        ("adversarial detection: ResNet-20 with readout heads, ε = 8/255",
         ["adversarial.py", "--model", DECOUPLED_RESNET20_READOUT, "--name", "resnet20-readout-eps8",
          "--epsilon", "0.03137"]),
        ("adversarial detection: VGG-16", ["adversarial.py", "--model", DECOUPLED_VGG16, "--name", "vgg16-fashion",
                                           "--pgd-steps", "5"]),
        ("adversarial detection: VGG-16, settled", ["adversarial.py", "--model", DECOUPLED_VGG16_SETTLED, "--name",
                                                    "vgg16-fashion-settle2", "--pgd-steps", "5"]),
        ("adversarial detection: VGG-16 on all images, settled 3 epochs",
         ["adversarial.py", "--model", DECOUPLED_VGG16_ALL, "--name", "vgg16-fashion-settle3", "--pgd-steps", "5"]),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    args = parser.parse_args()
    steps = []
    start = time.perf_counter()
    for title, command in PROFILES[args.profile]:
        print(f"== {title}: {' '.join(command)}", file=sys.stderr, flush=True)
        step_start = time.perf_counter()
        result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / command[0]), *command[1:]],
                                cwd=ROOT, stdout=subprocess.DEVNULL)
        steps.append({"step": title, "command": " ".join(["benchmarks/" + command[0], *command[1:]]),
                      "seconds": time.perf_counter() - step_start, "exit_code": result.returncode})
        if result.returncode != 0:
            break
    total = time.perf_counter() - start
    write_json(f"suite-{args.profile}", {"environment": environment(), "profile": args.profile, "steps": steps,
                                         "seconds": total})
    status = {s["step"]: "ok" if s["exit_code"] == 0 else f"failed (exit {s['exit_code']})" for s in steps}
    rows = "\n".join(f"| {s['step']} | `{s['command']}` | {s['seconds'] / 60:.1f} | {status[s['step']]} |"
                     for s in steps)
    update_report(f"Benchmark suite, profile {args.profile}",
                  f"Command: `make bench PROFILE={args.profile}`. Wall time of this run (cached cells are reused, so "
                  "a rerun after a complete run takes seconds; the first run's times are what a fresh machine "
                  "needs):\n\n| step | command | minutes | status |\n|---|---|---|---|\n" + rows
                  + f"\n\nTotal: {total / 60:.1f} min. Environment: {environment()}.")
    failed = [s for s in steps if s["exit_code"] != 0]
    if failed:
        sys.exit(f"step '{failed[0]['step']}' failed with exit code {failed[0]['exit_code']}")


if __name__ == "__main__":
    main()
