"""Following an unmodified Megatron-LM job, piece by piece, on real inputs: its captured output lines become
history records (the loss-window rule included), a follower turns a rank's output file and a real checkpoint
directory into records and observations, observed triggers fire and judge their window, and the exec shim
hands the supervisor the trainer's own pid."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from chaos import control, history
from chaos.blackbox.follower import Follower, Observation
from chaos.faults.signals import Signal
from chaos.plan import PlannedFault, Target, Trigger
from chaos.supervisor.observed import ObservedTriggers
from chaos.workloads.megatron_lm.reader import MegatronLogReader

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "megatron_lm" / "captured_stdout.txt"


def captured_lines() -> list[str]:
    return [line.rstrip("\n") for line in FIXTURE.read_text().splitlines() if line and not line.startswith("#")]


def feed(reader: MegatronLogReader, lines: list[str]) -> list[tuple[str, dict]]:
    out = []
    for number, line in enumerate(lines, start=1):
        out += reader.feed(line, number)
    return out


def test_megatron_lm_reader_turns_captured_lines_into_history_records():
    records = feed(MegatronLogReader(0, Path("<run>/ck_fsdp_golden")), captured_lines())
    events = [event for event, _ in records]
    metrics = [fields for event, fields in records if event == history.METRICS]
    assert [m["step"] for m in metrics] == [10, 11, 11, 12]
    assert metrics[0] == {"step": 10, "lm_loss": 10.92605, "grad_norm": 2.942, "lr": 4.6875e-07,
                          "consumed_samples": 320, "num_zeros": 1951.0}
    # one process: its second logged iteration is Megatron's mean of its first two
    assert metrics[1]["loss_window"] == [10, 11] and "loss_window" not in metrics[2]
    assert metrics[3]["truncated"]  # the capture cut the resumed lines short: the complete fields still count
    assert history.POINT in events and history.CHECKPOINT_LOADED in events and history.TRAIN_END in events
    loaded = [fields for event, fields in records if event == history.CHECKPOINT_LOADED]
    # the no-checkpoint warning of the golden run's directory (this reader's), then the relaunch's load
    assert loaded == [{"iteration": 0, "path": None}, {"iteration": 16, "path": "<run>/ck_fsdp_term/iter_0000016"}]
    train_end = next(fields for event, fields in records if event == history.TRAIN_END)
    assert train_end["reason"] == "preempted"
    exception = next(fields for event, fields in records if event == "exception")
    assert exception["exception_type"] == "AssertionError" and "distrib_optimizer.py:839" in exception["summary"]


def test_megatron_lm_reader_counts_no_checkpoint_only_for_its_own_directory():
    reader = MegatronLogReader(0, Path("/run/checkpoints"))
    own = reader.feed("WARNING: could not find the metadata file /run/checkpoints/latest_checkpointed_iteration.txt", 1)
    other = reader.feed("WARNING: could not find the metadata file /elsewhere/latest_checkpointed_iteration.txt", 2)
    assert own == [(history.CHECKPOINT_LOADED, {"iteration": 0, "path": None})] and other == []


def test_megatron_lm_reader_reports_lines_it_cannot_parse():
    records = MegatronLogReader(0, Path("/ck")).feed(" iteration        3/      12 | consumed samples: lots |", 7)
    assert records[0][0] == "parse_error" and records[0][1]["line_number"] == 7


ITERATION = (" [2026-12-03 13:32:06.249366] iteration {step:8d}/      30 | consumed samples: {samples:12d} | "
             "learning rate: 4.687500E-07 | global batch size:    32 | lm loss: 1.092605E+01 | grad norm: 2.942 |")


def test_megatron_lm_follower_writes_histories_and_sees_the_checkpoint_directory(tmp_path):
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    follower = Follower(run_dir, 1, 1, checkpoint_dir=checkpoints, tracker_name="latest_checkpointed_iteration.txt",
                        new_reader=lambda rank: MegatronLogReader(rank, checkpoints))
    try:
        follower.rank_started(0, os.getpid())
        output = history.attempt_dir(run_dir, 1) / "rank-0.out"
        with open(output, "a") as out:
            out.write(ITERATION.format(step=4, samples=128) + "\n" + ITERATION.format(step=5, samples=160)[:-10])
        grew, seen = follower.poll()
        assert grew and [o.event for o in seen] == [history.STEP_BEGIN, history.METRICS, history.STEP_END]
        (checkpoints / "iter_0000004").mkdir(parents=True)
        (checkpoints / "iter_0000004" / "__0_0.distcp").write_bytes(b"x" * 10)
        (checkpoints / "iter_0000004" / ".metadata").write_bytes(b"m")
        (checkpoints / "latest_checkpointed_iteration.txt").write_text("4")
        _, seen = follower.poll()
        phases = [o.phase for o in seen if o.rank is None]
        assert phases == ["checkpoint.begin", "checkpoint.shard", "checkpoint.metadata", "checkpoint.tracker"]
        commit = next(o for o in seen if o.event == history.CHECKPOINT_COMMITTED)
        assert commit.fields["files"] == {"__0_0.distcp": 10, ".metadata": 1}
        _, seen = follower.poll(final=True)  # the unterminated line is read once the rank is gone
        assert [o.step for o in seen if o.event == history.METRICS] == [5]
        snapshot = follower.snapshot()
        assert snapshot["last_iteration_logged"] == 5 and snapshot["tracker"] == "4"
    finally:
        follower.close()
    records = history.read_jsonl(history.rank_history_path(run_dir, 1, 0))
    assert [r["event"] for r in records][:2] == [history.START, history.STEP_BEGIN]
    assert any(r["event"] == history.CHECKPOINT_COMMITTED and r["iteration"] == 4 for r in records)


class _StubFollower:
    """What ObservedTriggers reads of a follower: a snapshot."""

    def __init__(self) -> None:
        self.state = {"last_iteration_logged": None, "tracker": None, "files": {}, "load_finished": False}

    def snapshot(self) -> dict:
        return dict(self.state)

    def close(self) -> None:
        pass


def fault(fault_id: str, **trigger) -> PlannedFault:
    return PlannedFault(fault_id, Trigger(**trigger), Target("rank", (0,)), Signal("SIGKILL"))


def test_megatron_lm_observed_triggers_fire_on_what_was_seen_and_judge_their_window():
    stub = _StubFollower()
    triggers = ObservedTriggers(stub, [fault("f1", step=3, phase="iteration"),
                                       fault("f2", step=5, phase="iteration", delay_s=1.0),
                                       fault("f3", step=6, phase="checkpoint.shard", index=2),
                                       fault("f4", phase="checkpoint.load")])
    stub.state["last_iteration_logged"] = 3
    due = triggers.due([Observation(history.METRICS, 1, mono=10.0, step=3)], now=10.001)
    assert [f for f, _ in due] == ["f1"] and due[0][1]["window_open"] and due[0][1]["latency_s"] < 0.01
    stub.state["last_iteration_logged"] = 5
    assert triggers.due([Observation(history.METRICS, 1, mono=20.0, step=5)], now=20.5) == []  # delay_s not over
    assert triggers.next_fire_at() == 21.0
    stub.state["last_iteration_logged"] = 6  # iteration 6 logged before the delayed signal went out
    (fault_id, late), = triggers.due([], now=21.0)
    assert fault_id == "f2" and not late["window_open"] and "iteration 6 was already logged" in late["window"]
    shard1 = Observation("checkpoint.shard", None, mono=30.0, step=6, phase="checkpoint.shard", index=1)
    shard2 = Observation("checkpoint.shard", None, mono=30.1, step=6, phase="checkpoint.shard", index=2)
    (fault_id, evidence), = triggers.due([shard1, shard2], now=30.1)
    assert fault_id == "f3" and evidence["index"] == 2 and evidence["window_open"]
    stub.state["load_finished"] = True
    (fault_id, evidence), = triggers.due([Observation(history.POINT, 0, mono=40.0, step=6, phase="checkpoint.load")],
                                         now=40.0)
    assert fault_id == "f4" and evidence["step"] == 6 and not evidence["window_open"]


def test_megatron_lm_exec_shim_reports_its_pid_then_becomes_the_trainer(tmp_path):
    """The supervisor's pidfd is opened on the shim's pid; after exec the same pid is the trainer, whose
    output goes to the attempt's rank-<r>.out and whose environment holds nothing of chaos."""
    path = str(tmp_path / "c.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    hello: dict = {}

    def answer() -> None:
        connection, _ = server.accept()
        hello.update(control.LineReader(connection).read_message() or {})
        control.send(connection, {"type": "plan", "holds": []})
        connection.close()

    thread = threading.Thread(target=answer)
    thread.start()
    trainer = "import os; print(os.getpid(), sorted(k for k in os.environ if k.startswith('CHAOS_')))"
    env = dict(os.environ, RANK="1", CHAOS_CONTROL_SOCKET=path, CHAOS_HISTORY_DIR=str(tmp_path), CHAOS_ATTEMPT="2")
    process = subprocess.run([sys.executable, "-m", "chaos.blackbox.exec_rank", "--", sys.executable, "-c", trainer],
                             env=env, capture_output=True, text=True, timeout=60)
    thread.join(timeout=10)
    server.close()
    assert process.returncode == 0, process.stderr
    printed_pid, chaos_variables = (tmp_path / "rank-1.out").read_text().split(" ", 1)
    assert hello["rank"] == 1 and hello["attempt"] == 2 and hello["pid"] == int(printed_pid)
    assert chaos_variables.strip() == "[]"


def test_megatron_lm_exec_shim_starts_nothing_when_the_supervisor_refuses(tmp_path):
    path = str(tmp_path / "c.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    thread = threading.Thread(target=lambda: server.accept()[0].close())  # drops the connection: rejected
    thread.start()
    marker = tmp_path / "started"
    env = dict(os.environ, RANK="0", CHAOS_CONTROL_SOCKET=path, CHAOS_HISTORY_DIR=str(tmp_path))
    process = subprocess.run([sys.executable, "-m", "chaos.blackbox.exec_rank", "--", "touch", str(marker)],
                             env=env, capture_output=True, text=True, timeout=60)
    thread.join(timeout=10)
    server.close()
    assert process.returncode == 70 and not marker.exists() and "not accepted" in process.stderr
