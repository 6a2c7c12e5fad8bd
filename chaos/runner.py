"""One chaos run, end to end: scenario -> plan -> golden -> supervise -> check -> report.

Like Jepsen's store, the run directory is written as the run goes (scenario, plan, histories), and the
report is written even when the run was interrupted or the supervisor failed, so evidence survives.
`analyze(run_dir)` re-checks a stored run without re-running anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from chaos import comparison
from chaos import golden as golden_module
from chaos import preflight, safe_files
from chaos.calibration import decide_rule
from chaos.errors import EXIT_FAIL, EXIT_INFRA, EXIT_PASS, InfrastructureError, InputError
from chaos.golden_runs import (  # noqa: F401  (re-exported: the CLI, the plugin and the tests use them here)
    REPO_ROOT, GoldenChoice, choose_golden, golden_file_name, golden_launch, golden_search_dirs, move_aside,
    record_golden, recorded_from_history, rule_for, start_run_dir, state_rule_note,
)
from chaos.plan import PlannedFault
from chaos.scenario import Scenario, dump_scenario, load_scenario_text
from chaos.schedule import plan_faults, plan_from_json, plan_to_json


@dataclass
class RunResult:
    verdict: str
    """pass | fail | error"""
    run_dir: Path
    report: dict[str, Any]
    exit_code: int
    summary: str = ""
    golden: GoldenChoice | None = None

    @property
    def checks(self) -> list[dict]:
        return self.report.get("checks", [])

    @property
    def failing_checks(self) -> list[dict]:
        return [c for c in self.checks if c["status"] in ("fail", "error")]

    @property
    def faults(self) -> list[dict]:
        return self.report.get("faults", [])


def default_run_dir(scenario: Scenario, root: Path = Path("runs"), prefix: str = "") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{stamp}-{prefix}{scenario.name}"


# ---- the run ----------------------------------------------------------------------------------------------
def run_scenario(scenario: Scenario, out_dir: Path | None = None, seed: int | None = None,
                 golden_path: Path | None = None, golden_cache: Path | None = None,
                 plan: tuple[PlannedFault, ...] | None = None, on_progress: Callable[[dict], None] | None = None,
                 say: Callable[[str], None] = print, repeats: int | None = None) -> RunResult:
    """Runs one scenario and returns its verdict. Raises InputError for bad input; infrastructure
    failures come back as verdict 'error' with exit code 3 and a report saying why.

    `seed` replaces the scenario's seed, so scenario.yaml and the report record the seed actually used;
    `repeats`: uninterrupted runs a golden recorded here is made of (default: the scenario's)."""
    from chaos.supervisor import SupervisorConfig, supervise

    if seed is not None:
        scenario = dataclasses.replace(scenario, seed=seed)
    run_dir = Path(out_dir) if out_dir else default_run_dir(scenario)
    preflight.check_run_dir(run_dir)
    preflight.check_golden_cache(golden_cache)
    preflight.check_machine(scenario.facts, scenario.source, scenario.hosts)
    preflight.check_hosts(scenario.hosts, scenario.launcher, scenario.source)
    # All input is read before an earlier run is moved aside: a bad golden or plan refused (exit 2) must
    # leave the --out directory where it was.
    explicit = golden_path or scenario.golden.path
    explicit_golden = golden_module.read_golden(explicit) if explicit is not None else None
    if plan is None:
        plan = plan_faults(scenario)
    move_aside(run_dir)
    start_run_dir(run_dir)
    safe_files.write_file(run_dir / "scenario.yaml", dump_scenario(scenario), root=run_dir)
    safe_files.write_file(run_dir / "plan.json", plan_to_json(plan), root=run_dir)
    started = time.time()
    golden_choice = None
    infrastructure_error = None
    try:
        golden_choice = choose_golden(scenario, run_dir, golden_path, golden_cache, on_progress, say, repeats,
                                      explicit_golden=explicit_golden)
        launch = scenario.workload.launch(run_dir)
        outcome = supervise(SupervisorConfig(launch=launch, faults=tuple(plan), restart=scenario.restart,
                                             launcher=scenario.launcher, run_dir=run_dir, hosts=scenario.hosts,
                                             launcher_args=scenario.launcher_args),
                            on_progress)
        if outcome.outcome == "interrupted":
            infrastructure_error = "interrupted (Ctrl-C or SIGTERM to chaos): partial report"
    except InfrastructureError as error:
        infrastructure_error = str(error)
    except KeyboardInterrupt:
        infrastructure_error = "interrupted (Ctrl-C) before the supervisor started"
    with _report_survives_one_ctrl_c(say):
        return analyze(run_dir, scenario=scenario, plan=plan, golden_choice=golden_choice,
                       infrastructure_error=infrastructure_error, elapsed_s=time.time() - started)


@contextlib.contextmanager
def _report_survives_one_ctrl_c(say: Callable[[str], None]):
    """The checks and reports of a finished run take seconds and are what the run was for: a first Ctrl-C (or
    SIGTERM) while they are written is noted and deferred; a second one stops at once (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []

    def on_signal(signum, frame):
        pressed.append(signum)
        if len(pressed) > 1:
            raise KeyboardInterrupt
        say("chaos: writing the report first (a few seconds); press Ctrl-C again to abandon it")

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def analyze(run_dir: Path, scenario: Scenario | None = None, plan=None, golden_choice: GoldenChoice | None = None,
            infrastructure_error: str | None = None, elapsed_s: float | None = None) -> RunResult:
    """Checks a stored run (its histories and files) and writes report.json, summary.txt, junit.xml and
    report.html into it. Re-runnable: `chaos report RUN_DIR` calls this with what the run dir holds."""
    from chaos.checkers import CheckContext, run_checks
    from chaos.history import load_run_history
    from chaos.report import build_report, format_summary, write_html, write_junit, write_report

    run_dir = Path(run_dir)
    if scenario is None:
        scenario = stored_scenario(run_dir)
    if plan is None:
        plan = stored_plan(run_dir)
    lost_golden = None
    golden_damaged = False
    if golden_choice is None:
        try:
            golden_choice = _stored_golden(run_dir, scenario)
        except InputError as error:
            golden_damaged = True
            infrastructure_error = infrastructure_error or f"golden.json is damaged ({error}): the run cannot be re-checked"
        lost_golden = _lost_golden(run_dir) if golden_choice is None else None
        if lost_golden and not infrastructure_error:
            infrastructure_error = (f"the golden this run was checked against ({lost_golden}) is gone: the run "
                                    "cannot be re-checked")
    golden = golden_choice.golden if golden_choice else None
    rule = golden_choice.rule if golden_choice else decide_rule(scenario.golden.mode, None, scenario.device,
                                                               scenario.tolerance or None)

    workload = scenario.workload
    printed = dict(workload.printed_formats)

    def compare(expected: dict, actual: dict):
        return comparison.compare(golden_module.Golden(metrics=expected), actual, rule.mode, rule.tolerances,
                                     printed_formats=printed, skip=tuple(rule.not_compared))

    history = load_run_history(run_dir)
    if history.damaged and not infrastructure_error:
        shown = ", ".join(history.damaged[:5]) + (f" and {len(history.damaged) - 5} more" if len(history.damaged) > 5 else "")
        infrastructure_error = f"history damaged, unreadable lines: {shown}; checks on it cannot be trusted"
    if not history.attempts and not infrastructure_error:
        infrastructure_error = "the run directory holds no attempt histories (attempts/): nothing to check"
    context = CheckContext(
        run_dir=run_dir,
        history=history,
        plan=tuple(plan),
        golden_metrics=golden.metrics if golden else None,
        golden_final_state_hash=golden.meta.final_state_hash if golden and golden.meta else None,
        compare=compare,
        train_iters=scenario.train_iters,
        save_interval=scenario.facts.save_interval,
        restart=scenario.restart,
        checkpoint_dir=run_dir / "checkpoints",
        golden_data_hashes=golden.data_hashes if golden else None,
        facts=scenario.facts,
        layout=workload.layout,
        final_state_unavailable=workload.final_state_unavailable,
        golden_loss_windows=golden.loss_windows if golden else {},
        printed_formats=printed,
        comparison_mode=rule.mode,
        tolerance=dict(rule.tolerances),
        golden_checkpoints=golden.checkpoints if golden else {},
        golden_checkpoint_files=golden.checkpoint_files if golden else {},
        golden_repeats=golden.calibration.repeats if golden and golden.calibration else None,
        accepted_state_differences=dict(scenario.accepted_state_differences),
    )
    results = run_checks(context, list(scenario.checks))
    # tolerance: the report's plot marks off-golden points by the same rule as the comparison.
    golden_info = {"path": str(Path(golden_choice.path).resolve()) if golden_choice else lost_golden,
                   "mode": rule.mode,
                   "rule": rule.why,
                   "not_compared": dict(rule.not_compared),
                   "state_rule": state_rule_note(golden) if golden else None,
                   "calibration": golden.calibration.to_dict() if golden and golden.calibration else None,
                   "loss_windows": {str(k): list(v) for k, v in golden.loss_windows.items()} if golden else {},
                   "recorded_here": golden_choice.recorded_here if golden_choice else False,
                   "tolerance": dict(rule.tolerances)}
    extra = {"infrastructure_error": infrastructure_error, "elapsed_s": elapsed_s, "seed": scenario.seed}
    report = build_report(context, results, scenario.name, golden_info, extra)
    if infrastructure_error:
        report["verdict"] = "error"
    summary = format_summary(report)
    try:  # each file replaced, never written through: a run directory may have been prepared by someone else
        write_report(report, run_dir)
        if not golden_damaged:  # a damaged one is evidence; overwritten it would say "no golden" from now on
            safe_files.write_file(run_dir / "golden.json", json.dumps(golden_info, indent=1), root=run_dir)
        safe_files.write_file(run_dir / "summary.txt", summary + "\n", root=run_dir)
        write_junit(report, run_dir / "junit.xml")
    except OSError as error:  # a full or read-only disk: the verdict still reaches the user, on stdout
        report["verdict"] = "error"
        report["extra"]["infrastructure_error"] = "; ".join(filter(None, (
            report["extra"].get("infrastructure_error"),
            f"the report could not be written into the run directory ({error.strerror or error}: {error.filename}); "
            "this summary is all there is")))
        return RunResult("error", run_dir, report, EXIT_INFRA, format_summary(report), golden_choice)
    try:
        # Hands over what is in memory: write_html would otherwise re-read all three from the run dir.
        write_html(run_dir, golden.metrics if golden else None, report=report, history=context.history)
    except Exception as error:  # the HTML is for people; a rendering bug must not hide the verdict
        print(f"chaos: report.html could not be written: {safe_files.one_line(error)}", file=sys.stderr)
    exit_code = {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(report["verdict"], EXIT_INFRA)
    return RunResult(report["verdict"], run_dir, report, exit_code, summary, golden_choice)


def stored_scenario(run_dir: Path) -> Scenario:
    """The scenario a run directory holds (scenario.yaml), read as untrusted input: no link followed, a
    regular file of bounded size."""
    path = Path(run_dir) / "scenario.yaml"
    return load_scenario_text(_read_stored(path, "the run's scenario"), str(path), base_dir=Path(run_dir).resolve())


def stored_plan(run_dir: Path) -> tuple[PlannedFault, ...]:
    """The plan a run directory holds (plan.json), read as untrusted input; its fault ids are checked
    (they reach file names, reports and terminals)."""
    path = Path(run_dir) / "plan.json"
    return plan_from_json(_read_stored(path, "the run's plan"), source=str(path))


def _read_stored(path: Path, what: str) -> str:
    try:
        return safe_files.read_bytes(path, root=path.parent).decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        why = str(error).removeprefix(f"{path}: ") if isinstance(error, OSError) else f"not UTF-8 ({error.reason})"
        raise InputError(str(path), "", f"cannot read {what}: {why}; without it the run cannot be re-checked") from None


def _read_golden_info(run_dir: Path) -> Any:
    """golden.json of a run directory, parsed (InputError when it cannot be read or parsed)."""
    info_path = run_dir / "golden.json"
    try:
        return json.loads(safe_files.read_bytes(info_path, limit=safe_files.MiB, root=run_dir).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        why = str(error).removeprefix(f"{info_path}: ") if not isinstance(error, RecursionError) else "nested too deeply"
        raise InputError(str(info_path), "", f"not readable JSON: {why}") from None


def _lost_golden(run_dir: Path) -> str | None:
    """The golden path golden.json names when that file is gone (None: it names none, or it is there)."""
    try:
        path = _read_golden_info(run_dir).get("path")
    except (InputError, AttributeError):
        return None
    return path if isinstance(path, str) and path and not Path(path).is_file() else None


def _stored_golden(run_dir: Path, scenario: Scenario) -> GoldenChoice | None:
    info_path = run_dir / "golden.json"
    if not info_path.exists() and not info_path.is_symlink():
        return None
    info = _read_golden_info(run_dir)
    if not isinstance(info, dict) or not isinstance(info.get("path"), (str, type(None))):
        raise InputError(str(info_path), "", "expected an object with the golden's path")
    if not info.get("path") or not Path(info["path"]).is_file():
        return None
    golden = golden_module.read_golden(info["path"])
    return GoldenChoice(golden, Path(info["path"]), rule_for(scenario, golden), bool(info.get("recorded_here")))


def replay(run_dir: Path, out_dir: Path | None = None) -> RunResult:
    """Re-runs an earlier run's scenario with its exact stored plan (random faults included)."""
    run_dir = Path(run_dir)
    if not (run_dir / "scenario.yaml").is_file() or not (run_dir / "plan.json").is_file():
        raise InputError(str(run_dir), "", "not a chaos run directory (expected scenario.yaml and plan.json)")
    scenario = stored_scenario(run_dir)
    out = out_dir or run_dir.with_name(run_dir.name + "-replay")
    stored = _stored_golden(run_dir, scenario)
    return run_scenario(scenario, out_dir=out, plan=stored_plan(run_dir), golden_path=stored.path if stored else None)
