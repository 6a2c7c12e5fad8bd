"""A run directory is never reused: a second run there would resume from the first run's checkpoints and
append to its histories. And run_scenario(seed=) records the seed it used. Fast: nothing is trained."""

from __future__ import annotations

import json

import pytest

import yaml

from chaos import runner
from chaos.errors import InfrastructureError
from chaos.scenario import load_scenario_text

SMALL = "workload: {world_size: 2, tensor_parallel: 2, train_iters: 4, save_interval: 2}\n"


def test_move_aside_keeps_old_runs_and_uses_empty_directories(tmp_path):
    run_dir = tmp_path / "run"
    runner.move_aside(run_dir)  # nothing there: nothing to do
    assert list(tmp_path.iterdir()) == []
    run_dir.mkdir()
    runner.move_aside(run_dir)  # empty (a pytest tmp dir): used as is
    assert run_dir.is_dir() and list(tmp_path.iterdir()) == [run_dir]
    for n in (1, 2):
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "history.jsonl").write_text(f"run {n}\n")
        (run_dir / ".chaos-run").write_text("")  # what every run directory chaos makes holds first
        runner.move_aside(run_dir)
        assert not run_dir.exists()
        assert (tmp_path / f"run.previous-{n}" / "history.jsonl").read_text() == f"run {n}\n"


def test_run_scenario_starts_clean_and_records_the_seed_it_used(tmp_path, monkeypatch):
    def no_golden(*args, **kwargs):
        raise InfrastructureError("no golden in this test")

    monkeypatch.setattr(runner, "choose_golden", no_golden)  # stops the run before anything is launched
    scenario = load_scenario_text(SMALL + "seed: 1\nfaults:\n  - random: {count: 1}\n", "small")
    run_dir = tmp_path / "run"
    for attempt in (1, 2):
        result = runner.run_scenario(scenario, out_dir=run_dir, seed=7, say=lambda text: None)
        assert result.verdict == "error"
        assert yaml.safe_load((run_dir / "scenario.yaml").read_text())["seed"] == 7
        assert json.loads((run_dir / "report.json").read_text())["extra"]["seed"] == 7
        assert "random(seed=7)" in (run_dir / "plan.json").read_text()
    assert (tmp_path / "run.previous-1" / "report.json").is_file() and not (tmp_path / "run.previous-2").exists()


def test_report_of_a_run_whose_golden_is_gone_is_an_error_and_keeps_the_path(tmp_path):
    """`chaos report` where the golden was recorded (a session's cache, another machine) is gone: the run
    cannot be re-checked. That is an error, never a pass with the golden-based checks skipped, and golden.json
    keeps naming what is missing (a later report must not turn into a vacuous pass)."""
    import json

    from chaos.runner import analyze
    from chaos.scenario import dump_scenario, load_scenario_text
    from synthetic_runs import standard_run

    run = standard_run(tmp_path)
    (tmp_path / "scenario.yaml").write_text(dump_scenario(load_scenario_text(
        "workload: {world_size: 2, tensor_parallel: 2, train_iters: 12, save_interval: 4}\n", "t.yaml")))
    missing = str(tmp_path / "elsewhere" / "golden.json")
    (tmp_path / "golden.json").write_text(json.dumps({"path": missing, "mode": "exact"}))
    result = analyze(run.run_dir)
    assert result.verdict == "error" and "is gone" in result.report["extra"]["infrastructure_error"]
    assert json.loads((tmp_path / "golden.json").read_text())["path"] == missing


def test_out_that_is_not_a_directory_is_refused_and_never_moved(tmp_path):
    """As root, `--out /dev/null` used to rename /dev/null aside; a regular file was renamed too."""
    import os

    import pytest

    from chaos.errors import InputError

    scenario = load_scenario_text(SMALL, "small")
    afile = tmp_path / "notes.txt"
    afile.write_text("mine\n")
    link_to_device = tmp_path / "null"
    link_to_device.symlink_to(os.devnull)
    for target in (afile, link_to_device):
        with pytest.raises(InputError, match="exists and is not a directory"):
            runner.run_scenario(scenario, out_dir=target, say=lambda text: None)
    assert afile.read_text() == "mine\n" and link_to_device.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "null"]
    with pytest.raises(InputError, match="is not a writable directory"):
        runner.run_scenario(scenario, out_dir=afile / "run", say=lambda text: None)
    with pytest.raises(InputError, match="--golden-cache"):
        runner.run_scenario(scenario, out_dir=tmp_path / "run", golden_cache=afile, say=lambda text: None)
    assert not (tmp_path / "run").exists()


def _checkable_run(run_dir):
    """standard_run (a correct synthetic run) with what `chaos report` reads: scenario.yaml, its golden."""
    import json

    from chaos import golden as golden_module
    from chaos.scenario import dump_scenario
    from synthetic_runs import GOLDEN_FINAL_HASH, standard_run

    run = standard_run(run_dir)
    (run_dir / "scenario.yaml").write_text(dump_scenario(load_scenario_text(
        "workload: {world_size: 2, tensor_parallel: 2, train_iters: 12, save_interval: 4}\n"
        "checks: [trajectory, resume_point, steps_lost]\n", "t.yaml")))
    golden_path = run_dir.parent / "golden-file.json"
    golden_module.write_golden(golden_module.Golden(
        metrics=run.golden_metrics(), meta=golden_module.GoldenMeta(final_state_hash=GOLDEN_FINAL_HASH)), golden_path)
    (run_dir / "golden.json").write_text(json.dumps({"path": str(golden_path), "mode": "exact"}))
    return run


def _damage_middle_line(path, replacement: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[len(lines) // 2] = replacement
    path.write_bytes(b"\n".join(lines))


DAMAGE = {
    "undamaged": (lambda d: None, "pass", None),
    "torn last line (a killed writer)": (lambda d: open(d / "attempts/01/rank-0.jsonl", "ab").write(b'{"event": "st'),
                                         "pass", None),
    "non-UTF-8 byte in a history": (lambda d: _damage_middle_line(d / "attempts/02/rank-1.jsonl", b"\xff\xfe"),
                                    "error", "attempts/02/rank-1.jsonl line"),
    "broken JSON mid-history": (lambda d: _damage_middle_line(d / "attempts/01/rank-0.jsonl", b'{"event": '),
                                "error", "attempts/01/rank-0.jsonl line"),
    "JSON that is no record": (lambda d: _damage_middle_line(d / "supervisor.jsonl", b"[1, 2]"),
                               "error", "supervisor.jsonl line"),
    "garbage golden.json": (lambda d: (d / "golden.json").write_text("garbage{"), "error", "golden.json is damaged"),
    "no attempts": (lambda d: __import__("shutil").rmtree(d / "attempts"), "error", "no attempt histories"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_report_on_a_damaged_run_directory_is_an_error_never_a_pass_or_a_traceback(tmp_path, damage):
    from chaos import cli

    run_dir = tmp_path / "run"
    _checkable_run(run_dir)
    apply, verdict, reason = DAMAGE[damage]
    apply(run_dir)
    golden_before = (run_dir / "golden.json").read_bytes()
    code = cli.main(["report", str(run_dir)])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["verdict"] == verdict and code == {"pass": 0, "error": 3}[verdict]
    if reason:
        assert reason in report["extra"]["infrastructure_error"]
    if damage == "garbage golden.json":
        assert (run_dir / "golden.json").read_bytes() == golden_before, "the damaged golden.json was overwritten"


def test_report_without_a_plan_is_bad_input(tmp_path, capsys):
    from chaos import cli

    run_dir = tmp_path / "run"
    _checkable_run(run_dir)
    (run_dir / "plan.json").unlink()
    assert cli.main(["report", str(run_dir)]) == 2
    assert "no plan.json" in capsys.readouterr().err
