"""The systems under test, behind one seam (chaos.workloads.base.Workload). A scenario's `workload:`
mapping names its `kind` (default gpt3); the kind's module validates the rest, torch-free.

Adding a kind = one folder with a module exposing `from_mapping(mapping, source, field_prefix, base_dir)`
+ one line in KINDS. Modules are imported only when a scenario asks for their kind."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

from chaos.errors import InputError, did_you_mean, show
from chaos.workloads.base import LaunchSpec, PhaseRules, Workload, WorkloadFacts

KINDS: dict[str, str] = {
    "gpt3": "chaos.workloads.gpt3.workload",              # chaos's megatron-core GPT-3 trainer (probe)
    "megatron_lm": "chaos.workloads.megatron_lm.workload",  # an unmodified Megatron-LM job (black box)
}
DEFAULT_KIND = "gpt3"


def workload_from_mapping(mapping: Any, source: str, field_prefix: str = "workload",
                          base_dir: Path | None = None) -> Workload:
    """The validated workload a scenario's `workload:` mapping describes (InputError on anything wrong)."""
    if not isinstance(mapping, Mapping) or not mapping:
        raise InputError(source, field_prefix, f"expected a mapping with the workload's settings (kind: "
                                               f"{' | '.join(KINDS)}, default {DEFAULT_KIND}), got {show(mapping)}")
    kind = mapping.get("kind", DEFAULT_KIND)
    if not isinstance(kind, str) or kind not in KINDS:
        raise InputError(source, f"{field_prefix}.kind", f"unknown workload kind {show(kind)}; expected one of "
                                                         f"{list(KINDS)}{did_you_mean(kind, list(KINDS))}")
    module = importlib.import_module(KINDS[kind])
    return module.from_mapping(mapping, source, field_prefix, base_dir)


__all__ = ["KINDS", "LaunchSpec", "PhaseRules", "Workload", "WorkloadFacts", "workload_from_mapping"]
