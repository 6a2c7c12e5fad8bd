#!/usr/bin/env python3
"""The job's own recovery against a cold restart by chaos, side by side in one run, on the same job: a
`restart.by: job` scenario (default `scenarios/torchrun_job_restarts.yaml`: gpt3 tiny_cpu, TP2 on 2 ranks
under torchrun; a SIGKILL mid-backward, a SIGKILL between checkpoint shard writes, a raised exception; or
`--scenario scenarios/ft_launcher_job_restarts.yaml`: ft_launcher, a SIGKILL, a rank whose heartbeats stop,
a stopped rank monitor) run as written (the job's launcher restarts its workers; chaos observes) and with
`restart.by: chaos` (chaos tears the launcher down and launches it again, cold: no warm spares),
alternately, --runs times each.

Per mode, over every recovery of every run: the median seconds from the fault to its detection (by the job:
the first line its launcher wrote about it; by chaos: its own death detection) and to the first step the
resumed attempt completed, and the ratio chaos / job. Every run must pass: a recovery of a wrong resume is not
a recovery worth timing. Usage: scripts/bench_recovery.py [--runs 3] [--scenario FILE]. ~40 s a run on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from chaos.runner import run_scenario  # noqa: E402
from chaos.scenario import apply_overrides, load_scenario  # noqa: E402

SCENARIO = REPO / "scenarios" / "torchrun_job_restarts.yaml"
MODES = ("job", "chaos")


def recoveries(path: Path, out: Path, by: str) -> list[dict]:
    written = load_scenario(path)
    scenario = apply_overrides(written, {"restart.by": by, "restart.warm": "false"})
    result = run_scenario(scenario, out_dir=out, golden_cache=REPO / "goldens", say=lambda text: None)
    if result.verdict != "pass":
        raise SystemExit(f"restart.by: {by} did not pass:\n{result.summary}")
    rows = result.report["timings"]["recovery_s"]
    if len(rows) != len(written.faults) or any(r["by"] != by for r in rows):
        raise SystemExit(f"restart.by: {by}: expected {len(written.faults)} recoveries by {by}, got {rows}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (alternating)")
    parser.add_argument("--scenario", type=Path, default=SCENARIO, help="a restart.by: job scenario, one recovery "
                                                                        "per fault")
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="chaos-bench-recovery-") as tmp:
        for run in range(args.runs):
            for mode in MODES:
                got = recoveries(args.scenario, Path(tmp) / f"{mode}-{run}", mode)
                rows[mode] += got
                print(f"run {run + 1} by {mode}: " + ", ".join(
                    f"{r['fault_id']} {r['detected_s']:.2f}/{r['first_resumed_step_s']:.2f}" for r in got), flush=True)
    print(f"\n{args.scenario.name}: median over {len(rows['job'])} recoveries per mode (s): fault -> detected, "
          f"fault -> first resumed step")
    medians = {}
    for mode in MODES:
        detected = statistics.median(r["detected_s"] for r in rows[mode])
        resumed = statistics.median(r["first_resumed_step_s"] for r in rows[mode])
        medians[mode] = resumed
        print(f"  by {mode:5}  detected {detected:6.3f}  first resumed step {resumed:6.2f}")
    print(f"  cold restart by chaos / the job's own recovery: {medians['chaos'] / medians['job']:.2f}x")


if __name__ == "__main__":
    main()
