"""`chaos soak`: the scenario again and again under seeded random faults, until a duration or a number of
cycles is spent; every failure shrunk to a minimal scenario that `chaos run` reproduces.

    chaos soak scenarios/node_kill.yaml --cycles 20 --seed 100 --out runs/soak-node-kill --keep-going

Cycle i runs with seed S + i, so `--seed S` names the whole soak. The package's parts: cycles (what a
cycle runs; its faults are drawn by chaos.schedule.soak_draws), loop (cycles, state, resume), shrink (minimal
reproducers), stats + report (soak.json, soak.html, junit.xml).
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path

from chaos.errors import InputError
from chaos.soak.loop import STATE_FILE, SoakOptions, SoakOutcome, read_state, run_soak
from chaos.schedule.soak_draws import DEFAULT_SIGNALS, ScheduleOptions, random_faults
from chaos.soak.cycles import cycle_scenario
from chaos.soak.shrink import DEFAULT_SHRINK_BUDGET, shrink

__all__ = ["DEFAULT_SIGNALS", "STATE_FILE", "ScheduleOptions", "SoakOptions", "SoakOutcome", "add_arguments",
           "cycle_scenario", "main", "parse_duration", "random_faults", "read_state", "run_soak", "shrink"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'8h', '90m', '1h30m', '45s', '2d' -> seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip().replace(" ", ""):
        raise InputError("--duration", text, "expected a duration such as 8h, 90m, 1h30m or 45s")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", type=Path, help="a scenario file (YAML) whose workload is soaked: its `random:` "
                                                     "entries drawn anew each cycle, else its faults replaced by "
                                                     "seeded random ones")
    how_long = parser.add_mutually_exclusive_group(required=True)
    how_long.add_argument("--duration", help="soak this long (8h, 90m, 1h30m); counts only time spent soaking")
    how_long.add_argument("--cycles", type=int, help="run this many cycles")
    parser.add_argument("--seed", type=int, help="cycle i uses seed + i (default: the scenario's seed)")
    parser.add_argument("--out", type=Path, help="soak directory (default runs/soak/<date>-<name>); the same --out "
                                                 "continues an interrupted soak")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--stop-on-failure", dest="stop_on_failure", action="store_true", default=True,
                      help="stop after the first failing cycle, once it is shrunk (default)")
    stop.add_argument("--keep-going", dest="stop_on_failure", action="store_false",
                      help="shrink each failure and go on with the next cycle")
    parser.add_argument("--shrink-budget", type=int, default=DEFAULT_SHRINK_BUDGET,
                        help=f"most candidate runs when shrinking one failure (default {DEFAULT_SHRINK_BUDGET}; "
                             "each is a real run)")
    parser.add_argument("--signals", default=",".join(DEFAULT_SIGNALS),
                        help=f"signals to draw from, comma-separated (default {','.join(DEFAULT_SIGNALS)})")
    parser.add_argument("--max-faults", type=int, default=ScheduleOptions.max_faults,
                        help="most faults per cycle (also capped by restart.max_restarts)")
    parser.add_argument("--mtbf-s", type=float, help="wall-clock faults with this mean time between failures "
                                                     "instead of step + phase faults")
    parser.add_argument("--golden-cache", type=Path, help="where goldens are kept (default OUT/goldens)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario key (dotted), e.g. workload.train_iters=8")


def options_from_args(args: argparse.Namespace) -> SoakOptions:
    out = args.out
    if out is None:
        out = Path("runs") / "soak" / f"{datetime.now():%Y%m%d-%H%M%S}-{Path(args.scenario).stem}"
    schedule = ScheduleOptions(signals=tuple(s.strip() for s in args.signals.split(",") if s.strip()),
                               max_faults=args.max_faults, mtbf_s=args.mtbf_s)
    return SoakOptions(scenario=Path(args.scenario), out=out, seed=args.seed, cycles=args.cycles,
                       duration_s=parse_duration(args.duration) if args.duration else None,
                       stop_on_failure=args.stop_on_failure, shrink_budget=args.shrink_budget, schedule=schedule,
                       overrides=tuple(args.set), golden_cache=args.golden_cache)


def main(args: argparse.Namespace) -> int:
    """Exit 0 every cycle passed, 1 a cycle failed (a check), 3 a cycle errored, 130 interrupted."""
    options = options_from_args(args)
    print(f"chaos soak: {options.scenario} -> {options.out}")
    try:
        return run_soak(options).exit_code
    except KeyboardInterrupt as interrupt:
        print(f"chaos soak: {interrupt or 'interrupted'}")
        return 130
