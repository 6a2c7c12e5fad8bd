"""The Megatron-LM stand-in (tests/trainers/megatron_like.py), run for real with 2 ranks: Megatron-LM's own
stdout lines on Megatron's ranks, its first-iteration logging quirk, save -> commit -> tracker order, the
load lines on a relaunch, and no trace of chaos's instrumentation although the launcher's variables are set.

The true per-step losses come from chaos's GPT-3 trainer on the same config (its probe history holds them
at full precision); the stand-in is that trainer, so its printed numbers must match them to the digit."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from chaos.supervisor.launcher import free_port
from workload_runs import events, output_of, run_attempt

STANDIN = Path(__file__).resolve().parent / "trainers" / "megatron_like.py"
WORLD_SIZE = 2
TRAIN_ITERS = 4
FLAGS = [
    "--tensor-model-parallel-size", "2", "--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4",
    "--seq-length", "64", "--max-position-embeddings", "64", "--micro-batch-size", "2", "--global-batch-size", "4",
    "--train-iters", str(TRAIN_ITERS), "--save-interval", "2", "--log-interval", "1", "--exit-signal-handler",
    "--lr", "1.0e-3", "--min-lr", "1.0e-4", "--seed", "1234", "--ckpt-format", "fsdp_dtensor", "--mock-data",
]
TIMESTAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}"
ITERATION = re.compile(
    rf"^ \[{TIMESTAMP}\] iteration +(?P<step>\d+)/ +(?P<total>\d+) \| consumed samples: +(?P<consumed>\d+) \|"
    r" elapsed time per iteration \(ms\): (?P<ms>\d+\.\d) \| learning rate: (?P<lr>\S+) \|"
    r" global batch size: +(?P<gbs>\d+) \| lm loss: (?P<loss>\S+) \| loss scale: 1\.0 \|"
    r" grad norm: (?P<grad_norm>\d+\.\d{3}) \| number of skipped iterations:   0 \| number of nan iterations:   0 \|$"
)


def load_standin():
    spec = importlib.util.spec_from_file_location("megatron_like", STANDIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: imports GPT3Config only, touches no environment
    return module


@dataclass
class Launch:
    codes: list[int]
    lines: dict[int, list[str]]
    """Each rank's stdout, line by line."""
    tracker_when_read: list[tuple[str, str | None]] = field(default_factory=list)
    """Rank 0's lines with the tracker's content the moment the test read each one."""
    stderr: str = ""


def launch(out_dir: Path, ckpt: Path, extra: list[str], chaos_env: dict[str, str]) -> Launch:
    """One process per rank with the torchrun environment (and chaos's launcher variables set, which the
    stand-in must ignore); stdout read live, so a line can be compared with the tracker as it appears."""
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [sys.executable, str(STANDIN), *FLAGS, "--save", str(ckpt), "--load", str(ckpt), *extra]
    lines: dict[int, list[str]] = {rank: [] for rank in range(WORLD_SIZE)}
    tracker_when_read: list[tuple[str, str | None]] = []
    tracker = ckpt / "latest_checkpointed_iteration.txt"

    def read(rank: int, stream) -> None:
        for raw in stream:
            line = raw.rstrip("\n")
            lines[rank].append(line)
            if rank == 0:
                tracker_when_read.append((line, tracker.read_text().strip() if tracker.exists() else None))

    processes, readers, stderr_files = [], [], []
    for rank in range(WORLD_SIZE):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1", **chaos_env)
        stderr_file = open(out_dir / f"rank-{rank}.err", "w")
        stderr_files.append(stderr_file)
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=stderr_file, text=True,
                                   cwd=out_dir)
        processes.append(process)
        reader = threading.Thread(target=read, args=(rank, process.stdout), daemon=True)
        reader.start()
        readers.append(reader)
    codes = []
    try:
        for process in processes:
            codes.append(process.wait(timeout=300))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for reader in readers:
            reader.join(timeout=10)
        for stderr_file in stderr_files:
            stderr_file.close()
    stderr = "\n".join((out_dir / f"rank-{rank}.err").read_text()[-3000:] for rank in range(WORLD_SIZE))
    return Launch(codes, lines, tracker_when_read, stderr)


def iteration_lines(lines: list[str]) -> dict[int, dict[str, str]]:
    found = {}
    for line in lines:
        match = ITERATION.match(line)
        assert match, f"not Megatron-LM's iteration line: {line!r}"
        found[int(match["step"])] = match.groupdict()
    return found


def masked(lines: list[str]) -> list[str]:
    """Rank 0's lines with their timestamps replaced, to compare with Megatron-LM's lines verbatim."""
    return [re.sub(TIMESTAMP, "TS", line) for line in lines]


@pytest.fixture
def control_socket():
    """A listening socket at CHAOS_CONTROL_SOCKET: the stand-in must never connect to it."""
    with tempfile.TemporaryDirectory(prefix="chaos-ml-") as directory:
        path = os.path.join(directory, "control.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(8)
        server.setblocking(False)
        try:
            yield server, path
        finally:
            server.close()


def assert_never_connected(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        connection, _ = server.accept()
        connection.close()


def test_megatron_lm_standin_prints_megatron_lines_saves_and_resumes(tmp_path, control_socket):
    server, socket_path = control_socket
    history_dir = tmp_path / "history"
    chaos_env = {"CHAOS_HISTORY_DIR": str(history_dir), "CHAOS_CONTROL_SOCKET": socket_path, "CHAOS_ATTEMPT": "1"}
    standin = load_standin()
    _, config = standin.parse([*FLAGS, "--save", "unused"], WORLD_SIZE)

    # The true losses: chaos's GPT-3 trainer on the same config, its probe recording every step at full precision.
    golden_dir = tmp_path / "golden"
    golden_config = replace(config, save_dir=str(golden_dir / "checkpoints"), load_dir=str(golden_dir / "checkpoints"))
    codes = run_attempt(golden_config, golden_dir, 1, timeout_s=300)
    assert codes == [0] * WORLD_SIZE, f"golden run exit codes {codes}\n{output_of(golden_dir, 1)}"
    golden = {event["step"]: event for event in events(golden_dir, "metrics", rank=0)}
    assert sorted(golden) == [1, 2, 3, 4]
    loss = {step: golden[step]["lm_loss"] for step in golden}

    run_dir = tmp_path / "standin"
    ckpt = run_dir / "checkpoints"
    first = launch(run_dir, ckpt, [], chaos_env)
    assert first.codes == [0] * WORLD_SIZE, f"exit codes {first.codes}\n{first.stderr}"

    # Iteration lines: Megatron's print_rank_last, so the last rank only; the numbers are the trainer's.
    printed = iteration_lines(first.lines[1])
    assert sorted(printed) == [1, 2, 3, 4]
    for step, fields in printed.items():
        assert fields["total"] == str(TRAIN_ITERS)
        assert int(fields["consumed"]) == 4 * step and fields["gbs"] == "4"
        assert fields["lr"] == f"{golden[step]['lr']:.6E}"
        assert fields["grad_norm"] == f"{golden[step]['grad_norm']:.3f}"
        assert float(fields["ms"]) > 0
    # Megatron's first-iteration rule: the first logged iteration does not reset the loss accumulator, so
    # iteration 2 prints the mean of iterations 1 and 2; every other line is its own iteration's loss.
    assert printed[1]["loss"] == f"{loss[1]:.6E}"
    assert printed[2]["loss"] == f"{(loss[1] + loss[2]) / 2:.6E}"
    assert printed[2]["loss"] != f"{loss[2]:.6E}", "the quirk must be visible at this precision"
    assert printed[3]["loss"] == f"{loss[3]:.6E}"
    assert printed[4]["loss"] == f"{loss[4]:.6E}"

    # Rank 0 (print_rank_0): the no-checkpoint warning, then each save begun and committed, then the end.
    assert masked(first.lines[0]) == [
        f"WARNING: could not find the metadata file {ckpt}/latest_checkpointed_iteration.txt",
        "    will not load any checkpoints and will start from random",
        f"[TS] saving checkpoint at iteration       2 to {ckpt} in fsdp_dtensor format",
        f"  [TS] successfully saved checkpoint from iteration       2 to {ckpt} [ t 1/2, gtp_remat 1/1, p 1/1 ]",
        f"[TS] saving checkpoint at iteration       4 to {ckpt} in fsdp_dtensor format",
        f"  [TS] successfully saved checkpoint from iteration       4 to {ckpt} [ t 1/2, gtp_remat 1/1, p 1/1 ]",
        "[after training is done] datetime: TS ",
    ]
    # "successfully saved" comes after the commit: the tracker already named the iteration when it was read.
    saved = [(line, tracker) for line, tracker in first.tracker_when_read if "successfully saved" in line]
    assert [tracker for _, tracker in saved] in (["2", "4"], ["4", "4"]), saved
    assert sorted(path.name for path in ckpt.iterdir()) == ["iter_0000002", "iter_0000004",
                                                            "latest_checkpointed_iteration.txt"]

    # Relaunch with the same --load. The tracker names 4 (the end), so the relaunch asks for the bug switch
    # load_previous to resume from 2: it must load 2, say so, and train 3-4 with the quirk on 4.
    second = launch(run_dir, ckpt, ["--chaos-bugs", "load_previous"], chaos_env)
    assert second.codes == [0] * WORLD_SIZE, f"exit codes {second.codes}\n{second.stderr}"
    assert masked(second.lines[0]) == [
        f" loading checkpoint from {ckpt} at iteration 2",
        f"  successfully loaded checkpoint from {ckpt} [ t 1/2, gtp_remat 1/1, p 1/1 ] at iteration 2",
        f"[TS] saving checkpoint at iteration       4 to {ckpt} in fsdp_dtensor format",
        f"  [TS] successfully saved checkpoint from iteration       4 to {ckpt} [ t 1/2, gtp_remat 1/1, p 1/1 ]",
        "[after training is done] datetime: TS ",
    ]
    loading = [tracker for line, tracker in second.tracker_when_read if line.startswith(" loading checkpoint")]
    assert loading == ["4"], "load_previous passed over the checkpoint the tracker named"
    resumed = iteration_lines(second.lines[1])
    assert sorted(resumed) == [3, 4]
    assert resumed[3]["loss"] == f"{loss[3]:.6E}"
    assert resumed[4]["loss"] == f"{(loss[3] + loss[4]) / 2:.6E}"
    assert [resumed[step]["lr"] for step in (3, 4)] == [printed[step]["lr"] for step in (3, 4)]

    # Not instrumented: no history although CHAOS_HISTORY_DIR was set, never a connection to the socket,
    # and nothing written beside the checkpoints but the trainer's data cache and this test's stderr files.
    assert not history_dir.exists() or not any(history_dir.rglob("*"))
    assert_never_connected(server)
    assert sorted(path.name for path in run_dir.iterdir()) == ["checkpoints", "data_cache", "rank-0.err", "rank-1.err"]


def test_megatron_lm_standin_log_lines_and_command_line(capsys):
    """The lines the real run above does not reach (graceful SIGTERM, no --load), and the flags' checks."""
    standin = load_standin()
    argv = [*FLAGS, "--save", "/ck"]
    args, config = standin.parse(argv, WORLD_SIZE)
    assert (config.tensor_parallel, config.data_parallel, config.num_microbatches) == (2, 1, 2)
    assert (config.hidden_size, config.seq_length, config.exit_on_sigterm, config.load_dir) == (64, 64, True, "/ck")
    assert standin.parse([*argv, "--chaos-bugs", "load_previous, no_rng_restore"], WORLD_SIZE)[1].bugs == (
        "load_previous", "no_rng_restore")
    assert standin.parse([a for a in argv if a != "--exit-signal-handler"], WORLD_SIZE)[1].exit_on_sigterm is False

    first, last = standin.MegatronLog(args, config, 0, WORLD_SIZE), standin.MegatronLog(args, config, 1, WORLD_SIZE)
    for log in (first, last):
        with log.phase("forward", 1, index=1):
            pass
        log.iteration(1, {"lm_loss": 7.0, "lr": 1e-3, "grad_norm": 1.0, "consumed_samples": 4})
        log.iteration(2, {"lm_loss": 6.0, "lr": 1e-3, "grad_norm": 1.0, "consumed_samples": 8})
        log.iteration(3, {"lm_loss": 5.0, "lr": 1e-3, "grad_norm": 1.0, "consumed_samples": 12})
        log.train_end(3, "preempted")
    out = capsys.readouterr().out.splitlines()
    assert [ITERATION.match(line)["loss"] for line in out if ITERATION.match(line)] == [
        "7.000000E+00", "6.500000E+00", "5.000000E+00"]
    others = [line for line in out if not ITERATION.match(line)]  # rank 0's: the exit line only
    assert len(others) == 1 and len(out) == 4, out
    assert re.fullmatch(rf"\[exiting program after receiving SIGTERM\.\] datetime: {TIMESTAMP} ", others[0])

    assert args.load is None
    quiet = standin.MegatronLog(args, config, 0, WORLD_SIZE)
    quiet.checkpoint_loaded(0, None)  # no --load: upstream never looks for a checkpoint, and prints nothing
    assert capsys.readouterr().out == ""

    for bad, message in ((["--log-interval", "10"], "pass --log-interval 1"),
                         (["--chaos-bugs", "no_such_bug"], "unknown bug"),
                         (["--ckpt-format", "torch"], "invalid choice")):
        with pytest.raises(SystemExit) as exit_info:
            standin.parse([*argv, *bad], WORLD_SIZE)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
