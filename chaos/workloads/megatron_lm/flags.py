"""Megatron-style command lines: tokens that remember where they came from (a field of the workload mapping,
a line of args_from's file), grouped into flags the way Megatron's argparse reads them.

A token starting with `--` is a flag, its values are the tokens up to the next flag (none for `--bf16`,
several for `--data-path 0.5 a 0.5 b`); `--flag=value` works too; `-1` is a value. The order is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from chaos.errors import InputError


def parse_flags(tokens: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Megatron-style flags in order: [("--data-path", ("0.5", "a")), ("--bf16", ()), ...]. `--flag=value`
    gives ("--flag", ("value",)); values before the first flag are returned under the flag ""."""
    return [(f.flag, f.values) for f in group([Token(str(t), "", "") for t in tokens])]


@dataclass(frozen=True)
class Token:
    text: str
    field: str
    """The field path an error names (workload.args[3], workload.args_from)."""
    where: str
    """Where inside that field, for args_from: "in /x/model_config.yaml, MODEL_ARGS['--save']"."""

    def error(self, source: str, message: str) -> InputError:
        """An error about this token: its field, and where inside it."""
        return InputError(source, self.field, f"{self.where}: {message}" if self.where else message)


@dataclass(frozen=True)
class Flag:
    tokens: tuple[Token, ...]
    """As given: the flag token (maybe `--flag=value`) and its value tokens."""

    @property
    def flag(self) -> str:
        head = self.tokens[0].text
        if not is_flag(head):
            return ""
        return head.split("=", 1)[0]

    @property
    def values(self) -> tuple[str, ...]:
        head = self.tokens[0].text
        if not is_flag(head):
            return tuple(t.text for t in self.tokens)
        rest = tuple(t.text for t in self.tokens[1:])
        return ((head.split("=", 1)[1],) + rest) if "=" in head else rest

    def display(self) -> str:
        return " ".join([self.flag, *self.values])


def is_flag(text: str) -> bool:
    return text.startswith("--") and len(text) > 2


def group(tokens: Sequence[Token]) -> list[Flag]:
    """Tokens as flags, each with its values; tokens before the first flag make a Flag whose flag is ""."""
    groups: list[list[Token]] = []
    for tok in tokens:
        if is_flag(tok.text) or not groups:
            groups.append([tok])
        else:
            groups[-1].append(tok)
    return [Flag(tuple(g)) for g in groups]
