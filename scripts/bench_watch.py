#!/usr/bin/env python3
"""Checkpoint watcher latency: from a shard file's close() in a writer process to the watcher reporting it.

Two ways of running the watcher, as the supervisor would:
  inotify   a selectors loop on watcher.fileno() (timeout = the supervisor's tick), poll() when readable
  polling   poll() once per tick (50 ms, the supervisor's TICK_S), the stable-size rule
The writer is a separate process (as a trainer is) writing 4 KiB files at random intervals, so closes land
at random phases of the tick; it takes CLOCK_MONOTONIC (system-wide) just before each close(), so a
latency includes the close itself. Usage: scripts/bench_watch.py [--samples 60]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import selectors
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chaos.blackbox.checkpoint_watch import CheckpointWatcher  # noqa: E402

TICK_S = 0.05  # chaos.supervisor.attempt.TICK_S (not imported: the benchmark needs only the watcher)


def writer(directory: str, samples: int, seed: int, times) -> None:
    rng = random.Random(seed)
    for number in range(samples):
        time.sleep(rng.uniform(0.06, 0.14))  # not a multiple of the tick: closes land at every phase
        path = os.path.join(directory, f"__{number}_0.distcp")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"\x01" * 4096)
        before_close = time.monotonic()
        os.close(fd)
        times.put((path, before_close))
    times.put(None)


def measure(mode: str, samples: int) -> list[float]:
    with tempfile.TemporaryDirectory() as root:
        save = Path(root) / "ckpt"
        directory = save / "iter_0000001"
        directory.mkdir(parents=True)  # the baseline: a watched directory, the save under way
        watcher = CheckpointWatcher(save, use_inotify=mode == "inotify")
        assert watcher.mode == mode, watcher.fallback_reason
        context = multiprocessing.get_context("fork")
        times = context.Queue()
        process = context.Process(target=writer, args=(str(directory), samples, 1234, times))
        seen: dict[str, float] = {}
        selector = selectors.DefaultSelector()
        if mode == "inotify":
            selector.register(watcher.fileno(), selectors.EVENT_READ)
        process.start()
        deadline = time.monotonic() + samples * 0.14 + 10
        next_tick = time.monotonic()
        while len(seen) < samples and time.monotonic() < deadline:
            if mode == "inotify":
                selector.select(timeout=TICK_S)
            else:  # a fixed 50 ms schedule, like the supervisor's select timeout with nothing else to do
                next_tick += TICK_S
                time.sleep(max(0.0, next_tick - time.monotonic()))
            for event in watcher.poll():
                if event.phase == "checkpoint.shard":
                    seen[event.path] = event.mono
        process.join(timeout=10)
        closed = dict(iter(times.get, None))
        watcher.close()
        selector.close()
        missing = set(closed) - set(seen)
        if missing:
            raise SystemExit(f"{mode}: {len(missing)} of {samples} files never reported")
        return [(seen[path] - closed[path]) * 1000 for path in closed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60)
    args = parser.parse_args()
    results = {mode: measure(mode, args.samples) for mode in ("inotify", "polling")}
    row = "{:<14} {:>8} {:>11} {:>9} {:>9}"
    print(row.format("mode", "samples", "median ms", "p95 ms", "max ms"))
    stats = {}
    for mode, latencies in results.items():
        median, p95 = statistics.median(latencies), statistics.quantiles(latencies, n=20)[-1]
        stats[mode] = (median, p95)
        label = mode if mode == "inotify" else f"polling@{TICK_S * 1000:.0f}ms"
        print(row.format(label, len(latencies), f"{median:.3f}", f"{p95:.3f}", f"{max(latencies):.3f}"))
    print(f"polling / inotify: median x{stats['polling'][0] / stats['inotify'][0]:.0f}, "
          f"p95 x{stats['polling'][1] / stats['inotify'][1]:.0f}")


if __name__ == "__main__":
    main()
