#!/usr/bin/env python3
"""Probe overhead: what the probe adds to a training step (target: under 1% of step time).

Measured in one run, on this machine:
  1. the workload's median step time (TP2 x DP2 on CPU, from the history's step_begin/step_end),
  2. the probe's own cost for one step's calls (step_begin, data, forward/backward per micro batch,
     optimizer, metrics, step_end), median over many repetitions, writing a real history file,
  3. an A/B of whole runs with the probe enabled vs disabled (median wall time; noisy, shown for honesty).
Usage: scripts/bench_probe.py [--steps 10] [--ab-runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from chaos.probe import Probe  # noqa: E402
from chaos.workloads.gpt3.config import GPT3Config  # noqa: E402
from workload_runs import events, run_attempt  # noqa: E402


def probe_cost_per_step(micro_batches: int, repetitions: int = 3000) -> float:
    with tempfile.TemporaryDirectory() as directory:
        probe = Probe(Path(directory), rank=0, attempt=1, control_socket=None)
        samples = []
        for step in range(1, repetitions + 1):
            start = time.perf_counter()
            probe.step_begin(step)
            with probe.phase("data", step):
                pass
            for index in range(1, micro_batches + 1):
                with probe.phase("forward", step, index=index):
                    pass
                with probe.phase("backward", step, index=index):
                    pass
            with probe.phase("optimizer", step):
                pass
            probe.metrics(step, lm_loss=6.5, grad_norm=1.2, lr=1e-3, consumed_samples=step * 8, data_hash="0" * 16)
            probe.step_end(step)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--ab-runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        base = GPT3Config.from_mapping({"train_iters": args.steps, "save_interval": 1000}, "bench")
        run_dir = Path(scratch) / "measured"
        config = base.with_run_dir(run_dir)
        assert run_attempt(config, run_dir, 1) == [0] * config.world_size
        begins = {e["step"]: e["mono"] for e in events(run_dir, "step_begin", rank=0)}
        ends = {e["step"]: e["mono"] for e in events(run_dir, "step_end", rank=0)}
        step_times = [ends[s] - begins[s] for s in sorted(ends) if s > 1]  # step 1 warms up
        step_median = statistics.median(step_times)
        per_step = probe_cost_per_step(config.num_microbatches)
        print(f"workload step time (TP2xDP2, CPU, median of {len(step_times)}): {step_median * 1e3:9.3f} ms")
        print(f"probe cost per step ({config.num_microbatches} micro batches):     {per_step * 1e6:9.1f} us")
        print(f"probe overhead ratio:                           {per_step / step_median * 100:9.4f} %  (target < 1%)")

        walls = {"enabled": [], "disabled": []}
        for index in range(args.ab_runs):
            for mode in ("enabled", "disabled"):
                ab_dir = Path(scratch) / f"ab-{mode}-{index}"
                ab_config = base.with_run_dir(ab_dir)
                start = time.monotonic()
                codes = run_attempt(ab_config, ab_dir, 1, disable_probe=(mode == "disabled"))
                walls[mode].append(time.monotonic() - start)
                assert codes == [0] * config.world_size
        if args.ab_runs:
            on, off = statistics.median(walls["enabled"]), statistics.median(walls["disabled"])
            print(f"whole run, probe enabled  (median of {args.ab_runs}): {on:8.2f} s")
            print(f"whole run, probe disabled (median of {args.ab_runs}): {off:8.2f} s")
            print(f"ratio enabled/disabled: {on / off:.4f} (includes start-up noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
