"""Issue 20, files: chaos runs as root and reads and writes run directories and golden caches that someone else
may have prepared. Nothing it writes there follows a link, nothing it reads there may hang it or exhaust its
memory, and no text from there reaches a terminal, summary, JUnit XML or HTML with its control characters.
Fast: nothing is trained (synthetic runs, the fault module driven directly, a stand-in for the golden)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from chaos import cli, runner
from chaos import golden as golden_module
from chaos.errors import InfrastructureError, InputError
from chaos.faults import corrupt
from chaos.scenario import load_scenario_text
from test_run_dir import _checkable_run

ROOT = Path(__file__).resolve().parents[1]
SMALL = "workload: {world_size: 2, tensor_parallel: 2, train_iters: 4, save_interval: 2}\n"
VICTIM = "ssh-ed25519 AAAA... the victim's own key\n"


def chaos(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real command in a subprocess, held to 2 GiB of address space: an unbounded read fails fast there
    instead of taking the machine's memory, and a hang is cut by the timeout."""
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    return subprocess.run([sys.executable, "-m", "chaos.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit_memory, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def no_golden(*args, **kwargs):
    raise InfrastructureError("no golden in this test")  # stops a run before anything is launched


# ---- finding 1: chaos report writes through links, with attacker-chosen lines ------------------------------
@pytest.mark.parametrize("name", ["summary.txt", "report.html", "junit.xml", "report.json", "golden.json"])
def test_report_never_writes_through_a_link_planted_in_the_run_directory(tmp_path, name):
    run_dir = tmp_path / "run"
    _checkable_run(run_dir)
    victim = tmp_path / "authorized_keys"
    # golden.json is read before it is written: its target holds what the run's own did, so it parses
    victim.write_text((run_dir / "golden.json").read_text() if name == "golden.json" else VICTIM)
    before = victim.read_text()
    # report.json was already written to a temp file renamed over it: its fixed temp name is the way in there
    for planted in [name] + (["report.json.tmp"] if name == "report.json" else []):
        (run_dir / planted).unlink(missing_ok=True)
        (run_dir / planted).symlink_to(victim)
    cli.main(["report", str(run_dir)])
    assert victim.read_text() == before, f"{name}: written through the link"
    if name != "golden.json":  # a golden.json that is a link is damage, kept as evidence (never followed)
        assert not (run_dir / name).is_symlink() and (run_dir / name).is_file()


def test_report_refuses_a_fault_id_with_a_newline_or_escape_in_plan_json(tmp_path):
    run_dir = tmp_path / "run"
    _checkable_run(run_dir)
    plan = json.loads((run_dir / "plan.json").read_text())
    plan[0]["id"] = "f1\nchaos: PASS\x1b[2J"
    (run_dir / "plan.json").write_text(json.dumps(plan))
    result = chaos("report", str(run_dir))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "plan.json" in result.stderr and "faults[0].id" in result.stderr
    assert "\x1b" not in result.stderr + result.stdout


def test_escape_sequences_from_a_run_directory_are_escaped_in_summary_junit_and_html(tmp_path):
    run_dir = tmp_path / "run"
    _checkable_run(run_dir)
    path = run_dir / "supervisor.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        if record["event"] == "fault_landed":
            record["phase"] = "back\x1b[31mward\rchaos: PASS"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    cli.main(["report", str(run_dir)])
    for name in ("summary.txt", "junit.xml", "report.html"):
        text = (run_dir / name).read_text()
        assert "\x1b" not in text and "\r" not in text, name
    assert "back\\x1b[31mward" in (run_dir / "summary.txt").read_text()
    ET.parse(run_dir / "junit.xml")


def test_junit_xml_stays_valid_xml_with_control_characters_in_a_check(tmp_path):
    from chaos.report import write_junit

    report = {"scenario": "s", "verdict": "fail", "restarts": 0, "run_dir": str(tmp_path), "faults": [],
              "checks": [{"name": "trajectory", "status": "fail", "detail": "rank said \x1b[2J\x00\x07 here",
                          "evidence": {}},
                         {"name": "stalls", "status": "pass", "detail": "ok \x1b]0;title\x07", "evidence": {}}]}
    write_junit(report, tmp_path / "junit.xml")
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.find("testcase/failure").get("message") == "rank said \\x1b[2J\\x00\\x07 here"


def test_golden_cache_temp_file_planted_as_a_link_is_not_written_through(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    victim = tmp_path / "authorized_keys"
    victim.write_text(VICTIM)
    target = cache / "tiny.json"
    (cache / ".tiny.json.tmp").symlink_to(victim)
    golden_module.write_golden(golden_module.Golden(metrics={"lm loss": {1: 10.0, 2: 9.0}}), target)
    assert victim.read_text() == VICTIM
    assert target.is_file() and not target.is_symlink()
    assert golden_module.read_golden(target).metrics == {"lm loss": {1: 10.0, 2: 9.0}}


# ---- finding 6: --out renames any non-empty folder, before the golden is validated -------------------------
def test_out_that_holds_no_run_is_refused_and_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "choose_golden", no_golden)
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("mine\n")
    with pytest.raises(InputError, match="holds no chaos run"):
        runner.run_scenario(load_scenario_text(SMALL, "small"), out_dir=project, say=lambda text: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]
    assert [p.name for p in project.iterdir()] == ["train.py"]


def test_out_holding_an_earlier_run_is_not_moved_when_the_golden_is_refused(tmp_path, monkeypatch):
    previous = tmp_path / "run"
    previous.mkdir()
    (previous / "scenario.yaml").write_text(SMALL)
    (previous / "plan.json").write_text('{"format": "chaos-plan/1", "faults": []}')
    bad_golden = tmp_path / "golden.json"
    bad_golden.write_text("not json {")
    with pytest.raises(InputError, match="invalid JSON"):
        runner.run_scenario(load_scenario_text(SMALL, "small"), out_dir=previous, golden_path=bad_golden,
                            say=lambda text: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["golden.json", "run"], "the earlier run was moved aside"
    # the same directory with a good input is a run's, and is moved aside as the README promises
    monkeypatch.setattr(runner, "choose_golden", no_golden)
    result = runner.run_scenario(load_scenario_text(SMALL, "small"), out_dir=previous, say=lambda text: None)
    assert result.verdict == "error" and (tmp_path / "run.previous-1" / "scenario.yaml").is_file()
    assert (previous / ".chaos-run").is_file()


def test_out_dot_is_bad_input_not_a_traceback(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine\n")
    (work / "s.yaml").write_text(SMALL)
    monkeypatch.chdir(work)
    assert cli.main(["run", "s.yaml", "--out", "."]) == 2
    assert "current directory" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "s.yaml"]


@pytest.mark.parametrize("which", ["cwd", "parent"])
def test_out_the_current_directory_or_above_it_is_refused(tmp_path, monkeypatch, which):
    monkeypatch.setattr(runner, "choose_golden", no_golden)
    work = tmp_path / "runs" / "here"
    work.mkdir(parents=True)
    (work / ".chaos-run").write_text("")  # even one that looks like a run: it is where the user works
    monkeypatch.chdir(work)
    target = work if which == "cwd" else work.parent
    with pytest.raises(InputError, match="current directory"):
        runner.run_scenario(load_scenario_text(SMALL, "small"), out_dir=target, say=lambda text: None)
    assert work.is_dir() and sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["here"]


# ---- finding 7: corrupt: damages files outside the run directory --------------------------------------------
def _checkpoints(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text("6")
    return root


def test_corrupt_through_a_linked_iteration_folder_touches_nothing_outside(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "__0_0.distcp").write_bytes(b"precious" * 100)
    checkpoints = _checkpoints(tmp_path / "run" / "checkpoints")
    (checkpoints / "iter_0000006").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OSError, match="symbolic link"):
        corrupt.corrupt_newest(checkpoints, "truncate")
    assert (outside / "__0_0.distcp").read_bytes() == b"precious" * 100


def test_corrupt_of_a_hard_linked_checkpoint_file_touches_nothing_outside(tmp_path):
    outside = tmp_path / "precious.bin"
    outside.write_bytes(b"precious" * 100)
    checkpoints = _checkpoints(tmp_path / "run" / "checkpoints")
    (checkpoints / "iter_0000006").mkdir()
    os.link(outside, checkpoints / "iter_0000006" / "__0_0.distcp")
    (checkpoints / "iter_0000006" / ".metadata").write_bytes(b"m" * 10)
    for mode in ("truncate", "flip"):
        with pytest.raises(OSError, match="hard links"):
            corrupt.corrupt_newest(checkpoints, mode)
    assert outside.read_bytes() == b"precious" * 100


# ---- finding 8: unbounded reads and hangs ---------------------------------------------------------------
def _scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(SMALL)
    return path


@pytest.mark.parametrize("kind", ["dev_zero", "fifo"])
def test_golden_that_is_dev_zero_or_a_fifo_is_bad_input(tmp_path, kind):
    if kind == "fifo":
        golden = tmp_path / "golden.fifo"
        os.mkfifo(golden)
    else:
        golden = Path("/dev/zero")
    try:
        result = chaos("run", str(_scenario_file(tmp_path)), "--golden", str(golden), "--out", str(tmp_path / "run"),
                       timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"--golden {kind} hangs")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "not a regular file" in result.stderr


def test_report_on_a_deeply_nested_history_line_is_damage_not_a_traceback(tmp_path):
    run_dir = tmp_path / "run"
    _checkable_run(run_dir)
    with open(run_dir / "attempts" / "01" / "rank-0.jsonl", "a") as handle:
        handle.write("[" * 200_000 + "]" * 200_000 + "\n")
    assert cli.main(["report", str(run_dir)]) == 3
    report = json.loads((run_dir / "report.json").read_text())
    assert "attempts/01/rank-0.jsonl line" in report["extra"]["infrastructure_error"]


def test_report_on_a_fifo_history_does_not_hang(tmp_path):
    run_dir = tmp_path / "run"
    _checkable_run(run_dir)
    history = run_dir / "attempts" / "02" / "rank-1.jsonl"
    history.unlink()
    os.mkfifo(history)
    try:
        result = chaos("report", str(run_dir), timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("chaos report hangs on a FIFO history")
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "rank-1.jsonl: is not a regular file" in result.stdout


def test_report_on_a_history_larger_than_the_limit_is_damage_not_a_memory_error(tmp_path):
    run_dir = tmp_path / "run"
    _checkable_run(run_dir)
    os.truncate(run_dir / "attempts" / "01" / "rank-1.jsonl", 3 << 30)  # sparse: costs no disk
    result = chaos("report", str(run_dir), timeout=60)
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "rank-1.jsonl: 3221225472 bytes, more than" in result.stdout


def _held(tail) -> int:
    """Bytes of the unterminated line a tail keeps between polls."""
    return tail._lines.pending if hasattr(tail, "_lines") else len(tail._partial)


def test_history_tail_keeps_at_most_a_capped_partial_line(tmp_path):
    from chaos.supervisor.history_tail import HistoryTail

    path = tmp_path / "rank-0.jsonl"
    tail = HistoryTail(path)
    with open(path, "ab", buffering=0) as handle:
        for _ in range(6):
            handle.write(b"x" * (1 << 20))
            tail.poll()
            assert _held(tail) <= 1 << 20
        handle.write(b"\n" + json.dumps({"event": "point", "step": 5, "phase": "forward"}).encode() + b"\n")
        assert tail.poll()
    assert (tail.step, tail.phase) == (5, "forward")
    tail.close()


def test_output_follower_keeps_at_most_a_capped_partial_line(tmp_path):
    from chaos.blackbox.follower import _OutputTail

    path = tmp_path / "rank-0.out"
    tail = _OutputTail(path)
    lines = []
    with open(path, "ab", buffering=0) as handle:
        for _ in range(6):
            handle.write(b"y" * (1 << 20))
            lines += tail.read_lines()
            assert _held(tail) <= 1 << 20
        handle.write(b"\niteration 5/ 8 | lm loss: 1.0\n")
        lines += tail.read_lines()
    assert len(lines) == 2 and len(lines[0][1]) == 1 << 20, "the long line comes out once, cut"
    assert lines[1] == (2, "iteration 5/ 8 | lm loss: 1.0")
    tail.close()


def test_a_damaged_meta_json_in_the_golden_cache_is_skipped_and_the_run_goes_on(tmp_path):
    from chaos.golden_runs import choose_golden

    scenario = load_scenario_text(SMALL, "small")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "broken.json").write_text(json.dumps({"lm loss": {"values": {"1": 1.0}}}))
    (cache / "broken.meta.json").write_text("{ damaged")
    env = golden_module.environment_fingerprint(scenario.device, scenario.facts.cpu_pins)
    meta = golden_module.new_meta(env, golden_module.workload_fingerprint(scenario.workload))
    good = golden_module.write_golden(golden_module.Golden(metrics={"lm loss": {1: 10.0}}, meta=meta),
                                      cache / "good.json")
    said: list[str] = []
    choice = choose_golden(scenario, tmp_path / "run", None, cache, say=said.append)
    assert choice.path == good and not choice.recorded_here
    assert any("broken.json" in line for line in said), said


def test_args_from_a_file_that_is_not_yaml_says_where_without_quoting_it(tmp_path, monkeypatch):
    from chaos.workloads.megatron_lm.config import MegatronLMConfig

    monkeypatch.delenv("MEGATRON_LM", raising=False)
    checkout = tmp_path / "Megatron-LM"
    (checkout / "megatron").mkdir(parents=True)
    (checkout / "pretrain_gpt.py").write_text("")
    secret = tmp_path / "shadow"
    secret.write_text("MODEL_ARGS:\n  --lr: 1\nroot:$6$hunter2secret:19000: x: y\n")  # PyYAML would quote line 3
    with pytest.raises(InputError) as info:
        MegatronLMConfig.from_mapping({"kind": "megatron_lm", "megatron_lm": str(checkout), "args_from": str(secret)},
                                      "s.yaml", "workload", tmp_path)
    message = str(info.value)
    assert "hunter2" not in message, message
    assert "not YAML" in message and ", line 3, column 31:" in message, message


def test_rank_output_and_the_disk_reserve_are_never_opened_through_a_planted_link(tmp_path):
    """A rank's output file and the run's disk reserve are opened by root in a run directory that may have been
    prepared by someone else: a link under either name must not reach (append to, truncate) its target."""
    from chaos import safe_files
    from chaos.supervisor.disk import RESERVE_NAME, DiskReserve

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "rank-0.out").symlink_to(victim)
    (run_dir / RESERVE_NAME).symlink_to(victim)
    with pytest.raises(OSError):
        safe_files.open_append(run_dir / "rank-0.out")
    DiskReserve(run_dir).take()
    assert victim.read_text() == "precious\n"


def test_the_checkpoint_tracker_and_manifest_files_are_not_read_through_a_link_or_a_fifo(tmp_path):
    """The job's checkpoint directory is read by checks as untrusted input: a tracker linked to another file,
    or a FIFO under its name, is no tracker (never a hang, never another file's content)."""
    from chaos.checkpoint_layout import TRACKER, read_tracker, sha256_file

    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("7\n")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / TRACKER).symlink_to(elsewhere)
    assert read_tracker(linked) is None
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / TRACKER)
    assert read_tracker(fifo_dir) is None
    with pytest.raises(OSError):
        sha256_file(linked / TRACKER)
