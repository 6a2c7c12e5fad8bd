"""An unmodified Megatron-LM job's own in-process restarts (--inprocess-restart) under restart.by: job: NVIDIA's wrapper
re-enters pretrain() in the same processes, telling chaos nothing (no exec, no hello, same pid), and chaos sees each
re-entry in the ranks' output and makes it the job's next attempt.

The pieces on their own (the wrapper's lines as NVRx prints them, the reader, the follower splitting one output file
into attempts, the scenario's rules, the supervisor's hand-over), then two real runs of the CPU stand-in
(tests/trainers/megatron_like.py --inprocess-restart, ~40 s each on 2 cores): rank 1 paused past the soft timeout
and recovered in the same pids, bitwise; and upstream's bug (every re-entry fails at once, unbounded), which chaos
stops after restart.max_restarts re-entries and recovery_progress fails as a restart loop."""

from __future__ import annotations

import logging
import selectors
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chaos import control, golden, history
from chaos.blackbox.follower import Follower
from chaos.errors import InputError
from chaos.ownership.processes import ProcessTable, TrackedProcess, create_time
from chaos.runner import run_scenario
from chaos.supervisor import in_process
from chaos.supervisor.control_server import Connection
from chaos.supervisor.history_tail import HistoryTail
from chaos.supervisor.ranks import Rank
from chaos.workloads.base import LaunchSpec
from chaos.workloads.megatron_lm import log_lines as ll
from chaos.workloads.megatron_lm.reader import MegatronLogReader
from test_megatron_lm_run import megatron_lm_golden, scenario  # noqa: F401 - the session's golden of the stand-in

# ---- the wrapper's lines, verbatim --------------------------------------------------------------------------------
# NVRx 0.7.0 under Megatron-LM main d98e8a64dd on one H100 (scripts/gpu_inprocess_probe.sh, run A, 2026-12-06)
GPU_FAULT = ("2026-12-06 21:43:55,584 [ERROR] [vm] [workload:0(0) infra:?(?)] wrap.py:582 [2026-12-06 21:43:55.584542] "
             "rank=0 fn_ex: RuntimeError('ipr-probe: injected fault in iteration 7')")
GPU_STARTING = ("[2026-12-06 21:43:56,587] [ALWAYS] [InprocessRestarter.Restarter] [NestedRestarter] name=[InProcess] "
                "state=handling stage=starting")
GPU_TERM = ("2026-12-06 21:43:57,609 [WARNING] [vm] [workload:0(0) infra:?(?)] wrap.py:598 [2026-12-06 21:43:57.609535] "
            "rank=0 term_ex: RankShouldRestart('Interruption.EXCEPTION affecting ranks {0}')")
GPU_RESTART = ("2026-12-06 21:43:57,624 [INFO] [vm] [workload:0(0) infra:?(?)] wrap.py:628 [2026-12-06 21:43:57.624664] "
               "rank=0 restart_ex: HealthCheckPassed()")
GPU_COMPLETED = ("[2026-12-06 21:43:58,317] [ALWAYS] [InprocessRestarter.Restarter] [NestedRestarter] name=[InProcess] "
                 "state=handling stage=completed")
GPU_ARGS_LOST = ("2026-12-06 21:43:58,398 [ERROR] [vm] [workload:0(0) infra:?(?)] wrap.py:582 [2026-12-06 21:43:58.398298] "
                 "rank=0 fn_ex: AssertionError('args is not initialized.')")
GPU_FINALIZED = ("[2026-12-06 21:45:07,927] [ALWAYS] [InprocessRestarter.Restarter] [NestedRestarter] name=[InProcess] "
                 "state=finalized")
GPU_INITIALIZE = ("[2026-12-06 21:43:32,894] [ALWAYS] [InprocessRestarter.Restarter] [NestedRestarter] name=[InProcess] "
                  "state=initialize")


def test_the_wrappers_gpu_lines_parse_to_their_events_and_roles():
    assert ll.parse_line(GPU_FAULT) == ll.WrapperLine("fn_ex", 0, "RuntimeError('ipr-probe: injected fault in iteration 7')")
    assert ll.parse_line(GPU_TERM) == ll.WrapperLine(
        "term_ex", 0, "RankShouldRestart('Interruption.EXCEPTION affecting ranks {0}')")
    assert ll.parse_line(GPU_RESTART) == ll.WrapperLine("restart_ex", 0, "HealthCheckPassed()")
    assert ll.parse_line(GPU_COMPLETED) == ll.RestarterState("handling", "completed")
    roles = [ll.parse_line(line).role for line in (GPU_INITIALIZE, GPU_FAULT, GPU_STARTING, GPU_TERM, GPU_RESTART,
                                                   GPU_COMPLETED, GPU_FINALIZED)]
    assert roles == [None, ll.DETECTED, ll.DETECTED, ll.DETECTED, ll.REENTERED, ll.REENTERED, None]
    assert ll.parse_line("[2026-12-06 22:00:00,000] [ALWAYS] [InprocessRestarter.Restarter] [NestedRestarter] "
                         "name=[InProcess] state=aborted").role == ll.GAVE_UP


def cpu_line(kind: str, rank: int, exception: BaseException) -> str:
    """What NVRx 0.4.1 prints on this machine: its own log_exc text through the handler chaos's trainer (and the
    stand-in) installs (chaos.workloads.gpt3.inprocess.LOG_FORMAT), formatted by logging itself."""
    utils = pytest.importorskip("nvidia_resiliency_ext.inprocess.utils")
    from chaos.workloads.gpt3.inprocess import LOG_FORMAT

    record = logging.LogRecord("nvidia_resiliency_ext.inprocess.wrap", logging.ERROR, "wrap.py", 487,
                               utils.log_exc(rank, exception, kind), None, None)
    return logging.Formatter(LOG_FORMAT).format(record)


def test_the_wrappers_cpu_lines_parse_the_same():
    try:
        raise RuntimeError("gloo timeout") from ValueError("peer gone")
    except RuntimeError as error:
        line = cpu_line("exit_ex", 1, error)
    assert " | nvidia_resiliency_ext.inprocess.wrap | rank=1 exit_ex: " in line  # the format, not a copy of it
    assert ll.parse_line(line) == ll.WrapperLine("exit_ex", 1, "RuntimeError('gloo timeout') <- ValueError('peer gone')")
    assert ll.parse_line(cpu_line("fn_ex", 0, AssertionError("args is not initialized."))).role == ll.DETECTED


@pytest.mark.parametrize("line", [
    "2026-12-06 21:43:55,584 [ERROR] wrap.py:582 fn_ex: RuntimeError('no rank')",  # the wrapper's text, cut
    "[NestedRestarter] name=[InProcess] state=rebooting",                           # a state NVRx did not have
    "[NestedRestarter] name=[Elsewhere] state=handling",
])
def test_wrapper_lines_that_drifted_are_reported(line):
    assert isinstance(ll.parse_line(line), ll.ParseError)


# ---- the reader and the follower: one output file, several attempts -------------------------------------------------
ITERATION = (" [2026-12-06 22:30:00.000000] iteration {step:8d}/       8 | consumed samples: {samples:12d} | "
             "learning rate: 4.687500E-07 | global batch size:     8 | lm loss: 1.092605E+01 | grad norm: 2.942 |")
LOAD = " loading checkpoint from /run/checkpoints at iteration {it}"
LOADED = "  successfully loaded checkpoint from /run/checkpoints [ t 1/1, gtp_remat 1/1, p 1/1 ] at iteration {it}"


def iteration(step: int) -> str:
    return ITERATION.format(step=step, samples=8 * step)


def test_a_rank_s_attempt_ends_at_its_first_re_entry_line_after_a_detection():
    reader = MegatronLogReader(0, Path("/run/checkpoints"))
    assert reader.feed(GPU_COMPLETED, 1) == []  # the previous restart's end: already the last attempt's boundary
    assert reader.feed(GPU_RESTART, 2) == []    # (a re-entry line with nothing detected in this attempt)
    detected = reader.feed(GPU_FAULT, 3)
    assert detected == [(history.JOB_INTERRUPTED, {"layer": "in_process", "kind": "fn_ex", "role": ll.DETECTED,
                                                   "line": GPU_FAULT}),
                        (history.EXCEPTION, {"summary": "RuntimeError('ipr-probe: injected fault in iteration 7') "
                                                        "(caught by the in-process wrapper)",
                                             "exception_type": "RuntimeError"})]
    assert reader.feed(GPU_TERM, 4)[0][1]["kind"] == "term_ex"
    (event, fields), = reader.feed(GPU_RESTART, 5)
    assert event == history.JOB_REENTERED and fields["kind"] == "restart_ex"


def write(path: Path, lines: list[str]) -> None:
    with open(path, "a") as out:
        out.write("".join(line + "\n" for line in lines))


def follower_for(run_dir: Path, attempt: int, outputs=None) -> Follower:
    checkpoints = run_dir / "checkpoints"
    return Follower(run_dir, attempt, 2, checkpoint_dir=checkpoints, tracker_name="latest_checkpointed_iteration.txt",
                    new_reader=lambda rank: MegatronLogReader(rank, checkpoints), outputs=outputs)


def steps(run_dir: Path, attempt: int, rank: int) -> list[int]:
    return [r["step"] for r in history.read_jsonl(history.rank_history_path(run_dir, attempt, rank))
            if r["event"] == history.METRICS]


def test_the_follower_splits_each_ranks_output_at_its_re_entry_and_the_next_attempt_reads_on(tmp_path):
    """Rank 1 (Megatron's last rank, which logs the iterations) is stopped in iteration 4; both ranks' wrappers
    restart; each re-entered pretrain() loads 2 and trains on. The lines each rank printed after its own re-entry
    line, read in the same poll, are held for the next attempt; attempt 2's follower continues the same files
    (in attempt 1's directory, where the same processes go on writing): nothing read twice, nothing lost."""
    run_dir = tmp_path / "run"
    outputs = history.attempt_dir(run_dir, 1)
    outputs.mkdir(parents=True)
    first = follower_for(run_dir, 1)
    write(outputs / "rank-0.out", [GPU_TERM])  # rank 0, waiting for rank 1 past the soft timeout, told to restart
    write(outputs / "rank-1.out", [iteration(1), iteration(2), iteration(3)])
    first.poll()
    assert not first.job_reentered and steps(run_dir, 1, 1) == [1, 2, 3]
    # rank 0 restarts, and goes on into its next entry, before rank 1 (stopped) says anything
    write(outputs / "rank-0.out", [GPU_RESTART, GPU_COMPLETED, LOAD.format(it=2), LOADED.format(it=2)])
    first.poll()
    assert first.reentered == {0: "restart_ex"} and not first.job_reentered
    write(outputs / "rank-1.out", [GPU_TERM.replace("rank=0", "rank=1"), GPU_RESTART.replace("rank=0", "rank=1"),
                                   iteration(3), iteration(4)])
    first.poll()
    assert first.job_reentered and first.reentered == {0: "restart_ex", 1: "restart_ex"}
    carried = first.carry_outputs()
    first.close()
    second = follower_for(run_dir, 2, outputs=carried)
    try:
        write(outputs / "rank-1.out", [iteration(5)])
        second.poll()
        assert steps(run_dir, 2, 1) == [3, 4, 5] and steps(run_dir, 1, 1) == [1, 2, 3]
        rank0 = history.read_jsonl(history.rank_history_path(run_dir, 2, 0))
        assert [(r["event"], r.get("iteration", r.get("step"))) for r in rank0] == [
            (history.POINT, 2), (history.CHECKPOINT_LOADED, 2)]  # `handling completed` was attempt 1's end
        assert not second.reentered and second.output_dir == outputs
        attempt1 = [r["event"] for r in history.read_jsonl(history.rank_history_path(run_dir, 1, 0))]
        assert attempt1[-2:] == [history.JOB_INTERRUPTED, history.JOB_REENTERED]
    finally:
        second.close()


def test_the_restarters_completed_handling_ends_the_attempt_when_the_ranks_log_no_restart_ex(tmp_path):
    """A job logging at WARNING shows no restart_ex (INFO): rank 0's restarter says `handling completed`, which it
    says only past the restart barrier every rank goes through, so every rank has re-entered."""
    run_dir = tmp_path / "run"
    outputs = history.attempt_dir(run_dir, 1)
    outputs.mkdir(parents=True)
    follower = follower_for(run_dir, 1)
    try:
        write(outputs / "rank-0.out", [GPU_TERM, GPU_COMPLETED])
        write(outputs / "rank-1.out", [iteration(1), GPU_TERM.replace("rank=0", "rank=1")])
        follower.poll()
        assert follower.job_reentered and follower.reentered == {0: "state=handling stage=completed"}
    finally:
        follower.close()


def test_the_standin_reads_megatrons_inprocess_flags_and_its_own_bug_switch():
    from test_megatron_lm_standin import FLAGS, WORLD_SIZE, load_standin

    standin = load_standin()
    argv = [*FLAGS, "--save", "/ck", "--inprocess-restart", "--inprocess-soft-timeout", "5",
            "--chaos-bugs", "inprocess_args_lost, load_previous"]
    args, config = standin.parse(argv, WORLD_SIZE)
    assert args.inprocess_restart and config.inprocess_soft_timeout_s == 5.0
    assert config.bugs == ("load_previous",) and standin.ARGS_LOST in standin.bug_switches(args)
    plain_args, plain = standin.parse([*FLAGS, "--save", "/ck"], WORLD_SIZE)
    assert not plain_args.inprocess_restart and plain_args.inprocess_soft_timeout == 60.0  # Megatron's default


# ---- the scenario's rules ------------------------------------------------------------------------------------------
IN_PROCESS = ", --inprocess-restart, --inprocess-soft-timeout, 5"
JOB = "launcher: torchrun\nrestart: {by: job, max_restarts: 3}"
STORE = ', TORCH_DISABLE_SHARE_RDZV_TCP_STORE: "1", TORCH_CPP_LOG_LEVEL: ERROR'


def test_inprocess_restart_is_a_fact_of_the_job_restarting_itself(tmp_path):
    job = scenario("  []", extra_args=IN_PROCESS, restart=JOB, env=STORE)
    layer = job.facts.in_process
    assert (layer.option, layer.restarts, layer.hang_timeout_s, layer.turned_on_by) == (
        "args", None, 5.0, "--inprocess-restart")
    assert layer.nvrx_in_this_python  # the stand-in runs chaos's interpreter: NVRx is checked here
    assert job.restart.job_hang_timeout_s == 5.0  # the wrapper's soft timeout is the job's hang detection
    launch = job.workload.launch(tmp_path / "job")
    assert launch.in_process and "--inprocess-restart" in launch.argv  # torchrun gets --max-restarts=0
    # how the job recovers is not what it computes: the same golden as the job without it
    plain = scenario("  []")
    assert golden.workload_fingerprint(scenario("  []", extra_args=IN_PROCESS, restart=JOB).workload) == \
        golden.workload_fingerprint(plain.workload)
    assert plain.facts.in_process is None and not plain.workload.launch(tmp_path / "plain").in_process


@pytest.mark.parametrize("extra, restart, field, fragment", [
    (IN_PROCESS, "restart: {max_restarts: 2}", "workload.args",
     "--inprocess-restart makes the job restart itself in-process"),
    (IN_PROCESS, "launcher: torchrun\nrestart: {by: job, max_restarts: 2, job_hang_timeout_s: 9}",
     "restart.job_hang_timeout_s", "soft timeout, 5 s"),
    (", --inprocess-restart, \"1\"", JOB, "workload.args[", "is a switch and takes no value"),
    (", --inprocess-restart, --inprocess-soft-timeout, soon", JOB, "workload.args[", "expects one number of seconds"),
    (", --inprocess-restart, --inprocess-soft-timeout, -1", JOB, "workload.args[", "expects one number of seconds"),
])
def test_inprocess_restart_scenarios_are_validated(extra, restart, field, fragment):
    with pytest.raises(InputError) as raised:
        scenario("  []", extra_args=extra, restart=restart)
    assert raised.value.field.startswith(field) and fragment in raised.value.message, raised.value


# ---- the supervisor's hand-over --------------------------------------------------------------------------------------
def test_a_log_followed_re_entry_carries_the_same_processes_to_the_next_attempt(tmp_path):
    """The next attempt's ranks are the carried processes, watched through the pidfds opened at their first hello
    (no new hello comes), in its own table, each with a history tail of its own attempt's file."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ours, theirs = socket.socketpair()
    try:
        process = TrackedProcess.adopt(child.pid, create_time(child.pid), role="rank", rank=0)
        first_hello = Connection(ours, control.LineReader(ours), rank=0, closed=True)
        old = Rank(0, first_hello, process, HistoryTail(history.rank_history_path(tmp_path, 1, 0)))
        run_dir = tmp_path / "run"
        (history.attempt_dir(run_dir, 1)).mkdir(parents=True)
        follower = follower_for(run_dir, 1)
        carried = in_process.carry(follower, {0: old}, [child.pid])
        follower.close()
        assert list(carried.ranks) == [0] and carried.outputs.directory == history.attempt_dir(run_dir, 1)
        selector, table_ranks = selectors.DefaultSelector(), {}
        table = ProcessTable()
        (rank, pid), = in_process.adopt(carried, selector, table, table_ranks, run_dir, 2)
        assert pid == child.pid and table.ranks[0] is process and table_ranks[0] is rank
        assert rank.tail.path == history.rank_history_path(run_dir, 2, 0) and rank.connection is first_hello
        assert selector.get_key(process.pidfd).data == ("exit", process)  # its death is seen at once
        selector.close()
        spec = LaunchSpec(argv=("x",), world_size=1, nodes=1, checkpoint_dir=tmp_path, train_iters=1,
                          save_interval=1, in_process=True)
        assert not in_process.reentered(LaunchSpec(argv=("x",), world_size=1, nodes=1, checkpoint_dir=tmp_path,
                                                   train_iters=1, save_interval=1), table, [], None)
        assert not in_process.reentered(spec, table, [], None)  # nothing said it re-entered
        carried.close()
        assert process.pidfd is None
    finally:
        child.kill()
        child.wait()
        theirs.close()
        ours.close()


# ---- real runs ------------------------------------------------------------------------------------------------------
PAUSE = """
  - at: {step: 3}                                 # rank 1 logs iteration 3, then stops for 8 s
    target: {rank: 1}
    pause: 8"""


def check(result, name: str) -> dict:
    return next(c for c in result.checks if c["name"] == name)


def needs_nvrx(job) -> None:
    from chaos import preflight

    reason = preflight.in_process_unavailable(job.facts)
    if reason:
        pytest.skip(reason)


def test_an_unmodified_job_paused_past_its_soft_timeout_re_enters_and_passes_bitwise(tmp_path, megatron_lm_golden):
    """Rank 1 stopped 8 s, past the wrapper's 5 s soft timeout: the wrapper aborts and re-enters pretrain() in both
    ranks, which loads iteration 2 and trains to the end. chaos follows the re-entry from the ranks' output: two
    attempts of the same pids, every check decided on them, bitwise against the plain job's golden."""
    job = scenario(PAUSE, extra_args=IN_PROCESS, restart="launcher: torchrun\nrestart: {by: job, max_restarts: 2}",
                   env=STORE, name="megatron_lm_inprocess")
    needs_nvrx(job)
    result = run_scenario(job, out_dir=tmp_path / "run", golden_path=megatron_lm_golden, say=lambda text: None)
    assert result.verdict == "pass", result.summary
    statuses = {c["name"]: c["status"] for c in result.checks}
    assert statuses.pop("node_loss") == "skip" and set(statuses.values()) == {"pass"}, statuses
    run = history.load_run_history(tmp_path / "run")
    starts = run.supervisor_events(history.ATTEMPT_START)
    assert [(s.get("by"), s.get("in_process")) for s in starts] == [(None, None), ("job", True)]
    hellos = run.supervisor_events(history.RANK_HELLO)
    # attempt 2's ranks said no hello: the same processes, taken over as they are
    assert sorted((h["attempt"], h["rank"], bool(h.get("carried"))) for h in hellos) == [
        (1, 0, False), (1, 1, False), (2, 0, True), (2, 1, True)]
    pids = {h["rank"]: {x["pid"] for x in hellos if x["rank"] == h["rank"]} for h in hellos}
    assert all(len(seen) == 1 for seen in pids.values()), pids  # each rank one process, both attempts
    handed, last = run.supervisor_events(history.TEARDOWN)
    assert handed["by"] == "job" and handed["in_process"] and handed["survivors"] == []
    assert sorted(handed["carried"]) == sorted(pid for seen in pids.values() for pid in seen)
    assert [a["resumed_from"] for a in result.report["attempts"]] == [0, 2], result.report["attempts"]
    (recovery,) = result.report["timings"]["recovery_s"]
    assert (recovery["by"], recovery["layer"], recovery["detected_by"]) == ("job", "in_process", "wrapper log line")
    assert 0 <= recovery["detected_s"] < recovery["first_resumed_step_s"], recovery
    # one output file per rank, in the launch attempt's directory: the re-entered ranks wrote on into it
    assert not list(history.attempt_dir(tmp_path / "run", 2).glob("rank-*.out"))
    reentries = list(run.attempts[0].events(history.JOB_REENTERED))
    assert sorted(r["kind"] for r in reentries) == ["restart_ex", "restart_ex"], reentries
    assert not [r for a in run.attempts for r in a.events(history.PARSE_ERROR)]  # every wrapper line understood
    assert "stage=completed" in (history.attempt_dir(tmp_path / "run", 1) / "rank-0.out").read_text()


def test_upstreams_re_entry_that_fails_at_once_is_a_restart_loop_that_ends(tmp_path, megatron_lm_golden):
    """Megatron-LM main's bug shape: every re-entry raises `args is not initialized.` before loading, and the wrapper
    re-enters again, without bound. chaos follows three re-entries (restart.max_restarts), then stops the job: the
    run ends (never hangs), recovery_progress fails naming the loop, restart_budget says chaos stopped it."""
    job = scenario(PAUSE, extra_args=IN_PROCESS, bugs="inprocess_args_lost", restart=JOB, env=STORE,
                   name="megatron_lm_inprocess_args_lost")
    needs_nvrx(job)
    result = run_scenario(job, out_dir=tmp_path / "run", golden_path=megatron_lm_golden, say=lambda text: None)
    assert result.verdict == "fail" and result.exit_code == 1, result.summary
    progress = check(result, "recovery_progress")
    assert progress["status"] == "fail", progress
    assert ("attempts 2-4, in-process re-entries of the training function, each loaded no checkpoint and died the "
            "same way (crashed before its first step): a restart loop") in progress["detail"], progress["detail"]
    run = history.load_run_history(tmp_path / "run")
    assert [r["outcome"] for r in run.supervisor_events(history.RUN_END)] == ["job_gave_up"]
    assert [r["attempt"] for r in run.supervisor_events(history.REENTRIES_SPENT)] == [4]
    budget = check(result, "restart_budget")
    assert budget["status"] == "fail" and "chaos stopped the job there" in budget["detail"], budget
    for attempt in run.attempts[1:]:  # each re-entry failed at once, as upstream's does
        assert any("args is not initialized." in r["line"] for r in attempt.events(history.JOB_INTERRUPTED))
    # what the re-entered function died of, which the wrapper caught (no traceback is printed), is in the report
    raised = result.report["attempts"][1]["exceptions"]
    assert raised[0]["summary"] == "AssertionError('args is not initialized.') (caught by the in-process wrapper)"
    assert check(result, "faults_landed")["status"] == "pass"
    assert check(result, "no_survivors")["status"] == "pass"
    # nothing resumed, so nothing for resume_point to judge: said so, not passed
    resumed = check(result, "resume_point")
    assert resumed["status"] == "skip" and "no restart finished loading a checkpoint" in resumed["detail"], resumed
