"""The `chaos` command as a user meets it: validate, bad input, golden record, run, report, replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def chaos(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chaos.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, PYTHONPATH=str(ROOT), **env))


def test_validate_every_shipped_scenario(tmp_path):
    # the megatron_lm scenarios run a Megatron-LM checkout's pretrain_gpt.py: a stand-in checkout lets them
    # validate where none is installed
    checkout = tmp_path / "Megatron-LM"
    (checkout / "megatron").mkdir(parents=True)
    (checkout / "pretrain_gpt.py").write_text("")
    scenarios = sorted(str(p) for p in (ROOT / "scenarios").rglob("*.yaml"))
    result = chaos("validate", *scenarios, MEGATRON_LM=str(checkout))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok") == len(scenarios)


def test_bad_input_names_file_and_field_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workload: {world_size: 4}\nfaults:\n  - at: {step: 3, phase: backwards}\n    target: {rank: 1}\n    signal: SIGKIL\n")
    result = chaos("validate", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(bad) in result.stderr and "faults[0]" in result.stderr, result.stderr
    missing = chaos("run", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr


SMALL = """name: cli_small
workload: {world_size: 2, tensor_parallel: 2, train_iters: 4, save_interval: 2}
faults:
  - at: {step: 3, phase: forward}
    target: {rank: 0}
    signal: SIGKILL
"""


def test_golden_record_then_run_report_and_replay(tmp_path):
    scenario = tmp_path / "small.yaml"
    scenario.write_text(SMALL)
    golden = tmp_path / "goldens" / "small.json"
    recorded = chaos("golden", "record", str(scenario), "--out", str(golden), cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr[-3000:]
    values = json.loads(golden.read_text())["lm loss"]
    assert values["start_step"] == 1 and values["end_step"] == 4 and len(values["values"]) == 4
    meta = json.loads(golden.with_name("small.meta.json").read_text())
    assert meta["final_state_hash"] and meta["environment"]["device"] == "cpu"

    run_dir = tmp_path / "run"
    ran = chaos("run", str(scenario), "--out", str(run_dir), "--golden", str(golden), cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr[-3000:]
    assert "PASS" in ran.stdout and str(run_dir) in ran.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert report["verdict"] == "pass" and report["golden"]["path"] == str(golden)
    assert report["faults"][0]["landed"]["step"] == 3

    rendered = chaos("report", str(run_dir))
    assert rendered.returncode == 0 and "PASS" in rendered.stdout

    replayed = chaos("replay", str(run_dir), "--out", str(tmp_path / "replay"), cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr[-2000:]
    assert json.loads((tmp_path / "replay" / "plan.json").read_text()) == json.loads((run_dir / "plan.json").read_text())


def test_chaos_state_reads_a_checkpoint_and_names_what_differs_from_another(tmp_path):
    """`chaos state DIR [--against OTHER]`: the checkpoint's entries by category; the entries that differ and
    exit 1 when they do; a damaged one is answered with what is wrong (exit 3), never a traceback."""
    import shutil

    source = ROOT / "tests" / "fixtures" / "megatron_lm" / "checkpoints" / "torch_dist" / "iter_0000004"
    read = chaos("state", str(source))
    assert read.returncode == 0 and "progress 5" in read.stdout and "optimizer 85" in read.stdout, read.stdout
    same = chaos("state", str(source), "--against", str(source))
    assert same.returncode == 0 and "0 of 1002 entries differ" in same.stdout, same.stdout
    damaged = tmp_path / "iter_0000004"
    shutil.copytree(source, damaged)
    (damaged / "__0_0.distcp").write_bytes(b"truncated")
    broken = chaos("state", str(source), "--against", str(damaged))
    assert broken.returncode == 3 and "__0_0.distcp" in broken.stderr and "Traceback" not in broken.stderr


def test_repeats_must_be_a_small_whole_number():
    for bad in ("0", "two", "1000"):
        result = chaos("golden", "record", "scenarios/random_seeded.yaml", "--repeats", bad)
        assert result.returncode == 2 and "--repeats" in result.stderr and "Traceback" not in result.stderr


def test_version_names_chaos_and_python():
    result = chaos("--version")
    assert result.returncode == 0 and result.stdout.startswith("chaos ") and "Python 3." in result.stdout


def test_plan_prints_the_faults_a_run_would_get_without_running(tmp_path):
    from chaos.scenario import load_scenario
    from chaos.schedule import plan_faults, plan_from_json

    path = ROOT / "scenarios" / "random_seeded.yaml"
    shown = chaos("plan", str(path), "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert plan_from_json(shown.stdout) == plan_faults(load_scenario(path))  # what plan.json would hold
    reseeded = chaos("plan", str(path), "--seed", "5", "--json", cwd=tmp_path)
    import dataclasses

    assert plan_from_json(reseeded.stdout) == plan_faults(dataclasses.replace(load_scenario(path), seed=5))
    assert reseeded.stdout != shown.stdout  # the seed draws other random faults
    table = chaos("plan", str(ROOT / "scenarios" / "gpt3_mcore_tp2_zero3_resume_fsdp_dtensor.yaml"), cwd=tmp_path)
    assert "f2: attempt 2, step 8 checkpoint.shard #1 -> rank 2: SIGKILL (scenario)" in table.stdout, table.stdout
    assert "f3: attempt 3, step 10 forward -> all ranks: SIGTERM" in table.stdout
    assert not any(tmp_path.iterdir())  # nothing launched, nothing written
    bad = chaos("plan", str(tmp_path / "nope.yaml"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nope.yaml" in bad.stderr


def test_every_positional_argument_says_what_it_is():
    for command in ("run", "validate", "plan", "report", "replay", "state", "soak", "selftest"):
        result = chaos(command, "--help")
        positional = result.stdout.split("positional arguments:")[1].split("options:")[0]
        names = [line for line in positional.splitlines() if line.startswith("  ") and not line.startswith("   ")]
        assert names, result.stdout
        for line in names:  # `  name   what it is`, or a long name with its help on the next line
            following = positional.splitlines()[positional.splitlines().index(line) + 1:][:1]
            assert len(line.split(None, 1)) == 2 or (following and following[0].startswith("      ")), \
                f"chaos {command}: {line.strip()} has no help"
