"""The GPT-3 workload's configuration: a typed, frozen dataclass built from the scenario's `workload:`
mapping (preset + overrides). Pure Python: the supervisor validates it without importing torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from chaos import safe_files
from chaos.config_fields import AT_LEAST_ONE, FieldReader, read_dataclass, setting
from chaos.errors import did_you_mean, show

# Deliberate bugs, for proving that each checker can fail. Never on by default; a scenario or test asks.
BUGS = (
    "no_rng_restore",        # RNG states are saved but not restored on load
    "no_data_position",      # consumed samples restart from 0 after a resume
    "no_optimizer_state",    # optimizer moments are neither saved nor loaded
    "tracker_before_shards", # the tracker names the new iteration before the shards are written
    "load_partial",          # loading takes the newest iter_* directory, committed or not
    "swap_tp_shards",        # trap 1 (README): TP ranks write the same keys; both load one shard
    "ignore_sigterm",        # SIGTERM is caught and ignored: the rank never dies on it
    "skip_step_on_resume",   # resume starts one step after the checkpoint (a step is lost)
    "upstream_loss_mask_cache",  # megatron-core's GPTDataset mask cache as shipped: a process's first
                                 # sample's pad positions are masked in all its later samples
    "load_previous",         # a resume loads the newest-but-one committed checkpoint (an older one)
    "crash_on_resume",       # loading a checkpoint raises: no restart ever resumes
    "detached_helper",       # rank 0 starts a helper that double-forks, setsid()s, ignores SIGTERM and
                             # leaves the attempt's cgroup: it would outlive the job under any launcher
    "stall_watchdog",        # a heartbeat watchdog set tighter than a plausible stall: a rank exits 1 when
                             # no step completed for 4 s (after its first step)
    "zero_moments_on_load",  # Adam's moments are zeroed after a load (their step counts kept)
    "no_scheduler_restore",  # the learning-rate scheduler's state is saved but not restored on load
    "no_fallback",           # a checkpoint that fails verification is not passed over: loading raises
                             # (Megatron-LM loads what the tracker names and dies on a corrupt one, every restart)
    "inprocess_no_load",     # an in-process re-entry (inprocess_restarts) does not load the newest committed
                             # checkpoint: training starts again from iteration 1 (Megatron-LM issue #2774's symptom)
)


MAX_WORLD_SIZE = 1024
MAX_SEED = 2**32 - 1 - 1_000_000
"""numpy takes seeds < 2**32; the trainer adds per-rank offsets to the scenario's seed."""

NUMERICS_VERSION = 5
"""Bump when the trainer's math, its state hash or its data hash changes: committed goldens of older versions
stop matching. 3: the data hash covers labels, loss mask, position ids and attention mask of every dp rank.
4: CPU kernels pinned to AVX2 (workload.CPU_PINS). 5: the pins that make CPU goldens travel between CPU
vendors: MKL_CBWR=COMPATIBLE, oneDNN off, fused AdamW on CPU (exact square root)."""


_PROBABILITY = "expected a probability in [0, 1), got {value}"
_FRACTION = "expected a value in [0, 1), got {value}"


@dataclass(frozen=True)
class GPT3Config:
    """Each field is a key of the `workload:` mapping, read by its type and range (chaos.config_fields);
    validate() checks the fields against each other."""

    preset: str = setting("tiny_cpu", "Named starting point: tiny_cpu (CI) or upstream_gpu (Megatron-LM's "
                                      "functional test shape).")
    device: Literal["cpu", "cuda"] = "cpu"
    world_size: int = setting(4, "Number of ranks; data parallel size = world_size / tensor_parallel.",
                              low=1, outside=AT_LEAST_ONE)
    nodes: int = setting(1, "Simulated hosts (torchrun agents); ranks are split evenly between them.",
                         low=1, outside=AT_LEAST_ONE)
    tensor_parallel: int = setting(2, "1, 2, 4 or 8.", low=1, outside=AT_LEAST_ONE)
    fsdp: Literal["torch", "megatron"] = setting("torch", "ZeRO-3 implementation: torch FSDP2 fully_shard (CPU "
                                                          "and GPU) or Megatron-FSDP optim_grads_params (GPU).")
    transformer_impl: Literal["local", "transformer_engine"] = "local"
    num_layers: int = setting(4, low=1, outside=AT_LEAST_ONE)
    hidden_size: int = setting(128, low=1, outside=AT_LEAST_ONE)
    num_attention_heads: int = setting(4, low=1, outside=AT_LEAST_ONE)
    seq_length: int = setting(128, low=1, outside=AT_LEAST_ONE)
    vocab_size: int = setting(1024, "Mock tokenizer vocabulary; padded to a multiple of 128 x tensor_parallel "
                                    "like Megatron.", low=1, outside=AT_LEAST_ONE)
    micro_batch_size: int = setting(2, low=1, outside=AT_LEAST_ONE)
    global_batch_size: int = setting(8, low=1, outside=AT_LEAST_ONE)
    hidden_dropout: float = setting(0.1, low=0.0, below=1.0, outside=_PROBABILITY)
    attention_dropout: float = setting(0.1, low=0.0, below=1.0, outside=_PROBABILITY)
    bf16: bool = False
    deterministic: bool = True
    train_iters: int = setting(12, low=1, outside=AT_LEAST_ONE)
    lr: float = setting(1.0e-3, above=0.0)
    min_lr: float = setting(1.0e-4, "At most lr.", low=0.0)
    lr_warmup_iters: int = setting(2, "Below the decay steps.", low=0, outside="cannot be negative, got {value}")
    lr_decay_iters: int | None = setting(None, "Defaults to train_iters.", low=1)
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = setting(0.01, low=0.0)
    clip_grad: float = setting(1.0, low=0.0)
    adam_beta1: float = setting(0.9, low=0.0, below=1.0, outside=_FRACTION)
    adam_beta2: float = setting(0.95, low=0.0, below=1.0, outside=_FRACTION)
    adam_eps: float = setting(1.0e-8, above=0.0)
    seed: int = setting(1234, low=0, high=MAX_SEED, reason="numpy's seed range, less the per-rank offsets")
    data_path: str | None = setting(None, "Prefix of a megatron indexed dataset (.bin/.idx); None = MockGPTDataset.")
    save_interval: int = setting(4, low=1, outside=AT_LEAST_ONE)
    keep_last: int = setting(0, "Keep only the newest k committed checkpoints (0 = keep all).", low=0,
                             outside="cannot be negative")
    async_save: bool = False
    exit_on_sigterm: bool = setting(True, "Megatron's --exit-signal-handler: on SIGTERM finish the step, save, "
                                          "exit 0 (no step lost).")
    shard_files_per_rank: int = setting(2, "DCP shard files each rank writes (probe point checkpoint.shard after "
                                           "each).", low=1, outside=AT_LEAST_ONE)
    checkpoint_storage: Literal["shared", "node_local"] = setting(
        "shared", "shared: checkpoints in the run directory, seen by every node. node_local: each rank writes its "
                  "shards to its own node's local disk (hosts: netns), with nothing copied elsewhere: what a node "
                  "loss takes.")
    save_dir: str = "checkpoints"
    data_cache_dir: str | None = setting(
        None, "Where the dataset's index files are cached (None: beside the checkpoint directory). A run uses the "
              "run directory's, seen by every node: Megatron builds them on rank 0 and the others read them.")
    load_dir: str | None = setting(None, "Resume from here (defaults to save_dir).")
    exit_at_iter: int | None = setting(None, "Stop cleanly after this step, saved (Megatron's --exit-interval): the "
                                             "stop half of a stop/resume test.")
    inprocess_restarts: int = setting(
        0, "NVIDIA's in-process restart (nvidia-resiliency-ext's inprocess.Wrapper, Megatron-LM's "
           "--inprocess-restart): after an exception or a hang in any rank, every rank re-enters the training "
           "function in the same process, at most this many times, rebuilding everything and loading the newest "
           "committed checkpoint as a fresh process would. 0: off, nothing of NVRx is imported. The job's own "
           "recovery layer: needs restart.by: job with restart.max_restarts equal to it (the launcher then "
           "restarts nothing, --max-restarts=0).", low=0, high=1000, reason="restart.max_restarts' limit")
    inprocess_soft_timeout_s: float = setting(
        5.0, "In-process restart's hang detection (the wrapper's soft timeout): a rank whose main thread ran no "
             "Python for this long (stopped, or blocked in a collective) makes every rank abort and re-enter; its "
             "hard timeout (3x) terminates a rank that is still stuck. A pause longer than this is the job's to "
             "recover (restart.job_hang_timeout_s).", low=2.0, reason="above the wrapper's 1 s progress interval")
    bugs: tuple[str, ...] = setting((), "Deliberate bugs (BUGS), for proving that each checker can fail.")

    # ---- derived -----------------------------------------------------------------------------
    @property
    def data_parallel(self) -> int:
        return self.world_size // self.tensor_parallel

    @property
    def num_microbatches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.data_parallel)

    @property
    def padded_vocab_size(self) -> int:
        multiple = 128 * self.tensor_parallel
        return ((self.vocab_size + multiple - 1) // multiple) * multiple

    def has_bug(self, name: str) -> bool:
        return name in self.bugs

    # ---- building ----------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], source: str, field_prefix: str = "workload") -> "GPT3Config":
        """The preset's values, then the mapping's (each read by its field's type and range), then validate()."""
        read = FieldReader(source, field_prefix)
        if not isinstance(mapping, Mapping):
            raise read.error("", f"expected a mapping, got {type(mapping).__name__}")
        preset_name = mapping.get("preset", "tiny_cpu")
        if not isinstance(preset_name, str) or preset_name not in PRESETS:
            raise read.error("preset", f"unknown preset {show(preset_name)}; expected one of {sorted(PRESETS)}"
                                       f"{did_you_mean(preset_name, list(PRESETS))}")
        config = read_dataclass(cls, mapping, read, base={**PRESETS[preset_name], "preset": preset_name})
        config.validate(read)
        return config

    def validate(self, read: FieldReader) -> None:
        """The checks between fields (each field's own type and range are read_dataclass's)."""
        bad = read.error
        if self.tensor_parallel not in (1, 2, 4, 8):
            raise bad("tensor_parallel", f"must be 1, 2, 4 or 8, got {self.tensor_parallel}")
        if self.world_size % self.tensor_parallel:
            raise bad("world_size", f"{self.world_size} is not a multiple of tensor_parallel={self.tensor_parallel}")
        if self.world_size % self.nodes:
            raise bad("nodes", f"world_size={self.world_size} does not split evenly over {self.nodes} nodes")
        if self.global_batch_size % (self.micro_batch_size * self.data_parallel):
            raise bad("global_batch_size", f"{self.global_batch_size} is not a multiple of micro_batch_size x "
                      f"data_parallel = {self.micro_batch_size} x {self.data_parallel}")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.tensor_parallel:
            raise bad("num_attention_heads", "must divide hidden_size and be a multiple of tensor_parallel")
        if self.world_size > MAX_WORLD_SIZE:
            raise bad("world_size", f"at most {MAX_WORLD_SIZE} ranks (every rank is a process on this machine), "
                                    f"got {self.world_size}")
        if self.min_lr > self.lr:
            raise bad("min_lr", f"{self.min_lr} is above lr={self.lr}")
        decay = self.lr_decay_iters or self.train_iters
        if self.lr_warmup_iters >= decay:  # megatron-core's OptimizerParamScheduler asserts this in every rank
            decay_field = "lr_decay_iters" if self.lr_decay_iters else "train_iters"
            raise bad("lr_warmup_iters", f"must be below the decay steps ({decay_field}={decay}), got "
                                         f"{self.lr_warmup_iters}")
        for name in ("exit_at_iter",):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= self.train_iters:
                raise bad(name, f"expected a step in [1, train_iters={self.train_iters}], got {value}")
        if self.device == "cpu" and self.fsdp == "megatron":
            raise bad("fsdp", "Megatron-FSDP is CUDA-only (it uses CUDA streams throughout); use fsdp: torch on CPU")
        if self.device == "cpu" and self.transformer_impl == "transformer_engine":
            raise bad("transformer_impl", "transformer_engine needs device: cuda; use transformer_impl: local on CPU")
        if self.device == "cpu" and self.bf16:
            raise bad("bf16", "bf16 is for device: cuda; the CPU reference runs in fp32 (bitwise oracle)")
        for bug in self.bugs:
            if bug not in BUGS:
                raise bad("bugs", f"unknown bug {show(bug)}{did_you_mean(bug, BUGS)}; expected one of {list(BUGS)}")

    def with_run_dir(self, run_dir: Path) -> "GPT3Config":
        """Checkpoints always live inside the run directory: the tool never writes outside it."""
        if self.checkpoint_storage == "node_local":
            # the node-local disk's mount point (chaos.supervisor.hosts.netns.NODE_LOCAL): each node sees its own
            save_dir = Path(run_dir) / "node_local" / "checkpoints"
        else:
            save_dir = Path(run_dir) / "checkpoints"
        return dataclasses.replace(self, save_dir=str(save_dir), load_dir=str(save_dir),
                                   data_cache_dir=str(Path(run_dir) / "data_cache"))

    def to_mapping(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["bugs"] = list(self.bugs)
        return out

    def fingerprint_mapping(self) -> dict[str, Any]:
        """What decides the numbers: everything but where files go, how often/how they are saved and how the job
        recovers (saving never draws from an RNG or touches the math, and an in-process re-entry loads like a
        fresh process: one golden serves every such setting)."""
        out = self.to_mapping()
        out["numerics_version"] = NUMERICS_VERSION
        for key in ("save_dir", "load_dir", "data_cache_dir", "checkpoint_storage", "keep_last", "async_save", "nodes", "bugs", "exit_at_iter",
                    "save_interval", "shard_files_per_rank", "exit_on_sigterm",
                    # how the job recovers is not what it computes: a re-entry loads like a fresh process
                    "inprocess_restarts", "inprocess_soft_timeout_s"):
            out.pop(key, None)
        return out

    def write_yaml(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # into the run directory: a new file renamed over the target, never a write through a planted link
        safe_files.write_file(path, yaml.safe_dump(self.to_mapping(), sort_keys=True), root=path.parent)

    @classmethod
    def read_yaml(cls, path: Path) -> "GPT3Config":
        mapping = yaml.safe_load(safe_files.read_input(Path(path), "workload.yaml"))
        return cls.from_mapping(mapping, source=str(path), field_prefix="")


PRESETS: dict[str, dict[str, Any]] = {
    # CI-sized: 4 layers, hidden 128, 4 heads, seq 128; TP2 x DP2 on 4 ranks over gloo.
    "tiny_cpu": {},
    # The shape of Megatron-LM's gpt3_mcore_te_tp2_zp_z3_resume_fsdp_dtensor (model_config.yaml).
    "upstream_gpu": {
        "device": "cuda",
        "world_size": 2,
        "tensor_parallel": 2,
        # Upstream uses Megatron-FSDP; chaos's fsdp: megatron resumes bitwise at TP2xDP1 but only within
        # Megatron's thresholds at TP2xDP2 and is unverified with TE (docs/gpu.md), so the preset shards
        # with FSDP2, which resumes bitwise on GPU with both layer specs.
        "fsdp": "torch",
        "transformer_impl": "transformer_engine",
        "num_layers": 12,
        "hidden_size": 512,
        "num_attention_heads": 8,
        "seq_length": 1024,
        "vocab_size": 50257,
        "micro_batch_size": 4,
        "global_batch_size": 32,
        "bf16": True,
        "train_iters": 100,
        "lr": 1.5e-4,
        "min_lr": 1.0e-5,
        "lr_warmup_iters": 1,
        "lr_decay_iters": 320000,
        "weight_decay": 1e-2,
        "clip_grad": 1.0,
        "save_interval": 50,
        "async_save": True,
    },
}
