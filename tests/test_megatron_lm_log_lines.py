"""Megatron-LM's log lines into typed events: against lines captured from a real run, and the variants the
capture does not hold (other flags, other exits, torchrun prefixes, drift that must surface as ParseError)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chaos.workloads.megatron_lm.log_lines import (
    AsyncSaveScheduled, ExceptionRaised, ExitAfterDuration, ExitAtIteration, ExitOnSignal, IterationLine,
    LoadBegin, LoadDone, NoCheckpoint, ParseError, SaveBegin, SaveDone, TracebackReader, TrainingDone,
    parse_line, split_rank_prefix)

CAPTURED = Path(__file__).parent / "fixtures" / "megatron_lm" / "captured_stdout.txt"


def captured_lines() -> list[str]:
    """The captured output lines, without the fixture's '#' comments and blank separators."""
    return [line for line in CAPTURED.read_text().splitlines(keepends=True)
            if line.strip() and not line.startswith("#")]


def golden_iteration(step, consumed, lr, loss, grad_norm, num_zeros, elapsed, ts) -> IterationLine:
    return IterationLine(step=step, train_iters=30, consumed_samples=consumed, losses={"lm loss": loss},
                         learning_rate=lr, global_batch_size=32, loss_scale=1.0, grad_norm=grad_norm,
                         num_zeros=num_zeros, params_norm=179.956, skipped_iterations=0, nan_iterations=0,
                         elapsed_ms=elapsed, timestamp=ts)


def truncated_iteration(step, consumed, lr, loss, grad_norm, elapsed, ts) -> IterationLine:
    # Cut inside 'num zeros': everything from there on is absent, what came before is whole.
    return IterationLine(step=step, train_iters=30, consumed_samples=consumed, losses={"lm loss": loss},
                         learning_rate=lr, global_batch_size=32, loss_scale=1.0, grad_norm=grad_norm,
                         num_zeros=None, params_norm=None, skipped_iterations=None, nan_iterations=None,
                         elapsed_ms=elapsed, timestamp=ts, truncated=True)


EXPECTED_CAPTURED = [
    golden_iteration(10, 320, 4.6875e-07, 10.92605, 2.942, 1951.0, 1557.4, "2026-12-03 13:32:06.249366"),
    golden_iteration(11, 352, 5.15625e-07, 10.92097, 2.654, 2304.0, 1606.5, "2026-12-03 13:32:11.743968"),
    SaveBegin(10, "<run>/ck_fsdp_golden", "fsdp_dtensor", "2026-12-03 13:32:06.251688"),
    SaveDone(10, "<run>/ck_fsdp_golden", "2026-12-03 13:32:10.134232"),
    NoCheckpoint("<run>/ck_fsdp_golden/latest_checkpointed_iteration.txt"),
    None,                                                   # '    will not load any checkpoints ...'
    ExitOnSignal("2026-12-03 13:32:18.225643"),
    LoadBegin(16, "<run>/ck_fsdp_term", distributed=False, release=False),
    LoadDone(16, "<run>/ck_fsdp_term"),
    truncated_iteration(11, 352, 5.15625e-07, 10.92097, 2.654, 2766.8, "2026-12-03 13:34:24.361018"),
    truncated_iteration(12, 384, 5.625e-07, 10.92179, 2.910, 2035.4, "2026-12-03 13:34:25.665138"),
] + [None] * 7                                              # the traceback's lines: TracebackReader's job


def test_every_captured_line_parses_to_its_event():
    assert [parse_line(line) for line in captured_lines()] == EXPECTED_CAPTURED


def test_captured_golden_iteration_values():
    event = parse_line(captured_lines()[0])
    assert isinstance(event, IterationLine)
    assert (event.step, event.train_iters, event.consumed_samples) == (10, 30, 320)
    assert event.lm_loss == pytest.approx(10.92605)
    assert event.learning_rate == pytest.approx(4.6875e-07)
    assert (event.grad_norm, event.num_zeros, event.params_norm) == (2.942, 1951.0, 179.956)
    assert event.timestamp == "2026-12-03 13:32:06.249366" and not event.truncated


def test_captured_torch_dist_traceback_gives_the_assertion_and_where():
    reader = TracebackReader()
    events = [e for e in map(reader.feed, captured_lines()) if e is not None]
    assert events == [ExceptionRaised(
        "AssertionError at megatron/core/optimizer/distrib_optimizer.py:839 in state_dict: "
        "assert len(steps) == 1", "AssertionError")]


def test_full_traceback_with_header_chaining_and_site_packages_path():
    reader = TracebackReader()
    lines = [
        "[rank3]: Traceback (most recent call last):\n",
        '[rank3]:   File "/opt/Megatron-LM/pretrain_gpt.py", line 300, in <module>\n',
        "[rank3]:     pretrain(\n",
        '[rank3]:   File "/venv/lib/python3.11/site-packages/torch/distributed/c10d.py", line 42, in barrier\n',
        "[rank3]:     work = group.barrier(opts=opts)\n",
        "[rank3]:            ~~~~~~~~~~~~~^^^^^^^^^^^\n",
        "[rank3]: torch.distributed.DistBackendError: NCCL error: remote process exited\n",
        "[rank3]: \n",
    ]
    events = [e for e in map(reader.feed, lines) if e is not None]
    assert events == [ExceptionRaised(
        "torch.distributed.DistBackendError: NCCL error: remote process exited at torch/distributed/c10d.py:42 "
        "in barrier: work = group.barrier(opts=opts)", "torch.distributed.DistBackendError")]
    # Chained: one event per exception, the process-ending one last; the chaining note is not an exception.
    chained = ["Traceback (most recent call last):", '  File "a.py", line 1, in f', "    g()",
               "KeyError: 'x'", "", "During handling of the above exception, another exception occurred:", "",
               "Traceback (most recent call last):", '  File "a.py", line 3, in f', "    raise ValueError",
               "ValueError"]
    events = [e for e in map(reader.feed, chained) if e is not None]
    assert [e.summary for e in events] == ["KeyError: 'x' at a.py:1 in f: g()",
                                           "ValueError at a.py:3 in f: raise ValueError"]


def test_frames_without_an_exception_line_invent_nothing():
    reader = TracebackReader()
    lines = ["Stack (most recent call last):", '  File "a.py", line 1, in f', "    g()",
             " [2026-12-03 13:32:06.249366] iteration       10/      30 | consumed samples:   320 |",
             "AssertionError"]                                # not after a traceback any more
    assert [reader.feed(line) for line in lines] == [None] * 5


CHAOS_TRAINER_LINE = (" iteration        3/      12 | consumed samples:           24 | learning rate: 1.000000E-03 |"
                      " global batch size:     8 | lm loss: 6.882727E+00 | grad norm: 1.234 |")


def test_minimal_iteration_line_without_timestamp_elapsed_or_loss_scale():
    assert parse_line(CHAOS_TRAINER_LINE) == IterationLine(
        step=3, train_iters=12, consumed_samples=24, losses={"lm loss": 6.882727}, learning_rate=1e-3,
        global_batch_size=8, loss_scale=None, grad_norm=1.234, num_zeros=None, params_norm=None,
        skipped_iterations=None, nan_iterations=None, elapsed_ms=None, timestamp=None)


def test_every_loss_between_batch_size_and_loss_scale_and_unknown_fields_elsewhere_are_skipped():
    line = (" [2026-12-03 13:32:06.249366] iteration        5/     100 | consumed samples:          160 |"
            " skipped samples:            3 | elapsed time per iteration (ms): 812.0 |"
            " throughput per GPU (TFLOP/s/GPU): 401.2 | global batch size:    32 | lm loss: 9.512000E+00 |"
            " mtp_1 loss: 9.700000E+00 | load_balancing_loss: 0.12 | loss scale: 65536.0 | grad norm: nan |"
            " number of skipped iterations:   1 | number of nan iterations:   1 | rl tokens per second: 9 |\r\n")
    event = parse_line(line)
    assert isinstance(event, IterationLine)
    assert event.losses == {"lm loss": 9.512, "mtp_1 loss": 9.7, "load_balancing_loss": 0.12}
    assert event.learning_rate is None and event.loss_scale == 65536.0 and event.grad_norm != event.grad_norm
    assert (event.skipped_iterations, event.nan_iterations, event.elapsed_ms) == (1, 1, 812.0)


@pytest.mark.parametrize("line, reason", [
    (" iteration       10/      30 | consumed samples:          abc | global batch size:    32 |",
     "'consumed samples' has a bad value 'abc'"),
    (" iteration       10/      30 | consumed samples:          320 | lm loss 1.0 |", "is not 'name: value'"),
    (" iteration       10/      30 | consumed samples:          320 | lm loss: 1.0 |", "missing 'global batch size'"),
    (" iteration       10/      30 | consumed sam", "cut short before 'consumed samples', 'global batch size'"),
    ("[not a time] iteration       10/      30 | consumed samples: 1 |", "unexpected text before"),
    ("[2026-12-03 13:32:06.251688] saving checkpoint at iteration      10 to /ck", "unexpected form"),
    (" loading checkpoint from /ck", "iteration present exactly when not release"),
    ("[exiting program at iteration seven] datetime: 2026-12-03 13:32:18.225643 ", "exit line: not"),
    ("[exiting program after many minutes] datetime: 2026-12-03 13:32:18.225643 ", "exit line: not"),
    ("exiting program at iteration 7", "expected '[<message>] datetime: <timestamp>'"),
])
def test_lines_that_are_ours_but_do_not_parse_give_parse_error(line, reason):
    event = parse_line(line)
    assert isinstance(event, ParseError) and reason in event.reason and event.line == line


@pytest.mark.parametrize("line, event", [
    (" loading distributed checkpoint from /ck/run 1 at iteration 40", LoadBegin(40, "/ck/run 1", True, False)),
    (" loading release distributed checkpoint from /ck", LoadBegin(None, "/ck", True, True)),
    (" loading release checkpoint from /ck", LoadBegin(None, "/ck", False, True)),
    ("  [2026-12-03 13:32:06.260000] scheduled an async checkpoint save at iteration      20 to /ck",
     AsyncSaveScheduled(20, "/ck", "2026-12-03 13:32:06.260000")),
    ("[exiting program at iteration 7] datetime: 2026-12-03 13:32:18.225643 ",
     ExitAtIteration(7, "2026-12-03 13:32:18.225643")),
    ("[exiting program after 30.0172 minutes] datetime: 2026-12-03 13:32:18.225643 ",
     ExitAfterDuration(30.0172, "2026-12-03 13:32:18.225643")),
    ("[after training is done] datetime: 2026-12-03 13:40:00.000001 \n",
     TrainingDone("2026-12-03 13:40:00.000001")),
    ("[rank3]: [2026-12-03 13:32:06.251688] saving checkpoint at iteration      10 to /ck in torch_dist format",
     SaveBegin(10, "/ck", "torch_dist", "2026-12-03 13:32:06.251688")),
    ("[default0]:[rank0]:   successfully loaded checkpoint from /ck [ t 1/2, gtp_remat 1/1, p 1/1 ] at iteration 8\r",
     LoadDone(8, "/ck")),
])
def test_variants_the_capture_does_not_hold(line, event):
    assert parse_line(line) == event


def test_rank_prefixes_are_stripped_and_reported():
    assert split_rank_prefix("[rank3]: " + CHAOS_TRAINER_LINE + "\n") == (3, CHAOS_TRAINER_LINE)
    assert split_rank_prefix("[default1]:[rank5]:   File x\r\n") == (5, "  File x")
    assert parse_line("[rank3]: " + CHAOS_TRAINER_LINE) == parse_line(CHAOS_TRAINER_LINE)
    assert parse_line("[default0]:" + CHAOS_TRAINER_LINE) == parse_line(CHAOS_TRAINER_LINE)


@pytest.mark.parametrize("line", [
    "", "\n", "[after megatron is initialized] datetime: 2026-12-03 13:30:00.000000 ",
    "    will not load any checkpoints and will start from random",
    "saving dataloader checkpoint at iteration 10 to /ck/dl", " successfully loaded /ck/iter_0000010/model.pt",
    "building GPT model ...", "[rank0]: AssertionError", "> number of parameters on (tensor, pipeline) model "
    "parallel rank (0, 0): 125000000", "training ...",
])
def test_unrelated_lines_are_none(line):
    assert parse_line(line) is None


def test_the_parser_never_imports_torch():
    code = ("import sys, chaos.workloads.megatron_lm.log_lines; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
