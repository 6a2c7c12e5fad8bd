"""`chaos selftest`: the scenario once unchanged (the control, which must pass), then once per planted bug with
the control's exact plan and golden, each judged by the scenario's own checks.

Layout of OUT: control/ (the control run), bugs/<bug>/ (one run per bug, its ranks' plant records in plant/),
selftest.json, summary.txt, junit.xml, selftest.html, .chaos-selftest (the marker: an OUT holding it is moved
aside by the next selftest there, like a run directory).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from chaos import safe_files
from chaos.errors import EXIT_FAIL, EXIT_INFRA, EXIT_PASS, InputError, did_you_mean
from chaos.scenario import Scenario
from chaos.selftest import bugs as catalog
from chaos.selftest.change import against_control
from chaos.selftest.outcome import CAUGHT, ERROR, BugOutcome, Score, classify, score, static_outcome
from chaos.selftest.planted import PlantedWorkload, read_evidence

MARKER = ".chaos-selftest"


@dataclass
class SelftestResult:
    scenario: str
    out_dir: Path
    outcomes: list[BugOutcome] = field(default_factory=list)
    control: Any = None
    """The control run's chaos.runner.RunResult (None when it could not start)."""
    stopped: str | None = None
    """Why the selftest stopped before every bug ran (the control did not pass, Ctrl-C)."""
    min_score: float = 1.0
    seconds: float = 0.0

    @property
    def score(self) -> Score:
        return score(self.outcomes)

    @property
    def exit_code(self) -> int:
        if self.stopped or any(o.verdict == ERROR for o in self.outcomes) or not self.score.counted:
            return EXIT_INFRA  # the selftest proved nothing about the checks
        return EXIT_PASS if self.score.fraction >= self.min_score else EXIT_FAIL

    @property
    def summary(self) -> str:
        from chaos.selftest.report import format_summary

        return format_summary(self)

    def outcome(self, bug: str) -> BugOutcome:
        return next(o for o in self.outcomes if o.bug == bug)

    def to_dict(self) -> dict[str, Any]:
        control = self.control
        return {"scenario": self.scenario, "out_dir": str(self.out_dir),
                "score": {"caught": self.score.caught, "counted": self.score.counted,
                          "fraction": self.score.fraction, "min_score": self.min_score},
                "control": {"verdict": control.verdict, "run_dir": str(control.run_dir),
                            "golden": str(control.golden.path) if control.golden else None} if control else None,
                "stopped": self.stopped, "seconds": round(self.seconds, 1), "exit_code": self.exit_code,
                "bugs": [dict(o.to_dict(), **_described(o.bug)) for o in self.outcomes]}


def _described(name: str) -> dict[str, str]:
    bug = catalog.BY_NAME[name]
    return {"does": bug.does, "stands_for": bug.stands_for}


def bug_names(text: str | None, source: str = "--bugs") -> tuple[str, ...]:
    """The bugs a selftest plants: all of them by default, else the comma-separated names given."""
    if not text:
        return catalog.NAMES
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in catalog.BY_NAME:
            raise InputError(source, "", f"unknown bug {safe_files.one_line(name, 60)!r}"
                                         f"{did_you_mean(name, catalog.NAMES)}; expected names from {list(catalog.NAMES)}")
    if len(set(names)) != len(names) or not names:
        raise InputError(source, "", "expected distinct bug names, separated by commas")
    return names


def check_out(out: Path) -> None:
    """A selftest's --out: new, empty, or an earlier selftest's (moved aside to <out>.previous-N). Never the
    current directory or one above it, never a folder of the user's own."""
    out = Path(out)
    here = Path.cwd().resolve()
    if out.exists() and (out.resolve() == here or out.resolve() in here.parents):
        raise InputError(str(out), "--out", "is the current directory or one above it; give a directory of its own")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InputError(str(out), "--out", "exists and is not a directory; give a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise InputError(str(out), "--out", f"is a non-empty directory that holds no selftest (no {MARKER}); give a "
                                            "new or empty directory")


def _move_aside(out: Path) -> None:
    """An earlier selftest at --out (check_out allowed only that) becomes <out>.previous-N."""
    from chaos.golden_runs import rename_to_previous

    if out.is_dir() and any(out.iterdir()):
        rename_to_previous(out)


def run_selftest(scenario: Scenario, out: Path, bugs: tuple[str, ...] = catalog.NAMES, seed: int | None = None,
                 golden_path: Path | None = None, golden_cache: Path | None = None, min_score: float = 1.0,
                 say: Callable[[str], None] = print) -> SelftestResult:
    from chaos.runner import run_scenario, stored_plan
    from chaos.selftest.report import write_reports

    out = Path(out)
    check_out(out)
    _move_aside(out)
    safe_files.make_dirs(out)
    safe_files.write_file(out / MARKER, "a chaos selftest: `chaos selftest --out` here moves it aside\n", root=out)
    started = time.monotonic()
    result = SelftestResult(scenario.name, out, min_score=min_score)
    say(f"chaos selftest: {scenario.name}: the control run, then {len(bugs)} planted bug(s) -> {out}")
    control = run_scenario(scenario, out_dir=out / "control", seed=seed, golden_path=golden_path,
                           golden_cache=golden_cache, say=say)
    result.control = control
    say(f"  control: {control.verdict}")
    if control.verdict != "pass" or control.golden is None:
        result.stopped = (f"the control run (the scenario unchanged) did not pass: verdict {control.verdict}; a "
                          f"selftest needs a scenario that passes as it is (see {control.run_dir})")
    else:
        plan = stored_plan(control.run_dir)
        for name in bugs:
            outcome = _one_bug(scenario, name, out, control, plan, seed)
            result.outcomes.append(outcome)
            say(f"  {name}: {outcome.verdict}: {safe_files.one_line(outcome.why, 160)}")
            if outcome.run_verdict == "error" and "interrupted" in outcome.why:
                result.stopped = "interrupted (Ctrl-C or SIGTERM to chaos)"
                break
            write_reports(result)  # as it goes: a selftest stopped halfway still shows what it found
    result.seconds = time.monotonic() - started
    write_reports(result)
    return result


def _one_bug(scenario: Scenario, name: str, out: Path, control, plan, seed: int | None) -> BugOutcome:
    from chaos.runner import run_scenario

    bug = catalog.BY_NAME[name]
    why_not = bug.not_applicable(scenario.facts)
    if why_not:
        return static_outcome(name, why_not)
    run_dir = out / "bugs" / name
    planted = dataclasses.replace(scenario, workload=PlantedWorkload(scenario.workload, name))
    started = time.monotonic()
    result = run_scenario(planted, out_dir=run_dir, seed=seed, plan=plan, golden_path=control.golden.path,
                          say=lambda text: None)
    safe_files.write_file(run_dir / "planted.json", json.dumps({"bug": name, **_described(name)}, indent=1) + "\n",
                          root=run_dir)
    golden = control.golden.golden
    outcome = classify(name, result, read_evidence(run_dir),
                       lambda: against_control(control.run_dir, run_dir, golden, scenario.device,
                                               scenario.workload.printed_formats))
    outcome.seconds = time.monotonic() - started
    return outcome


__all__ = ["CAUGHT", "MARKER", "SelftestResult", "bug_names", "check_out", "run_selftest"]
