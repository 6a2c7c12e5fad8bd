"""The soak loop: cycle after cycle of the scenario under a fresh seeded random schedule, a verdict per
cycle, every failure shrunk to a minimal reproducer, and state saved after each cycle so that a soak
killed halfway continues where it stopped when started again with the same --out.

Layout of OUT:
    soak-state.json        what is done (written atomically after every cycle)
    goldens/               the golden, recorded once for the whole soak
    cycle-NNN/             each cycle's run directory (report.json, plan.json, histories)
    shrink-NNN/            the shrinker's candidate runs for a failing cycle, and the confirming re-run
    minimal-NNN.yaml       the minimal failing scenario: `chaos run OUT/minimal-NNN.yaml` reproduces it
    soak.json, soak.html, junit.xml
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from chaos import safe_files
from chaos.errors import InputError
from chaos.runner import move_aside, stored_plan
from chaos.scenario import Scenario, dump_scenario, load_scenario, parse_overrides
from chaos.soak import report as soak_report
from chaos.schedule.soak_draws import ScheduleOptions
from chaos.soak.cycles import cycle_scenario, revalidate
from chaos.soak.shrink import DEFAULT_SHRINK_BUDGET, Plan, describe_plan, scenario_with_plan, shrink

STATE_FILE = "soak-state.json"
STATE_FORMAT = "chaos-soak-state/1"

Runner = Callable[..., Any]
"""chaos.runner.run_scenario or a stand-in: runner(scenario, out_dir=, seed=, golden_cache=, say=) returning
an object with .verdict, .run_dir and .report (the report.json dict)."""


@dataclass
class SoakOptions:
    scenario: Path
    out: Path
    seed: int | None = None
    """Cycle i runs with seed + i; None = the scenario's seed."""
    cycles: int | None = None
    duration_s: float | None = None
    """Soak time (cycles and shrinking; time the soak was not running does not count)."""
    stop_on_failure: bool = True
    shrink_budget: int = DEFAULT_SHRINK_BUDGET
    schedule: ScheduleOptions = field(default_factory=ScheduleOptions)
    overrides: tuple[str, ...] = ()
    golden_cache: Path | None = None
    """Default OUT/goldens: the golden is recorded by the first cycle and reused by every later one."""

    def __post_init__(self) -> None:
        if (self.cycles is None) == (self.duration_s is None):
            raise InputError("chaos soak", "--cycles/--duration", "give exactly one of --cycles N or --duration 8h")
        if self.cycles is not None and self.cycles < 1:
            raise InputError("chaos soak", "--cycles", f"expected an integer >= 1, got {self.cycles}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise InputError("chaos soak", "--duration", f"expected a positive duration, got {self.duration_s}s")
        if self.shrink_budget < 0:
            raise InputError("chaos soak", "--shrink-budget", f"expected an integer >= 0, got {self.shrink_budget}")


@dataclass
class SoakOutcome:
    out: Path
    state: dict[str, Any]
    exit_code: int
    stopped: str


def run_soak(options: SoakOptions, runner: Runner | None = None, say: Callable[[str], None] = print,
             clock: Callable[[], float] = time.monotonic) -> SoakOutcome:
    if runner is None:
        from chaos.runner import run_scenario as runner
    base = load_scenario(options.scenario, parse_overrides(options.overrides))
    seed = base.seed if options.seed is None else options.seed
    out = Path(options.out)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    golden_cache = Path(options.golden_cache) if options.golden_cache else out / "goldens"
    identity = _identity(base, seed, options.schedule)
    state = read_state(out)
    if state is None:
        state = {"format": STATE_FORMAT, "scenario": str(options.scenario), "identity": identity, "seed": seed,
                 "schedule": asdict(options.schedule), "next_cycle": 0, "elapsed_s": 0.0, "cycles": [],
                 "started": _now()}
        # at once, before the first cycle: a soak killed in it is continued (_check_out knows it by this file)
        safe_files.write_file(out / STATE_FILE, json.dumps(state, indent=1, default=str) + "\n", root=out)
    else:
        if state.get("identity") != identity:
            raise InputError(str(out / STATE_FILE), "identity",
                             "this --out holds a soak of another scenario, seed or schedule setting; give another "
                             "--out, or the same scenario and options to continue it")
        say(f"chaos soak: continuing {out}: {len(state['cycles'])} cycle(s) done, next is cycle {state['next_cycle']}")
    context = _Context(options, base, seed, out, golden_cache, runner, say)

    stopped = ""
    for record in state["cycles"]:  # a soak killed while shrinking shrinks again first
        if record.get("shrink") == "pending":
            started = clock()
            _shrink_failure(context, record)
            state["elapsed_s"] += clock() - started
            _save(out, state, base)
    while not stopped:
        cycle = state["next_cycle"]
        if options.cycles is not None and cycle >= options.cycles:
            stopped = f"{options.cycles} cycle(s) done"
            break
        if options.duration_s is not None and state["elapsed_s"] >= options.duration_s:
            stopped = f"duration {options.duration_s:g}s reached"
            break
        started = clock()
        record = _run_cycle(context, cycle)
        if record is None:
            _save(out, state, base)
            raise KeyboardInterrupt(f"soak interrupted in cycle {cycle}; start it again with --out {out} to continue")
        state["cycles"].append(record)
        state["next_cycle"] = cycle + 1
        state["elapsed_s"] += clock() - started
        _save(out, state, base)  # before shrinking: a soak killed while shrinking keeps the cycle's verdict
        if record["verdict"] == "fail" and record.get("shrink") == "pending":
            started = clock()
            _shrink_failure(context, record)
            state["elapsed_s"] += clock() - started
            _save(out, state, base)
        if record["verdict"] != "pass" and options.stop_on_failure:
            stopped = f"stopped at the first failing cycle ({cycle}); --keep-going goes on"
    state["stopped"] = stopped
    _save(out, state, base)
    verdicts = [r["verdict"] for r in state["cycles"]]
    exit_code = 1 if "fail" in verdicts else 3 if any(v != "pass" for v in verdicts) else 0
    say(f"chaos soak: {len(verdicts)} cycle(s): {verdicts.count('pass')} pass, {verdicts.count('fail')} fail, "
        f"{len(verdicts) - verdicts.count('pass') - verdicts.count('fail')} error; {stopped}")
    say(f"chaos soak: report {out / 'soak.html'} (+ soak.json, junit.xml)")
    return SoakOutcome(out, state, exit_code, stopped)


@dataclass
class _Context:
    options: SoakOptions
    base: Scenario
    seed: int
    out: Path
    golden_cache: Path
    runner: Runner
    say: Callable[[str], None]

    def cycle_seed(self, cycle: int) -> int:
        return self.seed + cycle

    def scenario(self, cycle: int) -> Scenario:
        return cycle_scenario(self.base, cycle, self.cycle_seed(cycle), self.options.schedule)

    def run(self, scenario: Scenario, run_dir: Path, seed: int | None):
        return self.runner(scenario, out_dir=run_dir, seed=seed, golden_cache=self.golden_cache,
                           say=lambda text: None)


def _run_cycle(context: _Context, cycle: int) -> dict[str, Any] | None:
    """Runs one cycle; None when the run was interrupted (Ctrl-C), so the cycle is done again next time."""
    seed = context.cycle_seed(cycle)
    scenario = context.scenario(cycle)
    run_dir = context.out / f"cycle-{cycle:03d}"
    # a directory left by a soak that died mid-cycle is kept as evidence; run_scenario moves it aside too,
    # but a stand-in runner (the `runner` argument) need not
    move_aside(run_dir)
    started = time.monotonic()
    result = context.run(scenario, run_dir, seed)
    report = result.report or {}
    infrastructure = (report.get("extra") or {}).get("infrastructure_error") or ""
    if _interrupted(result):
        return None
    failing = [{"name": c.get("name"), "status": c.get("status"), "detail": c.get("detail")}
               for c in report.get("checks") or [] if c.get("status") in ("fail", "error")]
    faults = report.get("faults") or []
    record = {"cycle": cycle, "seed": seed, "run_dir": run_dir.name, "verdict": result.verdict,
              "failing_checks": failing, "infrastructure_error": infrastructure or None,
              "faults_planned": len(faults), "faults_landed": sum(1 for f in faults if f.get("landed")),
              "duration_s": round(time.monotonic() - started, 3),
              "golden": (report.get("golden") or {}).get("path"),
              "shrink": "pending" if result.verdict == "fail" else None, "minimal": None}
    mark = result.verdict.upper()
    why = f" ({', '.join(c['name'] for c in failing)})" if failing else ""
    context.say(f"chaos soak: cycle {cycle} seed {seed}: {mark}{why}; {record['faults_landed']}/{len(faults)} "
                f"fault(s) landed; {run_dir}")
    return record


def _interrupted(result) -> bool:
    """A run stopped by Ctrl-C or SIGTERM to chaos: its verdict says nothing about the schedule."""
    report = result.report or {}
    return ((report.get("extra") or {}).get("infrastructure_error") or "").startswith("interrupted")


def _shrink_failure(context: _Context, record: dict[str, Any]) -> None:
    """Shrinks a failing cycle. Interrupted (Ctrl-C, SIGTERM) it stops at once, the cycle's shrink still
    `pending` in soak.json, so the next `chaos soak` with the same --out shrinks it again first: an
    interrupted candidate is not a passing one, and the candidates after it are not run."""
    cycle = record["cycle"]
    run_dir = context.out / record["run_dir"]
    cycle_scenario_ = context.scenario(cycle)
    plan = stored_plan(run_dir)
    failing = {c["name"] for c in record["failing_checks"] if c["status"] == "fail"}
    shrink_dir = context.out / f"shrink-{cycle:03d}"
    counter = iter(range(1, 10_000))

    def fails_same_way(result) -> tuple[bool, str]:
        if _interrupted(result):
            raise KeyboardInterrupt(f"soak interrupted while shrinking cycle {cycle}; start it again with "
                                    f"--out {context.out} to shrink it again and continue")
        names = {c.get("name") for c in (result.report or {}).get("checks") or [] if c.get("status") == "fail"}
        same = result.verdict == "fail" and bool(names & failing)
        return same, f"{result.verdict} ({', '.join(sorted(names)) or 'no failing check'})"

    def still_fails(candidate: Plan, description: str):
        try:
            scenario = revalidate(scenario_with_plan(cycle_scenario_, candidate), f"shrink candidate ({description})")
        except InputError:
            return None
        candidate_dir = shrink_dir / f"candidate-{next(counter):02d}"
        move_aside(candidate_dir)
        fails, detail = fails_same_way(context.run(scenario, candidate_dir, None))
        context.say(f"chaos soak:   shrink: {description}: {'still fails' if fails else 'passes'} -> {detail}")
        return fails, detail

    context.say(f"chaos soak: shrinking cycle {cycle} ({describe_plan(plan)}); at most "
                f"{context.options.shrink_budget} candidate run(s)")
    outcome = shrink(plan, cycle_scenario_, still_fails, context.options.shrink_budget)
    path = context.out / f"minimal-{cycle:03d}.yaml"
    command = f"chaos run {shlex.quote(str(path))}"
    minimal = scenario_with_plan(
        cycle_scenario_, outcome.minimal, name=f"{context.base.name}-minimal-{cycle:03d}",
        description=(f"Minimal reproducer shrunk from soak cycle {cycle} (seed {record['seed']}) of "
                     f"{context.options.scenario}; failed: {', '.join(sorted(failing))}. Reproduce: {command}"),
        golden_path=Path(record["golden"]) if record.get("golden") else None)
    safe_files.write_file(path, f"# {command}\n" + dump_scenario(revalidate(minimal, str(path))), root=context.out)

    confirm_dir = shrink_dir / "confirm"
    move_aside(confirm_dir)
    confirmed, detail = fails_same_way(context.run(load_scenario(path), confirm_dir, None))
    record["shrink"] = outcome.to_dict()
    record["minimal"] = {"path": path.name, "command": command, "confirmed": confirmed, "flaky": not confirmed,
                         "confirm_run_dir": str(confirm_dir.relative_to(context.out)), "confirm_result": detail,
                         "faults": describe_plan(outcome.minimal)}
    shrunk = (f"shrunk {len(outcome.original)} -> {len(outcome.minimal)} fault(s) in {outcome.runs_used} run(s)"
              if outcome.shrunk else f"no simpler schedule failed ({outcome.runs_used} candidate run(s))")
    context.say(f"chaos soak: cycle {cycle}: {shrunk}: {describe_plan(outcome.minimal)}")
    if confirmed:
        context.say(f"chaos soak: confirmed by a re-run; reproduce with:\n  {command}")
    else:
        context.say(f"chaos soak: FLAKY: the minimal schedule did not fail again when re-run ({detail}); it may need "
                    f"the timing of the original cycle. Saved anyway:\n  {command}")


# ---- state ---------------------------------------------------------------------------------------------------
def read_state(out: Path) -> dict[str, Any] | None:
    path = Path(out) / STATE_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        state = json.loads(safe_files.read_input(path, "--out", limit=4 * safe_files.SMALL_FILE_LIMIT))
    except json.JSONDecodeError as error:
        raise InputError(str(path), f"line {error.lineno}", f"damaged soak state ({error.msg}); move it away to "
                                                             "start the soak afresh") from None
    except RecursionError:
        raise InputError(str(path), "", "damaged soak state (nested too deeply); move it away to start the soak "
                                        "afresh") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError(str(path), "format", f"expected {STATE_FORMAT!r}")
    return state


def _save(out: Path, state: dict[str, Any], base: Scenario) -> None:
    state["updated"] = _now()
    # a new file renamed over the old: a soak killed mid-write leaves the previous state, never half of one
    safe_files.write_file(out / STATE_FILE, json.dumps(state, indent=1, default=str) + "\n", root=out)
    soak_report.write_all(out, state, base.name)


def _check_out(out: Path) -> None:
    """A soak's --out is written into (its state, reports, a run per cycle): a new or empty directory, or one
    holding a soak. Any other non-empty folder (`--out .`, a project) is refused, never written into."""
    if out.is_dir() and any(out.iterdir()) and not (out / STATE_FILE).is_file():
        raise InputError(str(out), "--out", f"is a non-empty directory that holds no soak (no {STATE_FILE}); give a "
                                            "new or empty directory, or the --out of the soak to continue")


def _identity(base: Scenario, seed: int, schedule: ScheduleOptions) -> str:
    text = json.dumps({"scenario": dump_scenario(base), "seed": seed, "schedule": asdict(schedule)},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")
