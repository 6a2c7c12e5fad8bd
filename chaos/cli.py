"""`chaos`: run, validate, golden record, report, replay, state (and soak, see chaos.soak; selftest, see
chaos.selftest).

Exit codes: 0 pass, 1 a check failed, 2 bad input, 3 infrastructure error (or a fault that did not land, or
a run stopped by Ctrl-C: its partial report is written), 130 a second Ctrl-C abandoned the report.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from chaos.errors import EXIT_INFRA, EXIT_INPUT, EXIT_INTERRUPTED, InfrastructureError, InputError
from chaos.safe_files import printable


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chaos", description="Fault-injection resilience tester for large-model training.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a scenario and give a verdict against the golden")
    run.add_argument("scenario", type=Path, help=SCENARIO_HELP)
    run.add_argument("--out", type=Path, help="run directory (default: runs/<date>-<name>)")
    run.add_argument("--seed", type=int, help="seed for random faults (overrides the scenario's)")
    run.add_argument("--golden", type=Path, help="golden file to compare against (Megatron format)")
    run.add_argument("--golden-cache", type=Path, help="directory where recorded goldens are kept and looked up")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario key (dotted)")
    run.add_argument("--repeats", type=_repeats, metavar="R",
                     help="uninterrupted runs a golden recorded first is made of (default: 1 where the numerics are "
                          "pinned bitwise, else 2)")

    validate = commands.add_parser("validate", help="check scenario files without running anything")
    validate.add_argument("scenarios", type=Path, nargs="+", help="scenario files (YAML) to check")

    plan = commands.add_parser("plan", help="print the faults a scenario resolves to (random ones drawn), without "
                                            "running anything")
    plan.add_argument("scenario", type=Path, help=SCENARIO_HELP)
    plan.add_argument("--seed", type=int, help="seed for random faults (overrides the scenario's)")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario key (dotted)")
    plan.add_argument("--json", action="store_true", help="print the plan as a run directory's plan.json holds it")

    golden = commands.add_parser("golden", help="goldens")
    golden_commands = golden.add_subparsers(dest="golden_command", required=True)
    record = golden_commands.add_parser("record", help="run the workload uninterrupted and write its golden")
    record.add_argument("scenario", type=Path, help=SCENARIO_HELP + "; its faults are ignored")
    record.add_argument("--out", type=Path, help="golden file (default: goldens/<preset>-<fingerprint>.json)")
    record.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    record.add_argument("--repeats", type=_repeats, metavar="R",
                        help="run the job R times uninterrupted and keep the spread between them (default: 1 where "
                             "the numerics are pinned bitwise, e.g. chaos's CPU trainer; else 2)")

    check = golden_commands.add_parser("check", help="record the workload here once and compare it bitwise with a "
                                                     "golden: does that golden hold on this machine?")
    check.add_argument("scenario", type=Path, help=SCENARIO_HELP + "; its faults are ignored")
    check.add_argument("--golden", type=Path, help="the golden to check (default: the one in goldens/ recorded for "
                                                   "the workload, on whatever machine)")
    check.add_argument("--out", type=Path, help="where the recording goes (default: a temporary directory)")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    state = commands.add_parser("state", help="read a checkpoint's state from outside (and compare it with another)")
    state.add_argument("checkpoint", type=Path, help="a checkpoint directory (iter_0000008/): DCP or Megatron's torch")
    state.add_argument("--against", type=Path, help="another checkpoint of the same job: list the entries that differ")
    state.add_argument("--limit", type=int, default=40, help="differing entries to list (default 40)")

    report = commands.add_parser("report", help="re-check a stored run and re-render its reports")
    report.add_argument("run_dir", type=Path, help="a run directory (what chaos run --out names)")

    replay = commands.add_parser("replay", help="re-run the exact landed schedule of an earlier run")
    replay.add_argument("run_dir", type=Path, help="the earlier run's directory (its scenario.yaml and plan.json)")
    replay.add_argument("--out", type=Path, help="run directory of the replay (default: RUN_DIR-replay)")

    soak = commands.add_parser("soak", help="seeded random faults, cycle after cycle, shrinking any failure")
    from chaos import soak as soak_module

    soak_module.add_arguments(soak)

    selftest = commands.add_parser("selftest", help="plant resume bugs in the job and say which the checks catch")
    from chaos import selftest as selftest_module

    selftest_module.add_arguments(selftest)
    return parser


SCENARIO_HELP = ("a scenario file (YAML): the workload, the faults, the restart policy and the checks "
                 "(docs/scenarios.md; `chaos validate` checks one)")


def _version() -> str:
    from importlib import metadata

    try:
        version = metadata.version("chaos")
    except metadata.PackageNotFoundError:
        version = "unknown (not installed: run from a source tree)"
    return f"chaos {version} (Python {sys.version.split()[0]})"


def _repeats(text: str) -> int:
    from chaos.scenario.model import MAX_GOLDEN_REPEATS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of runs, got {text!r}") from None
    if not 1 <= value <= MAX_GOLDEN_REPEATS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_GOLDEN_REPEATS} runs, got {value}")
    return value


def _print_result(result) -> int:
    print(result.summary)  # ends with the run directory
    return result.exit_code


class _ReaderMayLeave:
    """stdout/stderr for `chaos ... | head`: when the reader goes away, further output goes to /dev/null
    instead of raising BrokenPipeError in the middle of a run (its ranks, checks and report still finish)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the real command line (tests pass argv and their own streams)
        sys.stdout, sys.stderr = _ReaderMayLeave(sys.stdout), _ReaderMayLeave(sys.stderr)
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except InputError as error:  # printable: a message may quote a file someone else prepared
        print(f"chaos: {printable(error)}", file=sys.stderr)
        return EXIT_INPUT
    except InfrastructureError as error:
        print(f"chaos: infrastructure error: {printable(error)}", file=sys.stderr)
        return EXIT_INFRA
    except KeyboardInterrupt:  # a second Ctrl-C while the report was written (see runner), or outside a run
        print("chaos: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _dispatch(args) -> int:
    from chaos.scenario import load_scenario, parse_overrides

    if args.command == "state":
        return _state(args)
    if args.command == "validate":
        from chaos.schedule import plan_faults

        invalid = 0
        for path in args.scenarios:  # every file is answered for, not only those before the first bad one
            try:
                scenario = load_scenario(path)
                plan = plan_faults(scenario)
            except InputError as error:
                invalid += 1
                print(f"chaos: {printable(error)}", file=sys.stderr)
                continue
            print(f"{path}: ok ({scenario.world_size} ranks, {len(plan)} planned faults, checks: "
                  f"{', '.join(scenario.checks)})")
        if len(args.scenarios) > 1:
            print(f"{len(args.scenarios) - invalid} of {len(args.scenarios)} valid", file=sys.stderr)
        return EXIT_INPUT if invalid else 0
    if args.command == "plan":
        return _plan(args)
    # imported only past validate: the runner pulls in the supervisor, checkers and reports
    from chaos import runner
    from chaos.progress import ProgressLine

    if args.command == "run":
        scenario = load_scenario(args.scenario, parse_overrides(args.set))
        progress = ProgressLine()
        try:
            result = runner.run_scenario(scenario, out_dir=args.out, seed=args.seed, golden_path=args.golden,
                                         golden_cache=args.golden_cache, on_progress=progress, repeats=args.repeats)
        finally:
            progress.close()
        return _print_result(result)
    if args.command == "golden":
        # the golden run injects no faults, so they are dropped before validation: overrides such as a
        # shorter workload.train_iters must not be rejected for faults that would never run
        scenario = load_scenario(args.scenario, {**parse_overrides(args.set), "faults": []})
        if args.golden_command == "check":
            from chaos.golden_check import check_golden

            if args.golden is not None and not args.golden.is_file():
                raise InputError(str(args.golden), "--golden", "no such file")
            checked = check_golden(scenario, args.golden, args.out, say=print)
            print(checked.summary())
            return 0 if checked.bitwise else 1
        out = args.out or (runner.REPO_ROOT / "goldens" / runner.golden_file_name(scenario))
        # timestamped like a run directory: a reused one would resume from the old run's checkpoints
        work_dir = runner.default_run_dir(scenario, prefix="golden-")
        golden = runner.record_golden(scenario, out, work_dir, repeats=args.repeats, say=print)
        rule = runner.rule_for(scenario, golden)
        print(f"comparison rule for runs against it: {rule.why}")
        print(f"checkpoint state: {runner.state_rule_note(golden)}")
        print(f"golden written: {out} (+ {out.with_suffix('').name}.meta.json); run directory {work_dir}")
        return 0
    if args.command == "report":
        for name in ("scenario.yaml", "plan.json"):
            if not (args.run_dir / name).is_file():
                raise InputError(str(args.run_dir), "", f"not a complete chaos run directory (no {name})")
        return _print_result(runner.analyze(args.run_dir))
    if args.command == "replay":
        return _print_result(runner.replay(args.run_dir, args.out))
    if args.command == "soak":
        from chaos import soak as soak_module

        return soak_module.main(args)
    if args.command == "selftest":
        from chaos import selftest as selftest_module

        return selftest_module.main(args)
    raise AssertionError(args.command)


def _plan(args) -> int:
    """`chaos plan SCENARIO`: the concrete faults a run would get (plan.json), nothing launched."""
    import dataclasses

    from chaos.scenario import load_scenario, parse_overrides
    from chaos.schedule import plan_faults, plan_to_json

    scenario = load_scenario(args.scenario, parse_overrides(args.set))
    if args.seed is not None:
        scenario = dataclasses.replace(scenario, seed=args.seed)
    plan = plan_faults(scenario)
    if args.json:
        print(plan_to_json(plan), end="")
        return 0
    print(f"{scenario.name}: {len(plan)} planned fault(s), seed {scenario.seed}, {scenario.world_size} ranks, "
          f"{scenario.train_iters} steps")
    for fault in plan:
        print(f"  {printable(fault.describe())}")
    return 0


def _state(args) -> int:
    """`chaos state DIR [--against OTHER]`: what chaos.state reads in a checkpoint; exit 1 when OTHER differs."""
    from chaos.state.checkpoint import UnsupportedCheckpoint
    from chaos.state.entries import CATEGORIES, describe
    from chaos.state.files import CheckpointDamage
    from chaos.state.fingerprint import read_state

    try:
        result = read_state(args.checkpoint, [args.against] if args.against else [])
    except (CheckpointDamage, UnsupportedCheckpoint) as error:
        print(f"chaos: {args.checkpoint}: {error}", file=sys.stderr)
        return EXIT_INFRA
    fingerprint = result.fingerprint
    counts: dict[str, int] = {}
    for entry in fingerprint.entries.values():
        counts[entry.category] = counts.get(entry.category, 0) + 1
    print(f"{args.checkpoint}: {fingerprint.form}, {len(fingerprint.entries)} entries ("
          + ", ".join(f"{c} {counts[c]}" for c in CATEGORIES if c in counts) + f"), {fingerprint.bytes_read / 1e6:.1f} MB "
          f"read in {fingerprint.seconds:.2f} s")
    if not args.against:
        return 0
    differing = [(key, d[0]) for key, d in result.spreads.items() if d[0] != 0.0]
    for key, distance in differing[:args.limit]:
        entry = fingerprint.entries.get(key)
        kind = entry.kind if entry else "value"
        how = distance if isinstance(distance, str) else f"relative L2 distance {distance:.3g}"
        print(f"  {entry.category if entry else '?':13s} {describe(key, kind)}: {how}")
    if len(differing) > args.limit:
        print(f"  ... and {len(differing) - args.limit} more")
    print(f"{len(differing)} of {len(result.spreads)} entries differ from {args.against}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
