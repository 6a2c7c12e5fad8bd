"""Ctrl-C to `chaos run` (a real SIGINT to the process running run_scenario, with the pure-Python fake trainer
as the system under test): at launch, mid-step, while a rank is held and during teardown the ranks are torn
down, the partial report is written (verdict error, "interrupted") and the exit code is 3; during the checks
the first Ctrl-C waits for the report, a second abandons it with exit 130. Nothing of the run is left alive."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_supervisor_lifeline import POINTS, processes_of, rank_events, supervisor_events, wait_for

REPO = Path(__file__).resolve().parents[1]

RUN = """
import dataclasses, sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_supervisor import make_config
from chaos import cli, runner
from chaos.plan import RestartPolicy

run = Path({run!r})
spec = make_config(run / "fake", world_size=2, train_iters={iters!r}, save_interval=3, step_time_s=0.02,
                   spawn_child=True,
                   delays=[{{"rank": 1, "step": 3, "attempt": 1, "seconds": 30}}] if {held!r} else []).launch


class FakeTrainerWorkload:
    # the scenario's gpt3 workload in every respect but its launch: the fake trainer starts in milliseconds
    def __init__(self, real):
        self.real = real

    def launch(self, run_dir):
        return spec

    def __getattr__(self, name):
        return getattr(self.real, name)


from chaos import scenario as scenario_module
original = scenario_module.load_scenario


def load(path, overrides=None):
    loaded = original(path, overrides)
    return dataclasses.replace(loaded, workload=FakeTrainerWorkload(loaded.workload))


scenario_module.load_scenario = load
runner.choose_golden = lambda *args, **kwargs: None
if {slow_checks!r}:
    from chaos import checkers
    real_run_checks = checkers.run_checks

    def slow_run_checks(*args, **kwargs):
        (run / "checking").write_text("")
        time.sleep(3)
        return real_run_checks(*args, **kwargs)

    checkers.run_checks = slow_run_checks
sys.exit(cli.main(["run", {scenario!r}, "--out", str(run / "out")]))
"""

SCENARIO = """
workload: {{world_size: 2, tensor_parallel: 2, train_iters: {iters}, save_interval: 3}}
restart: {{max_restarts: 3, teardown_grace_s: {grace}, hang_timeout_s: 60}}
faults:
  - at: {{step: 3, phase: {phase}}}
    target: {target}
    signal: SIGKILL
"""


def start(tmp_path: Path, point: str, slow_checks: bool = False, iters: int = 100000) -> subprocess.Popen:
    when, held, grace = POINTS.get(point, (None, False, 0.5))
    scenario = tmp_path / "ctrl_c.yaml"
    scenario.write_text(SCENARIO.format(iters=iters, grace=grace, phase="forward" if held else "backward",
                                        target="all" if held else "{rank: 1}"))
    script = RUN.format(tests=str(REPO / "tests"), run=str(tmp_path), iters=iters, held=held,
                        slow_checks=slow_checks, scenario=str(scenario))
    return subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, run: Path, timeout_s: float = 60) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
        time.sleep(2.0)
        left = processes_of(run)
        for pid in left:
            subprocess.run(["kill", "-9", str(pid)], check=False)
    assert left == [], f"alive 2 s after chaos run returned: {left}"
    return process.returncode, output


@pytest.mark.parametrize("point", list(POINTS))
def test_ctrl_c_tears_down_writes_the_partial_report_and_exits_3(tmp_path, point):
    when = POINTS[point][0]
    out = tmp_path / "out"
    process = start(tmp_path, point)
    wait_for(lambda: when(out) or process.poll() is not None)
    assert process.poll() is None, process.communicate()[0]
    process.send_signal(signal.SIGINT)
    code, output = finish(process, tmp_path)
    assert code == 3, output
    assert "Traceback" not in output, output
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "error" and "interrupted" in report["extra"]["infrastructure_error"], report["extra"]
    assert (out / "summary.txt").is_file() and (out / "junit.xml").is_file()
    assert supervisor_events(out, "run_end")[-1]["outcome"] == "interrupted"


def test_ctrl_c_during_the_checks_waits_for_the_report_and_a_second_abandons_it(tmp_path):
    out = tmp_path / "out"
    process = start(tmp_path, "checks", slow_checks=True, iters=6)
    wait_for(lambda: (tmp_path / "checking").exists() or process.poll() is not None)
    process.send_signal(signal.SIGINT)
    code, output = finish(process, tmp_path)
    assert "writing the report first" in output and "Traceback" not in output, output
    report = json.loads((out / "report.json").read_text())
    assert "interrupted" not in str(report["extra"]["infrastructure_error"])  # the run itself was complete
    assert code == {"pass": 0, "fail": 1, "error": 3}[report["verdict"]]

    again = tmp_path / "again"
    again.mkdir()
    process = start(again, "checks", slow_checks=True, iters=6)
    wait_for(lambda: (again / "checking").exists() or process.poll() is not None)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    code, output = finish(process, again)
    assert code == 130 and "Traceback" not in output, output
    assert not (again / "out" / "report.json").exists()
