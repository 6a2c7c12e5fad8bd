#!/usr/bin/env python3
"""Restarts cold, from warm spares and forked from the zygote (restart.warm: false / true / fork), measured
side by side in one run on the flagship workload (gpt3 tiny_cpu, TP2 x DP2 on 4 ranks, committed golden):

  (a) restart to first resumed step: a scenario whose every attempt but the last is SIGKILLed (rank 1,
      mid-backward, one step further each time), run in each mode in turn, --runs times each; the median
      over all restarts of each mode and the ratios cold / mode;
  (b) soak throughput: `chaos soak scenarios/random_seeded.yaml` for --cycles cycles in each mode (same
      seeds), verified faults (landed, in cycles that passed) per hour of soaking, and the ratios;
  (c) wall time of the flagship scenario in each mode, and as `scripts/demo.sh` runs it (restart.warm auto).

Every run must pass (a failing or erroring run is reported and stops the benchmark: its timings would not
be restarts of a correct run). Usage: scripts/bench_restart.py [--runs 1] [--restarts 5] [--cycles 3]
Default run: ~15 min on 2 cores. --modes picks a subset (e.g. --modes false,fork).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from chaos.runner import run_scenario  # noqa: E402
from chaos.scenario import load_scenario, load_scenario_text  # noqa: E402

FLAGSHIP = REPO / "scenarios" / "gpt3_mcore_tp2_zero3_resume_fsdp_dtensor.yaml"


MODES = {"false": "cold", "true": "spare-warm", "fork": "fork"}


def restart_scenario(restarts: int, mode: str):
    faults = "".join(f"""
  - at: {{step: {2 + 2 * i}, phase: backward, attempt: {i + 1}}}
    target: {{rank: 1}}
    signal: SIGKILL""" for i in range(restarts))
    workload = load_scenario(FLAGSHIP).workload_mapping
    return load_scenario_text(f"""
name: bench_restart_{MODES[mode].replace('-', '_')}
workload: {json.dumps(dict(workload))}
restart: {{max_restarts: {restarts}, warm: {mode}}}
faults:{faults}
""", str(REPO / "scenarios" / "bench_restart.yaml"))


def restart_times(out: Path, restarts: int, mode: str, goldens: Path) -> tuple[list[float], list[dict]]:
    result = run_scenario(restart_scenario(restarts, mode), out_dir=out, golden_cache=goldens, say=lambda text: None)
    if result.verdict != "pass":
        raise SystemExit(f"{MODES[mode]} run did not pass:\n{result.summary}")
    rows = result.report["timings"]["restart_to_first_resumed_step_s"]
    return [t["seconds"] for t in rows], [t["breakdown"] for t in rows]


def soak(out: Path, cycles: int, mode: str, goldens: Path) -> tuple[int, float, dict]:
    command = [sys.executable, "-m", "chaos.cli", "soak", str(REPO / "scenarios" / "random_seeded.yaml"),
               "--cycles", str(cycles), "--seed", "500", "--keep-going", "--out", str(out),
               "--set", f"restart.warm={mode}", "--golden-cache", str(goldens)]
    subprocess.run(command, cwd=REPO, check=False, stdout=subprocess.DEVNULL)
    report = json.loads((out / "soak.json").read_text())
    verified = sum(c["faults_landed"] for c in report["cycles"] if c["verdict"] == "pass")
    return verified, report["elapsed_s"], report["verdicts"]


def median_breakdown(breakdowns: list[dict]) -> str:
    keys = [key for key in breakdowns[0]] if breakdowns else []
    return ", ".join(f"{key[:-2]} {statistics.median(b.get(key, 0.0) for b in breakdowns):.2f}" for key in keys)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="runs of the restart scenario per mode")
    parser.add_argument("--restarts", type=int, default=5, help="restarts per run")
    parser.add_argument("--cycles", type=int, default=3, help="soak cycles per mode (0: skip the soak)")
    parser.add_argument("--modes", default="false,true,fork", help="restart.warm values to compare, cold first")
    parser.add_argument("--no-flagship", action="store_true", help="skip (c)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if modes[0] != "false" or any(mode not in MODES for mode in modes):
        raise SystemExit(f"--modes: a comma-separated subset of {', '.join(MODES)}, starting with false (cold)")
    with tempfile.TemporaryDirectory(prefix="chaos-bench-restart-") as tmp:
        root = Path(tmp)
        goldens = root / "goldens"  # where no committed golden fits this machine, one is recorded once
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        parts: dict[str, list[dict]] = {mode: [] for mode in modes}
        for run in range(args.runs):
            for mode in modes:
                seconds, breakdowns = restart_times(root / f"restart-{mode}-{run}", args.restarts, mode, goldens)
                times[mode] += seconds
                parts[mode] += breakdowns
        cold = statistics.median(times["false"])
        print(f"(a) restart to first resumed step, {args.runs} x {args.restarts} restarts per mode "
              f"({os.cpu_count()} cores):")
        for mode in modes:
            median = statistics.median(times[mode])
            print(f"    {MODES[mode]:>10} median {median:.2f} s {sorted(round(t, 2) for t in times[mode])}; "
                  f"cold / {MODES[mode]} = {cold / median:.2f}x")
            print(f"    {'':>10} stages (median s): {median_breakdown(parts[mode])}")
        if args.cycles:
            rates = {}
            for mode in modes:
                verified, elapsed, verdicts = soak(root / f"soak-{mode}", args.cycles, mode, goldens)
                rates[mode] = verified / elapsed * 3600
                print(f"(b) soak {MODES[mode]}: {args.cycles} cycles {verdicts}, {verified} verified faults in "
                      f"{elapsed:.0f} s = {rates[mode]:.0f} verified faults/hour "
                      f"({rates[mode] / rates['false']:.2f}x cold)")
        if not args.no_flagship:
            for mode in ["auto", *modes]:
                started = time.monotonic()
                flagship = run_scenario(load_scenario(FLAGSHIP, {"restart.warm": mode}),
                                        out_dir=root / f"flagship-{mode}", golden_cache=goldens, say=lambda text: None)
                label = "as scripts/demo.sh runs it (restart.warm auto)" if mode == "auto" else MODES[mode]
                print(f"(c) flagship scenario, {label}: {flagship.verdict}, {time.monotonic() - started:.1f} s "
                      f"(golden recorded first: {flagship.golden.recorded_here if flagship.golden else None})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
