"""Dotted-key overrides of a scenario's mapping: the CLI's `--set workload.train_iters=8` and the pytest marker's
keyword arguments. chaos.scenario.load.apply_overrides validates the result again from scratch."""

from __future__ import annotations

from typing import Any, Iterable

import yaml

from chaos.errors import InputError, show
from chaos.scenario.yaml_text import SafeScenarioLoader

def parse_overrides(items: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """["workload.train_iters=8", "seed=3"] -> {"workload.train_iters": "8", "seed": "3"}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(source, item, "expected KEY=VALUE with a dotted key, e.g. workload.train_iters=8")
        out[key.strip()] = value
    return out


def override_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.load(value, Loader=SafeScenarioLoader)  # noqa: S506 - SafeScenarioLoader is a SafeLoader
    except yaml.YAMLError:
        return value


def set_dotted(mapping: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    if not all(parts):
        raise InputError(source, key, "expected a dotted key such as workload.train_iters")
    node: Any = mapping
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise InputError(source, where, f"expected a list index < {len(node)}, got {show(part)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise InputError(source, where, f"cannot set a key inside {show(node)}")
