"""The nemesis: file faults and the registry on a fake committed checkpoint; pauses and stragglers on a real
spinning process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos import faults
from chaos.faults import corrupt, straggler
from chaos.faults.corrupt import Corrupt
from chaos.faults.pause import Pause
from chaos.faults.straggler import Straggler
from chaos.ownership.processes import TrackedProcess


def committed_checkpoint(root: Path, iterations=(3, 6), tracker=6) -> Path:
    for iteration in iterations:
        directory = root / f"iter_{iteration:07d}"
        directory.mkdir(parents=True)
        (directory / "__0_0.distcp").write_bytes(bytes(range(256)) * 8)   # the largest data file
        (directory / ".metadata").write_bytes(b"m" * 100)
        (directory / "chaos_manifest.json").write_text(json.dumps({"files": {}}) + " " * 5000)
    (root / ".tmp.iter_0000009").mkdir()  # an uncommitted save must never be the one damaged
    (root / "latest_checkpointed_iteration.txt").write_text(str(tracker))
    return root


def test_truncate_damages_the_newest_committed_checkpoint(tmp_path):
    root = committed_checkpoint(tmp_path)
    started = Corrupt("truncate").start(faults.FaultContext(checkpoint_dir=root))
    assert started.delivered is None and started.event is not None and started.event[0] == "corrupted"
    result = started.event[1]
    assert result["iteration"] == 6 and result["mode"] == "truncate"
    assert Path(result["path"]) == root / "iter_0000006" / "__0_0.distcp"
    assert (result["size_before"], result["size_after"]) == (2048, 1024)
    assert (root / "iter_0000006" / "__0_0.distcp").stat().st_size == 1024
    assert (root / "iter_0000003" / "__0_0.distcp").stat().st_size == 2048, "an older checkpoint was touched"


def test_flip_inverts_one_byte_in_the_middle(tmp_path):
    root = committed_checkpoint(tmp_path)
    before = (root / "iter_0000006" / "__0_0.distcp").read_bytes()
    result = corrupt.corrupt_newest(root, "flip")
    after = (root / "iter_0000006" / "__0_0.distcp").read_bytes()
    assert len(after) == len(before)
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    assert changed == [result["offset"]] == [1024]
    assert after[1024] == before[1024] ^ 0xFF


def test_the_tracker_decides_which_checkpoint_is_newest(tmp_path):
    root = committed_checkpoint(tmp_path, iterations=(3, 6), tracker=3)  # iter 6 renamed, never named
    assert corrupt.newest_committed(root) == (3, root / "iter_0000003")


def test_no_committed_checkpoint_is_an_error_not_a_silent_no_op(tmp_path):
    with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
        corrupt.corrupt_newest(tmp_path, "truncate")
    with pytest.raises(ValueError, match="unknown corrupt mode"):
        corrupt.corrupt_file(committed_checkpoint(tmp_path) / "iter_0000006" / ".metadata", "shred")


def test_registry_routes_by_kind_and_refuses_a_second_claim():
    assert list(faults.KINDS) == ["signal", "corrupt", "pause", "straggler", "partition", "node_loss", "raise"]
    with pytest.raises(ValueError, match="already registered"):
        faults.register(Pause)
    with pytest.raises(ValueError, match="unknown fault kind 'hammer'"):
        faults.action_from_dict({"kind": "hammer"})


@pytest.mark.parametrize("action", [Pause(2.5), Straggler(cpus=0.25, duration_s=8.0), Corrupt("flip"),
                                    faults.KINDS["signal"]("SIGTERM"), faults.KINDS["node_loss"](),
                                    faults.KINDS["partition"](4.0)])
def test_every_kind_reads_back_what_plan_json_holds(action):
    data = action.to_dict()
    assert data["kind"] == action.kind and faults.action_from_dict(data) == action


def test_a_plan_written_with_every_kinds_fields_still_reads():
    """plan.json from before each kind had a class of its own: every field, the others null."""
    old = {"kind": "pause", "signal": None, "corrupt": None, "duration_s": 5.0, "cpus": None}
    assert faults.action_from_dict(old) == Pause(5.0)


def test_corrupt_through_the_supervisor_on_the_fake_trainer(tmp_path):
    from test_supervisor import events, fault, make_config

    from chaos.supervisor import supervise

    run = tmp_path / "run"
    planned = [fault("rot", ranks=(0,), step=6, phase="checkpoint.begin", corrupt="flip"),
               fault("kill", ranks=(1,), step=7, phase="forward")]
    outcome = supervise(make_config(run, planned, train_iters=8, save_interval=3))
    assert outcome.outcome == "complete"
    [record] = events(run, "corrupted")
    assert (record["fault_id"], record["iteration"], record["mode"]) == ("rot", 3, "flip")
    assert {r["fault_id"] for r in outcome.landed} == {"rot", "kill"}


# ---- stalls on a real process -----------------------------------------------------------------------------
BUSY = "import time\nwhile True:\n    pass\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(straggler.unavailable_reason() is not None, reason=str(straggler.unavailable_reason()))
def test_a_straggler_holds_a_busy_process_to_its_cpu_share_then_lets_it_go(tmp_path):
    """A spinning process gets about 0.1 CPU while throttled (a CPU quota on a cgroup of its own), is moved
    back to its own cpu cgroup when released, and the throttle's cgroup is gone."""
    process = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        tracked = TrackedProcess.from_popen(process, role="rank", rank=0)
        root = straggler.cpu_hierarchy()
        before_cgroup = straggler._cpu_cgroup_of(process.pid, root)
        context = faults.FaultContext(targets=[tracked], cgroup_name=f"chaos-test-{os.getpid()}")
        throttle = Straggler(cpus=0.1, duration_s=5).start(context)
        result = throttle.landed
        assert throttle.delivered == [process.pid] and Path(result["cgroup"]).is_dir()
        start = cpu_seconds(process.pid)
        time.sleep(1.5)
        share = (cpu_seconds(process.pid) - start) / 1.5
        assert share < 0.2, f"throttled to 0.1 CPU but used {share:.2f}"
        assert throttle.stop(True) == {"released": [process.pid]}
        assert straggler._cpu_cgroup_of(process.pid, root) == before_cgroup
        assert not Path(result["cgroup"]).exists()
        time.sleep(0.5)  # measured: a task leaving a throttled group may sit out the rest of its period(s)
        start = cpu_seconds(process.pid)
        time.sleep(1.0)
        free = cpu_seconds(process.pid) - start
        # free again: several times its throttled share (not a fixed figure: other load on the machine counts)
        assert free > 0.3 and free > 2.5 * share, f"released, it used {free:.2f} CPU-s/s (throttled: {share:.2f})"
    finally:
        process.kill()
        process.wait()


def test_a_pause_stops_a_process_until_it_is_continued():
    process = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        tracked = TrackedProcess.from_popen(process, role="rank", rank=0)
        paused = Pause(1.0).start(faults.FaultContext(targets=[tracked]))
        assert (paused.signal, paused.delivered, paused.landed) == ("SIGSTOP", [process.pid], {"duration_s": 1.0})
        time.sleep(0.2)
        assert Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
        assert paused.stop(True) == {"resumed": [process.pid]}
        time.sleep(0.2)
        assert Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("R", "S")
    finally:
        process.kill()
        process.wait()


def test_a_straggler_where_no_cpu_controller_is_mounted_says_why(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("31 23 0:28 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n")
    assert straggler.cpu_hierarchy(str(mountinfo)) is None
    mountinfo.write_text("32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n")
    assert straggler.cpu_hierarchy(str(mountinfo)) == Path("/sys/fs/cgroup/cpu,cpuacct")

