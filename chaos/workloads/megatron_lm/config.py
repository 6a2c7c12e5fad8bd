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
- Flags follow Megatron's argparse: a token starting with `--` is a flag, its values are the tokens up to
  the next flag (none for `--bf16`, several for `--data-path 0.5 a 0.5 b`); `--flag=value` works too;
  `-1` is a value. The user's order is kept.
- args_from's MODEL_ARGS: `true` is the bare flag, `false`/null leave the flag out, a string is split on
  whitespace (as Megatron's own launcher's shell does: `"0.5 a 0.5 b"` is four values), a list gives one
  value per item, anything else is `str(value)`. Other top-level keys (TEST_TYPE, MODEL_ARGS_2...) are
  ignored. A flag that appears in both args_from and `args` is taken from `args` only (args wins).
- `${NAME}` (braces required; `$NAME` is left alone) is replaced from `vars`, then the environment; an
  unresolved one is an error, except inside chaos-owned flags (whose values chaos replaces anyway, so
  `--save: ${CHECKPOINT_SAVE_PATH}` needs no value).
- chaos owns CHAOS_OWNED_FLAGS: every occurrence is removed and chaos appends its own (launch_args).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from chaos import safe_files
from chaos.errors import InputError, did_you_mean, show

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

KEYS = ("kind", "megatron_lm", "script", "python", "nproc_per_node", "nodes", "device", "args", "args_from",
        "args_remove", "vars", "env", "train_iters", "save_interval", "exit_on_sigterm", "ckpt_format")
DEVICES = ("cuda", "cpu")
DEFAULT_SCRIPT = "pretrain_gpt.py"
MEGATRON_LM_ENV = "MEGATRON_LM"

_VAR = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_flags(tokens: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Megatron-style flags in order: [("--data-path", ("0.5", "a")), ("--bf16", ()), ...]. `--flag=value`
    gives ("--flag", ("value",)); values before the first flag are returned under the flag ""."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for group in _group([_Tok(str(t), "", "") for t in tokens]):
        out.append((group.flag, group.values))
    return out


# ---- internal: tokens that remember where they came from ---------------------------------------------
@dataclass(frozen=True)
class _Tok:
    text: str
    field: str
    """The field path an error names (workload.args[3], workload.args_from)."""
    where: str
    """Where inside that field, for args_from: "in /x/model_config.yaml, MODEL_ARGS['--save']"."""


@dataclass(frozen=True)
class _Flag:
    tokens: tuple[_Tok, ...]
    """As given: the flag token (maybe `--flag=value`) and its value tokens."""

    @property
    def flag(self) -> str:
        head = self.tokens[0].text
        if not _is_flag(head):
            return ""
        return head.split("=", 1)[0]

    @property
    def values(self) -> tuple[str, ...]:
        head = self.tokens[0].text
        if not _is_flag(head):
            return tuple(t.text for t in self.tokens)
        rest = tuple(t.text for t in self.tokens[1:])
        return ((head.split("=", 1)[1],) + rest) if "=" in head else rest

    def display(self) -> str:
        return " ".join([self.flag, *self.values])


def _is_flag(text: str) -> bool:
    return text.startswith("--") and len(text) > 2


def _group(tokens: Sequence[_Tok]) -> list[_Flag]:
    groups: list[list[_Tok]] = []
    for tok in tokens:
        if _is_flag(tok.text) or not groups:
            groups.append([tok])
        else:
            groups[-1].append(tok)
    return [_Flag(tuple(g)) for g in groups]


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _Reader:
    """Builds InputErrors that name the scenario file and the field path."""

    def __init__(self, source: str, prefix: str) -> None:
        self.source = source
        self.prefix = prefix

    def field(self, key: str) -> str:
        return _join(self.prefix, key)

    def error(self, key: str, message: str) -> InputError:
        return InputError(self.source, self.field(key), message)

    def at(self, tok: _Tok, message: str) -> InputError:
        return InputError(self.source, tok.field, f"{tok.where}: {message}" if tok.where else message)

    def integer(self, raw: Any, key: str, minimum: int = 1) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self.error(key, f"expected an integer >= {minimum}, got {show(raw)}")
        if raw < minimum:
            raise self.error(key, f"must be >= {minimum}, got {raw}")
        return raw

    def string(self, raw: Any, key: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self.error(key, f"expected a non-empty string, got {show(raw)}")
        return raw


def _scalar_text(raw: Any) -> str | None:
    """A YAML scalar as the command line sees it (None when it is not a scalar)."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (str, int, float)):
        return str(raw)
    return None


def _candidates(raw: str, base_dir: Path | None) -> list[Path]:
    path = Path(raw).expanduser()
    if path.is_absolute():
        return [path]
    out = [base_dir / path] if base_dir is not None else []
    if Path.cwd() / path not in out:
        out.append(Path.cwd() / path)
    return out


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
        read = _Reader(source, field_prefix)
        if not isinstance(mapping, Mapping):
            raise InputError(source, field_prefix, f"expected a mapping (kind: megatron_lm, script, args, ...), "
                                                   f"got {type(mapping).__name__}")
        for key in mapping:
            if key not in KEYS:
                raise read.error(str(key), f"unknown field{did_you_mean(key, KEYS)}; expected one of {list(KEYS)}")
        base_dir = Path(base_dir) if base_dir is not None else None

        variables = _vars(read, mapping.get("vars"))
        megatron_lm, script = _checkout_and_script(read, mapping, base_dir)
        python = _python(read, mapping.get("python"), base_dir)
        nproc_per_node = read.integer(mapping.get("nproc_per_node", 1), "nproc_per_node")
        nodes = read.integer(mapping.get("nodes", 1), "nodes")
        device = mapping.get("device", "cuda")
        if device not in DEVICES:
            raise read.error("device", f"expected one of {list(DEVICES)}, got {show(device)}"
                                       f"{did_you_mean(device, DEVICES)}")

        # args_from, args_remove, args -> one ordered list of flags (args wins over args_from)
        from_flags: list[_Flag] = []
        env: dict[str, _Tok] = {}
        args_remove = mapping.get("args_remove")
        if mapping.get("args_from") is not None:
            from_flags, env = _read_args_from(read, mapping["args_from"], base_dir)
            if args_remove is not None:
                from_flags = _remove(read, from_flags, args_remove)
        elif args_remove not in (None, []):
            raise read.error("args_remove", "drops flags from args_from's MODEL_ARGS, but there is no args_from; "
                                            "leave the flags out of args instead")
        arg_flags = _read_args(read, mapping.get("args", []))
        given = {f.flag for f in arg_flags}
        merged = [f for f in from_flags if f.flag not in given] + arg_flags
        for f in merged:
            if f.flag == "--train-samples":
                raise read.at(f.tokens[0], "chaos counts iterations: Megatron refuses --train-samples together "
                                           "with --train-iters; give train_iters (or --train-iters) instead")

        resolved: list[_Flag] = []
        for f in merged:
            if f.flag in CHAOS_OWNED_FLAGS:
                resolved.append(f)  # chaos replaces the value: an unset ${VAR} in it does not matter
            else:
                resolved.append(_Flag(tuple(_substitute(read, t, variables) for t in f.tokens)))
        user_args = tuple(t.text for f in resolved for t in f.tokens)

        # env: args_from's ENV_VARS, then `env` over them
        env.update(_read_env(read, mapping.get("env")))
        env_out = tuple(sorted((name, _substitute(read, tok, variables).text) for name, tok in env.items()))

        train_iters = _owned_int(read, mapping, "train_iters", "--train-iters", resolved, variables)
        save_interval = _owned_int(read, mapping, "save_interval", "--save-interval", resolved, variables)
        exit_on_sigterm = mapping.get("exit_on_sigterm", True)
        if not isinstance(exit_on_sigterm, bool):
            raise read.error("exit_on_sigterm", f"expected true or false, got {show(exit_on_sigterm)}")
        ckpt_format = _ckpt_format(read, mapping.get("ckpt_format"), resolved)

        return cls(script=script, megatron_lm=megatron_lm, python=python, nproc_per_node=nproc_per_node,
                   nodes=nodes, device=device, user_args=user_args, env=env_out, train_iters=train_iters,
                   save_interval=save_interval, exit_on_sigterm=exit_on_sigterm, ckpt_format=ckpt_format)

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
    def _kept(self) -> list[_Flag]:
        return [f for f in _group([_Tok(t, "", "") for t in self.user_args]) if f.flag not in CHAOS_OWNED_FLAGS]

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
        given: dict[str, list[_Flag]] = {}
        for f in _group([_Tok(t, "", "") for t in self.user_args]):
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
        """What decides the numbers: the user's flags without chaos-owned ones and without FILE_LOCATION_FLAGS
        (`--flag=value` written as `--flag value`), train_iters (Megatron's LR schedule and dataset size
        follow it), the world size and nodes, the device, the environment and the script's file name.
        Not the save interval nor exit_on_sigterm: saving never touches the math."""
        args: list[str] = []
        for f in self._kept():
            if f.flag in FILE_LOCATION_FLAGS:
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
def _vars(read: _Reader, raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise read.error("vars", f"expected a mapping of NAME: value (for ${{NAME}} in args, args_from and env), "
                                 f"got {show(raw)}")
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise read.error(f"vars.{name}", "expected a variable name (letters, digits, _; not starting with a digit)")
        text = _scalar_text(value)
        if text is None:
            raise read.error(f"vars.{name}", f"expected a string or a number, got {show(value)}")
        out[name] = text
    return out


def _checkout_and_script(read: _Reader, mapping: Mapping[str, Any], base_dir: Path | None) -> tuple[str | None, str]:
    checkout: Path | None = None
    explicit = mapping.get("megatron_lm")
    env_checkout: Path | None = None
    notes: list[str] = []
    if explicit is not None:
        text = read.string(explicit, "megatron_lm")
        tried = _candidates(text, base_dir)
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
    script_text = read.string(DEFAULT_SCRIPT if script_raw is None else script_raw, "script")
    script_path = Path(script_text).expanduser()
    if script_path.is_absolute():
        tried = [script_path]
    else:
        tried = [c / script_path for c in (checkout, env_checkout) if c is not None]
        tried += [c for c in _candidates(script_text, base_dir) if c not in tried]
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


def _python(read: _Reader, raw: Any, base_dir: Path | None) -> str:
    if raw is None:
        return sys.executable
    text = read.string(raw, "python")
    if "/" not in text:
        if shutil.which(text) is None:
            raise read.error("python", f"{show(text)} is not on PATH; expected an interpreter name on PATH or a path "
                                       "(leave python out to use the interpreter running chaos)")
        return text
    tried = _candidates(text, base_dir)
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        raise read.error("python", f"no interpreter at {' or '.join(map(str, tried))}; expected the python that "
                                   "runs the script (leave python out to use the interpreter running chaos)")
    return str(found.absolute())


def _read_args(read: _Reader, raw: Any) -> list[_Flag]:
    if raw is None:
        return []
    if isinstance(raw, str):
        raise read.error("args", f"expected a list of flags and values (e.g. [--num-layers, 12, --bf16]), got the "
                                 f"string {show(raw)}: write it as a YAML list")
    if not isinstance(raw, (list, tuple)):
        raise read.error("args", f"expected a list of flags and values (e.g. [--num-layers, 12, --bf16]), got {show(raw)}")
    tokens: list[_Tok] = []
    for i, item in enumerate(raw):
        key = f"args[{i}]"
        if isinstance(item, bool) or item is None or not isinstance(item, (str, int, float)):
            raise read.error(key, f"expected a string or a number, got {show(item)} (a switch is the flag alone, "
                                  "e.g. --bf16)")
        tokens.append(_Tok(str(item), read.field(key), ""))
    flags = _group(tokens)
    if flags and not flags[0].flag:
        raise read.at(flags[0].tokens[0], f"expected a flag (--name) before the value {show(flags[0].tokens[0].text)}: "
                                          "Megatron's scripts take flags only")
    return flags


ARGS_FROM_LIMIT = 1 << 20
"""A model_config.yaml is a few KB; a megabyte is already the wrong file."""


def _read_args_from(read: _Reader, raw: Any, base_dir: Path | None) -> tuple[list[_Flag], dict[str, _Tok]]:
    text = read.string(raw, "args_from")
    tried = _candidates(text, base_dir)
    path = next((p for p in tried if p.is_file()), None)
    if path is None:
        raise read.error("args_from", f"no file at {' or '.join(map(str, tried))}; expected a Megatron-LM functional "
                                      "test model_config.yaml (MODEL_ARGS, optional ENV_VARS)")
    path = path.resolve()
    field = read.field("args_from")

    def bad(where: str, message: str) -> InputError:
        return InputError(read.source, field, f"in {path}, {where}: {message}" if where else f"in {path}: {message}")

    text = safe_files.read_input(path, field, limit=ARGS_FROM_LIMIT)  # a regular file of bounded size
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        # where, never what: the message of PyYAML quotes the file's lines, which may be anything at all
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise bad(where, "not YAML (expected a Megatron-LM model_config.yaml with MODEL_ARGS)") from None
    except (yaml.YAMLError, RecursionError):
        raise bad("", "not YAML (expected a Megatron-LM model_config.yaml with MODEL_ARGS)") from None
    if not isinstance(data, Mapping):
        raise bad("", f"expected a mapping with MODEL_ARGS (and optional ENV_VARS), got {type(data).__name__}")
    if "MODEL_ARGS" not in data:
        keys = [str(k) for k in data]
        close = [k for k in keys if did_you_mean(k.upper(), ["MODEL_ARGS"])]
        hint = f" (did you mean MODEL_ARGS instead of {close[0]}?)" if close else ""
        raise bad("", f"expected a MODEL_ARGS mapping ({{--flag: value}}); found the keys {keys}{hint}")
    model_args = data["MODEL_ARGS"]
    if not isinstance(model_args, Mapping):
        raise bad("MODEL_ARGS", f"expected a mapping of --flag: value, got {show(model_args)}")

    tokens: list[_Tok] = []
    for flag, value in model_args.items():
        where = f"MODEL_ARGS[{show(flag)}]"
        if not isinstance(flag, str) or not _is_flag(flag) or "=" in flag:
            raise bad(where, "expected a flag starting with -- as the key")
        if value is False or value is None:
            continue
        tok = lambda t: _Tok(t, field, f"in {path}, {where}")  # noqa: E731
        tokens.append(tok(flag))
        if value is True:
            continue
        if isinstance(value, str):
            tokens += [tok(part) for part in value.split()]
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                part = _scalar_text(item)
                if part is None:
                    raise bad(f"{where}[{i}]", f"expected a string or a number, got {show(item)}")
                tokens.append(tok(part))
        else:
            part = _scalar_text(value)
            if part is None:
                raise bad(where, f"expected true, false, null, a string, a number or a list, got {show(value)}")
            tokens.append(tok(part))

    env: dict[str, _Tok] = {}
    env_vars = data.get("ENV_VARS")
    if env_vars is not None:
        if not isinstance(env_vars, Mapping):
            raise bad("ENV_VARS", f"expected a mapping of NAME: value, got {show(env_vars)}")
        for name, value in env_vars.items():
            where = f"ENV_VARS[{show(name)}]"
            if not isinstance(name, str) or not _NAME.match(name):
                raise bad(where, "expected an environment variable name as the key")
            text = _scalar_text(value)
            if text is None:
                raise bad(where, f"expected a string or a number, got {show(value)}")
            env[name] = _Tok(text, field, f"in {path}, {where}")
    return _group(tokens), env


def _remove(read: _Reader, flags: list[_Flag], raw: Any) -> list[_Flag]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        raise read.error("args_remove", f"expected a list of flags (e.g. [--data-path, --vocab-file]), got {show(raw)}")
    present = [f.flag for f in flags]
    drop: set[str] = set()
    for i, flag in enumerate(raw):
        key = f"args_remove[{i}]"
        if not isinstance(flag, str) or not _is_flag(flag):
            raise read.error(key, f"expected a flag starting with -- (its values go with it), got {show(flag)}")
        if flag not in present:
            raise read.error(key, f"{flag} is not in args_from's MODEL_ARGS{did_you_mean(flag, present)}")
        drop.add(flag)
    return [f for f in flags if f.flag not in drop]


def _read_env(read: _Reader, raw: Any) -> dict[str, _Tok]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise read.error("env", f"expected a mapping of NAME: value, got {show(raw)}")
    out: dict[str, _Tok] = {}
    for name, value in raw.items():
        key = f"env.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise read.error(key, "expected an environment variable name (letters, digits, _)")
        text = _scalar_text(value)
        if text is None:
            raise read.error(key, f"expected a string or a number, got {show(value)}")
        out[name] = _Tok(text, read.field(key), "")
    return out


def _substitute(read: _Reader, tok: _Tok, variables: Mapping[str, str]) -> _Tok:
    """tok with every ${NAME} replaced from variables, then the environment."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return variables[name]
        if name in os.environ:
            return os.environ[name]
        if not _NAME.match(name):
            raise read.at(tok, f"${{{name}}} is not a variable name (letters, digits, _)")
        raise read.at(tok, f"${{{name}}} is not set: give it in {read.field('vars')} or the environment"
                           f"{did_you_mean(name, list(variables))}")

    return _Tok(_VAR.sub(value, tok.text), tok.field, tok.where)


def _owned_int(read: _Reader, mapping: Mapping[str, Any], key: str, flag: str, flags: list[_Flag],
               variables: Mapping[str, str]) -> int:
    if mapping.get(key) is not None:
        return read.integer(mapping[key], key)
    given = [f for f in flags if f.flag == flag]
    if not given:
        raise read.error(key, f"not given: set {read.field(key)} or pass {flag} in args / args_from")
    last = given[-1]
    values = [_substitute(read, _Tok(v, last.tokens[0].field, last.tokens[0].where), variables).text
              for v in last.values]
    if len(values) != 1 or not re.fullmatch(r"\+?\d+", values[0].strip()) or int(values[0]) < 1:
        raise read.at(last.tokens[0], f"{flag} expects one integer >= 1, got {' '.join(values) or 'no value'} "
                                      f"(or set {read.field(key)})")
    return int(values[0])


def _ckpt_format(read: _Reader, raw: Any, flags: list[_Flag]) -> str:
    given = [f for f in flags if f.flag == "--ckpt-format"]
    found = DEFAULT_CKPT_FORMAT
    if given:
        last = given[-1]
        if len(last.values) != 1 or last.values[0] not in CKPT_FORMATS:
            got = " ".join(last.values) or "no value"
            raise read.at(last.tokens[0], f"--ckpt-format expects one of {list(CKPT_FORMATS)}, got {show(got)}"
                                          f"{did_you_mean(got, CKPT_FORMATS)}")
        found = last.values[0]
    if raw is not None and raw != found:
        raise read.error("ckpt_format", f"is read from --ckpt-format in the args ({found}), got {show(raw)}: set "
                                        "--ckpt-format in args instead (or leave ckpt_format out)")
    return found
