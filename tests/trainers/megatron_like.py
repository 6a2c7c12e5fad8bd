"""A CPU stand-in for an unmodified Megatron-LM `pretrain_gpt.py`, seen from the outside: started the same
way (one process per rank with the torchrun environment, Megatron's command-line flags), printing
Megatron-LM's own stdout lines, and writing nothing but its checkpoints. Megatron-LM's training loop needs
CUDA; this runs chaos's own GPT-3 trainer (megatron-core GPTModel, TP + FSDP2, DCP checkpoints over gloo).

    RANK=.. WORLD_SIZE=.. LOCAL_RANK=.. MASTER_ADDR=.. MASTER_PORT=.. python tests/trainers/megatron_like.py \\
        --tensor-model-parallel-size 2 --num-layers 4 --hidden-size 64 --num-attention-heads 4 \\
        --seq-length 64 --max-position-embeddings 64 --micro-batch-size 2 --global-batch-size 4 \\
        --train-iters 4 --save-interval 2 --save CKPT --load CKPT --log-interval 1 --mock-data

It is not instrumented: chaos's launcher variables are dropped before anything can build chaos's probe, no
history is written and the control socket is never touched. What it prints, with Megatron-LM's rank rules
(print_rank_0 = global rank 0; the iteration line = print_rank_last = the last global rank):

- ` [ts] iteration  N/ T | consumed samples: .. | elapsed time per iteration (ms): .. | learning rate: .. |
  global batch size: .. | lm loss: .. | loss scale: 1.0 | grad norm: .. | number of skipped iterations:
  0 | number of nan iterations:   0 |`, with Megatron's first-iteration rule reproduced on purpose: the
  first iteration a process logs does not reset the accumulators, so the second one prints the mean lm
  loss (and mean time) of both;
- `[ts] saving checkpoint at iteration ..` when a save begins, `  [ts] successfully saved checkpoint from
  iteration ..` once the tracker names it;
- ` loading checkpoint from D at iteration N` + `  successfully loaded checkpoint from D [ .. ] at
  iteration N`, or the two-line WARNING when D has no tracker (nothing at all without --load);
- `[exiting program after receiving SIGTERM.] datetime: ..` (with --exit-signal-handler; without it
  SIGTERM kills the process), `[after training is done] datetime: ..` (before a final save that is off the
  save interval, as upstream).

With --inprocess-restart it runs the way Megatron-LM's pretrain_gpt.py does (megatron/training/
inprocess_restart.py): the training function inside NVIDIA's inprocess.Wrapper (the one chaos's GPT-3 trainer
uses, chaos.workloads.gpt3.inprocess), with NVRx's nested-restarter callbacks composed in and no bound on the
re-entries (Megatron-LM builds its RetryController without max_iterations), its soft timeout from
--inprocess-soft-timeout (Megatron's default 60 s). The wrapper's own lines (`rank=R fn_ex: ...`, `term_ex`,
`restart_ex`, `exit_ex`, in NVRx 0.4.1's format as chaos's trainer logs them) and rank 0's `[NestedRestarter] ...
state=...` lines go to the rank's output, and every entry builds everything anew and prints Megatron's load lines
again, in the same process. It prints only: chaos's probe is never built, no history is written.

Flags not given take the chaos GPT-3 workload's defaults (GPT3Config), not Megatron-LM's. Other
differences: --log-interval must be 1; a checkpoint chaos's trainer rejects (manifest mismatch) is passed
over silently where Megatron-LM would fail; --chaos-bugs picks GPT3Config bug switches, plus this stand-in's
own STANDIN_BUGS.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

CHAOS_ENVIRONMENT = ("CHAOS_HISTORY_DIR", "CHAOS_CONTROL_SOCKET", "CHAOS_ATTEMPT")
"""chaos.control's launcher variables: a Megatron-LM job never reads them, so neither does this one."""

ARGS_LOST = "inprocess_args_lost"
STANDIN_BUGS = {
    ARGS_LOST: "Megatron-LM main's --inprocess-restart bug (docs/findings/megatron-lm-inprocess-restart-args.md): "
               "the arguments are parsed outside the wrapped pretrain() and destroyed by its finalizer, so every "
               "re-entry fails at once, before loading, with AssertionError('args is not initialized.'), and nothing "
               "bounds the re-entries",
}
"""Bugs of this stand-in's own (the rest of --chaos-bugs goes to GPT3Config)."""

if __name__ == "__main__":
    # Before anything imports chaos.probe (whose get_probe reads them).
    for _name in CHAOS_ENVIRONMENT:
        os.environ.pop(_name, None)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, when not installed

from chaos.errors import InputError  # noqa: E402
from chaos.workloads.gpt3.config import BUGS, GPT3Config  # noqa: E402


def timestamp() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")


# ---- the command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron_like.py", allow_abbrev=False,
        description="CPU stand-in for Megatron-LM's pretrain_gpt.py (chaos's GPT-3 trainer, Megatron's log lines)",
    )
    add = parser.add_argument
    add("--tensor-model-parallel-size", type=int, default=1)
    add("--num-layers", type=int, required=True)
    add("--hidden-size", type=int, required=True)
    add("--num-attention-heads", type=int, required=True)
    add("--seq-length", type=int, required=True)
    add("--max-position-embeddings", type=int, default=None, help="accepted (must be >= --seq-length)")
    add("--micro-batch-size", type=int, required=True)
    add("--global-batch-size", type=int, default=None, help="default: micro batch size x data parallel size")
    add("--train-iters", type=int, required=True)
    add("--save-interval", type=int, required=True)
    add("--save", required=True, help="checkpoint directory (this stand-in always saves)")
    add("--load", default=None, help="resume from here; without it, start from random like Megatron-LM")
    add("--log-interval", type=int, default=100, help="must be 1")
    add("--exit-signal-handler", action="store_true",
        help="on SIGTERM finish the iteration, save and exit 0 (without it SIGTERM kills the process)")
    add("--lr", type=float, default=None)
    add("--min-lr", type=float, default=None)
    add("--lr-warmup-iters", type=int, default=None)
    add("--lr-decay-iters", type=int, default=None)
    add("--lr-decay-style", choices=("cosine", "linear", "constant"), default=None)
    add("--weight-decay", type=float, default=None)
    add("--clip-grad", type=float, default=None)
    add("--seed", type=int, default=None)
    add("--ckpt-format", choices=("fsdp_dtensor", "torch_dist"), default="torch_dist",
        help="only printed (the checkpoints are chaos's DCP checkpoints either way)")
    add("--vocab-size", type=int, default=None)
    add("--hidden-dropout", type=float, default=None)
    add("--attention-dropout", type=float, default=None)
    add("--mock-data", action="store_true", help="accepted (the data is always megatron-core's MockGPTDataset)")
    add("--inprocess-restart", action="store_true",
        help="NVIDIA's in-process restart, wired as Megatron-LM wires it (needs nvidia-resiliency-ext)")
    add("--inprocess-soft-timeout", type=float, default=60.0,
        help="the wrapper's soft timeout in seconds (Megatron-LM's default 60)")
    add("--chaos-bugs", default="",
        help=f"comma-separated bug switches: GPT3Config's ({', '.join(BUGS)}) and this stand-in's "
             f"({', '.join(STANDIN_BUGS)})")
    add("--chaos-noise", type=float, default=0.0,
        help="relative gradient noise, drawn afresh every launch: a job that is not reproducible run to run "
             "(as atomics make a GPU job), for the calibrated golden's tests")
    add("--chaos-noise-seed", type=int, default=None,
        help="seed of that noise (default: the rendezvous port, new at every launch and shared by its ranks)")
    return parser


FLAG_TO_FIELD = {
    "tensor_model_parallel_size": "tensor_parallel", "num_layers": "num_layers", "hidden_size": "hidden_size",
    "num_attention_heads": "num_attention_heads", "seq_length": "seq_length",
    "micro_batch_size": "micro_batch_size", "train_iters": "train_iters", "save_interval": "save_interval",
    "lr": "lr", "min_lr": "min_lr", "lr_warmup_iters": "lr_warmup_iters", "lr_decay_iters": "lr_decay_iters",
    "lr_decay_style": "lr_decay_style", "weight_decay": "weight_decay", "clip_grad": "clip_grad",
    "seed": "seed", "vocab_size": "vocab_size", "hidden_dropout": "hidden_dropout",
    "attention_dropout": "attention_dropout",
}


def parse(argv: list[str], world_size: int) -> tuple[argparse.Namespace, GPT3Config]:
    """Megatron-style flags -> (the parsed flags, the GPT3Config they describe). Exits 2 on a bad command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_interval != 1:
        parser.error(f"--log-interval {args.log_interval}: this stand-in logs every iteration only; pass "
                     f"--log-interval 1")
    if args.max_position_embeddings is not None and args.max_position_embeddings < args.seq_length:
        parser.error(f"--max-position-embeddings {args.max_position_embeddings} is less than --seq-length "
                     f"{args.seq_length}")
    mapping: dict[str, Any] = {
        "device": "cpu",
        "world_size": world_size,
        "nodes": 1,
        "save_dir": args.save,
        "load_dir": args.load if args.load is not None else args.save,
        "exit_on_sigterm": args.exit_signal_handler,
        "bugs": [bug for bug in bug_switches(args) if bug not in STANDIN_BUGS],
    }
    if args.inprocess_restart:
        mapping["inprocess_soft_timeout_s"] = args.inprocess_soft_timeout
    for flag, field in FLAG_TO_FIELD.items():
        value = getattr(args, flag)
        if value is not None:
            mapping[field] = value
    if args.global_batch_size is not None:
        mapping["global_batch_size"] = args.global_batch_size
    else:
        tp = mapping.get("tensor_parallel", 1)
        mapping["global_batch_size"] = args.micro_batch_size * max(1, world_size // tp)
    try:
        config = GPT3Config.from_mapping(mapping, source="megatron_like.py command line", field_prefix="args")
    except InputError as error:
        parser.error(str(error))
    return args, config


def bug_switches(args: argparse.Namespace) -> list[str]:
    return [bug.strip() for bug in args.chaos_bugs.split(",") if bug.strip()]


# ---- Megatron-LM's log lines ----------------------------------------------------------------------------
class MegatronLog:
    """Stands in for chaos.probe.Probe (same methods) and prints Megatron-LM's lines instead of recording a
    history: it never holds, never connects anywhere and writes no file."""

    enabled = False

    def __init__(self, args: argparse.Namespace, config: GPT3Config, rank: int, world_size: int) -> None:
        self.args = args
        self.config = config
        self.rank = rank
        self.is_last_rank = rank == world_size - 1
        self.step: int | None = None
        self.phase_name: str | None = None
        self.training_done_printed = False
        # training_log's accumulators: the lm loss sum, iterations in it, and the interval timer
        self._loss_sum = 0.0
        self._iterations = 0
        self._interval_start = time.monotonic()
        self._is_first_iteration = True

    def print_rank_0(self, message: str) -> None:
        if self.rank == 0:
            print(message, flush=True)

    def print_rank_last(self, message: str) -> None:
        if self.is_last_rank:
            print(message, flush=True)

    def print_datetime(self, what: str) -> None:
        self.print_rank_0(f"[{what}] datetime: {timestamp()} ")

    def training_done(self) -> None:
        if not self.training_done_printed:
            self.training_done_printed = True
            self.print_datetime("after training is done")

    # ---- the iteration line (training_log) ----------------------------------------------------------
    def iteration(self, step: int, metrics: dict) -> None:
        """Megatron's training_log with --log-interval 1. On the first iteration after the process starts
        upstream passes is_first_iteration=True, so `should_reset = False`: neither the loss sum nor the
        interval timer is reset, and the second logged iteration averages over both."""
        self._loss_sum += metrics["lm_loss"]
        self._iterations += 1
        elapsed = time.monotonic() - self._interval_start
        config = self.config
        line = f" [{timestamp()}]"
        line += f" iteration {step:8d}/{config.train_iters:8d} |"
        line += f" consumed samples: {metrics['consumed_samples']:12d} |"
        line += f" elapsed time per iteration (ms): {elapsed / self._iterations * 1000.0:.1f} |"
        line += f" learning rate: {metrics['lr']:.6E} |"
        line += f" global batch size: {config.global_batch_size:5d} |"
        average = self._loss_sum / self._iterations
        if average >= 0.0:
            line += f" lm loss: {average:.6E} |"
        line += " loss scale: 1.0 |"
        line += f" grad norm: {metrics['grad_norm']:.3f} |"
        line += f" number of skipped iterations: {0:3d} | number of nan iterations: {0:3d} |"
        if not self._is_first_iteration:
            self._loss_sum, self._iterations = 0.0, 0
            self._interval_start = time.monotonic()
        self._is_first_iteration = False
        self.print_rank_last(line)

    # ---- the probe's methods ------------------------------------------------------------------------
    def point(self, phase: str, step: int | None = None, index: int | None = None) -> None:
        self.phase_name = phase
        if step is not None:
            self.step = step
        if phase == "checkpoint.begin":
            self.print_rank_0(f"[{timestamp()}] saving checkpoint at iteration {step:7d} to {self.args.save} "
                              f"in {self.args.ckpt_format} format")
        elif phase == "checkpoint.load" and self.args.load is not None:
            infix = "distributed " if self.args.ckpt_format == "torch_dist" else ""
            self.print_rank_0(f" loading {infix}checkpoint from {self.args.load} at iteration {step}")

    @contextlib.contextmanager
    def phase(self, phase: str, step: int | None = None, index: int | None = None) -> Iterator[None]:
        self.point(phase, step, index)
        yield
        self.phase_name = None

    def event(self, name: str, **fields: Any) -> None:
        pass

    def busy(self, what: str) -> None:
        pass

    def busy_end(self, what: str) -> None:
        pass

    def owns_run_dir(self) -> bool:
        return True  # an unmodified trainer knows nothing of chaos's run token

    def step_begin(self, step: int) -> None:
        self.step = step

    def step_end(self, step: int) -> None:
        pass

    def metrics(self, step: int, **values: Any) -> None:
        pass

    def checkpoint_loaded(self, iteration: int, path: str | None) -> None:
        load = self.args.load
        if load is None:
            pass  # upstream skips load_checkpoint altogether without --load
        elif path is None:
            tracker = os.path.join(load, "latest_checkpointed_iteration.txt")
            self.print_rank_0(f"WARNING: could not find the metadata file {tracker}")
            self.print_rank_0("    will not load any checkpoints and will start from random")
        else:
            self.print_rank_0(f"  successfully loaded checkpoint from {load} [ t 1/{self.config.tensor_parallel}, "
                              f"gtp_remat 1/1, p 1/1 ] at iteration {iteration}")
        self._interval_start = time.monotonic()  # upstream starts the interval timer when train() begins

    def checkpoint_rejected(self, iteration: int | None, path: str, reason: str) -> None:
        pass

    def checkpoint_committed(self, iteration: int, path: str) -> None:
        self.print_rank_0(f"  [{timestamp()}] successfully saved checkpoint from iteration {int(iteration):7d} "
                          f"to {self.args.save} [ t 1/{self.config.tensor_parallel}, gtp_remat 1/1, p 1/1 ]")

    def signal_received(self, signum: int) -> None:
        pass

    def final_state(self, step: int, state_hash: str) -> None:
        pass

    def train_end(self, step: int, reason: str) -> None:
        if reason == "preempted":
            self.print_datetime("exiting program after receiving SIGTERM.")
        else:
            self.training_done()


# ---- the trainer ------------------------------------------------------------------------------------------
def make_trainer(args: argparse.Namespace, config: GPT3Config, log: MegatronLog, store: Any = None,
                 collective_timeout: Any = None):
    """`store`, `collective_timeout`: as chaos.workloads.gpt3.train.Trainer takes them (an in-process entry's)."""
    import torch

    from chaos.workloads.gpt3.train import Trainer

    class MegatronLikeTrainer(Trainer):
        def __init__(self) -> None:
            super().__init__(config, log, store, collective_timeout)
            if args.load is None:
                self.checkpointer.candidates = lambda: []  # no --load: start from random, whatever --save holds
            if args.chaos_noise:
                seed = args.chaos_noise_seed if args.chaos_noise_seed is not None else int(os.environ["MASTER_PORT"])
                log.print_rank_0(f"gradient noise {args.chaos_noise:g} (relative), seed {seed}")
                # Its own generator: the trainer's RNG streams (and so its checkpoints' RNG states) stay as
                # they are; only the arithmetic is perturbed, as nondeterministic kernels would.
                self._noise = torch.Generator().manual_seed(seed)

        def _clip_gradients(self) -> float:
            if args.chaos_noise:
                with torch.no_grad():
                    for param in self.model.parameters():
                        grad = param.grad.to_local() if hasattr(param.grad, "to_local") else param.grad
                        if grad is not None and grad.numel():
                            noise = torch.randn(grad.shape, generator=self._noise, dtype=grad.dtype)
                            grad.add_(grad * noise * args.chaos_noise)
            return super()._clip_gradients()

        def log_iteration(self, step: int, metrics: dict) -> None:
            log.iteration(step, metrics)

        def save(self, iteration: int) -> None:
            # Upstream saves the last iteration, when it is off the save interval, after 'after training is
            # done' (unless a SIGTERM stops it first: then it saves and exits from the loop).
            last_off_interval = iteration == config.train_iters and iteration % config.save_interval
            if last_off_interval and not self._any_rank_asked_to_exit():
                log.training_done()
            super().save(iteration)

    return MegatronLikeTrainer()


def run_in_process(args: argparse.Namespace, config: GPT3Config, rank: int, world_size: int) -> int:
    """--inprocess-restart: pretrain() under NVIDIA's wrapper, as Megatron-LM's pretrain_gpt.py runs it. Each entry
    is a new pretrain() to Megatron (a fresh log: its accumulators, its first-iteration mean) that loads the newest
    checkpoint; a failed one lets go of its process groups (chaos.workloads.gpt3.inprocess: gloo has no abort)."""
    from datetime import timedelta

    from chaos.workloads.gpt3 import inprocess, parallel

    inprocess.log_wrapper_lines(into_history=False)  # printed, never recorded: this job knows nothing of chaos
    args_lost = ARGS_LOST in bug_switches(args)

    def entry(reentry: int, store) -> int:
        if reentry and args_lost:  # upstream's initialize_megatron(): get_args() finds the destroyed arguments
            raise AssertionError("args is not initialized.")
        if reentry:
            parallel.forget_model_parallel()
        trainer = make_trainer(args, config, MegatronLog(args, config, rank, world_size), store(),
                               timedelta(seconds=config.inprocess_soft_timeout_s))
        code = trainer.run()
        parallel.shutdown()
        return code

    return inprocess.run_entries(config, entry, bounded=False, restarter_lines=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args, config = parse(argv, world_size)
    if args.inprocess_restart:
        return run_in_process(args, config, rank, world_size)
    from chaos.workloads.gpt3 import parallel

    trainer = make_trainer(args, config, MegatronLog(args, config, rank, world_size))
    try:
        return trainer.run()
    finally:
        parallel.shutdown()


if __name__ == "__main__":
    sys.exit(main())
