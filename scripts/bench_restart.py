#!/usr/bin/env python3
"""Restarts, cold against warm (restart.warm), measured side by side in one run on the flagship workload
(gpt3 tiny_cpu, TP2 x DP2 on 4 ranks, committed golden):

  (a) restart to first resumed step: a scenario whose every attempt but the last is SIGKILLed (rank 1,
      mid-backward, one step further each time), run with cold and with warm restarts, alternately,
      --runs times each; the median over all restarts of each mode and the ratio cold / warm;
  (b) soak throughput: `chaos soak scenarios/random_seeded.yaml` for --cycles cycles each way (same seeds),
      verified faults (landed, in cycles that passed) per hour of soaking, and the ratio;
  (c) wall time of the flagship scenario: as `scripts/demo.sh` runs it (restart.warm auto), cold and warm.

Every run must pass (a failing or erroring run is reported and stops the benchmark: its timings would not
be restarts of a correct run). Usage: scripts/bench_restart.py [--runs 1] [--restarts 5] [--cycles 3]
Default run: ~17 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from chaos.plan import cores_for_warm_spares  # noqa: E402
from chaos.runner import run_scenario  # noqa: E402
from chaos.scenario import load_scenario, load_scenario_text  # noqa: E402

FLAGSHIP = REPO / "scenarios" / "gpt3_mcore_tp2_zero3_resume_fsdp_dtensor.yaml"


def flagship_world_size() -> int:
    return int(load_scenario(FLAGSHIP).workload_mapping["world_size"])


def restart_scenario(restarts: int, warm: bool):
    faults = "".join(f"""
  - at: {{step: {2 + 2 * i}, phase: backward, attempt: {i + 1}}}
    target: {{rank: 1}}
    signal: SIGKILL""" for i in range(restarts))
    workload = load_scenario(FLAGSHIP).workload_mapping
    return load_scenario_text(f"""
name: bench_restart_{'warm' if warm else 'cold'}
workload: {json.dumps(dict(workload))}
restart: {{max_restarts: {restarts}, warm: {str(warm).lower()}}}
faults:{faults}
""", str(REPO / "scenarios" / "bench_restart.yaml"))


def restart_times(out: Path, restarts: int, warm: bool, goldens: Path) -> list[float]:
    result = run_scenario(restart_scenario(restarts, warm), out_dir=out, golden_cache=goldens, say=lambda text: None)
    if result.verdict != "pass":
        raise SystemExit(f"{'warm' if warm else 'cold'} run did not pass:\n{result.summary}")
    return [t["seconds"] for t in result.report["timings"]["restart_to_first_resumed_step_s"]]


def soak(out: Path, cycles: int, warm: bool, goldens: Path) -> tuple[int, float, dict]:
    command = [sys.executable, "-m", "chaos.cli", "soak", str(REPO / "scenarios" / "random_seeded.yaml"),
               "--cycles", str(cycles), "--seed", "500", "--keep-going", "--out", str(out),
               "--set", f"restart.warm={str(warm).lower()}", "--golden-cache", str(goldens)]
    subprocess.run(command, cwd=REPO, check=False, stdout=subprocess.DEVNULL)
    report = json.loads((out / "soak.json").read_text())
    verified = sum(c["faults_landed"] for c in report["cycles"] if c["verdict"] == "pass")
    return verified, report["elapsed_s"], report["verdicts"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="runs of the restart scenario per mode")
    parser.add_argument("--restarts", type=int, default=5, help="restarts per run")
    parser.add_argument("--cycles", type=int, default=3, help="soak cycles per mode (0: skip the soak)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chaos-bench-restart-") as tmp:
        root = Path(tmp)
        goldens = root / "goldens"  # where no committed golden fits this machine, one is recorded once
        times: dict[bool, list[float]] = {True: [], False: []}
        for run in range(args.runs):
            for warm in (False, True):
                times[warm] += restart_times(root / f"restart-{warm}-{run}", args.restarts, warm, goldens)
        cold, warm = statistics.median(times[False]), statistics.median(times[True])
        print(f"(a) restart to first resumed step, {len(times[False])} cold and {len(times[True])} warm restarts:")
        print(f"    cold median {cold:.2f} s {sorted(round(t, 2) for t in times[False])}")
        print(f"    warm median {warm:.2f} s {sorted(round(t, 2) for t in times[True])}")
        print(f"    cold / warm = {cold / warm:.2f}x")
        if args.cycles:
            rates = {}
            for mode in (False, True):
                verified, elapsed, verdicts = soak(root / f"soak-{mode}", args.cycles, mode, goldens)
                rates[mode] = verified / elapsed * 3600
                print(f"(b) soak {'warm' if mode else 'cold'}: {args.cycles} cycles {verdicts}, {verified} verified "
                      f"faults in {elapsed:.0f} s = {rates[mode]:.0f} verified faults/hour")
            print(f"    warm / cold = {rates[True] / rates[False]:.2f}x")
        for mode in ("auto", "false", "true"):
            started = time.monotonic()
            flagship = run_scenario(load_scenario(FLAGSHIP, {"restart.warm": mode}), out_dir=root / f"flagship-{mode}",
                                    golden_cache=goldens, say=lambda text: None)
            if mode == "auto":
                chosen = "warm" if cores_for_warm_spares(flagship_world_size()) else "cold"
                label = f"as scripts/demo.sh runs it (restart.warm auto: {chosen} here)"
            else:
                label = "warm restarts" if mode == "true" else "cold restarts"
            print(f"(c) flagship scenario, {label}: {flagship.verdict}, {time.monotonic() - started:.1f} s "
                  f"(golden recorded first: {flagship.golden.recorded_here if flagship.golden else None})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
