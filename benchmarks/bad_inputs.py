"""The bad-input sweep (issue 27): every case of tests/bad_input_sweep.py, its outcome counted and recorded.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bad_inputs.py
    .venv/bin/python benchmarks/bad_inputs.py --match "export"      # only the cases whose note holds "export"

Builds small fixtures in a temporary folder (LeNet-5s trained for one epoch on 2,000 images, parts, a
parallel assembly, a decoupled model, masks, a user-built module and its part), then runs each case
in-process through ``mdakit.cli.run`` (a handful through ``python -m mdakit``) and classifies it: clean
error, ok, usage error (click's refusal of an unparsable value), traceback, wrong success, partial output,
input changed, unexpected failure, unclear error, hung. A full run writes benchmarks/results/bad_inputs.json
(every case: argv, expectation, outcome, stderr line, seconds) and the "Bad-input sweep" section of
benchmarks/RESULTS.md, and exits 1 when any run is a traceback, a wrong success, a partial output or a
changed input.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import ROOT, environment, update_report, write_json

sys.path.insert(0, str(ROOT / "tests"))

from bad_input_sweep import FAILURES, OUTCOMES, Result, all_cases, counts, run_sweep  # noqa: E402

RESULTS = "bad_inputs"
CLEAN = ("clean error", "ok")


def _progress(result: Result) -> None:
    mark = "" if result.outcome in CLEAN else f"  <-- {result.outcome}"
    print(f"{result.seconds:6.1f}s {result.outcome:15} {result.case.note}{mark}\n{'':23}{result.stderr_line[:200]}",
          file=sys.stderr, flush=True)


def _table(results: list[Result]) -> str:
    """Outcomes per verb, as a Markdown table with a total row."""
    shown = [o for o in OUTCOMES if any(r.outcome == o for r in results)]
    verbs = sorted({r.case.verb for r in results})
    rows = ["| verb | cases | " + " | ".join(shown) + " |", "|" + " --- |" * (len(shown) + 2)]
    for verb in [*verbs, "all"]:
        mine = [r for r in results if verb in ("all", r.case.verb)]
        per = Counter(r.outcome for r in mine)
        name = "**all**" if verb == "all" else f"`{verb}`"
        rows.append(f"| {name} | {len(mine)} | " + " | ".join(str(per[o]) for o in shown) + " |")
    return "\n".join(rows)


def _not_clean(results: list[Result]) -> str:
    lines = [f"- {r.outcome}: `{' '.join(r.case.argv)}` ({r.case.note}) → exit {r.code}: {r.stderr_line[:160]}"
             for r in results if r.outcome not in CLEAN]
    return "\n".join(lines) if lines else "(none)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--match", help="Run only the cases whose note holds this text (nothing is recorded).")
    parser.add_argument("--keep", type=Path, help="Build the fixtures and outputs here and keep them.")
    args = parser.parse_args()
    cases = [c for c in all_cases() if args.match is None or args.match in c.note]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mdakit-bad-inputs-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        results, fixture_seconds = run_sweep(root, cases, _progress)
    total = time.perf_counter() - start
    tally = counts(results)
    subprocess_runs = sum(r.case.subprocess for r in results)
    summary = (f"{len(results)} cases ({subprocess_runs} through `python -m mdakit`, the rest in-process through "
               f"`mdakit.cli.run`); fixtures {fixture_seconds:.0f} s, whole sweep {total:.0f} s.\n\n"
               + ", ".join(f"{o}: {n}" for o, n in tally.items()))
    table, not_clean = _table(results), _not_clean(results)
    print(f"\n{summary}\n\n{table}\n\nNot clean:\n{not_clean}")
    if args.match is None:
        env = environment()
        write_json(RESULTS, {"environment": env, "counts": tally, "fixture_seconds": round(fixture_seconds, 1),
                             "seconds": round(total, 1), "cases": [r.to_dict() for r in results]})
        update_report("Bad-input sweep", f"""\
`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bad_inputs.py` (issue 27; cases in tests/bad_input_sweep.py,
every run in benchmarks/results/bad_inputs.json). Each case expects an error (exit 2, exactly one
`mdakit: error:` line, no traceback, nothing new in the watched folders, every input byte-identical) or
success (exit 0). A *usage error* is click's own refusal of a value it cannot parse (exit 2, its usage box,
nothing written). Environment: {env['cpu']}, {env['cpus']} cores, {env['threads']} torch threads, Python
{env['python']}, torch {env['torch']}.

{summary}

{table}

Not clean:

{not_clean}
""")
    return 1 if any(tally[o] for o in FAILURES) else 0


if __name__ == "__main__":
    sys.exit(main())
