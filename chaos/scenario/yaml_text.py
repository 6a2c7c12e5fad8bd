"""Reading a scenario file as untrusted YAML: bounded in size, a regular file only (never a FIFO or a device),
duplicate keys refused, integers bounded in length, `1e-3` read as the number people mean. Everything past
the text is chaos.scenario.load's."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from chaos.errors import InputError, show

class SafeScenarioLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently) and reads `1e-3` as a
    number (YAML 1.1 wants a dot in the mantissa; people write lr: 1e-3)."""


def _construct_mapping(loader: SafeScenarioLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, "found a list or mapping used as a key; keys are names",
                key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"found duplicate key {show(key)}", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


MAX_INT_DIGITS = 40
"""Longer integers are no setting anyone means (and past 4300 digits Python refuses to parse them)."""


def _construct_int(loader: SafeScenarioLoader, node: yaml.ScalarNode) -> int:
    digits = sum(ch.isdigit() for ch in str(node.value))
    if digits > MAX_INT_DIGITS:
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer with {digits} digits; expected at most {MAX_INT_DIGITS}", node.start_mark)
    return loader.construct_yaml_int(node)


SafeScenarioLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
SafeScenarioLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
SafeScenarioLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


MAX_SCENARIO_BYTES = 1 << 20
"""A scenario is a few kilobytes; a megabyte is already a generated or wrong file."""


def read_scenario_text(path: Path) -> str:
    """The text of a scenario file: a regular file of at most MAX_SCENARIO_BYTES, in UTF-8. Anything else
    (a directory, a FIFO that would block forever, /dev/zero that never ends, Latin-1) is an InputError."""
    source = str(path)
    try:
        # O_NONBLOCK, then fstat of what was opened: a FIFO swapped in after a check must not block the read
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            os.close(fd)
            what = "a directory" if stat.S_ISDIR(kind) else "a FIFO" if stat.S_ISFIFO(kind) else \
                "a device" if stat.S_ISCHR(kind) or stat.S_ISBLK(kind) else "a socket or special file"
            raise InputError(source, "", f"is {what}; expected a scenario YAML file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_SCENARIO_BYTES + 1)
    except OSError as error:
        raise InputError(source, "", f"cannot read scenario: {error.strerror or error}") from None
    if len(data) > MAX_SCENARIO_BYTES:
        raise InputError(source, "", f"larger than {MAX_SCENARIO_BYTES >> 20} MiB; a scenario is a few KB of YAML")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(source, f"line {line}", f"not UTF-8 (byte 0x{data[error.start]:02x} at offset "
                                                 f"{error.start}); save the file as UTF-8") from None


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> Python data; a syntax error becomes an InputError with the line and column."""
    try:
        return yaml.load(text, Loader=SafeScenarioLoader)  # noqa: S506 - SafeScenarioLoader is a SafeLoader
    except RecursionError:
        raise InputError(source, "", "nested too deeply to be a scenario (lists or mappings inside each other "
                                     "hundreds of levels deep)") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(source, where, f"invalid YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise InputError(source, "", f"invalid YAML: {error}") from None
