#!/usr/bin/env python3
"""What comparing checkpoint state from outside costs (chaos.state), measured in one run:

1. Read rate: a DCP checkpoint of --size-mb (fp32 and bf16 tensors, as a trainer writes them with
   torch.distributed.checkpoint) fingerprinted by chaos.state (torch-free, streamed), against two baselines
   read in the same run: torch's own DCP load into preallocated tensors (no process group), and sha256 over
   the files' raw bytes (the floor: reading and hashing every byte once). Medians of --repeat reads, page
   cache warm (the check reads checkpoints a run has just written).
2. Added time per run: the flagship scenario (scripts/demo.sh's) run once against a golden recorded here, then
   its analysis (`chaos report`) timed with every check and without checkpoint_state and final_state.

    python scripts/bench_state.py [--size-mb 512] [--repeat 3] [--skip-flagship]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_checkpoint(directory: Path, size_mb: int) -> int:
    import torch
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    state, total, n = {}, 0, 0
    while total < size_mb << 20:
        rows = 1024 * (1 + n % 4)
        dtype = torch.bfloat16 if n % 3 == 2 else torch.float32
        tensor = torch.randn(rows, 1024).to(dtype)
        state[f"model.layers.{n}.weight"] = tensor
        total += tensor.numel() * tensor.element_size()
        n += 1
    state["iteration"] = 100
    dcp.save(state, checkpoint_id=str(directory), no_dist=True)
    return total


def median_seconds(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def read_rates(directory: Path, nbytes: int, repeat: int) -> None:
    import torch
    import torch.distributed.checkpoint as dcp

    from chaos.state.fingerprint import read_state

    def chaos_read():
        read_state(directory)

    metadata = dcp.FileSystemReader(str(directory)).read_metadata()
    target = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype)
              for k, m in metadata.state_dict_metadata.items() if hasattr(m, "size")}

    def torch_load():
        dcp.load(target, checkpoint_id=str(directory), no_dist=True)

    def raw_sha256():
        for path in sorted(directory.iterdir()):
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(16 << 20), b""):
                    digest.update(block)

    raw_sha256()  # warm the page cache
    rows = [("chaos.state fingerprint (hash, norm, counts)", median_seconds(chaos_read, repeat)),
            ("torch DCP load (baseline)", median_seconds(torch_load, repeat)),
            ("sha256 of the raw files (floor)", median_seconds(raw_sha256, repeat))]
    print(f"checkpoint: {nbytes / 1e6:.0f} MB of tensors, {len(target)} tensors, median of {repeat} reads")
    floor = rows[2][1]
    for name, seconds in rows:
        print(f"  {name:48s} {seconds:7.3f} s  {nbytes / 1e6 / seconds:8.1f} MB/s  x{seconds / floor:.2f} of the floor")


def flagship_added_time(repeat: int) -> None:
    from chaos import runner
    from chaos.scenario import load_scenario

    scenario = load_scenario(REPO / "scenarios" / "gpt3_mcore_tp2_zero3_resume_fsdp_dtensor.yaml")
    with tempfile.TemporaryDirectory(prefix="chaos-bench-state-") as scratch:
        scratch = Path(scratch)
        quiet = lambda text: None  # noqa: E731
        result = runner.run_scenario(scenario, out_dir=scratch / "run", golden_cache=scratch / "goldens", say=quiet)
        print(f"flagship: verdict {result.verdict}, golden recorded here ({result.golden.path.name})")
        without = dataclasses.replace(scenario, checks=tuple(c for c in scenario.checks
                                                             if c not in ("checkpoint_state", "final_state")))
        full = median_seconds(lambda: runner.analyze(scratch / "run", scenario=scenario), repeat)
        lean = median_seconds(lambda: runner.analyze(scratch / "run", scenario=without), repeat)
        state = next(c for c in result.checks if c["name"] == "checkpoint_state")
        read = state["evidence"].get("read", {})
        print(f"  analysis with every check      {full:6.2f} s (median of {repeat})")
        print(f"  without the two state checks   {lean:6.2f} s")
        print(f"  added per run                  {full - lean:6.2f} s  ({read.get('bytes', 0) / 1e6:.0f} MB of "
              f"checkpoints read, {read.get('mb_per_s')} MB/s inside the check)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-flagship", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chaos-bench-state-") as scratch:
        directory = Path(scratch) / "iter_0000100"
        nbytes = write_checkpoint(directory, args.size_mb)
        read_rates(directory, nbytes, args.repeat)
    if not args.skip_flagship:
        flagship_added_time(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
