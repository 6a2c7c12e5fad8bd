"""The training command of `kind: megatron_lm` as the workload mapping gives it: `args`, `args_from` (a
Megatron-LM functional-test model_config.yaml: MODEL_ARGS + ENV_VARS), `args_remove`, `env` and `vars`, read
into flags (chaos.workloads.megatron_lm.flags) and an environment, with ${NAME} replaced.

Rules:
- Flags follow Megatron's argparse (see flags.py). The user's order is kept.
- args_from's MODEL_ARGS: `true` is the bare flag, `false`/null leave the flag out, a string is split on
  whitespace (as Megatron's own launcher's shell does: `"0.5 a 0.5 b"` is four values), a list gives one
  value per item, anything else is `str(value)`. Other top-level keys (TEST_TYPE, MODEL_ARGS_2...) are
  ignored. A flag that appears in both args_from and `args` is taken from `args` only (args wins).
- `${NAME}` (braces required; `$NAME` is left alone) is replaced from `vars`, then the environment; an
  unresolved one is an error, except inside the flags chaos owns (whose values chaos replaces anyway, so
  `--save: ${CHECKPOINT_SAVE_PATH}` needs no value).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from chaos import safe_files
from chaos.config_fields import FieldReader
from chaos.errors import InputError, did_you_mean, show
from chaos.workloads.megatron_lm.flags import Flag, Token, group, is_flag

_VAR = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
"""A variable's name (vars, env, ENV_VARS, ${NAME})."""


def read_command(read: FieldReader, mapping: Mapping[str, Any], base_dir: Path | None, variables: Mapping[str, str],
                 owned: tuple[str, ...]) -> tuple[list[Flag], tuple[tuple[str, str], ...]]:
    """The user's flags (args_from's, less args_remove, then args over them) with ${NAME} replaced, except in
    the `owned` flags (chaos replaces their values); and the environment (args_from's ENV_VARS, then `env`
    over them), sorted (name, value)."""
    from_flags: list[Flag] = []
    env: dict[str, Token] = {}
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
            raise f.tokens[0].error(read.source, "chaos counts iterations: Megatron refuses --train-samples together "
                                                 "with --train-iters; give train_iters (or --train-iters) instead")

    resolved: list[Flag] = []
    for f in merged:
        if f.flag in owned:
            resolved.append(f)  # chaos replaces the value: an unset ${VAR} in it does not matter
        else:
            resolved.append(Flag(tuple(substitute(read, t, variables) for t in f.tokens)))

    env.update(_read_env(read, mapping.get("env")))
    env_out = tuple(sorted((name, substitute(read, tok, variables).text) for name, tok in env.items()))
    return resolved, env_out


def _scalar_text(raw: Any) -> str | None:
    """A YAML scalar as the command line sees it (None when it is not a scalar)."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (str, int, float)):
        return str(raw)
    return None


def candidates(raw: str, base_dir: Path | None) -> list[Path]:
    path = Path(raw).expanduser()
    if path.is_absolute():
        return [path]
    out = [base_dir / path] if base_dir is not None else []
    if Path.cwd() / path not in out:
        out.append(Path.cwd() / path)
    return out


def read_vars(read: FieldReader, raw: Any) -> dict[str, str]:
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


def _read_args(read: FieldReader, raw: Any) -> list[Flag]:
    if raw is None:
        return []
    if isinstance(raw, str):
        raise read.error("args", f"expected a list of flags and values (e.g. [--num-layers, 12, --bf16]), got the "
                                 f"string {show(raw)}: write it as a YAML list")
    if not isinstance(raw, (list, tuple)):
        raise read.error("args", f"expected a list of flags and values (e.g. [--num-layers, 12, --bf16]), got {show(raw)}")
    tokens: list[Token] = []
    for i, item in enumerate(raw):
        key = f"args[{i}]"
        if isinstance(item, bool) or item is None or not isinstance(item, (str, int, float)):
            raise read.error(key, f"expected a string or a number, got {show(item)} (a switch is the flag alone, "
                                  "e.g. --bf16)")
        tokens.append(Token(str(item), read.field(key), ""))
    flags = group(tokens)
    if flags and not flags[0].flag:
        first = flags[0].tokens[0]
        raise first.error(read.source, f"expected a flag (--name) before the value {show(first.text)}: Megatron's "
                                       "scripts take flags only")
    return flags


ARGS_FROM_LIMIT = 1 << 20
"""A model_config.yaml is a few KB; a megabyte is already the wrong file."""


def _read_args_from(read: FieldReader, raw: Any, base_dir: Path | None) -> tuple[list[Flag], dict[str, Token]]:
    text = read.string(raw, "args_from", non_empty=True)
    tried = candidates(text, base_dir)
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

    tokens: list[Token] = []
    for flag, value in model_args.items():
        where = f"MODEL_ARGS[{show(flag)}]"
        if not isinstance(flag, str) or not is_flag(flag) or "=" in flag:
            raise bad(where, "expected a flag starting with -- as the key")
        if value is False or value is None:
            continue
        tok = lambda t: Token(t, field, f"in {path}, {where}")  # noqa: E731
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

    env: dict[str, Token] = {}
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
            env[name] = Token(text, field, f"in {path}, {where}")
    return group(tokens), env


def _remove(read: FieldReader, flags: list[Flag], raw: Any) -> list[Flag]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        raise read.error("args_remove", f"expected a list of flags (e.g. [--data-path, --vocab-file]), got {show(raw)}")
    present = [f.flag for f in flags]
    drop: set[str] = set()
    for i, flag in enumerate(raw):
        key = f"args_remove[{i}]"
        if not isinstance(flag, str) or not is_flag(flag):
            raise read.error(key, f"expected a flag starting with -- (its values go with it), got {show(flag)}")
        if flag not in present:
            raise read.error(key, f"{flag} is not in args_from's MODEL_ARGS{did_you_mean(flag, present)}")
        drop.add(flag)
    return [f for f in flags if f.flag not in drop]


def _read_env(read: FieldReader, raw: Any) -> dict[str, Token]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise read.error("env", f"expected a mapping of NAME: value, got {show(raw)}")
    out: dict[str, Token] = {}
    for name, value in raw.items():
        key = f"env.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise read.error(key, "expected an environment variable name (letters, digits, _)")
        text = _scalar_text(value)
        if text is None:
            raise read.error(key, f"expected a string or a number, got {show(value)}")
        out[name] = Token(text, read.field(key), "")
    return out


def substitute(read: FieldReader, tok: Token, variables: Mapping[str, str]) -> Token:
    """tok with every ${NAME} replaced from variables, then the environment."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return variables[name]
        if name in os.environ:
            return os.environ[name]
        if not _NAME.match(name):
            raise tok.error(read.source, f"${{{name}}} is not a variable name (letters, digits, _)")
        raise tok.error(read.source, f"${{{name}}} is not set: give it in {read.field('vars')} or the environment"
                                     f"{did_you_mean(name, list(variables))}")

    return Token(_VAR.sub(value, tok.text), tok.field, tok.where)
