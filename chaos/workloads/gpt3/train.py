"""The GPT-3 trainer: config -> build -> load -> train -> close, reporting through the chaos probe.

Run by hand:  torchrun --nproc-per-node=4 -m chaos.workloads.gpt3 workload.yaml
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from chaos.probe import Probe, get_probe
from chaos.workloads.gpt3 import parallel, rng
from chaos.workloads.gpt3.checkpoint import Checkpointer, TrainProgress, build_state_dict
from chaos.workloads.gpt3.config import GPT3Config
from chaos.workloads.gpt3.data import TrainData
from chaos.workloads.gpt3.heartbeat import Heartbeats
from chaos.workloads.gpt3 import model as model_module
from chaos.workloads.gpt3.model import plain_name


_DETACHED_HELPER = r"""
import os, signal, sys, time
if os.fork():
    os._exit(0)  # the rank reaps this one; the grandchild is re-parented away from the rank's tree
os.setsid()  # and leaves the rank's process group
signal.signal(signal.SIGTERM, signal.SIG_IGN)
try:  # and leaves the attempt's cgroup for its parent (the supervisor's)
    own = open("/proc/self/cgroup").read().split("0::", 1)[1].splitlines()[0]
    for line in open("/proc/self/mountinfo"):
        before, _, after = line.partition(" - ")
        if after.split()[:1] == ["cgroup2"]:
            parent = before.split()[4].rstrip("/") + os.path.dirname(own)
            with open(os.path.join(parent, "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
            break
except (OSError, IndexError):
    pass
time.sleep(float(sys.argv[1]))  # bounded: a test that fails to kill it does not leak it for ever
"""


STALL_WATCHDOG_S = 4.0


def _start_stall_watchdog(trainer: "Trainer") -> None:
    """Bug `stall_watchdog`: a heartbeat watchdog of the kind jobs add against hangs, set tighter than the
    stalls a job meets (a paused host, a slow filesystem): once a step has completed, a rank that sees no
    step end for STALL_WATCHDOG_S seconds gives up and exits 1."""
    import threading

    def watch() -> None:
        while not trainer.finished:
            time.sleep(0.2)
            last = trainer.last_step_end
            if last is not None and not trainer.finished and time.monotonic() - last > STALL_WATCHDOG_S:
                print(f"stall watchdog: no step completed for {STALL_WATCHDOG_S:g} s, giving up", file=sys.stderr,
                      flush=True)
                os._exit(1)

    threading.Thread(target=watch, name="stall-watchdog", daemon=True).start()


def _start_detached_helper() -> None:
    """Bug `detached_helper`: a background helper (an uploader, a log shipper) that detaches itself the
    way daemons do. Only the run token in its environment still ties it to the job."""
    import subprocess

    subprocess.run([sys.executable, "-c", _DETACHED_HELPER, "300"], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


class Trainer:
    def __init__(self, config: GPT3Config, probe: Probe, store: dist.Store | None = None,
                 collective_timeout: timedelta | None = None) -> None:
        """`store`: the process groups' store (None: env://); `collective_timeout`: once built, no collective
        waits longer (None: the groups' own timeouts)."""
        self.config = config
        self.probe = probe
        self.exit_requested = False
        self.last_step_end: float | None = None  # monotonic; read by the stall_watchdog bug
        self.finished = False
        if config.device == "cpu":
            from chaos.workloads.gpt3 import cpu_compat

            cpu_compat.apply()
        if config.device == "cuda" and config.deterministic:
            torch.use_deterministic_algorithms(True)
        self.dims = parallel.init(config, store)
        probe.event("startup_phase", phase="process_groups")
        rng.seed_everything(config.seed, self.dims.tp_rank, config.device)
        model, self.layouts = model_module.build(config, self.dims)
        self.model, self.optimizer = model_module.build_optimizer(model, config, self.dims)
        self.scheduler = self._build_scheduler()
        probe.event("startup_phase", phase="model")
        cache = config.data_cache_dir or str(Path(config.save_dir).parent / "data_cache")
        self.data = TrainData(config, self.dims, cache)
        probe.event("startup_phase", phase="data")
        self.checkpointer = Checkpointer(config, self.dims, probe)
        self.progress = TrainProgress()
        self._grad_scale = float(self.dims.dp) if config.fsdp == "torch" else 1.0
        # Megatron's grad norm: a TP-sharded gradient counts on every TP rank, a replicated one on TP rank 0
        self._counts_in_norm = {name: layout.partition_dim is not None or self.dims.tp_rank == 0
                                for name, layout in self.layouts.items()}
        self._install_signal_handlers()
        self.heartbeats = Heartbeats()  # under ft_launcher: its rank monitor watches this rank's progress
        if config.has_bug("detached_helper") and self.dims.rank == 0:
            _start_detached_helper()
        if config.has_bug("stall_watchdog"):
            _start_stall_watchdog(self)
        if collective_timeout is not None:
            parallel.bound_collectives(collective_timeout)

    def _build_scheduler(self):
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        config = self.config
        return OptimizerParamScheduler(
            self.optimizer, init_lr=0.0, max_lr=config.lr, min_lr=config.min_lr,
            lr_warmup_steps=config.lr_warmup_iters, lr_decay_steps=config.lr_decay_iters or config.train_iters,
            lr_decay_style=config.lr_decay_style, start_wd=config.weight_decay, end_wd=config.weight_decay,
            wd_incr_steps=config.train_iters, wd_incr_style="constant",
            use_checkpoint_opt_param_scheduler=True, override_opt_param_scheduler=False,
        )

    def _install_signal_handlers(self) -> None:
        def on_sigterm(signum, frame):
            self.probe.signal_received(signum)
            if not self.config.has_bug("ignore_sigterm"):
                self.exit_requested = True

        if self.config.exit_on_sigterm or self.config.has_bug("ignore_sigterm"):
            signal.signal(signal.SIGTERM, on_sigterm)

    # ---- one step --------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        config, dims, probe = self.config, self.dims, self.probe
        with probe.phase("data", step):
            micro_batches, data_hash = self.data.global_batch(self.progress.consumed_samples)
            # per-token loss as upstream (--calculate-per-token-loss): divide by the global token count
            local_tokens = sum(micro.loss_mask.sum() for micro in micro_batches).reshape(1).to(torch.float64)
            dist.all_reduce(local_tokens, group=dims.dp_group)
            total_tokens = local_tokens.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros(1, dtype=torch.float64, device=dims.device)
        for index, micro in enumerate(micro_batches, start=1):
            with probe.phase("forward", step, index=index):
                token_losses = self.model(micro.tokens, micro.position_ids, micro.attention_mask, labels=micro.labels)
                masked = (token_losses.float() * micro.loss_mask).sum()
                # FSDP2's reduce-scatter averages over dp (gloo has no PREMUL_SUM for a custom factor),
                # so scale by dp to get the gradient of the global per-token mean; Megatron-FSDP with
                # calculate_per_token_loss sums.
                loss = masked * (self._grad_scale / total_tokens)
            with probe.phase("backward", step, index=index):
                loss.backward()
            loss_sum += masked.detach().to(torch.float64)
        with probe.phase("optimizer", step):
            if self.config.fsdp == "megatron":
                self.model.finish_grad_sync()  # reduce-scatter done, grads attached to the DTensor params
            grad_norm = self._clip_gradients()
            if self.config.fsdp == "megatron":
                self.optimizer.step(sync_grad_before_optimizer_step=False)
            else:
                self.optimizer.step()
            self.scheduler.step(increment=1)
        dist.all_reduce(loss_sum, group=dims.dp_group)
        self.progress.iteration = step
        self.progress.consumed_samples += config.global_batch_size
        return {
            "lm_loss": (loss_sum / total_tokens).item(),
            "grad_norm": grad_norm,
            "lr": self.optimizer.param_groups[0]["lr"],
            "consumed_samples": self.progress.consumed_samples,
            "data_hash": data_hash,
        }

    def _clip_gradients(self) -> float:
        """Megatron's global grad norm: TP-sharded gradients count on every TP rank, replicated ones once."""
        dims = self.dims
        squares = torch.zeros(1, dtype=torch.float64, device=dims.device)
        grads = []
        for name, param in self.model.named_parameters():
            if param.grad is None:
                continue
            local = param.grad.to_local() if hasattr(param.grad, "to_local") else param.grad
            grads.append(local)
            if self._counts_in_norm[plain_name(name)]:
                squares += local.to(torch.float64).pow(2).sum()
        dist.all_reduce(squares)
        total_norm = math.sqrt(squares.item())
        clip = self.config.clip_grad / (total_norm + 1.0e-6)
        if clip < 1.0:
            for grad in grads:
                grad.mul_(clip)
        return total_norm

    # ---- the loop ----------------------------------------------------------------------------------------
    def state_dict(self):
        return build_state_dict(self.model, self.optimizer, self.scheduler, self.layouts, self.dims,
                                self.config, self.progress)

    def save(self, iteration: int) -> None:
        self.checkpointer.save(self.state_dict(), iteration)

    def run(self, load: bool = True) -> int:
        """Loads the newest committed checkpoint and trains to the end; `load` False (only the planted bug
        inprocess_no_load) starts from iteration 1 as if nothing had been saved."""
        config, probe = self.config, self.probe
        # Startup's silence ends here: the checkpoint load and every step are watched with hang_timeout_s
        # (they are where hang faults land), only imports and building were allowed startup_timeout_s.
        probe.busy_end("startup")
        if load:
            self.progress = self.checkpointer.load(self.model, self.optimizer, self.scheduler, self.layouts,
                                                   self.progress)
        else:
            probe.checkpoint_loaded(0, None)
        if config.fsdp == "megatron" and self.progress.iteration:
            # The load wrote Megatron-FSDP's fp32 main weights; copy them into the compute weights.
            self.model.install_optimized_model_weights()
        self.heartbeats.beat()
        last_saved = self.progress.iteration
        for step in range(self.progress.iteration + 1, config.train_iters + 1):
            probe.step_begin(step)
            metrics = self.train_step(step)
            probe.metrics(step, **metrics)
            self.log_iteration(step, metrics)
            probe.step_end(step)
            self.heartbeats.beat()
            self.last_step_end = time.monotonic()
            self.checkpointer.finalize_async(wait=False)
            if step % config.save_interval == 0 or step == config.train_iters:
                self.save(step)
                last_saved = step
            stop_here = config.exit_at_iter is not None and step == config.exit_at_iter
            if stop_here or self._any_rank_asked_to_exit():
                # Megatron's --exit-signal-handler: every rank stops after the same step, saved: no step lost.
                if last_saved != step:
                    self.save(step)
                self.checkpointer.finalize_async(wait=True)
                self.finished = True
                probe.train_end(step, "preempted")
                return 0
        self.finished = True
        self.checkpointer.finalize_async(wait=True)
        self.heartbeats.close()
        probe.busy("final state hash")
        state_hash = self.state_hash()
        probe.busy_end("final state hash")
        probe.final_state(config.train_iters, state_hash)
        probe.train_end(config.train_iters, "complete")
        return 0

    def log_iteration(self, step: int, metrics: dict) -> None:
        """Prints the step's log line (rank 0, Megatron's iteration format); a subclass may print its own."""
        if self.dims.rank == 0:
            print(format_log_line(step, self.config, metrics), flush=True)

    def _any_rank_asked_to_exit(self) -> bool:
        flag = torch.tensor([1 if self.exit_requested else 0], dtype=torch.int32, device=self.dims.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def state_hash(self) -> str:
        """sha256 over every shard of the parameters and Adam moments, keyed by name and global offset.

        Each rank hashes its own shards (no gather of the weights); rank 0 hashes the sorted list. Equal for
        two runs of the same topology exactly when every shard is bitwise equal."""
        gathered: list = [None] * self.dims.world_size
        dist.all_gather_object(gathered, self.state_pieces())
        unique = sorted({piece for rank_pieces in gathered for piece in rank_pieces})
        return hashlib.sha256(repr(unique).encode()).hexdigest()

    def state_pieces(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(key, global offset, sha256) of each model and optimizer shard this rank holds."""
        pieces = []
        for key, value in sorted(self.state_dict().items()):
            if not key.startswith(("model/", "optim/")):
                continue
            if hasattr(value, "to_local"):
                # DCP's own view of where the local shard sits (Megatron-FSDP's uneven chunks included)
                offset = value.__create_chunk_list__()[0].offsets
                local = value.to_local()
            else:
                offset, local = (), value
            data = local.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            pieces.append((key, tuple(int(o) for o in offset), hashlib.sha256(data).hexdigest()))
        return pieces

DETERMINISTIC_ENV = {
    "NCCL_ALGO": "Ring",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "NVTE_ALLOW_NONDETERMINISTIC_ALGO": "0",
}


def format_log_line(step: int, config: GPT3Config, metrics: dict) -> str:
    """Megatron's iteration log line, so log-following tools (and people) read it the same way."""
    return (
        f" iteration {step:8d}/{config.train_iters:8d} | consumed samples: {metrics['consumed_samples']:12d} |"
        f" learning rate: {metrics['lr']:.6E} | global batch size: {config.global_batch_size:5d} |"
        f" lm loss: {metrics['lm_loss']:.6E} | grad norm: {metrics['grad_norm']:.3f} |"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: torchrun --nproc-per-node=N -m chaos.workloads.gpt3 WORKLOAD.yaml", file=sys.stderr)
        return 2
    probe = get_probe()
    config = GPT3Config.read_yaml(Path(argv[0]))
    if config.device == "cuda" and config.deterministic:
        # Megatron's deterministic mode (upstream test's ENV_VARS); read when NCCL/cuBLAS initialise.
        for name, value in DETERMINISTIC_ENV.items():
            os.environ.setdefault(name, value)
    if config.inprocess_restarts:
        from chaos.workloads.gpt3 import inprocess  # NVRx: imported only when the job restarts in-process

        return inprocess.run(config, train_entry)
    trainer = Trainer(config, probe)
    try:
        return trainer.run()
    finally:
        parallel.shutdown()


def train_entry(config: GPT3Config, probe: Probe, store: dist.Store, reentry: int) -> int:
    """One entry of the training function under in-process restart (`reentry` 0: the first): everything
    built anew on `store` and the newest committed checkpoint loaded, exactly as a fresh process would (that
    is what makes the resumed run equal the uninterrupted one). The process groups are destroyed here when
    training ends; after a failure the wrapper has aborted them, and the next entry forgets megatron-core's."""
    if reentry:
        parallel.forget_model_parallel()
    # a collective blocked longer than the wrapper's soft timeout is a hang it restarts for anyway; on gloo,
    # which has no abort, the collective's own timeout is what ends it (chaos.workloads.gpt3.inprocess)
    trainer = Trainer(config, probe, store, collective_timeout=timedelta(seconds=config.inprocess_soft_timeout_s))
    code = trainer.run(load=not (reentry and config.has_bug("inprocess_no_load")))
    parallel.shutdown()
    return code
