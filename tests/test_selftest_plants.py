"""The planted resume bugs of `chaos selftest` (chaos/selftest/hook), injected into an unmodified trainer.

tests/trainers/plant_target.py is the trainer: single process, no process group, DCP checkpoints. Its
"train" phase runs 5 steps and saves after steps 2 and 3 (the tracker names 3); its output is the golden.
A correct resume from 3 repeats golden steps 4 and 5 bitwise; each planted bug changes its own observable
as designed and says so in the plant log. All the runs are made once, concurrently, by the `runs` fixture.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "chaos" / "selftest" / "hook"
TARGET = ROOT / "tests" / "trainers" / "plant_target.py"
TRACKER = "latest_checkpointed_iteration.txt"



def _bugs() -> tuple[str, ...]:
    """chaos_plants.BUGS, read without putting the hook directory on this process's sys.path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_chaos_plants_names", HOOK / "chaos_plants" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # stdlib only; install() is not called
    return module.BUGS


BUGS = _bugs()


@dataclass
class Run:
    returncode: int
    out: dict | None
    stderr: str
    pid: int
    records: list[dict] = field(default_factory=list)

    def events(self, pid: int | None = None) -> list[str]:
        return [r["event"] for r in self.records if pid is None or r["pid"] == pid]

    def the(self, event: str) -> dict:
        found = [r for r in self.records if r["event"] == event]
        assert len(found) == 1, (event, self.records)
        return found[0]

    @property
    def steps(self) -> list[dict]:
        return self.out["steps"]


def plant_env(bug: str | None, log_dir: Path, ckpt: Path, pythonpath: list[Path] = (), **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOS_PLANT") and k != "RANK"}
    inherited = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    env["PYTHONPATH"] = os.pathsep.join([str(HOOK), *map(str, pythonpath), *inherited])
    env["PYTHONWARNINGS"] = "ignore"
    env["OMP_NUM_THREADS"] = "1"  # tiny models, many concurrent runs
    if bug is not None:
        env["CHAOS_PLANT"] = bug
    env["CHAOS_PLANT_LOG"] = str(log_dir)
    env["CHAOS_PLANT_CHECKPOINTS"] = str(ckpt)
    env["CHAOS_PLANT_TRACKER"] = TRACKER
    env.update(extra)
    return env


def read_records(log_dir: Path) -> list[dict]:
    records = []
    if log_dir.is_dir():
        for path in log_dir.glob("plant-*.jsonl"):
            records.extend(json.loads(line) for line in path.read_text().splitlines())
    return sorted(records, key=lambda r: r["time"])


def run(argv: list[str], env: dict, log_dir: Path, timeout: float = 120) -> Run:
    if env.get("CHAOS_PLANT_LOG") == str(log_dir):
        log_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate(timeout=timeout)
    out = json.loads(stdout.strip().splitlines()[-1]) if process.returncode == 0 and stdout.strip() else None
    return Run(process.returncode, out, stderr, process.pid, read_records(log_dir))


def target(phase: str, ckpt: Path, *options: str) -> list[str]:
    argv = [str(TARGET), phase, str(ckpt)]
    if phase == "train":
        argv += ["--steps", "5", "--save-at", "2,3"]
    return argv + list(options)


FSDP_BUGS = ("adam_moments_zeroed", "first_step_skipped")
TRAIN_PLANTED = ("first_step_skipped", "data_shifted_one_sample")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("plants")
    results: dict[str, Run] = {}
    workers = max(2, os.cpu_count() or 2)

    def job(name, argv, bug, ckpt, **extra):
        log_dir = base / "logs" / name
        return name, lambda: run(argv, plant_env(bug, log_dir, ckpt, **extra), log_dir)

    plain, megatron, fsdp = base / "plain", base / "megatron", base / "fsdp"
    stage1 = [job("train", target("train", plain), None, plain),
              job("train-megatron", target("train", megatron, "--megatron"), None, megatron),
              job("train-fsdp", target("train", fsdp, "--fsdp"), None, fsdp)]
    for bug in TRAIN_PLANTED:
        ckpt = base / f"train-{bug}"
        stage1.append(job(f"train+{bug}", target("train", ckpt), bug, ckpt))
    with ThreadPoolExecutor(workers) as pool:
        results.update(zip([n for n, _ in stage1], pool.map(lambda j: j[1](), stage1)))
    assert results["train"].returncode == 0, results["train"].stderr
    for name in ("train-megatron", "train-fsdp"):
        assert results[name].returncode == 0, results[name].stderr

    single = base / "single"  # only iteration 3 committed
    shutil.copytree(plain, single)
    shutil.rmtree(single / "iter_0000002")
    stage2 = [  # the longest first (megatron-core's import, a spawned worker), for the two-core CI machines
        job("resume-megatron", target("resume", megatron, "--megatron"), None, megatron),
        *(job(f"{bug}-megatron", target("resume", megatron, "--megatron"), bug, megatron)
          for bug in ("rng_not_restored", "scheduler_one_step_behind")),
        job("data-spawn", target("resume", plain, "--workers", "1", "--mp", "spawn"), "data_shifted_one_sample", plain),
        job("resume-fsdp", target("resume", fsdp, "--fsdp"), None, fsdp),
        *(job(f"{bug}-fsdp", target("resume", fsdp, "--fsdp"), bug, fsdp) for bug in FSDP_BUGS),
        job("resume", target("resume", plain), None, plain),
        *(job(bug, target("resume", plain), bug, plain) for bug in BUGS),
        job("older-single", target("resume", single), "older_checkpoint_loaded", single),
        job("ulp-rank1", target("resume", plain), "one_ulp_one_tensor", plain, RANK="1"),
        job("unknown-bug", target("resume", plain), "no_such_bug", plain),
        job("broken-log", target("resume", plain), "first_step_skipped", plain,
            CHAOS_PLANT_LOG=str(base / "no" / "such" / "dir")),
    ]
    with ThreadPoolExecutor(workers) as pool:
        results.update(zip([n for n, _ in stage2], pool.map(lambda j: j[1](), stage2)))
    return results


@pytest.fixture(scope="module")
def golden(runs) -> list[dict]:
    return runs["train"].steps


def assert_planted(result: Run, acted: bool = True) -> None:
    assert result.returncode == 0, result.stderr
    events = result.events(result.pid)
    assert events[0] == "installed" and "failed" not in result.events(), result.records
    if acted:
        assert "acted" in events, result.records
        # nothing changes before the load began
        assert events.index("load") < events.index("acted"), result.records


# ---- the unplanted run is the reference ---------------------------------------------------------------

@pytest.mark.parametrize("name, train", [("resume", "train"), ("resume-megatron", "train-megatron"),
                                         ("resume-fsdp", "train-fsdp")])
def test_a_correct_resume_repeats_the_golden_bitwise(runs, name, train):
    result = runs[name]
    assert result.returncode == 0, result.stderr
    assert result.out["loaded"] == 3
    assert result.steps == runs[train].steps[3:5]
    assert result.records == []


@pytest.mark.parametrize("bug", TRAIN_PLANTED)
def test_a_first_attempt_loads_nothing_and_no_bug_changes_it(runs, bug):
    result = runs[f"train+{bug}"]
    assert result.returncode == 0, result.stderr
    assert result.steps == runs["train"].steps
    assert result.events() == ["installed"]
    assert result.records[0]["armed"] is False and result.records[0]["rank"] is None


# ---- each bug, as designed -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, train", [("rng_not_restored", "train"), ("rng_not_restored-megatron", "train-megatron")])
def test_rng_not_restored_draws_from_the_streams_of_a_fresh_start(runs, name, train):
    result, golden = runs[name], runs[train].steps
    assert_planted(result)
    # every stream (python, numpy, torch CPU, and the Megatron tracker's two) repeats the first attempt's draws
    assert [s["draws"] for s in result.steps] == [golden[0]["draws"], golden[1]["draws"]]
    assert result.steps[0]["loss"] != golden[3]["loss"]  # another dropout mask
    assert [s["index"] for s in result.steps] == [golden[3]["index"], golden[4]["index"]]
    if "megatron" in name:  # dcp.load(state_dict, reader), the order megatron-core still uses
        loaded = [r["path"].rsplit("/", 1)[-1] for r in result.records if r["event"] == "load"]
        assert loaded == ["extra.pt", "iter_0000003"]
    what = result.the("acted")["what"]
    assert what.startswith("every RNG stream set back to its state before the load: python, numpy, torch CPU")
    if "megatron" in name:
        assert "tracker (2 streams)" in what


def test_cuda_rng_not_restored_does_not_apply_without_cuda(runs, golden):
    result = runs["cuda_rng_not_restored"]
    assert_planted(result, acted=False)
    assert result.the("not_applicable")["why"] == "CUDA is not in use in this process"
    assert result.steps == golden[3:5]


def test_adam_moments_zeroed(runs, golden):
    result = runs["adam_moments_zeroed"]
    assert_planted(result)
    assert result.steps[0]["loss"] == golden[3]["loss"]  # the forward ran on restored weights
    assert result.steps[0]["adam_step"] == golden[3]["adam_step"]
    assert result.steps[0]["exp_avg"] < 0.5 * golden[3]["exp_avg"]  # one gradient's worth, not the history
    assert result.steps[0]["params"] != golden[3]["params"]
    assert "8 Adam moment tensors" in result.the("acted")["what"]


def test_adam_step_reset(runs, golden):
    result = runs["adam_step_reset"]
    assert_planted(result)
    assert [s["adam_step"] for s in result.steps] == [[1.0], [2.0]]
    assert result.steps[0]["loss"] == golden[3]["loss"]
    assert result.steps[0]["params"] != golden[3]["params"]
    assert "set to 0 in 4 parameter states (it was 3)" in result.the("acted")["what"]


@pytest.mark.parametrize("name, train, cls", [("scheduler_one_step_behind", "train", "LambdaLR.step()"),
                                               ("scheduler_one_step_behind-megatron", "train-megatron",
                                                "OptimizerParamScheduler.step(increment=1)")])
def test_scheduler_one_step_behind(runs, name, train, cls):
    result, golden = runs[name], runs[train].steps
    assert_planted(result)
    assert golden[3]["lr"] != golden[4]["lr"]
    assert [s["lr"] for s in result.steps] == [golden[3]["lr"], golden[3]["lr"]]
    assert result.steps[0] == golden[3]  # the skipped scheduler step comes after the first optimizer step
    assert result.the("acted")["what"].startswith(f"{cls} skipped")
    assert "stays 3" in result.the("acted")["what"]


def test_data_shifted_one_sample(runs, golden):
    result = runs["data_shifted_one_sample"]
    assert_planted(result)
    # a dataset over a dataset: shifted once, not twice
    assert [s["index"] for s in result.steps] == [[i + 1 for i in g["index"]] for g in golden[3:5]]
    assert result.the("acted")["what"] == "dataset index 6 read as 7: every sample after the load is the next one"


def test_data_shifted_one_sample_in_spawned_dataloader_workers(runs, golden):
    result = runs["data-spawn"]
    assert result.returncode == 0, result.stderr
    assert [s["index"] for s in result.steps] == [[i + 1 for i in g["index"]] for g in golden[3:5]]
    main = [r for r in result.records if r["pid"] == result.pid]
    workers = [r for r in result.records if r["pid"] != result.pid]
    assert [r["event"] for r in main] == ["installed", "load", "load"] and main[0]["armed"] is False
    # the worker was spawned after the load: it starts armed (CHAOS_PLANT_ARMED) and shifts
    assert any(r["event"] == "installed" and r["armed"] is True for r in workers)
    assert [r["what"] for r in workers if r["event"] == "acted"] == [
        "dataset index 6 read as 7: every sample after the load is the next one"]


def test_older_checkpoint_loaded(runs, golden):
    result = runs["older_checkpoint_loaded"]
    assert_planted(result, acted=False)
    assert result.out["loaded"] == 2
    assert result.steps == golden[2:4]  # a correct resume from 2: steps 3 and 4 again
    assert result.the("acted")["what"] == "the tracker names iteration 3; this rank was told 2"
    loads = [r for r in result.records if r["event"] == "load"]
    assert loads[0]["how"] == "tracker" and loads[0]["path"].endswith(TRACKER)
    assert "iter_0000002" in loads[1]["path"]


def test_older_checkpoint_loaded_idles_on_the_oldest_checkpoint(runs, golden):
    result = runs["older-single"]
    assert_planted(result, acted=False)
    assert result.out["loaded"] == 3 and result.steps == golden[3:5]
    assert result.the("idle")["why"] == "the tracker named the oldest committed checkpoint (3)"


def test_one_ulp_one_tensor(runs, golden):
    import numpy as np

    result = runs["one_ulp_one_tensor"]
    assert_planted(result)
    assert result.steps[0]["loss"] == golden[3]["loss"]
    assert result.steps[0]["params"] != golden[3]["params"]
    match = re.fullmatch(r"parameter 0 of param group 0, element 0: (\S+) -> (\S+) \(one ulp, float32\)",
                         result.the("acted")["what"])
    assert match, result.the("acted")
    old, new = np.float32(float(match.group(1))), np.float32(float(match.group(2)))
    assert new == np.nextafter(old, np.float32(math.inf))


def test_one_ulp_one_tensor_only_on_rank_0(runs, golden):
    result = runs["ulp-rank1"]
    assert result.returncode == 0, result.stderr
    assert result.steps == golden[3:5]
    assert result.events() == ["installed", "load", "load"] and result.records[0]["rank"] == 1


def test_first_step_skipped(runs, golden):
    result = runs["first_step_skipped"]
    assert_planted(result)
    first = result.steps[0]
    assert first["loss"] == golden[3]["loss"]
    # after "step 4" the parameters and the Adam state are those after step 3
    assert (first["params"], first["adam_step"], first["exp_avg"]) == (golden[2]["params"], [3.0], golden[2]["exp_avg"])
    assert "undone" in result.the("acted")["what"]


@pytest.mark.parametrize("bug", FSDP_BUGS)
def test_fsdp2_dtensors_are_changed_through_their_local_shards(runs, bug):
    """FSDP2 on one rank: the same numbers as the plain model, DTensor parameters and Adam state."""
    result = runs[f"{bug}-fsdp"]
    assert_planted(result)
    assert runs["train-fsdp"].steps[3:5] != result.steps
    plain = runs[bug].steps
    for fsdp_step, plain_step in zip(result.steps, plain):
        exact = {k: v for k, v in fsdp_step.items() if k != "exp_avg"}
        assert exact == {k: v for k, v in plain_step.items() if k != "exp_avg"}
        assert fsdp_step["exp_avg"] == pytest.approx(plain_step["exp_avg"], rel=1e-6)
    assert result.the("acted")["what"] == runs[bug].the("acted")["what"]


def _has_gpu() -> bool:
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


@pytest.mark.skipif(not _has_gpu(), reason="needs a CUDA GPU")
def test_cuda_rng_streams_are_set_back_on_the_gpu(tmp_path):
    """On a GPU: dropout draws from the CUDA generator; the tracker stand-in holds a CUDA Philox state tensor
    and a CUDA torch.Generator. Draws: python, numpy, torch CPU, CUDA, tracker x2."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=120)
    if probe.stdout.strip() != "True":
        pytest.skip("torch sees no CUDA device")
    ckpt = tmp_path / "ckpt"
    train = run(target("train", ckpt, "--cuda"), plant_env(None, tmp_path / "logs-train", ckpt), tmp_path / "logs-train")
    assert train.returncode == 0, train.stderr
    golden = train.steps

    def resume(bug):
        log_dir = tmp_path / f"logs-{bug}"
        return run(target("resume", ckpt, "--cuda"), plant_env(bug, log_dir, ckpt), log_dir)

    with ThreadPoolExecutor(3) as pool:
        plain, cuda_only, everything = pool.map(resume, (None, "cuda_rng_not_restored", "rng_not_restored"))
    assert plain.returncode == 0, plain.stderr
    assert plain.steps == golden[3:5]
    first = [golden[0]["draws"], golden[1]["draws"]]
    assert_planted(cuda_only)
    assert [s["draws"][:3] for s in cuda_only.steps] == [g["draws"][:3] for g in golden[3:5]]  # CPU streams restored
    assert [s["draws"][3:] for s in cuda_only.steps] == [d[3:] for d in first]  # CUDA + tracker: a fresh start
    assert cuda_only.the("acted")["what"] == ("every CUDA RNG stream set back to its state before the load: "
                                              "CUDA x1, tracker (2 streams)")
    assert_planted(everything)
    assert [s["draws"] for s in everything.steps] == first
    assert everything.the("acted")["what"] == ("every RNG stream set back to its state before the load: "
                                               "python, numpy, torch CPU, CUDA x1, tracker (2 streams)")


def test_loads_outside_the_checkpoints_do_not_arm_and_an_empty_state_is_idle(tmp_path):
    """A torch.load outside $CHAOS_PLANT_CHECKPOINTS (a pretrained model, a tokenizer) is no checkpoint load;
    one inside arms the process; an optimizer with nothing restored makes adam_moments_zeroed idle."""
    ckpt, elsewhere = tmp_path / "ckpt", tmp_path / "elsewhere"
    ckpt.mkdir()
    elsewhere.mkdir()
    script = (
        "import os, sys, torch\n"
        "torch.save({'w': 1}, sys.argv[2] + '/x.pt'); torch.load(sys.argv[2] + '/x.pt')\n"
        "assert 'CHAOS_PLANT_ARMED' not in os.environ\n"
        "torch.save({'w': 1}, sys.argv[1] + '/x.pt'); torch.load(sys.argv[1] + '/x.pt')\n"
        "assert os.environ['CHAOS_PLANT_ARMED'] == '1'\n"
        "model = torch.nn.Linear(2, 2); optimizer = torch.optim.AdamW(model.parameters())\n"
        "model(torch.ones(1, 2)).sum().backward(); optimizer.step()\n")
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    done = subprocess.run([sys.executable, "-c", script, str(ckpt), str(elsewhere)],
                          env=plant_env("adam_moments_zeroed", log_dir, ckpt), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = read_records(log_dir)
    assert [r["event"] for r in records] == ["installed", "load", "idle"]
    assert records[1]["path"] == str((ckpt / "x.pt").resolve())
    assert records[2]["why"] == ("AdamW's state was empty at its first step after the load: nothing was restored, "
                                 "nothing to zero")


# ---- failures never take the trainer down --------------------------------------------------------------

def test_an_unknown_bug_is_a_failed_record_and_the_trainer_runs(runs, golden):
    result = runs["unknown-bug"]
    assert result.returncode == 0 and result.steps == golden[3:5]
    assert result.events() == ["failed"]
    assert result.records[0]["bug"] == "no_such_bug" and "unknown bug 'no_such_bug'" in result.records[0]["error"]
    assert "chaos plant 'no_such_bug': failed: ValueError: unknown bug" in result.stderr


def test_a_broken_log_is_said_on_stderr_and_the_trainer_runs(runs, golden):
    result = runs["broken-log"]
    assert result.returncode == 0 and result.steps == golden[3:5]  # a bug it cannot report is not planted
    assert "chaos plant 'first_step_skipped': failed:" in result.stderr
    assert "cannot write the plant log" in result.stderr or "FileNotFoundError" in result.stderr


# ---- the hook itself: cheap, standalone, chained ----------------------------------------------------------

PROBE = "import json, sys; print(json.dumps({m: m in sys.modules for m in ('torch', 'numpy', 'chaos', 'chaos_plants')}))"


def test_the_hook_imports_no_torch_and_no_chaos(tmp_path):
    log_dir = tmp_path / "logs"

    def probe(bug):
        env = plant_env(bug, log_dir / bug, tmp_path / "ckpt")
        (log_dir / bug).mkdir(parents=True)
        done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
        return bug, done

    with ThreadPoolExecutor(4) as pool:
        for bug, done in pool.map(probe, BUGS):
            assert done.returncode == 0 and done.stderr == "", (bug, done.stderr)
            assert json.loads(done.stdout) == {"torch": False, "numpy": False, "chaos": False, "chaos_plants": True}, bug
            assert [r["event"] for r in read_records(log_dir / bug)] == ["installed"], bug


def test_the_site_sitecustomize_still_runs(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\nopen(os.environ['SITE_MARKER'], 'w').write(__file__)\n")
    for bug in ("first_step_skipped", None):
        marker = tmp_path / f"marker-{bug}"
        log_dir = tmp_path / f"logs-{bug}"
        log_dir.mkdir()
        env = plant_env(bug, log_dir, tmp_path / "ckpt", pythonpath=[site], SITE_MARKER=str(marker))
        if bug is None:
            env.pop("CHAOS_PLANT", None)
        done = subprocess.run([sys.executable, "-c", "import sitecustomize; print(sitecustomize.__file__)"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert Path(marker.read_text()).resolve() == (site / "sitecustomize.py").resolve()
        assert Path(done.stdout.strip()).resolve() == (site / "sitecustomize.py").resolve()
        assert [r["event"] for r in read_records(log_dir)] == (["installed"] if bug else [])


def test_a_failing_patch_is_a_failed_record_and_the_call_goes_on(tmp_path):
    """Inside the hook: events.guarded turns an exception into a `failed` record."""
    script = (
        "import chaos_plants\n"
        "from chaos_plants import events\n"
        "def broken():\n    raise ZeroDivisionError('boom')\n"
        "assert events.guarded(broken, 'a patch')() is None\n"
        "print('went on')\n")
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    env = plant_env("adam_step_reset", log_dir, tmp_path / "ckpt")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "went on", done.stderr
    failed = [r for r in read_records(log_dir) if r["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["where"] == "a patch"
    assert re.fullmatch(r"ZeroDivisionError: boom \(at <string>:4 in broken\)", failed[0]["error"])


def test_the_log_is_appended_per_process_and_never_follows_a_link(tmp_path):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    outside = tmp_path / "outside"
    outside.write_text("")
    # two forked children: the first writes its own file; the second finds a link planted where its file goes
    script = (
        "import os, chaos_plants\n"
        "from chaos_plants import log\n"
        "def child(link):\n"
        "    r, w = os.pipe()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.read(r, 1)\n"
        "        log.record('idle', why='child')\n"
        "        os._exit(0)\n"
        "    if link:\n"
        "        os.symlink(os.environ['OUTSIDE'], os.path.join(os.environ['CHAOS_PLANT_LOG'], 'plant-%d.jsonl' % pid))\n"
        "    os.write(w, b'x')\n"
        "    os.waitpid(pid, 0)\n"
        "child(False)\n"
        "child(True)\n")
    env = plant_env("data_shifted_one_sample", log_dir, tmp_path / "ckpt", OUTSIDE=str(outside))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "cannot write the plant log" in done.stderr  # the second child, once
    files = [p for p in log_dir.glob("plant-*.jsonl") if not p.is_symlink()]
    assert len(files) == 2  # the parent's and the first child's
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in files)
    records = read_records(log_dir)
    assert sorted(r["event"] for r in records) == ["idle", "installed"]
    assert len({r["pid"] for r in records}) == 2
    assert outside.read_text() == ""
