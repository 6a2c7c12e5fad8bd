"""The configuration of `kind: megatron_lm`: an unmodified Megatron-LM (or any Megatron-style) training
command as the system under test. A typed, frozen dataclass built from the scenario's `workload:` mapping;
pure Python + pyyaml (the supervisor validates it without importing torch).

```yaml
workload:
  kind: megatron_lm
  megatron_lm: /path/to/Megatron-LM      # default $MEGATRON_LM: the checkout whose script runs
  script: pretrain_gpt.py                # relative to megatron_lm, then the scenario's folder, then the working folder
  python: python3                        # default: the interpreter running chaos
  nproc_per_node: 2
  nodes: 1                               # world_size = nproc_per_node * nodes
  device: cuda                           # cuda | cpu: the default golden comparison (megatron tolerances | exact)
  args_from: model_config.yaml           # Megatron-LM's functional-test format: MODEL_ARGS + ENV_VARS
  args_remove: [--data-path]             # flags (with their values) dropped from args_from's MODEL_ARGS
  args: [--num-layers, 12, --bf16]       # appended after args_from's; a flag given in both: args wins
  vars: {DATA_PATH: /data}               # ${NAME} in args / args_from / env (then the environment)
  env: {CUDA_DEVICE_MAX_CONNECTIONS: "1"}   # merged over args_from's ENV_VARS
  train_iters: 30                        # default: --train-iters in the args
  save_interval: 10                      # default: --save-interval in the args
  exit_on_sigterm: true                  # chaos adds (true) or removes (false) --exit-signal-handler
```

Rules:
- args, args_from, args_remove, env and vars make the training command: command.py (its rules) and flags.py
  (Megatron's argparse: `--flag value...`, `--flag=value`).
- chaos owns CHAOS_OWNED_FLAGS: every occurrence is removed and chaos appends its own (launch_args).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from chaos import safe_files
from chaos.config_fields import AT_LEAST_ONE, FieldReader
from chaos.errors import did_you_mean, show
from chaos.workloads.megatron_lm.command import candidates, read_command, read_vars, substitute
from chaos.workloads.megatron_lm.flags import Flag, Token, group, parse_flags

CHAOS_OWNED_FLAGS = ("--save", "--load", "--train-iters", "--save-interval", "--log-interval", "--exit-signal-handler")
"""Flags chaos rewrites on every launch: checkpoints go to the run directory, chaos decides the length and
the save interval, reads every iteration's log line, and decides whether SIGTERM is a graceful save-and-exit."""

CKPT_FORMATS = ("torch_dist", "fsdp_dtensor", "torch_dcp", "torch")
"""Megatron's --ckpt-format choices; torch_dist is Megatron's default."""

DEFAULT_CKPT_FORMAT = "torch_dist"

FILE_LOCATION_FLAGS = (
    "--tensorboard-dir",
    "--data-cache-path",
    "--wandb-save-dir",
    "--non-persistent-global-ckpt-dir",
    "--non-persistent-local-ckpt-dir",
    "--memory-snapshot-path",
)
"""Path-valued flags that only say where files go: left out of the fingerprint (they never change the
numbers), so one golden serves every run directory and every machine's scratch space."""

IN_PROCESS_RESTART = "--inprocess-restart"
"""Megatron-LM's switch for NVIDIA's in-process restart: pretrain() runs inside nvidia-resiliency-ext's
inprocess.Wrapper, which re-enters it in the same processes after a failure (a recovery layer of the job's own)."""
IN_PROCESS_SOFT_TIMEOUT = "--inprocess-soft-timeout"
DEFAULT_IN_PROCESS_SOFT_TIMEOUT_S = 60.0
"""Megatron-LM's default for --inprocess-soft-timeout (arguments.py)."""
IN_PROCESS_RECOVERY_FLAGS = (
    IN_PROCESS_RESTART, "--inprocess-max-iterations", "--inprocess-monitor-thread-interval",
    "--inprocess-monitor-process-interval", "--inprocess-progress-watchdog-interval", "--inprocess-heartbeat-interval",
    IN_PROCESS_SOFT_TIMEOUT, "--inprocess-hard-timeout", "--inprocess-heartbeat-timeout", "--inprocess-barrier-timeout",
    "--inprocess-completion-timeout", "--inprocess-last-call-wait", "--inprocess-termination-grace-time",
    "--inprocess-empty-cuda-cache",
)
"""How the job recovers in-process, not what it computes: left out of the fingerprint, so the job shares its golden
with the same job restarted any other way (as the gpt3 workload's inprocess_restarts). Not
--inprocess-active-world-size nor --inprocess-granularity: which ranks train decides the numbers."""

KEYS = ("kind", "megatron_lm", "script", "python", "nproc_per_node", "nodes", "device", "args", "args_from",
        "args_remove", "vars", "env", "train_iters", "save_interval", "exit_on_sigterm", "ckpt_format")
DEVICES = ("cuda", "cpu")
DEFAULT_SCRIPT = "pretrain_gpt.py"
MEGATRON_LM_ENV = "MEGATRON_LM"


# ---- the config ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MegatronLMConfig:
    script: str
    """Absolute path of the training script."""
    megatron_lm: str | None
    """Absolute path of the Megatron-LM checkout (given, $MEGATRON_LM holding the script, or the nearest
    folder above the script that holds `megatron/`); None when the script is not inside one."""
    python: str
    """The interpreter that runs the script (a name on PATH or an absolute path)."""
    nproc_per_node: int
    nodes: int
    device: str
    """cuda | cpu: decides the default golden comparison (megatron tolerances on cuda, exact on cpu)."""
    user_args: tuple[str, ...]
    """The user's flags after args_from expansion, args_remove and ${VAR} substitution; chaos-owned flags
    are still here as given (launch_args rewrites them)."""
    env: tuple[tuple[str, str], ...]
    """Extra environment for every rank, sorted (name, value); args_from's ENV_VARS with `env` over them."""
    train_iters: int
    save_interval: int
    exit_on_sigterm: bool = True
    ckpt_format: str = DEFAULT_CKPT_FORMAT
    """Read from --ckpt-format in the args (Megatron's default torch_dist); not a setting."""
    inprocess_restart: bool = False
    """--inprocess-restart is in the args: the job restarts itself in-process (read from the args; not a setting)."""
    inprocess_soft_timeout_s: float = DEFAULT_IN_PROCESS_SOFT_TIMEOUT_S
    """--inprocess-soft-timeout (Megatron's default 60): the in-process layer's hang detection."""

    # ---- derived -----------------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nodes

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def flags(self) -> list[tuple[str, tuple[str, ...]]]:
        """user_args as (flag, values) in order."""
        return parse_flags(self.user_args)

    # ---- building ----------------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], source: str, field_prefix: str = "workload",
                     base_dir: Path | None = None) -> "MegatronLMConfig":
        read = FieldReader(source, field_prefix)
        if not isinstance(mapping, Mapping):
            raise read.error("", f"expected a mapping (kind: megatron_lm, script, args, ...), "
                                 f"got {type(mapping).__name__}")
        read.mapping(mapping, "", KEYS, noun="field")
        base_dir = Path(base_dir) if base_dir is not None else None

        variables = read_vars(read, mapping.get("vars"))
        megatron_lm, script = _checkout_and_script(read, mapping, base_dir)
        python = _python(read, mapping.get("python"), base_dir)
        nproc_per_node = read.integer(mapping.get("nproc_per_node", 1), "nproc_per_node", low=1, outside=AT_LEAST_ONE)
        nodes = read.integer(mapping.get("nodes", 1), "nodes", low=1, outside=AT_LEAST_ONE)
        device = read.choice(mapping.get("device", "cuda"), "device", DEVICES)

        # args_from, args_remove, args -> one ordered list of flags (args wins over args_from); and the env
        resolved, env = read_command(read, mapping, base_dir, variables, owned=CHAOS_OWNED_FLAGS)
        user_args = tuple(t.text for f in resolved for t in f.tokens)

        train_iters = _owned_int(read, mapping, "train_iters", "--train-iters", resolved, variables)
        save_interval = _owned_int(read, mapping, "save_interval", "--save-interval", resolved, variables)
        exit_on_sigterm = read.boolean(mapping.get("exit_on_sigterm", True), "exit_on_sigterm")
        ckpt_format = _ckpt_format(read, mapping.get("ckpt_format"), resolved)
        inprocess_restart, soft_timeout_s = _in_process(read, resolved)

        return cls(script=script, megatron_lm=megatron_lm, python=python, nproc_per_node=nproc_per_node,
                   nodes=nodes, device=device, user_args=user_args, env=env, train_iters=train_iters,
                   save_interval=save_interval, exit_on_sigterm=exit_on_sigterm, ckpt_format=ckpt_format,
                   inprocess_restart=inprocess_restart, inprocess_soft_timeout_s=soft_timeout_s)

    def to_mapping(self) -> dict[str, Any]:
        """Every setting explicit (absolute paths, args as a list, no args_from / vars); from_mapping of it
        gives back an equal config."""
        return {
            "kind": "megatron_lm",
            "megatron_lm": self.megatron_lm,
            "script": self.script,
            "python": self.python,
            "nproc_per_node": self.nproc_per_node,
            "nodes": self.nodes,
            "device": self.device,
            "args": list(self.user_args),
            "env": dict(self.env),
            "train_iters": self.train_iters,
            "save_interval": self.save_interval,
            "exit_on_sigterm": self.exit_on_sigterm,
            "ckpt_format": self.ckpt_format,
        }

    def write_yaml(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # into the run directory: a new file renamed over the target, never a write through a planted link
        safe_files.write_file(path, yaml.safe_dump(self.to_mapping(), sort_keys=False), root=path.parent)

    @classmethod
    def read_yaml(cls, path: Path) -> "MegatronLMConfig":
        mapping = yaml.safe_load(safe_files.read_input(Path(path), "workload.yaml"))
        return cls.from_mapping(mapping, source=str(path), field_prefix="", base_dir=Path(path).parent)

    # ---- launching ---------------------------------------------------------------------------------------
    def _kept(self) -> list[Flag]:
        return [f for f in group([Token(t, "", "") for t in self.user_args]) if f.flag not in CHAOS_OWNED_FLAGS]

    def launch_args(self, checkpoint_dir: Path) -> list[str]:
        """The argument list of one rank (after the script): the user's flags without any chaos-owned one,
        then chaos's own: checkpoints in checkpoint_dir, chaos's length and save interval, a log line every
        iteration, and --exit-signal-handler when exit_on_sigterm."""
        out = [t.text for f in self._kept() for t in f.tokens]
        directory = str(checkpoint_dir)
        out += ["--save", directory, "--load", directory, "--train-iters", str(self.train_iters),
                "--save-interval", str(self.save_interval), "--log-interval", "1"]
        if self.exit_on_sigterm:
            out.append("--exit-signal-handler")
        return out

    def owned_flag_notes(self) -> list[str]:
        """What chaos rewrote in the user's command, one line each (for the run's log and report)."""
        given: dict[str, list[Flag]] = {}
        for f in group([Token(t, "", "") for t in self.user_args]):
            given.setdefault(f.flag, []).append(f)
        notes: list[str] = []
        for f in given.get("--save", []):
            notes.append(f"{f.display()} replaced by the run directory's checkpoints")
        if "--save" not in given:
            notes.append("--save added: the run directory's checkpoints")
        for f in given.get("--load", []):
            notes.append(f"{f.display()} replaced by the run directory's checkpoints (every restart resumes from "
                         "chaos's own saves; to start from a pretrained model use --pretrained-checkpoint)")
        if "--load" not in given:
            notes.append("--load added: the run directory's checkpoints (every restart resumes from the newest)")
        for flag, value, key in (("--train-iters", self.train_iters, "train_iters"),
                                 ("--save-interval", self.save_interval, "save_interval")):
            for f in given.get(flag, []):
                if f.values != (str(value),):
                    notes.append(f"{f.display()} replaced by {value} (workload.{key})")
            if flag not in given:
                notes.append(f"{flag} {value} added (workload.{key})")
        for f in given.get("--log-interval", []):
            if f.values != ("1",):
                notes.append(f"{f.display()} replaced by 1 (chaos reads every iteration)")
        if "--log-interval" not in given:
            notes.append("--log-interval 1 added (chaos reads every iteration; Megatron's default is 100)")
        if self.exit_on_sigterm and "--exit-signal-handler" not in given:
            notes.append("--exit-signal-handler added (exit_on_sigterm: SIGTERM saves and exits, Megatron's "
                         "graceful preemption)")
        if not self.exit_on_sigterm and "--exit-signal-handler" in given:
            notes.append("--exit-signal-handler removed (exit_on_sigterm: false: SIGTERM kills without a save)")
        return notes

    def fingerprint_mapping(self) -> dict[str, Any]:
        """What decides the numbers: the user's flags without chaos-owned ones, FILE_LOCATION_FLAGS and
        IN_PROCESS_RECOVERY_FLAGS (`--flag=value` written as `--flag value`), train_iters (Megatron's LR schedule and dataset size
        follow it), the world size and nodes, the device, the environment and the script's file name.
        Not the save interval nor exit_on_sigterm: saving never touches the math."""
        args: list[str] = []
        for f in self._kept():
            if f.flag in FILE_LOCATION_FLAGS or f.flag in IN_PROCESS_RECOVERY_FLAGS:
                continue
            args += [f.flag, *f.values] if f.flag else list(f.values)
        return {
            "kind": "megatron_lm",
            "script": Path(self.script).name,
            "args": args,
            "train_iters": self.train_iters,
            "world_size": self.world_size,
            "nodes": self.nodes,
            "device": self.device,
            "env": dict(self.env),
        }


# ---- the pieces of from_mapping ------------------------------------------------------------------------
def _checkout_and_script(read: FieldReader, mapping: Mapping[str, Any], base_dir: Path | None) -> tuple[str | None, str]:
    checkout: Path | None = None
    explicit = mapping.get("megatron_lm")
    env_checkout: Path | None = None
    notes: list[str] = []
    if explicit is not None:
        text = read.string(explicit, "megatron_lm", non_empty=True)
        tried = candidates(text, base_dir)
        found = next((p for p in tried if p.is_dir()), None)
        if found is None:
            raise read.error("megatron_lm", f"no directory at {' or '.join(map(str, tried))}; expected your "
                                            "Megatron-LM checkout (the folder holding pretrain_gpt.py and megatron/)")
        checkout = found.resolve()
    elif os.environ.get(MEGATRON_LM_ENV):
        path = Path(os.environ[MEGATRON_LM_ENV]).expanduser()
        if path.is_dir():
            env_checkout = path.resolve()
        else:
            notes.append(f"${MEGATRON_LM_ENV}={os.environ[MEGATRON_LM_ENV]} is not a directory")

    script_raw = mapping.get("script")
    script_text = read.string(DEFAULT_SCRIPT if script_raw is None else script_raw, "script", non_empty=True)
    script_path = Path(script_text).expanduser()
    if script_path.is_absolute():
        tried = [script_path]
    else:
        tried = [c / script_path for c in (checkout, env_checkout) if c is not None]
        tried += [c for c in candidates(script_text, base_dir) if c not in tried]
    script = next((p for p in tried if p.is_file()), None)
    if script is None:
        hint = ("" if script_path.is_absolute() else
                f"; set {read.field('megatron_lm')} (or ${MEGATRON_LM_ENV}) to your Megatron-LM checkout, or give "
                "the script's absolute path")
        extra = f" ({'; '.join(notes)})" if notes else ""
        raise read.error("script", f"no file at {' or '.join(map(str, tried))}{extra}; expected the training script "
                                   f"(default {DEFAULT_SCRIPT}){hint}")
    script = script.resolve()

    if checkout is None:
        if env_checkout is not None and script.is_relative_to(env_checkout):
            checkout = env_checkout
        else:
            checkout = next((p for p in script.parents if (p / "megatron").is_dir()), None)
    return (str(checkout) if checkout is not None else None), str(script)


def _python(read: FieldReader, raw: Any, base_dir: Path | None) -> str:
    if raw is None:
        return sys.executable
    text = read.string(raw, "python", non_empty=True)
    if "/" not in text:
        if shutil.which(text) is None:
            raise read.error("python", f"{show(text)} is not on PATH; expected an interpreter name on PATH or a path "
                                       "(leave python out to use the interpreter running chaos)")
        return text
    tried = candidates(text, base_dir)
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        raise read.error("python", f"no interpreter at {' or '.join(map(str, tried))}; expected the python that "
                                   "runs the script (leave python out to use the interpreter running chaos)")
    return str(found.absolute())


def _owned_int(read: FieldReader, mapping: Mapping[str, Any], key: str, flag: str, flags: list[Flag],
               variables: Mapping[str, str]) -> int:
    if mapping.get(key) is not None:
        return read.integer(mapping[key], key, low=1, outside=AT_LEAST_ONE)
    given = [f for f in flags if f.flag == flag]
    if not given:
        raise read.error(key, f"not given: set {read.field(key)} or pass {flag} in args / args_from")
    last = given[-1]
    head = last.tokens[0]
    values = [substitute(read, Token(v, head.field, head.where), variables).text for v in last.values]
    if len(values) != 1 or not re.fullmatch(r"\+?\d+", values[0].strip()) or int(values[0]) < 1:
        raise head.error(read.source, f"{flag} expects one integer >= 1, got {' '.join(values) or 'no value'} "
                                      f"(or set {read.field(key)})")
    return int(values[0])


def _ckpt_format(read: FieldReader, raw: Any, flags: list[Flag]) -> str:
    given = [f for f in flags if f.flag == "--ckpt-format"]
    found = DEFAULT_CKPT_FORMAT
    if given:
        last = given[-1]
        if len(last.values) != 1 or last.values[0] not in CKPT_FORMATS:
            got = " ".join(last.values) or "no value"
            raise last.tokens[0].error(read.source, f"--ckpt-format expects one of {list(CKPT_FORMATS)}, got "
                                                    f"{show(got)}{did_you_mean(got, CKPT_FORMATS)}")
        found = last.values[0]
    if raw is not None and raw != found:
        raise read.error("ckpt_format", f"is read from --ckpt-format in the args ({found}), got {show(raw)}: set "
                                        "--ckpt-format in args instead (or leave ckpt_format out)")
    return found


def _in_process(read: FieldReader, flags: list[Flag]) -> tuple[bool, float]:
    """(--inprocess-restart given, the soft timeout it runs with): Megatron's argparse rules, refused here rather
    than in every rank after its imports."""
    switches = [f for f in flags if f.flag == IN_PROCESS_RESTART]
    for f in switches:
        if f.values:
            raise f.tokens[0].error(read.source, f"{IN_PROCESS_RESTART} is a switch and takes no value, got "
                                                 f"{show(' '.join(f.values))}")
    soft = DEFAULT_IN_PROCESS_SOFT_TIMEOUT_S
    given = [f for f in flags if f.flag == IN_PROCESS_SOFT_TIMEOUT]
    if given:
        last = given[-1]
        try:
            soft = float(last.values[0]) if len(last.values) == 1 else float("nan")
        except ValueError:
            soft = float("nan")
        if not soft > 0 or soft == float("inf"):
            raise last.tokens[0].error(read.source, f"{IN_PROCESS_SOFT_TIMEOUT} expects one number of seconds > 0, "
                                                    f"got {' '.join(last.values) or 'no value'}")
    return bool(switches), soft
