"""`chaos selftest`: is my resilience test strong enough? Plants resume bugs in the user's own, unmodified job
and says which of them the scenario's checks catch.

    chaos selftest scenarios/megatron_lm/my_job.yaml [--bugs rng_not_restored,adam_step_reset] [--out DIR]

The package's parts: bugs (the catalog: what each bug does, what it stands for, when it cannot apply),
planted (the workload wrapped so its ranks load the injection layer; what the ranks said they did),
hook/ (the injection layer itself, run inside the ranks: a sitecustomize and chaos_plants, standard library
until the trainer imports torch), change (did the bug change the job, against the control run), outcome
(caught / missed / inert / not applicable, the score), run (the control, then one run per bug) and report
(summary, selftest.json, junit.xml, selftest.html).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from chaos.errors import InputError
from chaos.selftest.bugs import BUGS, BY_NAME, NAMES, Bug
from chaos.selftest.outcome import CAUGHT, ERROR, INERT, MISSED, NOT_APPLICABLE, UNDECIDED, BugOutcome, Score
from chaos.selftest.run import SelftestResult, bug_names, run_selftest

__all__ = ["BUGS", "BY_NAME", "CAUGHT", "ERROR", "INERT", "MISSED", "NAMES", "NOT_APPLICABLE", "UNDECIDED", "Bug",
           "BugOutcome", "Score", "SelftestResult", "add_arguments", "bug_names", "main", "run_selftest"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", type=Path, help="a scenario file that passes as it is (the control run)")
    parser.add_argument("--bugs", help=f"comma-separated bugs to plant (default all: {','.join(NAMES)})")
    parser.add_argument("--out", type=Path, help="selftest directory (default runs/selftest/<date>-<name>)")
    parser.add_argument("--seed", type=int, help="seed for random faults (overrides the scenario's)")
    parser.add_argument("--golden", type=Path, help="golden file to compare against (Megatron format)")
    parser.add_argument("--golden-cache", type=Path, help="directory where recorded goldens are kept and looked up")
    parser.add_argument("--min-score", type=_fraction, default=1.0, metavar="F",
                        help="pass when at least this fraction of the bugs that changed the job is caught "
                             "(default 1.0: every one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario key (dotted)")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def main(args: argparse.Namespace) -> int:
    """Exit 0 when the score reaches --min-score, 1 when it does not, 2 bad input, 3 when the selftest proved
    nothing (the control did not pass, a bug could not be planted, or no bug changed the job)."""
    from chaos.scenario import load_scenario, parse_overrides
    from chaos.selftest.report import format_summary

    bugs = bug_names(args.bugs)
    scenario = load_scenario(args.scenario, parse_overrides(args.set))
    out = args.out or Path("runs") / "selftest" / f"{datetime.now():%Y%m%d-%H%M%S}-{scenario.name}"
    if args.golden is not None and not Path(args.golden).is_file():
        raise InputError(str(args.golden), "--golden", "no such file")
    result = run_selftest(scenario, out, bugs, seed=args.seed, golden_path=args.golden, golden_cache=args.golden_cache,
                          min_score=args.min_score)
    print(format_summary(result))
    return result.exit_code
